// CUDA errors as m2n Status: the message names the call and carries cudaGetErrorString's text.
#pragma once

#include <cuda_runtime.h>

#include <string>
#include <string_view>

#include "m2n/status.h"

namespace m2n::transport::cuda_ipc {

inline Status CudaStatus(cudaError_t error, std::string_view what) {
  if (error == cudaSuccess) return OkStatus();
  return InternalError("cuda_ipc: " + std::string(what) + ": " + cudaGetErrorName(error) + " (" +
                       cudaGetErrorString(error) + ")");
}

}  // namespace m2n::transport::cuda_ipc

#define M2N_CUDA_RETURN_IF_ERROR(call, what) \
  M2N_RETURN_IF_ERROR(::m2n::transport::cuda_ipc::CudaStatus((call), (what)))

// The CUDA driver API as the verbs transport uses it, looked up at run time (dlopen libcuda.so.1):
// a build with the CUDA headers must run where no driver is installed (CI, the Soft-RoCE VM), and
// host-memory groups never need it. Compiled only when M2N_VERBS_WITH_CUDA.
#pragma once

#include <cuda.h>

#include <string>

#include "m2n/status.h"

namespace m2n::transport::verbs {

struct CudaDriver {
  CUresult (*get_error_string)(CUresult, const char**) = nullptr;
  CUresult (*ctx_get_current)(CUcontext*) = nullptr;
  CUresult (*ctx_set_current)(CUcontext) = nullptr;
  CUresult (*ctx_get_device)(CUdevice*) = nullptr;
  CUresult (*device_get_attribute)(int*, CUdevice_attribute, CUdevice) = nullptr;
  CUresult (*mem_alloc)(CUdeviceptr*, size_t) = nullptr;
  CUresult (*mem_free)(CUdeviceptr) = nullptr;
  CUresult (*memset_d8)(CUdeviceptr, unsigned char, size_t) = nullptr;
  CUresult (*memcpy_htod)(CUdeviceptr, const void*, size_t) = nullptr;
  CUresult (*stream_synchronize)(CUstream) = nullptr;
  CUresult (*mem_host_register)(void*, size_t, unsigned int) = nullptr;
  CUresult (*mem_host_unregister)(void*) = nullptr;
  CUresult (*mem_host_get_device_pointer)(CUdeviceptr*, void*, unsigned int) = nullptr;
  CUresult (*get_handle_for_address_range)(void*, CUdeviceptr, size_t, CUmemRangeHandleType,
                                           unsigned long long) = nullptr;
  CUresult (*stream_write_value32)(CUstream, CUdeviceptr, cuuint32_t, unsigned int) = nullptr;
  CUresult (*stream_wait_value32)(CUstream, CUdeviceptr, cuuint32_t, unsigned int) = nullptr;
  // Optional (CUDA >= 11.3): null where the driver lacks it.
  CUresult (*flush_gpudirect_rdma_writes)(CUflushGPUDirectRDMAWritesTarget,
                                          CUflushGPUDirectRDMAWritesScope) = nullptr;

  // The driver, or the reason it cannot be used ("libcuda.so.1 cannot be loaded here", a missing
  // entry point).
  static StatusOr<const CudaDriver*> Get();
  // "verbs: <what>: CUDA_ERROR_... (text)".
  std::string Error(std::string_view what, CUresult result) const;
};

}  // namespace m2n::transport::verbs

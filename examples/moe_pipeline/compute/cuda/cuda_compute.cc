// The cuda backend's devices; its attention is cuda_attention.cc, its experts cuda_experts.cc.
#include "compute/cuda/cuda_compute.h"

#include <cuda_runtime.h>

#include "compute/cuda/context.h"

namespace moe::cuda {

int VisibleDevices() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

m2n::Status UseDevice(int local_rank) {
  const int count = VisibleDevices();
  if (count == 0) return m2n::FailedPreconditionError("cuda backend: no CUDA device visible");
  return CudaError(cudaSetDevice(local_rank % count), "cudaSetDevice");
}

}  // namespace moe::cuda

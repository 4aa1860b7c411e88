// The test's experts on the device (ep_gpu_kernels.h).
#include "ep_gpu_kernels.h"

namespace m2n::testing {
namespace {

__device__ float Load(const void* row, int i, int dtype) {
  if (dtype == 1) return static_cast<const float*>(row)[i];
  return __uint_as_float(unsigned(static_cast<const unsigned short*>(row)[i]) << 16);
}

// dtype.h's rounding: nearest, ties to even.
__device__ void Store(float v, int i, int dtype, void* row) {
  if (dtype == 1) {
    static_cast<float*>(row)[i] = v;
    return;
  }
  unsigned bits = __float_as_uint(v);
  if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x007FFFFFu) != 0)
    bits = (bits >> 16) | 0x40u;
  else
    bits = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  static_cast<unsigned short*>(row)[i] = static_cast<unsigned short>(bits);
}

__global__ void ApplyExpertsKernel(const char* x, const int* offsets, const int* experts, int L,
                                   int hidden, int dtype, char* y) {
  const size_t row_bytes = size_t(hidden) * (dtype == 1 ? 4 : 2);
  const int rows = offsets[L];
  for (int g = blockIdx.x; g < rows; g += gridDim.x) {
    int l = 0;
    while (l + 1 < L && offsets[l + 1] <= g) ++l;
    const int e = experts[l];
    const float scale = 1.0f + float(e % 5) / 4.0f, bias = float(e) / 8.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
      const float v = __fadd_rn(__fmul_rn(Load(x + g * row_bytes, i, dtype), scale), bias);
      Store(v, i, dtype, y + g * row_bytes);
    }
  }
}

}  // namespace

cudaError_t LaunchApplyExperts(const void* x, const int* offsets, const int* experts, int L,
                               int max_rows, int hidden, int dtype, void* y, cudaStream_t stream) {
  if (L == 0) return cudaSuccess;
  const int blocks = max_rows < 1 ? 1 : max_rows > 1024 ? 1024 : max_rows;
  ApplyExpertsKernel<<<blocks, 128, 0, stream>>>(static_cast<const char*>(x), offsets, experts, L,
                                                 hidden, dtype, static_cast<char*>(y));
  return cudaGetLastError();
}

}  // namespace m2n::testing

#include "gpu_pattern.h"

namespace m2n::perf {
namespace {

constexpr unsigned long long kStep = 0x9E3779B97F4A7C15ull;  // as pattern.cc

__device__ __forceinline__ unsigned long long Word(unsigned long long seed, unsigned long long j) {
  const unsigned long long x = seed + j * kStep;
  return x ^ (x >> 29);
}

__device__ __forceinline__ int DifferentBytes(unsigned long long a, unsigned long long b) {
  unsigned long long diff = a ^ b;
  int count = 0;
  for (; diff != 0; diff >>= 8) count += (diff & 0xFF) != 0;
  return count;
}

// Word j covers bytes [8j, 8j + 8); a partial last word keeps its low bytes (little-endian).
__global__ void FillKernel(unsigned char* data, size_t bytes, unsigned long long seed) {
  const size_t words = (bytes + 7) / 8;
  const bool aligned = (reinterpret_cast<uintptr_t>(data) & 7) == 0;
  for (size_t j = blockIdx.x * blockDim.x + threadIdx.x; j < words;
       j += size_t{gridDim.x} * blockDim.x) {
    const unsigned long long w = Word(seed, j);
    if (aligned && 8 * j + 8 <= bytes) {
      reinterpret_cast<unsigned long long*>(data)[j] = w;
    } else {
      for (size_t b = 0; b < 8 && 8 * j + b < bytes; ++b)
        data[8 * j + b] = static_cast<unsigned char>(w >> (8 * b));
    }
  }
}

__global__ void CountKernel(const unsigned char* data, size_t bytes, unsigned long long seed,
                            unsigned long long* wrong) {
  const size_t words = (bytes + 7) / 8;
  const bool aligned = (reinterpret_cast<uintptr_t>(data) & 7) == 0;
  unsigned long long mine = 0;
  for (size_t j = blockIdx.x * blockDim.x + threadIdx.x; j < words;
       j += size_t{gridDim.x} * blockDim.x) {
    unsigned long long want = Word(seed, j);
    unsigned long long got = 0;
    if (aligned && 8 * j + 8 <= bytes) {
      got = reinterpret_cast<const unsigned long long*>(data)[j];
    } else {
      size_t b = 0;
      for (; b < 8 && 8 * j + b < bytes; ++b)
        got |= static_cast<unsigned long long>(data[8 * j + b]) << (8 * b);
      if (b < 8) want &= (~0ull) >> (64 - 8 * b);
    }
    if (got != want) mine += DifferentBytes(got, want);
  }
  if (mine != 0) atomicAdd(wrong, mine);
}

unsigned Blocks(size_t bytes) {
  const size_t words = (bytes + 7) / 8;
  const size_t blocks = (words + 255) / 256;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks > 1024 ? 1024 : blocks);
}

}  // namespace

cudaError_t FillPatternAsync(void* data, size_t bytes, uint64_t seed, cudaStream_t stream) {
  if (bytes == 0) return cudaSuccess;
  FillKernel<<<Blocks(bytes), 256, 0, stream>>>(static_cast<unsigned char*>(data), bytes, seed);
  return cudaGetLastError();
}

cudaError_t CountWrongAsync(const void* data, size_t bytes, uint64_t seed,
                            unsigned long long* wrong, cudaStream_t stream) {
  if (bytes == 0) return cudaSuccess;
  CountKernel<<<Blocks(bytes), 256, 0, stream>>>(static_cast<const unsigned char*>(data), bytes,
                                                 seed, wrong);
  return cudaGetLastError();
}

}  // namespace m2n::perf

#include "cuda_test_kernels.h"

namespace m2n::testing {
namespace {

__global__ void Fill(uint8_t* data, size_t n, uint32_t source, uint32_t destination,
                     uint64_t number, const unsigned long long* counter) {
  const uint64_t k = number + (counter != nullptr ? *counter : 0);
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    data[i] = GpuPatternByte(source, destination, k, i);
  }
}

__global__ void Check(const uint8_t* data, const uint32_t* length, size_t expected_length,
                      uint32_t source, uint32_t destination, uint64_t number,
                      const unsigned long long* counter, unsigned long long* wrong) {
  const uint64_t k = number + (counter != nullptr ? *counter : 0);
  unsigned long long mine = 0;
  if (blockIdx.x == 0 && threadIdx.x == 0 && length != nullptr && *length != expected_length)
    mine += 1ull << 40;
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < expected_length;
       i += size_t{gridDim.x} * blockDim.x) {
    mine += data[i] != GpuPatternByte(source, destination, k, i);
  }
  if (mine != 0) atomicAdd(wrong, mine);
}

__global__ void Increment(unsigned long long* counter) { ++*counter; }

__global__ void OccupyUntil(const volatile unsigned* release) {
  while (*release == 0) {
  }
}

unsigned Blocks(size_t n) {
  size_t b = (n + 255) / 256;
  return static_cast<unsigned>(b < 1 ? 1 : b > 512 ? 512 : b);
}

}  // namespace

cudaError_t LaunchFill(void* data, size_t n, uint32_t source, uint32_t destination, uint64_t number,
                       const unsigned long long* counter, cudaStream_t stream) {
  Fill<<<Blocks(n), 256, 0, stream>>>(static_cast<uint8_t*>(data), n, source, destination, number,
                                      counter);
  return cudaGetLastError();
}

cudaError_t LaunchCheck(const void* data, const uint32_t* length, size_t expected_length,
                        uint32_t source, uint32_t destination, uint64_t number,
                        const unsigned long long* counter, unsigned long long* wrong,
                        cudaStream_t stream) {
  Check<<<Blocks(expected_length), 256, 0, stream>>>(static_cast<const uint8_t*>(data), length,
                                                     expected_length, source, destination, number,
                                                     counter, wrong);
  return cudaGetLastError();
}

cudaError_t LaunchOccupyUntil(const volatile unsigned* release, cudaStream_t stream) {
  int device = 0;
  cudaDeviceProp prop{};
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaGetDeviceProperties(&prop, device);
  if (e != cudaSuccess) return e;
  // Blocks of 1024 threads, as many as the SMs hold at once: no thread slot is left.
  const int threads = 1024;
  const int per_sm = prop.maxThreadsPerMultiProcessor / threads;
  const unsigned blocks = static_cast<unsigned>(prop.multiProcessorCount * per_sm);
  OccupyUntil<<<blocks, threads, 0, stream>>>(release);
  return cudaGetLastError();
}

cudaError_t LaunchIncrement(unsigned long long* counter, cudaStream_t stream) {
  Increment<<<1, 1, 0, stream>>>(counter);
  return cudaGetLastError();
}

}  // namespace m2n::testing

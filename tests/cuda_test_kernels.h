// Producer and consumer kernels for the GPU tests (cuda_ipc_gpu_test.cc): a kernel writes the
// payload before a stream-ordered send, another checks it after a stream-ordered receive.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define M2N_HOST_DEVICE __host__ __device__
#else
#define M2N_HOST_DEVICE
#endif

namespace m2n::testing {

// Byte `offset` of message `number` from `source` to `destination`.
M2N_HOST_DEVICE inline uint8_t GpuPatternByte(uint32_t source, uint32_t destination,
                                              uint64_t number, uint64_t offset) {
  uint64_t x = (uint64_t{source} << 48) ^ (uint64_t{destination} << 32) ^
               (number * 0x9E3779B97F4A7C15ull) ^ ((offset / 8) * 0xBF58476D1CE4E5B9ull);
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 29;
  return static_cast<uint8_t>(x >> ((offset % 8) * 8));
}

// Writes the pattern of message (number + *counter, when counter is not null) into data[0, n).
cudaError_t LaunchFill(void* data, size_t n, uint32_t source, uint32_t destination, uint64_t number,
                       const unsigned long long* counter, cudaStream_t stream);
// Checks data against the pattern of message (number + *counter): adds the wrong bytes to *wrong,
// and 1 << 40 if *length (the message's device-side length) differs from `expected_length`.
cudaError_t LaunchCheck(const void* data, const uint32_t* length, size_t expected_length,
                        uint32_t source, uint32_t destination, uint64_t number,
                        const unsigned long long* counter, unsigned long long* wrong,
                        cudaStream_t stream);
// ++*counter on the stream (graph replays count themselves).
cudaError_t LaunchIncrement(unsigned long long* counter, cudaStream_t stream);
// Fills every SM with threads that spin until *release (host-mapped memory) is not 0, so that no
// other kernel runs meanwhile (a copy proxy that must not progress, in a test).
cudaError_t LaunchOccupyUntil(const volatile unsigned* release, cudaStream_t stream);

}  // namespace m2n::testing

// The producer and consumer kernels of m2n_gpu_latency (gpu_latency.cc): the time from a producer
// kernel's end to the consumer kernel's start, on the GPU's clock (%globaltimer, ns).
//
// A message of `length` bytes carries its payload (a pattern of (iteration, offset)) and, in its
// last 8 x blocks bytes, one stamp per producer block: the globaltimer read by that block after
// its payload stores, just before it publishes (device API) or ends (buffer producers). The
// consumer reads the globaltimer once its wait is over (device API) or as it starts (after a
// stream-ordered receive or ncclRecv), and stores consumer time - the latest stamp into
// latency[iteration]; bytes that differ from the pattern go to *wrong.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "m2n/device.h"

namespace m2n::perf {

struct LatencyMessage {
  size_t length = 0;  // bytes, at least 8 x blocks
  int blocks = 1;  // producer blocks
  uint64_t iteration = 0;
  long long* latency = nullptr;  // device: ns per iteration
  unsigned long long* wrong = nullptr;  // device
};

// Blocks that write a message of `bytes` (one per 64 KB, 1 to 16).
int LatencyBlocks(size_t bytes);

// Device API: the producer writes straight into the peer's slot and publishes it; the consumer
// waits, measures, checks and releases (peer index 0 on both sides).
cudaError_t LaunchDeviceProducer(const DeviceGroup& g, const LatencyMessage& m, cudaStream_t s);
cudaError_t LaunchDeviceConsumer(const DeviceGroup& g, const LatencyMessage& m, cudaStream_t s);
// Stream-ordered calls and NCCL: the producer writes a local buffer, the consumer reads one.
cudaError_t LaunchBufferProducer(void* data, const LatencyMessage& m, cudaStream_t s);
cudaError_t LaunchBufferConsumer(const void* data, const LatencyMessage& m, cudaStream_t s);

}  // namespace m2n::perf

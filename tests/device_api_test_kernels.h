// User kernels of the device-side API tests (device_api_gpu_test.cc), written as a user would
// write them against m2n/device.cuh: a sender kernel writes each message's pattern straight into
// the peer's slot and publishes it, a receiver kernel waits, checks length and bytes, and releases.
#pragma once

#include <cuda_runtime.h>

#include "m2n/device.h"

namespace m2n::testing {

// One launch of the sender or receiver kernel. Message n of a pair (n counts per pair from 0) has
// length sizes[n % num_sizes] and the pattern GpuPatternByte(source, destination, n, offset).
struct DeviceTrial {
  DeviceGroup group;
  int rank = -1;
  unsigned long long first_number = 0;  // n of this launch's first message to / from each peer
  // Non-null: first_number + *replay * count (graph replays count themselves).
  const unsigned long long* replay = nullptr;
  int count = 1;  // messages per peer in this launch
  // Sender, block scope: blocks that write one message together (then count must be 1).
  int blocks_per_message = 1;
  bool warp = false;  // warp scope: one warp per peer, in one block
  unsigned long long sizes[8] = {};
  int num_sizes = 1;
  unsigned long long* wrong = nullptr;  // receiver: wrong bytes, + (1 << 40) per wrong length
  unsigned long long* gave_up = nullptr;  // waits that returned ok = false
};

// Sends `count` messages to every peer (block p or warp p: peers[p]).
cudaError_t LaunchDeviceSends(const DeviceTrial& trial, cudaStream_t stream);
// Receives, checks and releases `count` messages from every peer.
cudaError_t LaunchDeviceReceives(const DeviceTrial& trial, cudaStream_t stream);
// ++*word on the stream.
cudaError_t LaunchAddOne(unsigned long long* word, cudaStream_t stream);

}  // namespace m2n::testing

// What the GPU tests (cuda_ipc_gpu_test.cc, verbs_gpu_test.cc) share: the skip-without-hardware
// probe, device buffers, per-rank options with device slots, and the stream-ordered payload and
// credit-pressure trials that both transports run.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "harness.h"
#include "m2n/m2n.h"

#define CUDA_CHILD_OK(call)                                                    \
  do {                                                                         \
    cudaError_t e_ = (call);                                                   \
    CHILD_CHECK(e_ == cudaSuccess, "%s -> %s", #call, cudaGetErrorString(e_)); \
  } while (0)

// Skips the test, saying why, when `why` (the missing hardware) is not empty.
#define SKIP_IF_MISSING(why)                                           \
  do {                                                                 \
    if (std::string why_ = (why); !why_.empty()) GTEST_SKIP() << why_; \
  } while (0)

namespace m2n::testing {

// Runs `question` in a child process and returns what it answered: a parent that started CUDA
// could not fork ranks that use it.
std::string AskInChild(const std::function<std::string()>& question);

// Why there is no CUDA device here ("" when there is one). Starts CUDA: ask it in AskInChild.
std::string NoCudaDevice();

// Selects rank's GPU (rank mod the GPUs) and makes options for a group over `transport` with
// device slots.
Options DeviceSlotOptions(const char* transport, int m, int n, int rank, int port,
                          size_t slot_bytes, int depth);

// Device memory of `bytes`, freed at scope end.
struct DeviceBuffer {
  explicit DeviceBuffer(size_t bytes) { cudaMalloc(&data, bytes); }
  ~DeviceBuffer() { cudaFree(data); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data = nullptr;
  std::byte* bytes() const { return static_cast<std::byte*>(data); }
};

// One rank of the stream-ordered payload trial on group `g`: `rounds` rounds of every size in
// `sizes` (the last the largest), dispatch and combine, a producer kernel feeding every send and a
// consumer kernel checking every receive. `check_fields`: also checks each received message's
// host-side fields (peer, length 0, a device-side length). A rank's exit code (0: passed).
int StreamPayloadRank(Group& g, int rank, const std::vector<size_t>& sizes, int rounds,
                      bool check_fields);

// One rank of the credit-pressure trial on group `g` (2 x 2, depth 2): `messages` messages per pair
// of 1 B to `max_bytes`, the senders enqueuing all at once, the receivers starting 300 ms late.
// `check_slots`: also checks that message k lands in slot k % 2. A rank's exit code.
int CreditPressureRank(Group& g, int rank, int messages, size_t max_bytes, bool check_slots);

}  // namespace m2n::testing

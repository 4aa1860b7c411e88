// The device side of the stream-ordered operations: one kernel launch per SendOnStream /
// WaitOnStream / ReleaseOnStream call. See README.md ("Stream-ordered path") for the protocol.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace m2n::transport::cuda_ipc {

// Entries one launch takes; a longer call launches again.
inline constexpr int kMaxStreamBatch = 32;

// Signal words, one 64-bit word per (peer rank, kind, slot) in each rank's signal block (device
// memory, exported by CUDA IPC). kArrival and kReleased are written by the peer; the rest are ours.
enum SignalKind : int {
  kArrival = 0,      // (generation << 32) | length of the last message the peer put in our slot
  kReleased = 1,     // the generation of our last message the peer released in its slot
  kGenSent = 2,      // generation of our last message into the peer's slot
  kGenReceived = 3,  // generation of the last message we waited for in our slot
  kArriveCount = 4,  // blocks of the message being sent that have finished (reset by the last)
  kNumSignalKinds = 5,
};

// Why a device wait gave up, in the error word: (reason << 56) | (peer << 24) | slot.
enum WaitReason : unsigned long long { kCreditWait = 1, kArrivalWait = 2 };

struct SendTask {
  const std::byte* src;
  std::byte* dst;                       // in the peer's slot, mapped here
  unsigned long long length;
  unsigned long long* remote_arrival;   // the peer's kArrival word of (us, slot)
  const unsigned long long* released;   // our kReleased word of (peer, slot)
  unsigned long long* generation;       // our kGenSent word of (peer, slot)
  unsigned long long* arrived_blocks;   // our kArriveCount word of (peer, slot)
  int first_block;
  int num_blocks;
  int peer;
  int slot;
};
struct SendBatch {
  SendTask tasks[kMaxStreamBatch];
  int count;
  int total_blocks;
};

struct WaitTask {
  const unsigned long long* arrival;  // our kArrival word of (peer, slot)
  unsigned long long* generation;     // our kGenReceived word of (peer, slot)
  int peer;
  int slot;
};
struct WaitBatch {
  WaitTask tasks[kMaxStreamBatch];
  int count;
};

struct ReleaseTask {
  const unsigned long long* generation;  // our kGenReceived word of (peer, slot)
  unsigned long long* remote_released;   // the peer's kReleased word of (us, slot)
};
struct ReleaseBatch {
  ReleaseTask tasks[kMaxStreamBatch];
  int count;
};

// Where a device wait reports that it gave up (host-mapped memory), and after how long.
struct DeviceDeadline {
  unsigned long long* error_word;
  unsigned long long timeout_ns;
};

inline constexpr int kSendThreads = 512;

cudaError_t LaunchSend(const SendBatch& batch, DeviceDeadline deadline, cudaStream_t stream);
cudaError_t LaunchWait(const WaitBatch& batch, DeviceDeadline deadline, cudaStream_t stream);
cudaError_t LaunchRelease(const ReleaseBatch& batch, cudaStream_t stream);

}  // namespace m2n::transport::cuda_ipc

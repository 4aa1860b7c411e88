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
  kArrival = 0,  // (generation << 32) | length of the last message the peer put in our slot
  kReleased = 1,  // the generation of our last message the peer released in its slot
  kGenSent = 2,  // generation of our last message into the peer's slot
  kGenReceived = 3,  // generation of the last message we waited for in our slot
  kArriveCount = 4,  // blocks of the message being sent that have finished (reset by the last)
  kNumSignalKinds = 5,
};

// Why a device wait gave up, in the error word: (reason << 56) | (peer << 24) | slot.
enum WaitReason : unsigned long long { kCreditWait = 1, kArrivalWait = 2 };

struct SendTask {
  const std::byte* src;
  std::byte* dst;  // in the peer's slot, mapped here
  unsigned long long length;
  unsigned long long* remote_arrival;  // the peer's kArrival word of (us, slot)
  const unsigned long long* released;  // our kReleased word of (peer, slot)
  unsigned long long* generation;  // our kGenSent word of (peer, slot)
  unsigned long long* arrived_blocks;  // our kArriveCount word of (peer, slot)
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
  unsigned long long* generation;  // our kGenReceived word of (peer, slot)
  int peer;
  int slot;
};
struct WaitBatch {
  WaitTask tasks[kMaxStreamBatch];
  int count;
};

struct ReleaseTask {
  const unsigned long long* generation;  // our kGenReceived word of (peer, slot)
  unsigned long long* remote_released;  // the peer's kReleased word of (us, slot)
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

// ---------------------------------------------------------------------------------------------
// The copy proxy (M2N_CUDA_IPC_PROXY=1, proxy.h): a kernel that stays resident and serves the
// host-driven writes of device memory, so that no launch and no stream sit between a host's Post
// and the payload landing. Descriptors are a ring in host memory; each of their 8-byte words is
// (sequence << 32) | 32 bits of a field, with sequence = (index + 1) mod 2^32, so a word is valid
// on its own (an 8-byte store is atomic) and the kernel needs one round of reads over PCIe.
enum ProxyField : int {
  kProxySrcLo,
  kProxySrcHi,  // device address to copy from
  kProxyDstLo,
  kProxyDstHi,  // device address to copy to (a peer's slot, mapped here)
  kProxyLength,  // bytes
  kProxyBlocks,  // copy blocks that share it, 1 .. the copy blocks
  kProxyFirstBlock,  // the first of them (they wrap around), 0 .. copy blocks - 1
  kProxyEntryLo,
  kProxyEntryHi,  // device address of the peer's immediate-ring sequence word
  kProxyValueLo,
  kProxyValueHi,  // the sequence value to store there once the payload is in place
  kNumProxyFields,
};
inline constexpr int kProxyWords = 16;  // words per descriptor (the fields, padded)
inline constexpr int kProxyThreads = 512;
inline constexpr unsigned long long kProxyEndMark = 1ull << 63;  // in a mirror slot's end word

struct ProxyRing {
  const unsigned long long* descriptors;  // host memory: capacity x kProxyWords
  unsigned long long* done;  // host memory: done[i % capacity] = i + 1 once i is complete
  const unsigned long long* stop;  // host memory: non-zero ends the kernel
  unsigned long long* ended;  // host memory: set to 1 once every block has ended
  const unsigned long long* posted;  // host memory: descriptors written; null: poll the ring itself
  unsigned long long* mirror;  // device: capacity x kProxyWords, the dispatcher -> copy blocks
  unsigned long long* counts;  // device: capacity counters, then one of ended blocks
  unsigned long long first;  // index of the first descriptor this launch serves
  unsigned long long idle_ns;  // ends after this long without a descriptor
  unsigned capacity;  // a power of two
};

// Starts the proxy on `stream`: a dispatcher block and `copy_blocks` copy blocks; `mirror` and
// `counts` must be zero.
cudaError_t LaunchProxy(const ProxyRing& ring, int copy_blocks, cudaStream_t stream);

}  // namespace m2n::transport::cuda_ipc

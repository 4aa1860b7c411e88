// m2n's device-side API: a user kernel sends and receives a Group's messages itself, with no host
// call and no launch of m2n's between the producer's stores and the consumer's loads.
//
//   sender kernel (a block per peer, say)           receiver kernel
//   SendSlot s = BeginSendBlock(g, p)               ReceivedMessage m = WaitReceiveBlock(g, p)
//     (waits for the slot's credit)                   (waits for the message's arrival word)
//   ... the block stores its rows into s.data ...   ... the block reads m.data[0, m.length) ...
//   EndSendBlock(g, s, length)                      __syncthreads(); if (threadIdx.x == 0)
//     (publishes (generation, length))                Release(g, m)   (the ACK: the slot goes back)
//
// `g` is the group's DeviceGroup (include/m2n/device.h, Group::device_group()), passed to the
// kernel by value; `p` is the index of the peer in Group::peers(). The same calls serve two kinds
// of peer (m2n/device.h):
//   direct (cuda_ipc): s.data is the peer's slot itself, mapped into this process: the producer's
//     stores land in the receiver's memory over NVLink / PCIe, with no staging buffer and no copy;
//     EndSend release-stores the peer's arrival word, Release the peer's released word.
//   proxied (verbs): s.data is a local staging slot in GPU memory registered with the NIC; EndSend
//     puts a send descriptor (peer, slot, generation, length) into the group's ring in host memory
//     and the transport's proxy thread posts the RDMA write-with-immediate from the staging slot
//     into the peer's slot; the proxy at the receiver stores the arrival word once the write is
//     there, and Release puts a release descriptor that its proxy turns into the ACK, which the
//     sender's proxy stores into the released word the credit wait polls. One more bounded wait:
//     for a free entry of the ring (reason 3), where the proxy is behind.
//
// Ordering: EndSend* fences the block's stores at system scope before the release store of the
// arrival word; WaitReceive* loads that word with acquire order and the block meets at a barrier
// before any of its threads reads the payload. Messages of a pair are published in order (the
// k-th message goes into slot k mod slot_depth and may be published only after the (k-1)-th).
//
// Bounded waits: every wait spins for at most DeviceGroup::timeout_ns (the GPU's globaltimer). A
// wait that gives up records (reason, peer, slot) in the group's error word and returns ok = false;
// once any wait of the group gave up, every later wait that would have to spin returns ok = false
// at once. The group's next host call returns kDeadlineExceeded naming the peer and slot (as for
// the stream-ordered calls).
// A caller that gets ok = false writes nothing and publishes nothing for that message.
//
// Scopes: *Block functions are called by every thread of a block (they contain __syncthreads),
// *Warp functions by every lane of a warp (__syncwarp); the values they return are the same in
// every thread. A message may be written by several blocks: each calls BeginSendBlock for it (they
// get the same slot) and EndSendBlock(g, s, length, num_blocks); the last of them to finish
// publishes. Such a message must be the only one a launch sends to that peer: a block that went on
// to the next message before the last block published would be handed the same slot again.
// Release is called by one thread, once per message, after every read of it (a later kernel on the
// stream, or the block after a barrier), in the order the messages were received.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "m2n/device.h"

namespace m2n::device {

struct SendSlot {
  std::byte* data = nullptr;  // the peer's slot: write the payload here (at most slot_bytes)
  int peer_index = -1;
  int slot = -1;
  unsigned long long generation = 0;  // of the message about to go in
  bool ok = false;  // false: the credit wait gave up; write nothing
};

struct ReceivedMessage {
  const std::byte* data = nullptr;  // this rank's slot holding the message
  unsigned length = 0;  // bytes
  int peer_index = -1;
  int slot = -1;
  unsigned long long generation = 0;
  bool ok = false;  // false: the arrival wait gave up; data is not valid
};

namespace detail {

enum : unsigned long long { kCreditWait = 1, kArrivalWait = 2, kRingWait = 3 };

__device__ __forceinline__ unsigned long long LoadAcquire(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void StoreRelease(unsigned long long* p, unsigned long long v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ unsigned long long GlobalTimerNs() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ bool GaveUp(const DeviceGroup& g) {
  return *reinterpret_cast<volatile unsigned long long*>(g.error_word) != 0;
}

// Spins until *word >= want (on its top 32 bits when `high`); false once the group's deadline
// passed or another wait of the group gave up.
__device__ inline bool WaitAtLeast(const DeviceGroup& g, const unsigned long long* word,
                                   unsigned long long want, bool high, unsigned long long reason,
                                   int peer, int slot) {
  const auto done = [&] {
    const unsigned long long v = LoadAcquire(word);
    return (high ? v >> 32 : v) >= want;
  };
  // Done first: the error word is host memory, a PCIe read that the fast path should not pay.
  if (done()) return true;
  if (GaveUp(g)) return false;
  const unsigned long long start = GlobalTimerNs();
  for (unsigned spins = 1;; ++spins) {
    if (done()) return true;
    if ((spins & 255) == 0) {
      if (GaveUp(g)) return false;
      if (GlobalTimerNs() - start > g.timeout_ns) {
        const unsigned long long code = (reason << 56) |
                                        (static_cast<unsigned long long>(peer) << 24) |
                                        static_cast<unsigned long long>(slot);
        atomicCAS(g.error_word, 0ull, code);
        __threadfence_system();
        return false;
      }
    }
  }
}

// One thread, proxied peers: hands (kind, peer index, slot, message) to the proxy through the
// group's ring. False when the wait for a free entry gave up (nothing was handed over then).
__device__ inline bool PutDescriptor(const DeviceGroup& g, unsigned long long kind, int peer_index,
                                     int slot, unsigned long long message) {
  const DeviceRing& r = g.ring;
  const unsigned long long ticket = atomicAdd(r.claimed, 1ull);
  // The entry is free once the proxy took the one a lap before (ticket - capacity).
  if (ticket >= r.capacity && !WaitAtLeast(g, r.consumed, ticket + 1 - r.capacity, false, kRingWait,
                                           g.peers[peer_index].rank, slot))
    return false;
  DeviceDescriptor* e = r.entries + ticket % r.capacity;
  e->target = (kind << 56) | (static_cast<unsigned long long>(peer_index) << 24) |
              static_cast<unsigned long long>(slot);
  e->message = message;
  // The payload's stores (staging slot) and the two words above before the sequence word.
  __threadfence_system();
  StoreRelease(&e->sequence, ticket + 1);
  return true;
}

// One thread: the next slot of the pair and its credit.
__device__ inline SendSlot BeginSendOne(const DeviceGroup& g, int peer_index) {
  const DevicePeer& p = g.peers[peer_index];
  SendSlot s;
  s.peer_index = peer_index;
  const unsigned long long index = *reinterpret_cast<volatile unsigned long long*>(p.cursor);
  s.slot = static_cast<int>(index % static_cast<unsigned long long>(g.slot_depth));
  s.generation = *reinterpret_cast<volatile unsigned long long*>(p.generation_sent + s.slot) + 1;
  std::byte* slots = p.remote_slots != nullptr ? p.remote_slots : p.staging_slots;
  s.data = slots + static_cast<unsigned long long>(s.slot) * g.slot_bytes;
  // The credit: the peer released the slot's previous message (generation - 1).
  s.ok = WaitAtLeast(g, p.released + s.slot, s.generation - 1, false, kCreditWait, p.rank, s.slot);
  return s;
}

// One thread, after the writers' stores are ordered before it (a barrier): counts one writer done;
// the last publishes the message and advances the send cursor.
__device__ inline void EndSendOne(const DeviceGroup& g, const SendSlot& s, unsigned length,
                                  int num_blocks) {
  const DevicePeer& p = g.peers[s.peer_index];
  __threadfence_system();
  if (num_blocks > 1) {
    unsigned long long* count = p.arrived_blocks + s.slot;
    if (atomicAdd(count, 1ull) != static_cast<unsigned long long>(num_blocks - 1)) return;
    *count = 0;
    __threadfence_system();
  }
  const unsigned long long arrival = (s.generation << 32) | static_cast<unsigned long long>(length);
  if (p.remote_slots == nullptr) {
    // Proxied: if the ring had no room, the message is not sent and the cursor stays (the group
    // reports the give-up; a caller that goes on would be handed this slot again).
    if (!PutDescriptor(g, kDeviceSend, s.peer_index, s.slot, arrival)) return;
    p.generation_sent[s.slot] = s.generation;
    *p.cursor += 1;
    return;
  }
  p.generation_sent[s.slot] = s.generation;
  *p.cursor += 1;
  StoreRelease(p.remote_arrival + s.slot, arrival);
}

__device__ inline ReceivedMessage WaitReceiveOne(const DeviceGroup& g, int peer_index) {
  const DevicePeer& p = g.peers[peer_index];
  ReceivedMessage m;
  m.peer_index = peer_index;
  const unsigned long long index = *reinterpret_cast<volatile unsigned long long*>(p.cursor + 1);
  m.slot = static_cast<int>(index % static_cast<unsigned long long>(g.slot_depth));
  m.generation =
      *reinterpret_cast<volatile unsigned long long*>(p.generation_received + m.slot) + 1;
  m.data = p.local_slots + static_cast<unsigned long long>(m.slot) * g.slot_bytes;
  m.ok = WaitAtLeast(g, p.arrival + m.slot, m.generation, true, kArrivalWait, p.rank, m.slot);
  if (m.ok) m.length = static_cast<unsigned>(LoadAcquire(p.arrival + m.slot) & 0xffffffffull);
  return m;
}

}  // namespace detail

// ---- Block scope: every thread of the block calls these ----

// Waits for the credit of the next slot to peers[peer_index] and returns it.
__device__ inline SendSlot BeginSendBlock(const DeviceGroup& g, int peer_index) {
  // Raw storage: a __shared__ variable may not have a constructor (SendSlot's initializers).
  __shared__ alignas(SendSlot) unsigned char storage[sizeof(SendSlot)];
  SendSlot& shared = *reinterpret_cast<SendSlot*>(storage);
  __syncthreads();  // `shared` may still be read from an earlier call
  if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0)
    shared = detail::BeginSendOne(g, peer_index);
  __syncthreads();
  return shared;
}

// After the block's stores into s.data: publishes the message (length bytes). With num_blocks > 1,
// every block that wrote a part of it calls this; the last publishes.
__device__ inline void EndSendBlock(const DeviceGroup& g, const SendSlot& s, unsigned length,
                                    int num_blocks = 1) {
  __syncthreads();
  if (s.ok && threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0)
    detail::EndSendOne(g, s, length, num_blocks);
}

// Waits for the next message from peers[peer_index]; its payload is readable by the whole block.
__device__ inline ReceivedMessage WaitReceiveBlock(const DeviceGroup& g, int peer_index) {
  __shared__ alignas(ReceivedMessage) unsigned char storage[sizeof(ReceivedMessage)];
  ReceivedMessage& shared = *reinterpret_cast<ReceivedMessage*>(storage);
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0)
    shared = detail::WaitReceiveOne(g, peer_index);
  __syncthreads();
  return shared;
}

// ---- Warp scope: every lane of the warp calls these (blockDim.x a multiple of 32) ----

__device__ inline SendSlot BeginSendWarp(const DeviceGroup& g, int peer_index) {
  SendSlot s;
  if ((threadIdx.x & 31) == 0) s = detail::BeginSendOne(g, peer_index);
  __syncwarp();  // orders every lane's stores into the slot after lane 0 saw the credit
  s.data = reinterpret_cast<std::byte*>(
      __shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(s.data), 0));
  s.peer_index = peer_index;
  s.slot = __shfl_sync(0xffffffffu, s.slot, 0);
  s.generation = __shfl_sync(0xffffffffu, s.generation, 0);
  s.ok = __shfl_sync(0xffffffffu, static_cast<int>(s.ok), 0) != 0;
  return s;
}

__device__ inline void EndSendWarp(const DeviceGroup& g, const SendSlot& s, unsigned length) {
  __syncwarp();
  if (s.ok && (threadIdx.x & 31) == 0) detail::EndSendOne(g, s, length, 1);
}

__device__ inline ReceivedMessage WaitReceiveWarp(const DeviceGroup& g, int peer_index) {
  ReceivedMessage m;
  if ((threadIdx.x & 31) == 0) m = detail::WaitReceiveOne(g, peer_index);
  __syncwarp();  // every lane's loads of the payload after lane 0's acquire (a shuffle won't)
  m.data = reinterpret_cast<const std::byte*>(
      __shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(m.data), 0));
  m.length = __shfl_sync(0xffffffffu, m.length, 0);
  m.peer_index = peer_index;
  m.slot = __shfl_sync(0xffffffffu, m.slot, 0);
  m.generation = __shfl_sync(0xffffffffu, m.generation, 0);
  m.ok = __shfl_sync(0xffffffffu, static_cast<int>(m.ok), 0) != 0;
  return m;
}

// ---- One thread ----

// Hands the message's slot back to its sender (the ACK) and advances the receive cursor. Once per
// message, after every read of it, in receive order.
__device__ inline void Release(const DeviceGroup& g, const ReceivedMessage& m) {
  if (!m.ok) return;
  const DevicePeer& p = g.peers[m.peer_index];
  if (p.remote_released == nullptr) {
    // Proxied: the proxy sends the ACK (PutDescriptor fences the slot's reads before it).
    if (!detail::PutDescriptor(g, kDeviceRelease, m.peer_index, m.slot, m.generation << 32)) return;
    p.generation_received[m.slot] = m.generation;
    p.cursor[1] += 1;
    return;
  }
  p.generation_received[m.slot] = m.generation;
  p.cursor[1] += 1;
  __threadfence_system();  // every read of the slot is done before the sender may overwrite it
  detail::StoreRelease(p.remote_released + m.slot, m.generation);
}

}  // namespace m2n::device

// m2n::DeviceGroup: what a GPU kernel needs to send and receive a Group's messages itself
// (include/m2n/device.cuh has the device functions that use it). CUDA-free, so that host code can
// hold and pass one; every pointer in it is a device address.
//
// A DeviceGroup is a trivially copyable value: pass it to a kernel by value. It is obtained once
// from a group whose slots are in device memory and whose transport serves the device API
// (Group::device_group()), and stays valid until the group is closed.
//
// Two kinds of peer. A direct peer (cuda_ipc): its receive slots and signal words are mapped here,
// and the kernel stores into them itself. A proxied peer (verbs; DevicePeer::remote_slots null):
// the kernel writes the message into a local staging slot in registered GPU memory and hands a
// DeviceDescriptor to the transport's proxy thread through the group's DeviceRing (host memory the
// GPU maps); the proxy posts the RDMA write-with-immediate from the staging slot into the peer's
// slot, stores the arrival word at the receiver once the write completed there, and turns a
// release descriptor into the ACK that raises the sender's released word.
//
// For both, the protocol is the stream-ordered path's (include/m2n/group.h): the k-th message of a
// pair goes into slot k mod slot_depth, a slot's arrival word holds (generation << 32) | length,
// and its released word the generation the receiver last handed back. The next send / receive
// index of each pair is a counter in device memory, advanced by the device functions, so that no
// host call is needed per message. A group's messages go either through the device functions or
// through the stream-ordered calls or the host-driven calls: one path per group.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace m2n {

// One peer's words and slots, as this rank's GPU sees them. Each word array has slot_depth entries.
struct DevicePeer {
  int rank = -1;  // the peer's global rank
  // Sending to the peer.
  std::byte* remote_slots = nullptr;  // the peer's receive slots for this rank, mapped here; null:
                                      // a proxied peer (staging_slots and the DeviceRing instead)
  std::byte* staging_slots = nullptr;  // a proxied peer's local staging slots (slot_depth)
  unsigned long long* remote_arrival = nullptr;  // the peer's arrival words for this rank (null:
                                                 // proxied)
  const unsigned long long* released = nullptr;  // the generation the peer released, per slot
  unsigned long long* generation_sent = nullptr;  // the generation last sent, per slot
  unsigned long long* arrived_blocks = nullptr;  // blocks done with the message being sent
  // Receiving from the peer.
  const std::byte* local_slots = nullptr;  // this rank's receive slots for the peer
  const unsigned long long* arrival = nullptr;  // (generation << 32) | length, per slot
  unsigned long long* generation_received = nullptr;  // the generation last received, per slot
  unsigned long long* remote_released = nullptr;  // the peer's released words for this rank
                                                  // (null: proxied, Release puts a descriptor)
  // cursor[0]: the index of the next message to send to the peer; cursor[1]: of the next to
  // receive from it (the slot is index mod slot_depth).
  unsigned long long* cursor = nullptr;
};

// One message or release handed to a proxy (a proxied peer's). The kernel stores target and
// message, then sequence with a release store: the proxy takes the entry once sequence is the
// ticket it expects plus one, so an entry is never read half-written, nor one lap stale.
struct DeviceDescriptor {
  unsigned long long sequence = 0;  // ticket + 1, stored last
  unsigned long long target = 0;  // (kind << 56) | (peer index << 24) | slot
  unsigned long long message = 0;  // (generation << 32) | length (length 0 for a release)
  unsigned long long unused = 0;  // pads an entry to 32 bytes
};
enum DeviceDescriptorKind : unsigned long long { kDeviceSend = 1, kDeviceRelease = 2 };

// The descriptor ring of a group with proxied peers (entries null otherwise). A kernel claims a
// ticket t (atomicAdd on `claimed`), waits until the proxy has taken ticket t - capacity
// (`consumed` > t - capacity: the entry is free), and fills entry t mod capacity.
struct DeviceRing {
  DeviceDescriptor* entries = nullptr;  // host memory mapped for the GPU, capacity entries
  unsigned long long* claimed = nullptr;  // device memory: tickets handed out
  const unsigned long long* consumed = nullptr;  // host memory: entries the proxy has taken
  unsigned long long capacity = 0;
};

struct DeviceGroup {
  const DevicePeer* peers = nullptr;  // device memory: num_peers, in the order of Group::peers()
  int num_peers = 0;
  int rank = -1;  // this rank
  int slot_depth = 0;
  unsigned long long slot_bytes = 0;  // bytes between two slots of a peer; the largest message
  // Where a device wait that gives up reports (reason << 56) | (peer << 24) | slot: the group's
  // next call returns kDeadlineExceeded naming them. Reasons: 1 credit, 2 arrival, 3 room in the
  // proxy's ring.
  unsigned long long* error_word = nullptr;
  unsigned long long timeout_ns = 0;  // how long one device wait may spin (globaltimer)
  DeviceRing ring;  // for proxied peers
};
static_assert(std::is_trivially_copyable_v<DeviceGroup>);
static_assert(std::is_trivially_copyable_v<DevicePeer>);
static_assert(sizeof(DeviceDescriptor) == 32);

}  // namespace m2n

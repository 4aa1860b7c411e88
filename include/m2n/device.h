// m2n::DeviceGroup: what a GPU kernel needs to send and receive a Group's messages itself
// (include/m2n/device.cuh has the device functions that use it). CUDA-free, so that host code can
// hold and pass one; every pointer in it is a device address.
//
// A DeviceGroup is a trivially copyable value: pass it to a kernel by value. It is obtained once
// from a group whose transport keeps its credits and arrivals in device memory and whose slots are
// in device memory (Group::device_group(); cuda_ipc today), and stays valid until the group is
// closed. Its protocol is the stream-ordered path's (include/m2n/group.h): the k-th message of a
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
  std::byte* remote_slots = nullptr;  // the peer's receive slots for this rank, mapped here
  unsigned long long* remote_arrival = nullptr;  // the peer's arrival words for this rank
  const unsigned long long* released = nullptr;  // the generation the peer released, per slot
  unsigned long long* generation_sent = nullptr;  // the generation last sent, per slot
  unsigned long long* arrived_blocks = nullptr;  // blocks done with the message being sent
  // Receiving from the peer.
  const std::byte* local_slots = nullptr;  // this rank's receive slots for the peer
  const unsigned long long* arrival = nullptr;  // (generation << 32) | length, per slot
  unsigned long long* generation_received = nullptr;  // the generation last received, per slot
  unsigned long long* remote_released = nullptr;  // the peer's released words for this rank
  // cursor[0]: the index of the next message to send to the peer; cursor[1]: of the next to
  // receive from it (the slot is index mod slot_depth).
  unsigned long long* cursor = nullptr;
};

struct DeviceGroup {
  const DevicePeer* peers = nullptr;  // device memory: num_peers, in the order of Group::peers()
  int num_peers = 0;
  int rank = -1;  // this rank
  int slot_depth = 0;
  unsigned long long slot_bytes = 0;  // bytes between two slots of a peer; the largest message
  // Where a device wait that gives up reports (reason << 56) | (peer << 24) | slot: the group's
  // next call returns kDeadlineExceeded naming them. Reasons: 1 credit, 2 arrival.
  unsigned long long* error_word = nullptr;
  unsigned long long timeout_ns = 0;  // how long one device wait may spin (globaltimer)
};
static_assert(std::is_trivially_copyable_v<DeviceGroup>);
static_assert(std::is_trivially_copyable_v<DevicePeer>);

}  // namespace m2n

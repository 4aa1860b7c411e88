// The stream proxy's part in the device-side API (m2n/device.h, proxied peers): it takes the send
// and release descriptors that kernels put into the ring, in ring order, checks each against the
// protocol, and posts the write-with-imm from the peer's staging slot or the ACK. stream.cc keeps
// the words the kernels poll (released, arrival) as completions come in. The ring's layout and the
// kernel's side are in m2n/device.h and m2n/device.cuh; stream.h says how the two sides meet.
#include <atomic>
#include <string>

#include "transports/verbs/stream.h"

namespace m2n::transport::verbs {
namespace {

// Descriptors taken per round at most, so that completions and ACKs are not starved.
constexpr int kRingBatch = 32;

unsigned long long LoadWord(const unsigned long long& word) {
  return std::atomic_ref<const unsigned long long>(word).load(std::memory_order_acquire);
}

}  // namespace

Status DeviceWaitGaveUp(uint64_t code, std::chrono::milliseconds timeout) {
  const uint64_t reason = code >> 56;
  const std::string peer = "peer rank " + std::to_string((code >> 24) & 0xffffffff);
  const std::string slot = "slot " + std::to_string(code & 0xffffff);
  const std::string what = reason == 1 ? "send waited for " + peer + " to release " + slot
                           : reason == 2
                               ? "receive waited for a message from " + peer + " in " + slot
                               : "send or release to " + peer + " (" + slot +
                                     ") waited for room in the proxy's descriptor ring";
  return DeadlineExceededError("verbs: a device-side (m2n/device.cuh) " + what + " longer than " +
                               std::to_string(timeout.count()) +
                               " ms on the GPU and gave up; work after it saw no valid data");
}

void StreamProxy::StoreDeviceWord(unsigned long long* words, size_t cell, uint64_t value) {
  if (words == nullptr) return;  // no device-side API on this proxy
  std::atomic_ref<unsigned long long>(words[cell]).store(value, std::memory_order_release);
}

bool StreamProxy::TakeDeviceDescriptors() {
  const DeviceLink& link = settings_.device;
  if (link.ring == nullptr) return false;
  int taken = 0;
  for (; taken < kRingBatch; ++taken) {
    DeviceDescriptor& e = link.ring[ring_taken_ % link.ring_capacity];
    // The kernel stores sequence last (release): once it is ours, so are target and message.
    if (LoadWord(e.sequence) != ring_taken_ + 1) break;
    const uint64_t target = LoadWord(e.target);
    const uint64_t message = LoadWord(e.message);
    const uint64_t kind = target >> 56;
    const uint64_t peer_index = (target >> 24) & 0xffffffff;
    const uint64_t slot = target & 0xffffff;
    const std::string where = "device ring entry " + std::to_string(ring_taken_);
    ++ring_taken_;
    std::atomic_ref<unsigned long long>(*link.consumed)
        .store(ring_taken_, std::memory_order_release);
    if (peer_index >= peers_.size() || slot >= static_cast<uint64_t>(settings_.slot_depth)) {
      Fail(InvalidArgumentError("verbs: device-side API: bad descriptor (" + where +
                                "): peer index " + std::to_string(peer_index) + " outside [0, " +
                                std::to_string(peers_.size()) + ") or slot " +
                                std::to_string(slot) + " outside [0, " +
                                std::to_string(settings_.slot_depth) + ")"));
      continue;
    }
    const auto generation = static_cast<uint32_t>(message >> 32);
    const auto length = static_cast<uint32_t>(message);
    Status s =
        kind == kDeviceSend ? TakeDeviceSend(peer_index, static_cast<int>(slot), generation, length)
        : kind == kDeviceRelease ? TakeDeviceRelease(peer_index, static_cast<int>(slot), generation)
                                 : InvalidArgumentError("kind " + std::to_string(kind) +
                                                        " is neither a send (1) nor a "
                                                        "release (2)");
    if (!s.ok()) {
      Fail(Status(s.code(), PeerText(peers_[peer_index].rank,
                                     "device-side API: bad descriptor (" + where + ", slot " +
                                         std::to_string(slot) + "): " + std::string(s.message()))));
    }
  }
  return taken > 0;
}

// A send: the next generation of the slot, at most a slot long, with the credit the kernel waited
// for. Posted from the staging slot into the peer's slot, imm = slot, as a stream send.
Status StreamProxy::TakeDeviceSend(size_t peer_index, int slot, uint32_t generation,
                                   uint32_t length) {
  const DeviceLink& link = settings_.device;
  const size_t cell = Cell(static_cast<int>(peer_index), slot);
  if (length > link.slot_bytes) {
    return InvalidArgumentError("a send of " + std::to_string(length) + " bytes into a slot of " +
                                std::to_string(link.slot_bytes));
  }
  if (generation != taken_[cell] + 1) {
    return InvalidArgumentError("a send of generation " + std::to_string(generation) +
                                " where the next is " + std::to_string(taken_[cell] + 1));
  }
  if (static_cast<int32_t>(generation - 1 - credits_[cell]) > 0) {
    return FailedPreconditionError("a send of generation " + std::to_string(generation) +
                                   " before the peer released generation " +
                                   std::to_string(generation - 1) + " (no credit)");
  }
  taken_[cell] = generation;
  const DeviceRoute& route = link.routes[peer_index];
  const uint64_t offset = static_cast<uint64_t>(slot) * link.slot_bytes;
  StreamDescriptor d;
  d.local_address = route.staging_address + offset;
  d.lkey = route.lkey;
  d.remote_address = route.remote_address + offset;
  d.rkey = route.rkey;
  d.length = length;
  const uint64_t wr_id = (static_cast<uint64_t>(cell) << 32) | generation;
  return PostWrite(peers_[peer_index].endpoint->stream_qp(Lane::kData), wr_id, &d,
                   static_cast<uint32_t>(slot));
}

// A release: the next message of the slot that arrived, handed back by an ACK.
Status StreamProxy::TakeDeviceRelease(size_t peer_index, int slot, uint32_t generation) {
  const size_t cell = Cell(static_cast<int>(peer_index), slot);
  if (generation != acked_[cell] + 1 || static_cast<int32_t>(generation - arrivals_[cell]) > 0) {
    return InvalidArgumentError("a release of generation " + std::to_string(generation) +
                                " where the next is " + std::to_string(acked_[cell] + 1) + " and " +
                                std::to_string(arrivals_[cell]) + " arrived");
  }
  acked_[cell] = generation;
  StreamDescriptor none;
  return PostWrite(peers_[peer_index].endpoint->stream_qp(Lane::kAck), kAckWrId | cell, &none,
                   static_cast<uint32_t>(slot));
}

}  // namespace m2n::transport::verbs

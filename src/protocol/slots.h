// Slot and credit accounting, one object per peer. Pure logic: no transport, no clock, so it is
// unit tested directly (tests/protocol_test.cc).
//
// Receiver side (ReceiveSlots): the peer writes into our slots. Each slot is free, arrived
// (written, waiting for Receive), or delivered (handed to the user, waiting for Release). Arrivals
// are delivered in the order they landed. A write into a slot that is not free, or a release of a
// slot that is not delivered (or of an older message that used the slot before), is refused.
//
// Sender side (Credits): one credit per free slot at the peer. Sending takes a credit (a slot); the
// peer's ACK for that slot gives it back. An ACK for a slot that was not in use is refused.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "m2n/status.h"

namespace m2n::protocol {

class ReceiveSlots {
 public:
  ReceiveSlots(int peer, int depth, size_t slot_bytes);

  struct Arrival {
    int slot;
    size_t length;
    uint64_t sequence;
  };

  // The peer wrote `length` bytes into `slot`.
  Status OnArrival(int slot, size_t length);
  size_t queued() const { return queue_.size(); }
  // The sequence the next arrival will get: how many have arrived so far.
  uint64_t next_sequence() const { return next_sequence_; }
  // Pops the oldest arrival and marks its slot delivered. Precondition: queued() > 0.
  Arrival Deliver();
  // The user hands `slot` back; `sequence` must be the one delivered with it.
  Status Release(int slot, uint64_t sequence);
  // Slots arrived or delivered and not yet released.
  int in_use() const { return in_use_; }
  // Frees every slot in use (closing); returns them so each can be acknowledged.
  std::vector<int> ReleaseAll();

 private:
  enum class State : uint8_t { kFree, kArrived, kDelivered };
  int peer_;
  size_t slot_bytes_;
  std::vector<State> state_;
  std::vector<uint64_t> sequence_;  // sequence of the message now in each slot
  std::deque<Arrival> queue_;
  uint64_t next_sequence_ = 0;
  int in_use_ = 0;
};

class Credits {
 public:
  Credits(int peer, int depth);

  int available() const { return available_; }
  int depth() const { return static_cast<int>(busy_.size()); }
  // Takes a free slot. Precondition: available() > 0. Slots are handed out round robin so a
  // just-released slot is reused last (its ACK and our next write never race on it).
  int Take();
  // The peer released `slot`.
  Status OnAck(int slot);

 private:
  int peer_;
  std::vector<bool> busy_;
  int available_;
  int next_ = 0;
};

}  // namespace m2n::protocol

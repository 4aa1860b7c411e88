#include "protocol/slots.h"

namespace m2n::protocol {

ReceiveSlots::ReceiveSlots(int peer, int depth, size_t slot_bytes)
    : peer_(peer), slot_bytes_(slot_bytes), state_(depth, State::kFree), sequence_(depth, 0) {}

Status ReceiveSlots::OnArrival(int slot, size_t length) {
  if (slot < 0 || slot >= static_cast<int>(state_.size())) {
    return DataLossError("rank " + std::to_string(peer_) + " wrote into slot " +
                         std::to_string(slot) + ", outside [0, " + std::to_string(state_.size()) +
                         ")");
  }
  if (length > slot_bytes_) {
    return DataLossError("rank " + std::to_string(peer_) + " wrote " + std::to_string(length) +
                         " bytes into a slot of " + std::to_string(slot_bytes_));
  }
  if (state_[slot] != State::kFree) {
    return DataLossError("rank " + std::to_string(peer_) + " wrote into slot " +
                         std::to_string(slot) +
                         ", which still holds an unreleased message (a credit was violated)");
  }
  state_[slot] = State::kArrived;
  sequence_[slot] = next_sequence_;
  queue_.push_back({slot, length, next_sequence_});
  ++next_sequence_;
  ++in_use_;
  return OkStatus();
}

ReceiveSlots::Arrival ReceiveSlots::Deliver() {
  Arrival a = queue_.front();
  queue_.pop_front();
  state_[a.slot] = State::kDelivered;
  return a;
}

Status ReceiveSlots::Release(int slot, uint64_t sequence) {
  if (slot < 0 || slot >= static_cast<int>(state_.size())) {
    return InvalidArgumentError("release: slot " + std::to_string(slot) + " of rank " +
                                std::to_string(peer_) + " is outside [0, " +
                                std::to_string(state_.size()) + ")");
  }
  if (state_[slot] != State::kDelivered || sequence_[slot] != sequence) {
    return FailedPreconditionError("release: message " + std::to_string(sequence) + " from rank " +
                                   std::to_string(peer_) + " in slot " + std::to_string(slot) +
                                   " was already released (or never delivered)");
  }
  state_[slot] = State::kFree;
  --in_use_;
  return OkStatus();
}

std::vector<int> ReceiveSlots::ReleaseAll() {
  std::vector<int> freed;
  for (int slot = 0; slot < static_cast<int>(state_.size()); ++slot) {
    if (state_[slot] != State::kFree) {
      state_[slot] = State::kFree;
      freed.push_back(slot);
    }
  }
  queue_.clear();
  in_use_ = 0;
  return freed;
}

Credits::Credits(int peer, int depth) : peer_(peer), busy_(depth, false), available_(depth) {}

int Credits::Take() {
  const int depth = static_cast<int>(busy_.size());
  while (busy_[next_]) next_ = (next_ + 1) % depth;
  int slot = next_;
  busy_[slot] = true;
  --available_;
  next_ = (next_ + 1) % depth;
  return slot;
}

Status Credits::OnAck(int slot) {
  if (slot < 0 || slot >= static_cast<int>(busy_.size()) || !busy_[slot]) {
    return DataLossError("rank " + std::to_string(peer_) + " acknowledged slot " +
                         std::to_string(slot) + ", which holds no message of ours");
  }
  busy_[slot] = false;
  ++available_;
  return OkStatus();
}

}  // namespace m2n::protocol

#include "m2n_exchange.h"

#include <string>

namespace m2n::perf {

M2nExchange::M2nExchange(Group& group, int64_t timeout_ms)
    : group_(group),
      timeout_ms_(timeout_ms),
      peers_(group.peers().begin(), group.peers().end()),
      requests_(peers_.size()),
      received_(peers_.size()) {
  for (size_t i = 0; i < peers_.size(); ++i) requests_[i].peer = peers_[i];
}

Status M2nExchange::SendToPeers(std::span<const std::byte* const> data, size_t bytes) {
  for (size_t i = 0; i < requests_.size(); ++i) {
    requests_[i].data = data[i];
    requests_[i].length = bytes;
  }
  return group_.Send(requests_, NextDeadline());
}

// A message of the wrong length is a library bug worth its own error, not a pile of wrong bytes.
Status M2nExchange::CheckLengths(size_t bytes) const {
  for (const Message& m : received_) {
    if (m.length != bytes) {
      return DataLossError("m2n delivered " + std::to_string(m.length) + " bytes from rank " +
                           std::to_string(m.peer) + " to rank " + std::to_string(group_.rank()) +
                           ", expected " + std::to_string(bytes));
    }
  }
  return OkStatus();
}

Status M2nExchange::ReceiveFromPeers(size_t bytes, std::span<std::span<std::byte>> views) {
  M2N_RETURN_IF_ERROR(group_.Receive(peers_, received_, NextDeadline()));
  holding_ = true;
  M2N_RETURN_IF_ERROR(CheckLengths(bytes));
  for (size_t i = 0; i < received_.size(); ++i) views[i] = {received_[i].data, received_[i].length};
  return OkStatus();
}

Status M2nExchange::ReleaseReceived() {
  if (!holding_) return OkStatus();
  holding_ = false;
  return group_.Release(received_);
}

Status M2nExchange::StreamSend(size_t bytes, int count, const Source& source) {
  for (int msg = 0; msg < count; ++msg) {
    for (size_t i = 0; i < requests_.size(); ++i) {
      requests_[i].data = source(msg, static_cast<int>(i));
      requests_[i].length = bytes;
    }
    M2N_RETURN_IF_ERROR(group_.Send(requests_, NextDeadline()));
  }
  return OkStatus();
}

Status M2nExchange::StreamReceive(size_t bytes, int count, const Sink& sink) {
  for (int msg = 0; msg < count; ++msg) {
    M2N_RETURN_IF_ERROR(group_.Receive(peers_, received_, NextDeadline()));
    holding_ = true;
    M2N_RETURN_IF_ERROR(CheckLengths(bytes));
    for (size_t i = 0; i < received_.size(); ++i) {
      sink(msg, static_cast<int>(i), {received_[i].data, received_[i].length});
    }
    M2N_RETURN_IF_ERROR(ReleaseReceived());
  }
  return OkStatus();
}

void M2nExchange::Progress() {
  // An error here (a dead peer) surfaces at the next blocking call, with its full message.
  (void)group_.Progress();
}

}  // namespace m2n::perf

// One implementation of the M-to-N exchange under measurement: m2n itself, or the MPI baseline.
// The driver (bench.h) owns the buffers, the data pattern, the clock and the check; an Exchange
// only moves messages, so both implementations are timed by the same code.
//
// Peers are the ranks on the other side, ascending (Group::peers()). Every blocking call is bounded
// by the timeout the Exchange was made with, per call.
#pragma once

#include <cstddef>
#include <functional>
#include <span>
#include <string_view>

#include "m2n/status.h"

namespace m2n::perf {

class Exchange {
 public:
  virtual ~Exchange() = default;

  // "m2n" or "MPI": the row label.
  virtual std::string_view name() const = 0;

  // Sends data[i] (`bytes` long) to peer i, one message each, in one batch; returns when every
  // buffer may be reused.
  virtual Status SendToPeers(std::span<const std::byte* const> data, size_t bytes) = 0;

  // Waits for one message from every peer: views[i] is the one from peer i, `bytes` long, valid and
  // writable until ReleaseReceived().
  virtual Status ReceiveFromPeers(size_t bytes, std::span<std::span<std::byte>> views) = 0;
  virtual Status ReleaseReceived() = 0;

  // Bandwidth phase, sender side: `count` messages to every peer back to back, as fast as credits
  // (or the MPI window) allow. source(msg, peer_index) is the buffer of message msg to that peer.
  using Source = std::function<const std::byte*(int msg, int peer_index)>;
  virtual Status StreamSend(size_t bytes, int count, const Source& source) = 0;

  // Bandwidth phase, receiver side: `count` messages from every peer; sink(msg, peer_index, data)
  // sees each one before it is released.
  using Sink = std::function<void(int msg, int peer_index, std::span<std::byte> data)>;
  virtual Status StreamReceive(size_t bytes, int count, const Sink& sink) = 0;

  // Runs while this rank waits at the host barrier, so that work queued by the last call (ACKs of
  // released slots) keeps moving.
  virtual void Progress() {}
};

}  // namespace m2n::perf

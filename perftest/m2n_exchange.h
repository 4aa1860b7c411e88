// The Exchange under test: m2n::Group Send / Receive / Release.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "m2n/group.h"
#include "exchange.h"

namespace m2n::perf {

class M2nExchange : public Exchange {
 public:
  // `group` outlives this; every buffer passed to it lies in memory registered with `group`.
  M2nExchange(Group& group, int64_t timeout_ms);

  std::string_view name() const override { return "m2n"; }
  Status SendToPeers(std::span<const std::byte* const> data, size_t bytes) override;
  Status ReceiveFromPeers(size_t bytes, std::span<std::span<std::byte>> views) override;
  Status ReleaseReceived() override;
  Status StreamSend(size_t bytes, int count, const Source& source) override;
  Status StreamReceive(size_t bytes, int count, const Sink& sink) override;
  void Progress() override;

 private:
  // The deadline of the next call. Reading the clock costs about as much as a small message takes
  // to land, and it would sit between the sender's start stamp and its Send (MPI's sender reads it
  // only after MPI_Isend), so the deadline is refreshed every kDeadlineRefresh calls; it is late by
  // at most that many iterations, against a timeout of seconds.
  Deadline NextDeadline() {
    if (++calls_since_refresh_ >= kDeadlineRefresh) {
      calls_since_refresh_ = 0;
      deadline_ = Deadline::AfterMs(timeout_ms_);
    }
    return deadline_;
  }
  static constexpr int kDeadlineRefresh = 64;
  Status CheckLengths(size_t bytes) const;

  Group& group_;
  int64_t timeout_ms_;
  int calls_since_refresh_ = kDeadlineRefresh;  // refresh on the first call
  Deadline deadline_ = Deadline::AfterMs(0);
  std::vector<int> peers_;
  std::vector<SendRequest> requests_;
  std::vector<Message> received_;
  bool holding_ = false;  // received_ holds messages not yet released
};

}  // namespace m2n::perf

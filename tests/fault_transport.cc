#include "fault_transport.h"

#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <random>
#include <utility>

namespace m2n::testing {
namespace {

using transport::Completion;
using transport::Lane;

bool ActsOnArrival(Fault f) { return f != Fault::kCorruptPayload && f != Fault::kFailPost; }

class FaultTransport final : public transport::Transport {
 public:
  FaultTransport(std::unique_ptr<transport::Transport> inner, FaultPlan plan, FaultCounts* counts)
      : inner_(std::move(inner)),
        plan_(std::move(plan)),
        counts_(counts),
        rng_(plan_.seed),
        matched_(plan_.rules.size(), 0) {}

  std::string_view name() const override { return inner_->name(); }
  transport::Capabilities capabilities() const override { return inner_->capabilities(); }
  StatusOr<std::unique_ptr<transport::Region>> Register(void* data, size_t size,
                                                        MemoryKind kind) override {
    return inner_->Register(data, size, kind);
  }
  StatusOr<std::unique_ptr<transport::Region>> RegisterSource(void* data, size_t size,
                                                              MemoryKind kind) override {
    return inner_->RegisterSource(data, size, kind);
  }
  StatusOr<std::unique_ptr<transport::Region>> Allocate(size_t size, MemoryKind kind) override {
    return inner_->Allocate(size, kind);
  }
  StatusOr<transport::Bytes> LocalAddress(int peer) override { return inner_->LocalAddress(peer); }
  Status Connect(int peer, std::span<const std::byte> address) override {
    return inner_->Connect(peer, address);
  }
  StatusOr<std::unique_ptr<transport::RemoteRegion>> UnpackRemoteKey(
      int peer, std::span<const std::byte> packed) override {
    return inner_->UnpackRemoteKey(peer, packed);
  }
  transport::StreamOps* stream_ops() override { return inner_->stream_ops(); }

  Status Post(std::span<const transport::Write> writes) override {
    posting_.assign(writes.begin(), writes.end());
    for (transport::Write& w : posting_) {
      if (const FaultRule* rule =
              Fire(w.lane, w.peer, [](Fault f) { return f == Fault::kFailPost; })) {
        (void)rule;
        return UnavailableError("fault injection: posting a write to rank " +
                                std::to_string(w.peer) + " on the " +
                                (w.lane == Lane::kAck ? "ACK" : "data") + " lane failed");
      }
      if (w.length == 0 || w.local == nullptr || w.local->kind() != MemoryKind::kHost) continue;
      if (Fire(w.lane, w.peer, [](Fault f) { return f == Fault::kCorruptPayload; }) == nullptr)
        continue;
      // Send a damaged copy instead; the copy lives until Close (a test sends few of them).
      auto copy = std::make_unique<std::vector<std::byte>>(w.length);
      std::memcpy(copy->data(), w.local->data() + w.local_offset, w.length);
      (*copy)[rng_() % w.length] ^= std::byte{0x10};
      auto region = inner_->Register(copy->data(), copy->size(), MemoryKind::kHost);
      if (!region.ok()) return region.status();
      w.local = region->get();
      w.local_offset = 0;
      bounce_.emplace_back(std::move(copy), std::move(region).value());
    }
    return inner_->Post(posting_);
  }

  StatusOr<size_t> Poll(std::span<Completion> out) override {
    polled_.resize(out.size());
    M2N_ASSIGN_OR_RETURN(size_t n, inner_->Poll(polled_));
    const auto now = std::chrono::steady_clock::now();
    for (size_t i = 0; i < n; ++i) Arrive(std::move(polled_[i]), now);
    ReleaseDelayed(now);
    size_t emitted = 0;
    while (emitted < out.size() && !ready_.empty()) {
      out[emitted++] = std::move(ready_.front());
      ready_.pop_front();
    }
    return emitted;
  }

  Status Close(Deadline deadline) override {
    Status s = inner_->Close(deadline);
    bounce_.clear();
    return s;
  }

 private:
  struct Held {
    Completion completion;
    std::chrono::steady_clock::time_point release;
  };

  // The first rule of the right kind that matches (lane, peer) and fires on this event.
  template <typename Kind>
  const FaultRule* Fire(Lane lane, int peer, Kind kind) {
    for (size_t r = 0; r < plan_.rules.size(); ++r) {
      const FaultRule& rule = plan_.rules[r];
      if (!kind(rule.fault) || rule.lane != lane || (rule.peer >= 0 && rule.peer != peer)) continue;
      const int64_t index = matched_[r]++;
      const bool fires =
          rule.nth >= 0 ? index == rule.nth
                        : std::uniform_real_distribution<double>(0, 1)(rng_) < rule.probability;
      if (!fires) continue;
      if (counts_ != nullptr) ++counts_->fired[static_cast<int>(rule.fault)];
      return &rule;
    }
    return nullptr;
  }

  static size_t Stream(const Completion& c) {
    return static_cast<size_t>(c.peer) * 2 + static_cast<size_t>(c.lane);
  }

  void Arrive(Completion c, std::chrono::steady_clock::time_point now) {
    if (c.type != Completion::Type::kImmediate) {
      ready_.push_back(std::move(c));
      return;
    }
    // Order within a (peer, lane) is kept behind a delayed or reordered immediate unless a rule
    // says otherwise: only the rule's own fault disturbs the stream.
    const size_t stream = Stream(c);
    if (stream >= holding_.size()) holding_.resize(stream + 1);
    std::deque<Held>& held = holding_[stream];
    const FaultRule* rule = Fire(c.lane, c.peer, ActsOnArrival);
    if (rule != nullptr) {
      switch (rule->fault) {
        case Fault::kDrop:
          return;
        case Fault::kDuplicate:
          Deliver(stream, c, now);
          break;
        case Fault::kCorrupt:
          c.imm ^= 1u << (rng_() % 32);
          break;
        case Fault::kDelay:
          held.push_back({std::move(c), now + std::chrono::microseconds(rule->delay_us)});
          return;
        case Fault::kReorder:
          swap_after_[stream] = std::move(c);
          return;
        default:
          break;
      }
    }
    Deliver(stream, std::move(c), now);
  }

  // Hands c on, behind whatever its stream holds back; a reordered immediate follows it.
  void Deliver(size_t stream, Completion c, std::chrono::steady_clock::time_point now) {
    std::deque<Held>& held = holding_[stream];
    if (!held.empty()) {
      held.push_back({std::move(c), held.back().release});
    } else {
      ready_.push_back(std::move(c));
    }
    auto swapped = swap_after_.find(stream);
    if (swapped != swap_after_.end()) {
      Completion late = std::move(swapped->second);
      swap_after_.erase(swapped);
      Deliver(stream, std::move(late), now);
    }
  }

  void ReleaseDelayed(std::chrono::steady_clock::time_point now) {
    for (std::deque<Held>& held : holding_) {
      while (!held.empty() && held.front().release <= now) {
        ready_.push_back(std::move(held.front().completion));
        held.pop_front();
      }
    }
  }

  std::unique_ptr<transport::Transport> inner_;
  FaultPlan plan_;
  FaultCounts* counts_;
  std::mt19937_64 rng_;
  std::vector<int64_t> matched_;
  std::vector<transport::Write> posting_;
  std::vector<Completion> polled_;
  std::deque<Completion> ready_;
  std::vector<std::deque<Held>> holding_;
  std::map<size_t, Completion> swap_after_;
  std::vector<
      std::pair<std::unique_ptr<std::vector<std::byte>>, std::unique_ptr<transport::Region>>>
      bounce_;
};

}  // namespace

std::string FaultName(Fault fault) {
  switch (fault) {
    case Fault::kDrop:
      return "drop";
    case Fault::kDelay:
      return "delay";
    case Fault::kDuplicate:
      return "duplicate";
    case Fault::kReorder:
      return "reorder";
    case Fault::kCorrupt:
      return "corrupt";
    case Fault::kCorruptPayload:
      return "corrupt_payload";
    case Fault::kFailPost:
      return "fail_post";
  }
  return "?";
}

uint64_t FaultCounts::total() const {
  uint64_t sum = 0;
  for (uint64_t f : fired) sum += f;
  return sum;
}

std::unique_ptr<transport::Transport> WrapWithFaults(std::unique_ptr<transport::Transport> inner,
                                                     FaultPlan plan, FaultCounts* counts) {
  return std::make_unique<FaultTransport>(std::move(inner), std::move(plan), counts);
}

}  // namespace m2n::testing

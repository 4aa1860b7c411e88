// Deadline: every blocking call in m2n takes one (see docs/architecture.md, "Completion model").
#pragma once

#include <chrono>
#include <cstdint>

namespace m2n {

using Clock = std::chrono::steady_clock;

class Deadline {
 public:
  // A deadline `timeout` from now.
  static Deadline After(std::chrono::nanoseconds timeout) {
    return Deadline(Clock::now() + timeout);
  }
  static Deadline AfterMs(int64_t ms) { return After(std::chrono::milliseconds(ms)); }
  static Deadline At(Clock::time_point at) { return Deadline(at); }

  Clock::time_point time() const { return at_; }
  bool Expired() const { return Clock::now() >= at_; }
  // Milliseconds left, never negative.
  int64_t RemainingMs() const {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(at_ - Clock::now()).count();
    return left > 0 ? left : 0;
  }
  // The earlier of two deadlines.
  Deadline Min(Deadline other) const { return other.at_ < at_ ? other : *this; }

 private:
  explicit Deadline(Clock::time_point at) : at_(at) {}
  Clock::time_point at_;
};

}  // namespace m2n

// Wall-clock helpers of the serving processes (the workers, the collocated baseline, the single
// process): seconds between two points, and a scope's seconds added to a sum.
#pragma once

#include <chrono>

namespace moe {

using Clock = std::chrono::steady_clock;

inline double Seconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// Accumulates the seconds of a scope into *sum.
class Timed {
 public:
  explicit Timed(double* sum) : sum_(sum), start_(Clock::now()) {}
  ~Timed() { *sum_ += Seconds(start_, Clock::now()); }
  Timed(const Timed&) = delete;
  Timed& operator=(const Timed&) = delete;

 private:
  double* sum_;
  Clock::time_point start_;
};

}  // namespace moe

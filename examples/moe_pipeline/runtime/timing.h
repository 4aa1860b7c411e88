// Wall-clock helpers of the serving processes (the workers, the collocated baseline, the single
// process): seconds between two points, a scope's seconds added to a sum, and where a process's
// time went.
#pragma once

#include <chrono>

#include "model/json.h"

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

// Where a serving process's time went, as its report says it (runtime/report.h): wall, compute,
// sending (m2n calls that post), waiting (m2n calls that wait, or the collocated all-to-all).
struct ProcessTimes {
  double wall_s = 0, compute_s = 0, send_s = 0, wait_s = 0;
  void Report(Json& r) const {
    r.Set("wall_s", Json::Number(wall_s));
    r.Set("compute_s", Json::Number(compute_s));
    r.Set("send_s", Json::Number(send_s));
    r.Set("wait_s", Json::Number(wait_s));
  }
};

}  // namespace moe

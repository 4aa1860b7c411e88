// Latency percentiles. Nearest rank: the p-th percentile of n samples is the ceil(p/100 * n)-th
// smallest, always a value that was measured (as perftest's ib_*_lat reports them).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace m2n::perf {

// `sorted` ascending and non-empty; p in [0, 100].
double Percentile(std::span<const double> sorted, double p);

struct LatencySummary {
  double p50_us = 0;
  double p99_us = 0;
  double max_us = 0;
  double mean_us = 0;
  int samples = 0;
};

// Sorts a copy of `samples_us`; an empty input gives all zeros.
LatencySummary Summarize(std::vector<double> samples_us);

}  // namespace m2n::perf

#include "stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace m2n::perf {

double Percentile(std::span<const double> sorted, double p) {
  if (sorted.empty()) return 0;
  const double n = static_cast<double>(sorted.size());
  // ceil(p/100 * n) with a small tolerance, so that 50% of 100 samples is rank 50, not 51.
  auto rank = static_cast<size_t>(std::ceil(p / 100.0 * n - 1e-9));
  rank = std::clamp<size_t>(rank, 1, sorted.size());
  return sorted[rank - 1];
}

LatencySummary Summarize(std::vector<double> samples_us) {
  LatencySummary summary;
  if (samples_us.empty()) return summary;
  std::sort(samples_us.begin(), samples_us.end());
  summary.samples = static_cast<int>(samples_us.size());
  summary.p50_us = Percentile(samples_us, 50);
  summary.p99_us = Percentile(samples_us, 99);
  summary.max_us = samples_us.back();
  summary.mean_us = std::accumulate(samples_us.begin(), samples_us.end(), 0.0) /
                    static_cast<double>(samples_us.size());
  return summary;
}

}  // namespace m2n::perf

// The trace-driven simulator: replays routing traces through an expert cache under a policy and
// reports hit rate and bytes moved per token. Every policy sees the same traces; the requests
// marked held-out are served, the others are the history the policy may learn from (fMoE's map
// store, the frequency prior). One token is one decode iteration through every layer (batch 1).
#pragma once

#include <string>

#include "m2n/status.h"
#include "offload/cache.h"
#include "offload/trace.h"

namespace moe::offload {

struct SimResult {
  std::string policy;
  int capacity = 0;  // experts resident
  int64_t tokens = 0;
  CacheStats stats;
  double BytesPerToken() const {
    return tokens > 0 ? static_cast<double>(stats.bytes_moved) / static_cast<double>(tokens) : 0;
  }
};

// The trace must have the shape's layers, experts and top-k: a trace of another model says
// nothing about this one.
m2n::Status CheckTraceShape(const Trace& trace, const OffloadShape& shape, const std::string& what);

m2n::StatusOr<SimResult> Simulate(const Trace& trace, const OffloadShape& shape,
                                  const std::string& policy, int capacity,
                                  const FmoeOptions& options);

// The top-k experts of one distribution, in descending probability (ties: the lower index).
std::vector<int> TopK(std::span<const float> probs, int k);

}  // namespace moe::offload

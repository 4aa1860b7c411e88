// The trace-driven simulator (sim.h).
#include "offload/sim.h"

#include <algorithm>
#include <numeric>

namespace moe::offload {

std::vector<int> TopK(std::span<const float> probs, int k) {
  std::vector<int> order(probs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return probs[static_cast<size_t>(a)] > probs[static_cast<size_t>(b)];
  });
  order.resize(static_cast<size_t>(k));
  return order;
}

m2n::Status CheckTraceShape(const Trace& t, const OffloadShape& shape, const std::string& what) {
  if (t.layers != shape.layers || t.experts != shape.experts || t.top_k != shape.top_k) {
    return m2n::InvalidArgumentError(
        what + ": a trace of " + std::to_string(t.layers) + " layers x " +
        std::to_string(t.experts) + " experts, top-" + std::to_string(t.top_k) +
        ", but the model has " + std::to_string(shape.layers) + " x " +
        std::to_string(shape.experts) + ", top-" + std::to_string(shape.top_k) +
        " (a trace from another model's shape)");
  }
  return m2n::OkStatus();
}

namespace {

// One request, token by token, layer by layer: gate -> acquire (misses load on demand) -> compute
// -> release -> prefetch what the policy asks for.
m2n::Status Serve(const TraceRequest& q, const OffloadShape& shape, OffloadPolicy& policy,
                  ExpertCache& cache) {
  policy.BeginRequest(q.embedding);
  const size_t e = static_cast<size_t>(shape.experts);
  for (int t = 0; t < q.tokens; ++t) {
    policy.BeginIteration();
    if (auto s = cache.Prefetch(policy.Prefetch(-1)); !s.ok()) return s;
    for (int l = 0; l < shape.layers; ++l) {
      const std::span<const float> probs(
          q.gates.data() + (static_cast<size_t>(t) * static_cast<size_t>(shape.layers) +
                            static_cast<size_t>(l)) *
                               e,
          e);
      const std::vector<int> chosen = TopK(probs, shape.top_k);
      policy.ObserveGate(l, probs, chosen);
      if (auto s = cache.Acquire(l, chosen); !s.ok()) return s;
      cache.Release(l, chosen);
      if (auto s = cache.Prefetch(policy.Prefetch(l)); !s.ok()) return s;
    }
  }
  return m2n::OkStatus();
}

}  // namespace

m2n::StatusOr<SimResult> Simulate(const Trace& trace, const OffloadShape& shape,
                                  const std::string& policy_name, int capacity,
                                  const FmoeOptions& options) {
  if (auto s = CheckTraceShape(trace, shape, "simulator"); !s.ok()) return s;
  auto policy = MakePolicy(policy_name, shape, options);
  if (!policy.ok()) return policy.status();
  NoCopy backend;
  auto cache = ExpertCache::Create(shape, capacity, policy->get(), &backend);
  if (!cache.ok()) return cache.status();
  for (const TraceRequest& q : trace.requests) {
    if (!q.held_out) (*policy)->Learn(q.embedding, q.tokens, q.gates);
  }
  SimResult r;
  r.policy = policy_name;
  r.capacity = capacity;
  for (const TraceRequest& q : trace.requests) {
    if (!q.held_out) continue;
    if (auto s = Serve(q, shape, **policy, **cache); !s.ok()) return s;
    r.tokens += q.tokens;
  }
  (*cache)->Finish();
  r.stats = (*cache)->stats();
  return r;
}

}  // namespace moe::offload

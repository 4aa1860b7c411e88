// The offloading expert side on CPU (offloaded_experts.h).
#include "offload/offloaded_experts.h"

#include <cstdio>
#include <cstring>
#include <vector>

#include "compute/cpu/expert_ffn.h"
#include "compute/cpu/thread_pool.h"
#include "offload/cache.h"
#if MOE_WITH_CUDA
#include "offload/cuda_experts.h"
#endif
#include "offload/sim.h"

namespace moe::offload {
namespace {

using cpu::ThreadPool;

// The CPU load backend of the pipeline: the host copy is the worker's ExpertShard, the arena C
// ExpertWeights; a load copies one expert's three matrices.
class ShardArena final : public LoadBackend {
 public:
  ShardArena(ExpertShard host, int slots)
      : host_(std::move(host)), arena_(static_cast<size_t>(slots)), local_(64, -1) {
    for (size_t i = 0; i < host_.experts.size(); ++i) Local(host_.experts[i]) = static_cast<int>(i);
  }
  m2n::Status Load(ExpertId id, int slot) override {
    const int le = Local(id.expert);
    if (le < 0)
      return m2n::InternalError("offload: expert " + std::to_string(id.expert) +
                                " is not this worker's");
    arena_[static_cast<size_t>(slot)] =
        host_.layers[static_cast<size_t>(id.layer)][static_cast<size_t>(le)];
    return m2n::OkStatus();
  }
  const ExpertWeights& Slot(int slot) const { return arena_[static_cast<size_t>(slot)]; }
  bool Holds(int expert) const {
    return expert >= 0 && static_cast<size_t>(expert) < local_.size() &&
           local_[static_cast<size_t>(expert)] >= 0;
  }
  int& Local(int expert) {
    if (static_cast<size_t>(expert) >= local_.size())
      local_.resize(static_cast<size_t>(expert) + 1, -1);
    return local_[static_cast<size_t>(expert)];
  }

 private:
  ExpertShard host_;
  std::vector<ExpertWeights> arena_;
  std::vector<int> local_;  // global expert id -> index in host_
};

class OffloadedExperts final : public ExpertCompute {
 public:
  OffloadedExperts(const ModelConfig& c, std::unique_ptr<ShardArena> arena,
                   std::unique_ptr<OffloadPolicy> policy, std::unique_ptr<ExpertCache> cache,
                   int threads)
      : c_(c),
        arena_(std::move(arena)),
        policy_(std::move(policy)),
        cache_(std::move(cache)),
        pool_(threads) {
    policy_->BeginRequest({});
  }
  ~OffloadedExperts() override {
    cache_->Finish();
    std::fprintf(stderr, "[moe_pipeline] expert offload (%s, %d resident): %s, hit rate %.3f\n",
                 policy_->name().c_str(), cache_->capacity(), cache_->stats().Describe().c_str(),
                 cache_->stats().HitRate());
  }
  std::string name() const override { return "cpu+offload(" + policy_->name() + ")"; }
  // The single process (runtime/single.cc): routed rows per expert, weighted scatter-add, in the
  // CPU backend's order, so that outputs equal those with every expert resident.
  m2n::Status Forward(int layer, int top_k, std::span<const ExpertInput> inputs) override;
  // The disaggregated pipeline: an ExpertBatch, rows grouped by expert, unweighted outputs.
  m2n::Status ForwardGrouped(int layer, const m2n::ExpertBatch& batch, float* y) override;

 private:
  // The policy's view of a layer (the gate weight per expert, normalized), the cache's acquire;
  // after `run`, the release and this worker's prefetches.
  template <typename Run>
  m2n::Status Serve(int layer, std::vector<float> probs, const std::vector<int>& chosen, Run&& run);

  ModelConfig c_;
  std::unique_ptr<ShardArena> arena_;
  std::unique_ptr<OffloadPolicy> policy_;
  std::unique_ptr<ExpertCache> cache_;
  ThreadPool pool_;
  cpu::FfnScratch scratch_;
};

template <typename Run>
m2n::Status OffloadedExperts::Serve(int layer, std::vector<float> probs,
                                    const std::vector<int>& chosen, Run&& run) {
  float total = 0;
  for (float p : probs) total += p;
  for (float& p : probs) p = total > 0 ? p / total : 0;
  if (layer == 0) policy_->BeginIteration();
  policy_->ObserveGate(layer, probs, chosen);
  M2N_RETURN_IF_ERROR(cache_->Acquire(layer, chosen));
  run();
  cache_->Release(layer, chosen);
  // The policies know the model, not the split: this worker prefetches only the experts it holds.
  std::vector<ExpertId> wanted = policy_->Prefetch(layer);
  std::erase_if(wanted, [&](ExpertId id) { return !arena_->Holds(id.expert); });
  return cache_->Prefetch(wanted);
}

m2n::Status OffloadedExperts::Forward(int layer, int top_k, std::span<const ExpertInput> inputs) {
  if (layer < 0 || layer >= c_.num_hidden_layers)
    return m2n::InvalidArgumentError("layer " + std::to_string(layer) + " out of range");
  const size_t h = static_cast<size_t>(c_.hidden_size);
  std::vector<std::vector<cpu::RoutedRow>> uses(static_cast<size_t>(c_.num_local_experts));
  std::vector<float> probs(static_cast<size_t>(c_.num_local_experts), 0.0f);
  std::vector<int> identity(static_cast<size_t>(c_.num_local_experts));
  for (int e = 0; e < c_.num_local_experts; ++e)
    identity[static_cast<size_t>(e)] = arena_->Holds(e) ? e : -1;
  for (const ExpertInput& x : inputs)
    std::fill(x.out, x.out + static_cast<size_t>(x.rows) * h, 0.0f);
  M2N_RETURN_IF_ERROR(ForEachRoutedRow(
      inputs, top_k, c_.num_local_experts, identity, [&](size_t in, int r, int e, float weight) {
        uses[static_cast<size_t>(e)].push_back({static_cast<int>(in), r, weight});
        probs[static_cast<size_t>(e)] += weight;
      }));
  std::vector<int> chosen;
  for (int e = 0; e < c_.num_local_experts; ++e)
    if (!uses[static_cast<size_t>(e)].empty()) chosen.push_back(e);
  return Serve(layer, std::move(probs), chosen, [&] {
    for (int e : chosen) {
      cpu::ExpertFfnRouted(arena_->Slot(cache_->SlotOf({layer, e})), uses[static_cast<size_t>(e)],
                           inputs, c_.hidden_size, c_.intermediate_size, scratch_, pool_);
    }
  });
}

m2n::Status OffloadedExperts::ForwardGrouped(int layer, const m2n::ExpertBatch& b, float* y) {
  if (layer < 0 || layer >= c_.num_hidden_layers)
    return m2n::InvalidArgumentError("layer " + std::to_string(layer) + " out of range");
  const size_t h = static_cast<size_t>(c_.hidden_size);
  // The policy sees, per expert, the sum of the gate weights of the rows routed to it.
  std::vector<float> probs(static_cast<size_t>(c_.num_local_experts), 0.0f);
  std::vector<int> chosen;
  for (size_t l = 0; l < b.experts.size(); ++l) {
    const int e = b.experts[l];
    if (e < 0 || e >= c_.num_local_experts || !arena_->Holds(e)) {
      return m2n::DataLossError("a token was dispatched to expert " + std::to_string(e) +
                                ", which this worker does not hold");
    }
    if (b.counts[l] == 0) continue;
    chosen.push_back(e);
    for (int i = b.offsets[l]; i < b.offsets[l + 1]; ++i)
      probs[static_cast<size_t>(e)] += b.sources[static_cast<size_t>(i)].weight;
  }
  const auto* x = reinterpret_cast<const float*>(b.x);
  return Serve(layer, std::move(probs), chosen, [&] {
    for (size_t l = 0; l < b.experts.size(); ++l) {
      if (b.counts[l] == 0) continue;
      const size_t first = static_cast<size_t>(b.offsets[l]);
      // The CPU backend's expert step on the resident copy.
      cpu::ExpertFfn(arena_->Slot(cache_->SlotOf({layer, b.experts[l]})), x + first * h,
                     b.counts[l], c_.hidden_size, c_.intermediate_size, y + first * h, scratch_,
                     pool_);
    }
  });
}

}  // namespace

m2n::StatusOr<std::unique_ptr<OffloadPolicy>> MakeLearnedPolicy(const OffloadShape& shape,
                                                                const OffloadOptions& offload) {
  auto policy = MakePolicy(offload.policy, shape);
  if (!policy.ok()) return policy.status();
  if (!offload.maps.empty()) {
    auto trace = ReadTrace(offload.maps);
    if (!trace.ok()) return trace.status();
    if (auto s = CheckTraceShape(*trace, shape, "--offload_maps " + offload.maps); !s.ok())
      return s;
    for (const TraceRequest& q : trace->requests) {
      if (!q.held_out) (*policy)->Learn(q.embedding, q.tokens, q.gates);
    }
  }
  return policy;
}

m2n::StatusOr<std::unique_ptr<ExpertCompute>> MakeOffloadedExperts(
    const std::string& backend, const ModelConfig& config, const WeightSource& source,
    std::span<const int> experts, const ComputeOptions& compute, const OffloadOptions& offload) {
  const int held = config.num_hidden_layers * static_cast<int>(experts.size());
  if (offload.gpu_experts > held) {
    return m2n::InvalidArgumentError("--gpu_experts " + std::to_string(offload.gpu_experts) +
                                     ": this worker holds only " + std::to_string(held) +
                                     " experts");
  }
#if MOE_WITH_CUDA
  if (backend == "cuda") return MakeCudaOffloadedExperts(config, source, experts, compute, offload);
#endif
  if (backend != "cpu") {
    return m2n::InvalidArgumentError("--offload: no expert cache for backend \"" + backend +
                                     "\" in this build");
  }
  const OffloadShape shape{
      config.num_hidden_layers, config.num_local_experts, config.num_experts_per_tok,
      3LL * config.hidden_size * config.intermediate_size * static_cast<int64_t>(sizeof(float))};
  auto policy = MakeLearnedPolicy(shape, offload);
  if (!policy.ok()) return policy.status();
  auto shard = LoadExpertShard(config, source, experts);
  if (!shard.ok()) return shard.status();
  auto arena = std::make_unique<ShardArena>(std::move(*shard), offload.gpu_experts);
  auto cache = ExpertCache::Create(shape, offload.gpu_experts, policy->get(), arena.get());
  if (!cache.ok()) return cache.status();
  return std::unique_ptr<ExpertCompute>(std::make_unique<OffloadedExperts>(
      config, std::move(arena), std::move(*policy), std::move(*cache), compute.threads));
}

}  // namespace moe::offload

// fMoE (FineMoE): prefetching guided by expert maps. Each served iteration of the history leaves a
// map (map_store.h). At the start of an iteration and for its first `semantic_layers` layers the
// policy matches the prompt's embedding (semantic search); beyond, the gate distributions seen so
// far (trajectory search). From the matched map it prefetches, for each of the next `distance`
// layers, experts in descending probability until their cumulative probability reaches
// delta = clip(1 - similarity, 0, 1) (a close match: only the top-k; a poor one: more), ordered by
// probability / layers ahead. It evicts the lowest probability x activation count, and pauses
// prefetching on the layer where a miss happened (the on-demand load owns the copy engine).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "offload/map_store.h"
#include "offload/policy.h"

namespace moe::offload {
namespace {

struct Candidate {
  ExpertId id;
  double priority;
};

class FmoePolicy final : public OffloadPolicy {
 public:
  FmoePolicy(const OffloadShape& shape, const FmoeOptions& options)
      : shape_(shape),
        options_(options),
        store_(options.store_capacity, shape.layers, shape.experts),
        trajectory_(store_),
        counts_(static_cast<size_t>(shape.total()), 0.0) {}

  std::string name() const override { return "fmoe"; }

  void Learn(std::span<const float> embedding, int tokens, std::span<const float> gates) override {
    const size_t per_token = static_cast<size_t>(shape_.total());
    for (int t = 0; t < tokens; ++t)
      store_.Add(embedding, gates.subspan(static_cast<size_t>(t) * per_token, per_token));
  }
  void BeginRequest(std::span<const float> embedding) override {
    embedding_.assign(embedding.begin(), embedding.end());
    std::fill(counts_.begin(), counts_.end(), 0.0);
    predicted_.clear();
  }
  void BeginIteration() override {
    trajectory_.Reset();
    miss_layer_ = -2;
  }
  void ObserveGate(int layer, std::span<const float> probs, std::span<const int> chosen) override {
    trajectory_.Observe(layer, probs);
    for (int e : chosen) counts_[static_cast<size_t>(shape_.Index({layer, e}))] += 1.0;
  }
  void Missed(ExpertId id) override { miss_layer_ = id.layer; }
  std::vector<ExpertId> Prefetch(int layer) override;
  double KeepScore(ExpertId id, int64_t last_use) const override {
    const size_t i = static_cast<size_t>(shape_.Index(id));
    const double p = predicted_.empty() ? 1.0 : predicted_[i] + 1e-3;
    return p * (counts_[i] + 1.0) + 1e-12 * static_cast<double>(last_use);
  }

  const MapStore& store() const { return store_; }

 private:
  void Choose(int target, int ahead, double delta, std::vector<Candidate>* out) const;

  OffloadShape shape_;
  FmoeOptions options_;
  MapStore store_;
  Trajectory trajectory_;
  std::vector<float> embedding_, predicted_;
  std::vector<double> counts_;  // this request's activations per expert
  int miss_layer_ = -2;
};

std::vector<ExpertId> FmoePolicy::Prefetch(int layer) {
  if (store_.size() == 0 || layer == miss_layer_) return {};
  const MapMatch match =
      layer < options_.semantic_layers ? store_.SearchSemantic(embedding_) : trajectory_.Best();
  if (match.map.empty()) return {};
  predicted_ = match.map;
  const double delta = std::clamp(1.0 - match.similarity, 0.0, 1.0);
  std::vector<Candidate> candidates;
  // Layers past the last are the next iteration's first ones (decode goes on).
  for (int d = 1; d <= options_.distance; ++d)
    Choose((layer + d) % shape_.layers, d, delta, &candidates);
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const Candidate& a, const Candidate& b) { return a.priority > b.priority; });
  std::vector<ExpertId> out;
  for (const Candidate& c : candidates) out.push_back(c.id);
  return out;
}

void FmoePolicy::Choose(int target, int ahead, double delta, std::vector<Candidate>* out) const {
  const float* p = predicted_.data() + static_cast<size_t>(target) * shape_.experts;
  std::vector<int> order(static_cast<size_t>(shape_.experts));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
  double cumulative = 0;
  for (int i = 0; i < shape_.experts; ++i) {
    if (i >= shape_.top_k && cumulative >= delta) break;
    const int e = order[static_cast<size_t>(i)];
    cumulative += p[e];
    out->push_back({{target, e}, p[e] / ahead});
  }
}

}  // namespace

std::unique_ptr<OffloadPolicy> MakeFmoePolicy(const OffloadShape& shape,
                                              const FmoeOptions& options) {
  return std::make_unique<FmoePolicy>(shape, options);
}

}  // namespace moe::offload

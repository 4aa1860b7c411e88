// Activation-frequency prefetching, MoE-Infinity-style: the request's own expert activation counts
// (its activation matrix so far), backed by the counts of past requests for a request's first
// tokens. It prefetches the top-k most activated experts of the next `distance` layers and gives
// up the least activated first.
#include <algorithm>
#include <numeric>

#include "offload/policy.h"

namespace moe::offload {
namespace {

class FrequencyPolicy final : public OffloadPolicy {
 public:
  FrequencyPolicy(const OffloadShape& shape, int distance)
      : shape_(shape), distance_(distance), request_(shape.total()), history_(shape.total()) {}

  std::string name() const override { return "frequency"; }

  void Learn(std::span<const float>, int tokens, std::span<const float> gates) override {
    // A past request's activations: top-k of each token and layer.
    for (int t = 0; t < tokens; ++t) {
      for (int l = 0; l < shape_.layers; ++l) {
        const float* p =
            gates.data() + (static_cast<size_t>(t) * shape_.layers + l) * shape_.experts;
        for (int e : TopK(p)) history_[shape_.Index({l, e})] += 1.0;
      }
    }
    Normalize();
  }
  void BeginRequest(std::span<const float>) override {
    std::fill(request_.begin(), request_.end(), 0.0);
  }
  void BeginIteration() override {}
  void ObserveGate(int layer, std::span<const float>, std::span<const int> chosen) override {
    for (int e : chosen) request_[shape_.Index({layer, e})] += 1.0;
  }
  std::vector<ExpertId> Prefetch(int layer) override {
    std::vector<ExpertId> out;
    for (int d = 1; d <= distance_; ++d) {
      const int target = (layer + d) % shape_.layers;
      std::vector<int> order(static_cast<size_t>(shape_.experts));
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int a, int b) {
        return Score({target, a}) > Score({target, b});
      });
      for (int i = 0; i < shape_.top_k; ++i) out.push_back({target, order[static_cast<size_t>(i)]});
    }
    return out;
  }
  double KeepScore(ExpertId id, int64_t last_use) const override {
    return Score(id) + 1e-12 * static_cast<double>(last_use);
  }

 private:
  // The request's count, with the history (below 1) breaking ties and guiding its first tokens.
  double Score(ExpertId id) const {
    const size_t i = static_cast<size_t>(shape_.Index(id));
    return request_[i] + 0.5 * prior_[i];
  }
  std::vector<int> TopK(const float* p) const {
    std::vector<int> order(static_cast<size_t>(shape_.experts));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + shape_.top_k, order.end(),
                      [&](int a, int b) { return p[a] > p[b]; });
    order.resize(static_cast<size_t>(shape_.top_k));
    return order;
  }
  void Normalize() {
    const double top = *std::max_element(history_.begin(), history_.end());
    prior_.assign(history_.size(), 0.0);
    if (top > 0) {
      for (size_t i = 0; i < history_.size(); ++i) prior_[i] = history_[i] / top;
    }
  }

  OffloadShape shape_;
  int distance_;
  std::vector<double> request_, history_;
  std::vector<double> prior_ = std::vector<double>(static_cast<size_t>(shape_.total()), 0.0);
};

}  // namespace

std::unique_ptr<OffloadPolicy> MakeFrequencyPolicy(const OffloadShape& shape, int distance) {
  return std::make_unique<FrequencyPolicy>(shape, distance);
}

}  // namespace moe::offload

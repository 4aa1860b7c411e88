// On-demand loading with least-recently-used eviction: what a plain offloading runtime does, and
// the baseline the other policies are measured against. It prefetches nothing.
#include "offload/policy.h"

namespace moe::offload {
namespace {

class LruPolicy final : public OffloadPolicy {
 public:
  std::string name() const override { return "lru"; }
  void BeginRequest(std::span<const float>) override {}
  void BeginIteration() override {}
  void ObserveGate(int, std::span<const float>, std::span<const int>) override {}
  std::vector<ExpertId> Prefetch(int) override { return {}; }
  double KeepScore(ExpertId, int64_t last_use) const override {
    return static_cast<double>(last_use);
  }
};

}  // namespace

std::unique_ptr<OffloadPolicy> MakeLruPolicy() { return std::make_unique<LruPolicy>(); }

const char* PolicyNames() { return "lru, frequency, fmoe"; }

m2n::StatusOr<std::unique_ptr<OffloadPolicy>> MakePolicy(const std::string& name,
                                                         const OffloadShape& shape,
                                                         const FmoeOptions& fmoe) {
  if (name == "lru") return MakeLruPolicy();
  if (name == "frequency") return MakeFrequencyPolicy(shape, fmoe.distance);
  if (name == "fmoe") return MakeFmoePolicy(shape, fmoe);
  return m2n::InvalidArgumentError("--offload: unknown policy \"" + name + "\" (" + PolicyNames() +
                                   ")");
}

}  // namespace moe::offload

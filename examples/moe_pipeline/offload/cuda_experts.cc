// The expert cache on the GPU backend (cuda_experts.h): an ExpertResidency over ExpertCache and
// CudaCopyBackend, driven by the policy as the CPU path drives it (offloaded_experts.cc).
#include "offload/cuda_experts.h"

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "compute/cuda/cuda_compute.h"
#include "offload/cache.h"
#include "offload/cuda_backend.h"

namespace moe::offload {
namespace {

class CachedExperts final : public cuda::ExpertResidency {
 public:
  CachedExperts(const ModelConfig& c, std::span<const int> held,
                std::unique_ptr<OffloadPolicy> policy, std::unique_ptr<CudaCopyBackend> backend)
      : c_(c),
        held_(static_cast<size_t>(c.num_local_experts), false),
        policy_(std::move(policy)),
        backend_(std::move(backend)) {
    for (int e : held) {  // an expert out of range is CudaExperts::Init's error to report
      if (e >= 0 && e < c.num_local_experts) held_[static_cast<size_t>(e)] = true;
    }
    policy_->BeginRequest({});
  }
  m2n::Status Init(const OffloadShape& shape, int capacity) {
    auto cache = ExpertCache::Create(shape, capacity, policy_.get(), backend_.get());
    if (!cache.ok()) return cache.status();
    cache_ = std::move(*cache);
    return m2n::OkStatus();
  }
  ~CachedExperts() override {
    if (cache_ == nullptr) return;
    cache_->Finish();
    std::fprintf(stderr, "[moe_pipeline] expert offload (%s, %d resident): %s, hit rate %.3f\n",
                 policy_->name().c_str(), cache_->capacity(), cache_->stats().Describe().c_str(),
                 cache_->stats().HitRate());
  }

  std::string name() const override {
    return "expert cache " + policy_->name() + ", " + std::to_string(cache_->capacity()) +
           " resident";
  }

  m2n::Status Acquire(int layer, std::span<const int> experts, std::span<const float> load,
                      void* stream, std::vector<cuda::DeviceExpert>* weights) override {
    // The policy observes the normalized gate weights of the layer's tokens, as on CPU.
    std::vector<float> probs(static_cast<size_t>(c_.num_local_experts), 0.0f);
    float total = 0;
    for (size_t i = 0; i < experts.size(); ++i) {
      probs[static_cast<size_t>(experts[i])] = load[i];
      total += load[i];
    }
    for (float& p : probs) p = total > 0 ? p / total : 0;
    if (layer == 0) policy_->BeginIteration();
    policy_->ObserveGate(layer, probs, experts);
    M2N_RETURN_IF_ERROR(cache_->Acquire(layer, experts));
    for (int e : experts) {
      const int slot = cache_->SlotOf({layer, e});
      M2N_RETURN_IF_ERROR(backend_->WaitOn(slot, stream));
      weights->push_back(
          cuda::ExpertInBlock(static_cast<const std::byte*>(backend_->Slot(slot)), c_));
    }
    return m2n::OkStatus();
  }

  m2n::Status Release(int layer, std::span<const int> experts, void* stream) override {
    for (int e : experts)
      M2N_RETURN_IF_ERROR(backend_->MarkRead(cache_->SlotOf({layer, e}), stream));
    cache_->Release(layer, experts);
    // The policies know the model, not the split: this worker prefetches only the experts it holds.
    std::vector<ExpertId> wanted = policy_->Prefetch(layer);
    std::erase_if(wanted, [&](ExpertId id) { return !held_[static_cast<size_t>(id.expert)]; });
    return cache_->Prefetch(wanted);
  }

 private:
  ModelConfig c_;
  std::vector<bool> held_;  // per global expert
  // The cache points at the policy and the backend: it is declared after them, destroyed first.
  std::unique_ptr<OffloadPolicy> policy_;
  std::unique_ptr<CudaCopyBackend> backend_;
  std::unique_ptr<ExpertCache> cache_;
};

}  // namespace

m2n::StatusOr<std::unique_ptr<ExpertCompute>> MakeCudaOffloadedExperts(
    const ModelConfig& config, const WeightSource& source, std::span<const int> experts,
    const ComputeOptions& compute, const OffloadOptions& offload) {
  M2N_RETURN_IF_ERROR(cuda::UseDevice(compute.local_rank));
  const OffloadShape shape{config.num_hidden_layers, config.num_local_experts,
                           config.num_experts_per_tok,
                           static_cast<int64_t>(cuda::ExpertBlockBytes(config))};
  M2N_ASSIGN_OR_RETURN(std::unique_ptr<OffloadPolicy> policy, MakeLearnedPolicy(shape, offload));
  M2N_ASSIGN_OR_RETURN(std::unique_ptr<CudaCopyBackend> backend,
                       CudaCopyBackend::Create(shape, offload.gpu_experts));
  CudaCopyBackend* pinned = backend.get();
  M2N_RETURN_IF_ERROR(cuda::ReadExpertBlocks(config, source, experts, [&](int l, int e) {
    return pinned->Host({l, e}).data();
  }));
  auto residency =
      std::make_unique<CachedExperts>(config, experts, std::move(policy), std::move(backend));
  M2N_RETURN_IF_ERROR(residency->Init(shape, offload.gpu_experts));
  return cuda::MakeCudaExperts(config, source, experts, compute, std::move(residency));
}

}  // namespace moe::offload

// The expert side with offloading (moe_pipeline --offload POLICY --gpu_experts C): the worker's
// experts stay in a host copy, C of them are resident in a separate arena (standing for GPU memory
// on CPU), and each layer's step acquires the experts its tokens were routed to through the expert
// cache (cache.h), loading misses on demand, then prefetches what the policy asks for. The FFN is
// the CPU backend's own (compute/cpu/expert_ffn.h) on the resident copy, over the rows of an
// m2n::ExpertBatch (ExpertCompute::ForwardGrouped), so outputs are those without offloading; only
// residency differs.
//
// On the GPU backend (backend "cuda", offload/cuda_experts.h) the host copy is pinned, the C
// resident experts are device slots filled on a copy stream, and the GPU backend's own GEMMs read
// the slots: again only residency differs.
//
// What the expert worker sees of routing is each token's top-k and their weights, not the full gate
// distribution: the policies observe the normalized top-k weights averaged over the layer's tokens.
#pragma once

#include <memory>
#include <span>
#include <string>

#include "compute/compute.h"
#include "m2n/status.h"
#include "offload/policy.h"

namespace moe::offload {

struct OffloadOptions {
  std::string policy;  // empty: no offloading
  int gpu_experts = 0;  // C, per expert worker
  std::string
      maps;  // a routing trace whose non-held-out requests the policy learns from (fMoE's maps)
};

// `backend`: "cpu", or "cuda" where built.
m2n::StatusOr<std::unique_ptr<ExpertCompute>> MakeOffloadedExperts(
    const std::string& backend, const ModelConfig& config, const WeightSource& source,
    std::span<const int> experts, const ComputeOptions& compute, const OffloadOptions& offload);

// The policy `offload` names for `shape`, with the --offload_maps trace's training requests
// learned.
m2n::StatusOr<std::unique_ptr<OffloadPolicy>> MakeLearnedPolicy(const OffloadShape& shape,
                                                                const OffloadOptions& offload);

}  // namespace moe::offload

// The CPU backend: fp32, plain C++ over a thread pool.
#pragma once

#include <memory>

#include "compute/compute.h"

namespace moe::cpu {

std::unique_ptr<AttentionCompute> MakeCpuAttention(const ModelConfig& config,
                                                   AttentionWeights weights,
                                                   const ComputeOptions& options);
std::unique_ptr<ExpertCompute> MakeCpuExperts(const ModelConfig& config, ExpertShard shard,
                                              const ComputeOptions& options);

}  // namespace moe::cpu

#include "compute/compute.h"

#include "compute/cpu/cpu_compute.h"

namespace moe {

std::vector<std::string> AvailableBackends() { return {"cpu"}; }

namespace {
m2n::Status CheckBackend(const std::string& backend) {
  for (const std::string& b : AvailableBackends()) {
    if (b == backend) return m2n::OkStatus();
  }
  std::string list;
  for (const std::string& b : AvailableBackends()) list += (list.empty() ? "" : ", ") + b;
  return m2n::InvalidArgumentError("compute backend \"" + backend + "\" is not built here (available: " + list + ")");
}
}  // namespace

m2n::StatusOr<std::unique_ptr<AttentionCompute>> MakeAttentionCompute(const std::string& backend,
                                                                      const ModelConfig& config,
                                                                      AttentionWeights weights,
                                                                      const ComputeOptions& options) {
  M2N_RETURN_IF_ERROR(CheckBackend(backend));
  return cpu::MakeCpuAttention(config, std::move(weights), options);
}

m2n::StatusOr<std::unique_ptr<ExpertCompute>> MakeExpertCompute(const std::string& backend,
                                                                const ModelConfig& config, ExpertShard shard,
                                                                const ComputeOptions& options) {
  M2N_RETURN_IF_ERROR(CheckBackend(backend));
  return cpu::MakeCpuExperts(config, std::move(shard), options);
}

}  // namespace moe

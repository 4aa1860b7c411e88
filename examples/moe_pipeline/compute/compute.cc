#include "compute/compute.h"

#include <algorithm>

#include "compute/cpu/cpu_compute.h"
#if MOE_WITH_CUDA
#include "compute/cuda/cuda_compute.h"
#endif

namespace moe {

std::vector<std::string> AvailableBackends() {
#if MOE_WITH_CUDA
  return {"cpu", "cuda"};
#else
  return {"cpu"};
#endif
}

std::string ResolveBackend(const std::string& name) {
  if (name != "auto") return name;
#if MOE_WITH_CUDA
  if (cuda::VisibleDevices() > 0) return "cuda";
#endif
  return "cpu";
}

m2n::StatusOr<Precision> BackendPrecision(const std::string& backend) {
  // fp32 on CPU: rounding differences of ~1e-6. bf16 on GPU: weights rounded (the reference
  // rounds them too), GEMM inputs and the KV cache in bf16, fp32 accumulation.
  if (backend == "cpu") return Precision{1e-4, 1e-5, false, "fp32"};
  if (backend == "cuda") return Precision{3e-2, 5e-2, true, "bf16"};
  std::string list;
  for (const std::string& b : AvailableBackends()) list += (list.empty() ? "" : ", ") + b;
  return m2n::InvalidArgumentError("compute backend \"" + backend +
                                   "\" is not built here (available: " + list + ")");
}

namespace {
m2n::Status CheckBackend(const std::string& backend) {
  for (const std::string& b : AvailableBackends()) {
    if (b == backend) return m2n::OkStatus();
  }
  std::string list;
  for (const std::string& b : AvailableBackends()) list += (list.empty() ? "" : ", ") + b;
  return m2n::InvalidArgumentError(
      "compute backend \"" + backend + "\" is not built here (available: " + list +
      (backend == "cuda" ? "; configure with the CUDA toolkit present" : "") + ")");
}
}  // namespace

m2n::Status ExpertCompute::ForwardGrouped(int layer, const m2n::ExpertBatch& b, float* y) {
  // Row i as a top-1 token of its expert with weight 1: Forward then writes FFN(x[i]) to y[i].
  std::vector<int32_t> expert(static_cast<size_t>(b.rows));
  for (size_t l = 0; l < b.experts.size(); ++l) {
    std::fill(expert.begin() + b.offsets[l], expert.begin() + b.offsets[l + 1], b.experts[l]);
  }
  const std::vector<float> weight(static_cast<size_t>(b.rows), 1.0f);
  const ExpertInput input{b.rows, reinterpret_cast<const float*>(b.x), expert.data(), weight.data(),
                          y};
  return Forward(layer, 1, std::span<const ExpertInput>(&input, 1));
}

namespace {
m2n::Status NoDevicePath(const std::string& name) {
  return m2n::UnimplementedError("the " + name + " backend has no device path");
}
}  // namespace

m2n::Status AttentionCompute::AttentionAndGateOnDevice(int, int, DeviceDispatch*) {
  return NoDevicePath(name());
}
m2n::Status AttentionCompute::DeviceLane(int, DeviceDispatch*) { return NoDevicePath(name()); }
m2n::Status AttentionCompute::BeforeEpCall(int, bool) { return NoDevicePath(name()); }
m2n::Status AttentionCompute::AfterEpCall(int, bool) { return NoDevicePath(name()); }
m2n::Status AttentionCompute::AddCombinedOnDevice(int, int) { return NoDevicePath(name()); }
m2n::Status AttentionCompute::RoutingOnHost(int, int, Routing*) { return NoDevicePath(name()); }
m2n::Status AttentionCompute::SyncDevice() { return NoDevicePath(name()); }
m2n::Status ExpertCompute::SyncDevice() { return NoDevicePath(name()); }
m2n::Status ExpertCompute::ForwardGroupedOnDevice(int, const m2n::DeviceExpertBatch&,
                                                  const float**) {
  return NoDevicePath(name());
}

m2n::StatusOr<std::unique_ptr<AttentionCompute>> MakeAttentionCompute(
    const std::string& backend, const ModelConfig& config, const WeightSource& source,
    const ComputeOptions& options) {
  M2N_RETURN_IF_ERROR(CheckBackend(backend));
#if MOE_WITH_CUDA
  if (backend == "cuda") return cuda::MakeCudaAttention(config, source, options);
#endif
  M2N_ASSIGN_OR_RETURN(AttentionWeights weights, LoadAttentionWeights(config, source));
  return cpu::MakeCpuAttention(config, std::move(weights), options);
}

m2n::StatusOr<std::unique_ptr<ExpertCompute>> MakeExpertCompute(const std::string& backend,
                                                                const ModelConfig& config,
                                                                const WeightSource& source,
                                                                std::span<const int> experts,
                                                                const ComputeOptions& options) {
  M2N_RETURN_IF_ERROR(CheckBackend(backend));
#if MOE_WITH_CUDA
  if (backend == "cuda") return cuda::MakeCudaExperts(config, source, experts, options);
#endif
  M2N_ASSIGN_OR_RETURN(ExpertShard shard, LoadExpertShard(config, source, experts));
  return cpu::MakeCpuExperts(config, std::move(shard), options);
}

}  // namespace moe

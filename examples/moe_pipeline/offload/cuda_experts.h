// The expert cache on the GPU backend (moe_pipeline --backend cuda --offload POLICY --gpu_experts
// C): the worker's experts in pinned host memory, C device slots filled on a copy stream of their
// own (offload/cuda_backend.h), and the GPU backend's expert step (compute/cuda/) reading each
// layer's weights from the slots the cache gives it. A step's compute stream waits only for the
// loads of its own experts; prefetches issued after a layer overlap the next layers' compute. The
// GEMMs are the GPU backend's own, on the same bf16 values: only residency differs.
//
// The pinned copy has room for every expert of the model; a worker fills only its own (with E
// expert workers, (E - 1) / E of it stays unused: fine for the tiny models this path is tested on;
// the timed run, moe_offload_bench, holds exactly the experts it serves).
#pragma once

#include <memory>
#include <span>

#include "compute/compute.h"
#include "m2n/status.h"
#include "offload/offloaded_experts.h"

namespace moe::offload {

m2n::StatusOr<std::unique_ptr<ExpertCompute>> MakeCudaOffloadedExperts(
    const ModelConfig& config, const WeightSource& source, std::span<const int> experts,
    const ComputeOptions& compute, const OffloadOptions& offload);

}  // namespace moe::offload

// The GPU backend: bf16 weights in device memory (generated there when seeded, uploaded from
// safetensors otherwise), cuBLAS GEMMs with fp32 accumulation (experts: one grouped GEMM over all
// of a worker's experts per projection), and kernels of compute/cuda/kernels.cu for RMSNorm, RoPE,
// the bf16 KV cache, attention over it, the gate and top-k, and token gather / scatter.
//
// One process per GPU (the device current when the backend is made). Rows crossing the interface
// (dispatch, combine, logits) are host memory today: they are staged through device copies, so the
// runtime works unchanged over host m2n slots. The zero-copy path (m2n slots in GPU memory,
// stream-ordered calls) is the next step: see README.md.
#pragma once

#include <memory>
#include <span>

#include "compute/compute.h"

namespace moe::cuda {

// CUDA devices this process sees (0 when none, or no driver).
int VisibleDevices();

// Both use GPU options.local_rank modulo the visible devices.
m2n::StatusOr<std::unique_ptr<AttentionCompute>> MakeCudaAttention(const ModelConfig& config,
                                                                   const WeightSource& source,
                                                                   const ComputeOptions& options);
m2n::StatusOr<std::unique_ptr<ExpertCompute>> MakeCudaExperts(const ModelConfig& config,
                                                              const WeightSource& source,
                                                              std::span<const int> experts,
                                                              const ComputeOptions& options);

}  // namespace moe::cuda

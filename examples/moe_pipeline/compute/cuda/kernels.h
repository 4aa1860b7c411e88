// The CUDA kernels of the GPU backend. bf16 tensors are passed as uint16_t* (their bits), so that
// host code needs no CUDA bf16 header; activations between kernels are fp32 unless named _bf16.
// Every launcher enqueues on `stream` and returns the launch error.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moe::cuda {

// out[i] = seeded value of element i of a tensor whose key is `key` (model/weights.h: the same
// function as FillSeeded on the host), rounded to bf16.
cudaError_t LaunchFillSeeded(uint16_t* out, int64_t n, uint64_t key, float scale, bool is_norm,
                             cudaStream_t stream);
cudaError_t LaunchFloatToBf16(const float* in, uint16_t* out, int64_t n, cudaStream_t stream);

// residual[i] = embed[tokens[i]] for i < rows.
cudaError_t LaunchEmbed(const int32_t* tokens, int rows, const uint16_t* embed, int hidden,
                        float* residual, cudaStream_t stream);
// out_bf16[r] = x[r] / rms(x[r]) * weight (and out_f32 when not null).
cudaError_t LaunchRmsNorm(const float* x, int rows, int hidden, const uint16_t* weight, float eps,
                          uint16_t* out_bf16, float* out_f32, cudaStream_t stream);
// RoPE (rotate-half) over `heads` heads of every row, at positions[row].
cudaError_t LaunchRope(float* x, int rows, int heads, int head_dim, const int32_t* positions,
                       double log_theta, cudaStream_t stream);
// Writes k, v of each row into the KV cache ([slot][layer][position][kv_dim], bf16) at
// (slots[row], layer, positions[row]).
cudaError_t LaunchAppendKv(const float* k, const float* v, int rows, int kv_dim,
                           const int32_t* slots, const int32_t* positions, int layer, int layers,
                           int max_context, uint16_t* k_cache, uint16_t* v_cache,
                           cudaStream_t stream);
// Grouped-query attention of every (row, head) over positions [0, positions[row]] of its slot's
// cache, online softmax in tiles of head_dim positions; out in bf16 [rows, heads * head_dim].
cudaError_t LaunchAttention(const float* q, int rows, int heads, int kv_heads, int head_dim,
                            const int32_t* slots, const int32_t* positions, int layer, int layers,
                            int max_context, const uint16_t* k_cache, const uint16_t* v_cache,
                            uint16_t* out_bf16, cudaStream_t stream);
// x[i] += y[i]
cudaError_t LaunchAdd(float* x, const float* y, int64_t n, cudaStream_t stream);
// Per row: softmax over `experts` gate logits, top-k (ties: lower index), renormalized if asked.
cudaError_t LaunchGateTopK(const float* logits, int rows, int experts, int top_k, bool renormalize,
                           int32_t* index, float* weight, cudaStream_t stream);
// dst[i] = src[rows[i]] (hidden floats each); the _bf16 form converts.
cudaError_t LaunchGatherRows(const float* src, const int32_t* rows, int n, int hidden, float* dst,
                             cudaStream_t stream);
cudaError_t LaunchGatherRowsBf16(const float* src, const int32_t* rows, int n, int hidden,
                                 uint16_t* dst, cudaStream_t stream);
// dst[rows[i]] += scale[i] * src[i] (scale null: 1); rows distinct within one call.
cudaError_t LaunchScatterAddRows(float* dst, const int32_t* rows, const float* scale, int n,
                                 int hidden, const float* src, cudaStream_t stream);
// a = silu(h1) * h3 in bf16.
cudaError_t LaunchSiluMul(const float* h1, const float* h3, int64_t n, uint16_t* a_bf16,
                          cudaStream_t stream);

}  // namespace moe::cuda

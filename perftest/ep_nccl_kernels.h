// The kernels of m2n_ep_gpu_perf's NCCL baseline (ep_nccl.h), behind plain launch functions: this
// header is C++17 and CUDA-runtime only, so that the .cu stays apart from m2n's C++20 headers.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace m2n::perf::ep {

__host__ __device__ constexpr size_t Align16(size_t n) { return (n + 15) / 16 * 16; }

struct Dims {
  int m, n, me;  // me: this expert rank's index in [0, n) (expert ranks only)
  int tokens, hidden, top_k, experts;
  bool bf16;
  size_t row;  // bytes of a row
  size_t record;  // bytes of a dispatch record
};

// Attention rank: per expert rank r its tokens in token order (dest[r * tokens + i]), counts[r]
// rows and counts[n + r] pairs, pair_pos[t * top_k + j] the index of (t, j) among its owner's
// pairs; then the records into send[r * tokens + i].
void LaunchRoute(const Dims& d, const int32_t* ids, int* dest, int* counts, int* pair_pos,
                 const std::byte* x, const float* weights, std::byte* send, cudaStream_t s);
// Expert rank: the received records grouped by local expert (grouped[g], out[0] rows), and per
// attention rank a its answers in (record, j) order (answer_src, out[1 + a] of them).
void LaunchGroup(const Dims& d, const std::byte* recv, const int* received, int* grouped_src,
                 int* slot_of, int* answer_src, int* out, std::byte* grouped, cudaStream_t s);
// Expert rank: answers[a * tokens * top_k + p] = y[answer_src[...]].
void LaunchAnswers(const Dims& d, const std::byte* y, const int* answer_src, const int* out,
                   std::byte* answers, cudaStream_t s);
// Attention rank: out[t] = sum_j w[t][j] * answer(t, j), fp32 in top-k order, rounded once.
void LaunchWeightedSum(const Dims& d, const int32_t* ids, const float* weights, const int* pair_pos,
                       const std::byte* answers, std::byte* out, cudaStream_t s);

}  // namespace m2n::perf::ep

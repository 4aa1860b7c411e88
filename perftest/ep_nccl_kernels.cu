// The kernels of m2n_ep_gpu_perf's NCCL baseline (ep_nccl_kernels.h): routing, packing, grouping
// and the weighted sum. A dispatch record (one token for one expert rank): the row (hidden x dtype,
// padded to 16 bytes), then top_k int32 expert ids, then top_k float weights (padded to 16). Record
// i of attention rank a sits at a * tokens + i of an expert rank's receive buffer; answer p of
// expert rank r at r * tokens * top_k + p of an attention rank's.
#include "ep_nccl_kernels.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cub/block/block_scan.cuh>

namespace m2n::perf::ep {
namespace {

constexpr int kScanThreads = 1024;
constexpr int kCopyThreads = 256;
using BlockScan = cub::BlockScan<int, kScanThreads>;

__device__ __forceinline__ int OwnerIndex(int expert, const Dims& d) {
  return static_cast<int>(static_cast<long long>(expert) * d.n / d.experts);
}

__device__ void CopyBytes(const std::byte* src, std::byte* dst, size_t n) {
  if (((reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst) | n) & 15) == 0) {
    const uint4* s = reinterpret_cast<const uint4*>(src);
    uint4* t = reinterpret_cast<uint4*>(dst);
    for (size_t i = threadIdx.x; i < n / 16; i += blockDim.x) t[i] = s[i];
    return;
  }
  for (size_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
}

// Exclusive scan of `value` over the block, continued across rounds through *carry.
__device__ int ScanWithCarry(BlockScan::TempStorage& temp, int value, int* carry) {
  int position = 0, total = 0;
  BlockScan(temp).ExclusiveSum(value, position, total);
  const int base = *carry;
  __syncthreads();
  if (threadIdx.x == 0) *carry += total;
  __syncthreads();
  return base + position;
}

// Attention rank, one block: per expert rank r, its tokens in token order (dest[r * tokens + i]),
// counts[r] of them and counts[n + r] pairs, and for every (t, j) with its expert on r the index
// of that pair among r's pairs.
__global__ void __launch_bounds__(kScanThreads)
    RouteKernel(Dims d, const int32_t* ids, int* dest, int* counts, int* pair_pos) {
  __shared__ BlockScan::TempStorage temp;
  __shared__ int rows, pairs;
  for (int r = 0; r < d.n; ++r) {
    if (threadIdx.x == 0) rows = pairs = 0;
    __syncthreads();
    for (int base = 0; base < d.tokens; base += kScanThreads) {
      const int t = base + static_cast<int>(threadIdx.x);
      int mine = 0;
      for (int j = 0; t < d.tokens && j < d.top_k; ++j)
        mine += OwnerIndex(ids[t * d.top_k + j], d) == r;
      const int row = ScanWithCarry(temp, mine > 0, &rows);
      int pair = ScanWithCarry(temp, mine, &pairs);
      if (mine > 0) {
        dest[r * d.tokens + row] = t;
        for (int j = 0; j < d.top_k; ++j)
          if (OwnerIndex(ids[t * d.top_k + j], d) == r) pair_pos[t * d.top_k + j] = pair++;
      }
    }
    if (threadIdx.x == 0) {
      counts[r] = rows;
      counts[d.n + r] = pairs;
    }
    __syncthreads();
  }
}

// Attention rank, block (i, r): record i for expert rank r, if there is one.
__global__ void PackKernel(Dims d, const std::byte* x, const int32_t* ids, const float* weights,
                           const int* dest, const int* counts, std::byte* send) {
  const int i = static_cast<int>(blockIdx.x), r = static_cast<int>(blockIdx.y);
  if (i >= counts[r]) return;
  const int t = dest[r * d.tokens + i];
  std::byte* record = send + (static_cast<size_t>(r) * d.tokens + i) * d.record;
  CopyBytes(x + static_cast<size_t>(t) * d.row, record, d.row);
  int32_t* rid = reinterpret_cast<int32_t*>(record + Align16(d.row));
  float* rw = reinterpret_cast<float*>(rid + d.top_k);
  for (int j = static_cast<int>(threadIdx.x); j < d.top_k; j += blockDim.x) {
    rid[j] = ids[t * d.top_k + j];
    rw[j] = weights[t * d.top_k + j];
  }
}

__device__ __forceinline__ const int32_t* RecordIds(const std::byte* recv, const Dims& d, int q) {
  return reinterpret_cast<const int32_t*>(recv + static_cast<size_t>(q) * d.record +
                                          Align16(d.row));
}

// Expert rank, one block. Records q = a * tokens + i (i < received[a]) grouped by local expert,
// then by q: grouped_src[g] = q; per attention rank a its answers in (i, j) order:
// answer_src[a * tokens * top_k + p] = g; out[0] = rows, out[1 + a] = answers for a.
__global__ void __launch_bounds__(kScanThreads)
    GroupKernel(Dims d, const std::byte* recv, const int* received, int* grouped_src, int* slot_of,
                int* answer_src, int* out) {
  __shared__ BlockScan::TempStorage temp;
  __shared__ int rows, pairs;
  const int records = d.m * d.tokens;
  if (threadIdx.x == 0) rows = 0;
  __syncthreads();
  for (int e = 0; e < d.experts; ++e) {
    if (OwnerIndex(e, d) != d.me) continue;
    for (int base = 0; base < records; base += kScanThreads) {
      const int q = base + static_cast<int>(threadIdx.x);
      int j_hit = -1;
      if (q < records && q % d.tokens < received[q / d.tokens]) {
        const int32_t* ids = RecordIds(recv, d, q);
        for (int j = 0; j < d.top_k; ++j)
          if (ids[j] == e) j_hit = j;
      }
      const int g = ScanWithCarry(temp, j_hit >= 0, &rows);
      if (j_hit >= 0) {
        grouped_src[g] = q;
        slot_of[q * d.top_k + j_hit] = g;
      }
    }
  }
  if (threadIdx.x == 0) out[0] = rows;
  for (int a = 0; a < d.m; ++a) {
    if (threadIdx.x == 0) pairs = 0;
    __syncthreads();
    for (int base = 0; base < received[a]; base += kScanThreads) {
      const int i = base + static_cast<int>(threadIdx.x);
      const int q = a * d.tokens + i;
      int mine = 0;
      const int32_t* ids = i < received[a] ? RecordIds(recv, d, q) : nullptr;
      for (int j = 0; ids != nullptr && j < d.top_k; ++j) mine += OwnerIndex(ids[j], d) == d.me;
      int p = ScanWithCarry(temp, mine, &pairs);
      for (int j = 0; ids != nullptr && j < d.top_k; ++j) {
        if (OwnerIndex(ids[j], d) == d.me)
          answer_src[a * d.tokens * d.top_k + p++] = slot_of[q * d.top_k + j];
      }
    }
    if (threadIdx.x == 0) out[1 + a] = pairs;
    __syncthreads();
  }
}

// Expert rank, block g: grouped row g.
__global__ void GatherKernel(Dims d, const std::byte* recv, const int* grouped_src, const int* out,
                             std::byte* grouped) {
  const int g = static_cast<int>(blockIdx.x);
  if (g >= out[0]) return;
  CopyBytes(recv + static_cast<size_t>(grouped_src[g]) * d.record,
            grouped + static_cast<size_t>(g) * d.row, d.row);
}

// Expert rank, block (p, a): answer p for attention rank a.
__global__ void AnswerKernel(Dims d, const std::byte* y, const int* answer_src, const int* out,
                             std::byte* answers) {
  const int p = static_cast<int>(blockIdx.x), a = static_cast<int>(blockIdx.y);
  if (p >= out[1 + a]) return;
  const size_t at = static_cast<size_t>(a) * d.tokens * d.top_k + p;
  CopyBytes(y + static_cast<size_t>(answer_src[at]) * d.row, answers + at * d.row, d.row);
}

__device__ __forceinline__ float LoadElement(const std::byte* row, int h, bool bf16) {
  if (bf16) return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(row)[h]);
  return reinterpret_cast<const float*>(row)[h];
}

// Attention rank, block t: out[t] = sum_j w[t][j] * answer(t, j), fp32 in top-k order, rounded
// once (no fused multiply-add: the host's rule).
__global__ void WeightedSumKernel(Dims d, const int32_t* ids, const float* weights,
                                  const int* pair_pos, const std::byte* answers, std::byte* out) {
  const int t = static_cast<int>(blockIdx.x);
  for (int h = static_cast<int>(threadIdx.x); h < d.hidden; h += blockDim.x) {
    float acc = 0.0f;
    for (int j = 0; j < d.top_k; ++j) {
      const int r = OwnerIndex(ids[t * d.top_k + j], d);
      const size_t at = static_cast<size_t>(r) * d.tokens * d.top_k + pair_pos[t * d.top_k + j];
      acc = __fadd_rn(
          acc, __fmul_rn(weights[t * d.top_k + j], LoadElement(answers + at * d.row, h, d.bf16)));
    }
    if (d.bf16) {
      reinterpret_cast<__nv_bfloat16*>(out + static_cast<size_t>(t) * d.row)[h] =
          __float2bfloat16_rn(acc);
    } else {
      reinterpret_cast<float*>(out + static_cast<size_t>(t) * d.row)[h] = acc;
    }
  }
}

}  // namespace

void LaunchRoute(const Dims& d, const int32_t* ids, int* dest, int* counts, int* pair_pos,
                 const std::byte* x, const float* weights, std::byte* send, cudaStream_t s) {
  RouteKernel<<<1, kScanThreads, 0, s>>>(d, ids, dest, counts, pair_pos);
  PackKernel<<<dim3(static_cast<unsigned>(std::max(d.tokens, 1)), static_cast<unsigned>(d.n)),
               kCopyThreads, 0, s>>>(d, x, ids, weights, dest, counts, send);
}

void LaunchGroup(const Dims& d, const std::byte* recv, const int* received, int* grouped_src,
                 int* slot_of, int* answer_src, int* out, std::byte* grouped, cudaStream_t s) {
  GroupKernel<<<1, kScanThreads, 0, s>>>(d, recv, received, grouped_src, slot_of, answer_src, out);
  const unsigned rows = static_cast<unsigned>(std::max(d.m * d.tokens * d.top_k, 1));
  GatherKernel<<<rows, kCopyThreads, 0, s>>>(d, recv, grouped_src, out, grouped);
}

void LaunchAnswers(const Dims& d, const std::byte* y, const int* answer_src, const int* out,
                   std::byte* answers, cudaStream_t s) {
  const unsigned pairs = static_cast<unsigned>(std::max(d.tokens * d.top_k, 1));
  AnswerKernel<<<dim3(pairs, static_cast<unsigned>(d.m)), kCopyThreads, 0, s>>>(d, y, answer_src,
                                                                                out, answers);
}

void LaunchWeightedSum(const Dims& d, const int32_t* ids, const float* weights, const int* pair_pos,
                       const std::byte* answers, std::byte* out, cudaStream_t s) {
  if (d.tokens == 0) return;
  WeightedSumKernel<<<static_cast<unsigned>(d.tokens), kCopyThreads, 0, s>>>(
      d, ids, weights, pair_pos, answers, out);
}

}  // namespace m2n::perf::ep

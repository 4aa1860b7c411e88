#include "compute/cuda/kernels.h"

#include <cuda_bf16.h>

#include <cfloat>

namespace moe::cuda {
namespace {

__device__ __forceinline__ float Load(const uint16_t* p, int64_t i) {
  return __uint_as_float(static_cast<uint32_t>(p[i]) << 16);
}
__device__ __forceinline__ uint16_t ToBf16(float f) {
  const __nv_bfloat16 b = __float2bfloat16_rn(f);
  return *reinterpret_cast<const uint16_t*>(&b);
}

__device__ __forceinline__ uint64_t SplitMix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The host's FillSeeded, operation for operation (no contraction into FMAs).
__global__ void FillSeededKernel(uint16_t* out, int64_t n, uint64_t key, float scale,
                                 bool is_norm) {
  const float sqrt3 = sqrtf(3.0f);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float u =
        __fsub_rn(__fmul_rn(static_cast<float>(SplitMix(key + static_cast<uint64_t>(i)) >> 40),
                            2.0f / 16777216.0f),
                  1.0f);
    out[i] = ToBf16(is_norm ? __fadd_rn(1.0f, __fmul_rn(0.1f, u))
                            : __fmul_rn(__fmul_rn(scale, sqrt3), u));
  }
}

__global__ void FloatToBf16Kernel(const float* in, uint16_t* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = ToBf16(in[i]);
  }
}

__global__ void EmbedKernel(const int32_t* tokens, const uint16_t* embed, int hidden,
                            float* residual) {
  const int row = blockIdx.x;
  const int64_t from = int64_t{tokens[row]} * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x)
    residual[int64_t{row} * hidden + i] = Load(embed, from + i);
}

__device__ float BlockSum(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float total = 0;
  for (int w = 0; w < (blockDim.x + 31) / 32; ++w) total += shared[w];
  __syncthreads();
  return total;
}

__global__ void RmsNormKernel(const float* x, int hidden, const uint16_t* weight, float eps,
                              uint16_t* out_bf16, float* out_f32) {
  __shared__ float partial[32];
  const float* xr = x + int64_t{blockIdx.x} * hidden;
  float ss = 0;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) ss += xr[i] * xr[i];
  const float scale = rsqrtf(BlockSum(ss, partial) / hidden + eps);
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float v = xr[i] * scale * Load(weight, i);
    if (out_bf16 != nullptr) out_bf16[int64_t{blockIdx.x} * hidden + i] = ToBf16(v);
    if (out_f32 != nullptr) out_f32[int64_t{blockIdx.x} * hidden + i] = v;
  }
}

__global__ void RopeKernel(float* x, int heads, int head_dim, const int32_t* positions,
                           double log_theta) {
  const int row = blockIdx.x, half = head_dim / 2;
  for (int j = threadIdx.x; j < heads * half; j += blockDim.x) {
    const int h = j / half, i = j % half;
    const double angle = positions[row] * exp(-2.0 * i / head_dim * log_theta);
    const float c = static_cast<float>(cos(angle)), s = static_cast<float>(sin(angle));
    float* v = x + (int64_t{row} * heads + h) * head_dim;
    const float a = v[i], b = v[i + half];
    v[i] = a * c - b * s;
    v[i + half] = b * c + a * s;
  }
}

__device__ __forceinline__ int64_t CacheOffset(int slot, int layer, int layers, int max_context,
                                               int position, int kv_dim) {
  return ((int64_t{slot} * layers + layer) * max_context + position) * kv_dim;
}

__global__ void AppendKvKernel(const float* k, const float* v, int kv_dim, const int32_t* slots,
                               const int32_t* positions, int layer, int layers, int max_context,
                               uint16_t* k_cache, uint16_t* v_cache) {
  const int row = blockIdx.x;
  const int64_t at = CacheOffset(slots[row], layer, layers, max_context, positions[row], kv_dim);
  for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
    k_cache[at + i] = ToBf16(k[int64_t{row} * kv_dim + i]);
    v_cache[at + i] = ToBf16(v[int64_t{row} * kv_dim + i]);
  }
}

// One block per (row, head), head_dim threads: thread t owns output dimension t and, per tile,
// the score of position base + t.
__global__ void AttentionKernel(const float* q, int heads, int kv_heads, int head_dim,
                                const int32_t* slots, const int32_t* positions, int layer,
                                int layers, int max_context, const uint16_t* k_cache,
                                const uint16_t* v_cache, uint16_t* out) {
  extern __shared__ float shared[];
  float* qs = shared;  // [head_dim]
  float* scores = shared + head_dim;  // [head_dim]
  const int row = blockIdx.x / heads, h = blockIdx.x % heads, t = threadIdx.x;
  const int kvh = h / (heads / kv_heads), kv_dim = kv_heads * head_dim;
  const int len = positions[row] + 1;
  const int64_t base =
      CacheOffset(slots[row], layer, layers, max_context, 0, kv_dim) + int64_t{kvh} * head_dim;
  qs[t] = q[(int64_t{row} * heads + h) * head_dim + t];
  __syncthreads();
  const float scale = rsqrtf(static_cast<float>(head_dim));
  float m = -FLT_MAX, l = 0, acc = 0;
  for (int start = 0; start < len; start += head_dim) {
    const int p = start + t;
    float s = -FLT_MAX;
    if (p < len) {
      s = 0;
      const uint16_t* kp = k_cache + base + int64_t{p} * kv_dim;
      for (int d = 0; d < head_dim; ++d) s += qs[d] * Load(kp, d);
      s *= scale;
    }
    scores[t] = s;
    __syncthreads();
    const int count = min(head_dim, len - start);
    float tile_max = -FLT_MAX;
    for (int j = 0; j < count; ++j) tile_max = fmaxf(tile_max, scores[j]);
    const float new_m = fmaxf(m, tile_max);
    const float factor = __expf(m - new_m);
    l *= factor;
    acc *= factor;
    for (int j = 0; j < count; ++j) {
      const float w = __expf(scores[j] - new_m);
      l += w;
      acc += w * Load(v_cache, base + int64_t{start + j} * kv_dim + t);
    }
    m = new_m;
    __syncthreads();
  }
  out[(int64_t{row} * heads + h) * head_dim + t] = ToBf16(acc / l);
}

__global__ void AddKernel(float* x, const float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    x[i] += y[i];
  }
}

// One thread per row (experts <= 256).
__global__ void GateTopKKernel(const float* logits, int rows, int experts, int top_k,
                               bool renormalize, int32_t* index, float* weight) {
  const int row = blockIdx.x * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const float* g = logits + int64_t{row} * experts;
  float top = -FLT_MAX;
  for (int e = 0; e < experts; ++e) top = fmaxf(top, g[e]);
  float sum = 0;
  for (int e = 0; e < experts; ++e) sum += __expf(g[e] - top);
  uint32_t taken[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // bitmask of 256 experts
  float chosen = 0;
  for (int j = 0; j < top_k; ++j) {
    int best = -1;
    for (int e = 0; e < experts; ++e) {
      if ((taken[e / 32] >> (e % 32)) & 1u) continue;
      if (best < 0 || g[e] > g[best]) best = e;
    }
    taken[best / 32] |= 1u << (best % 32);
    index[int64_t{row} * top_k + j] = best;
    const float p = __expf(g[best] - top) / sum;
    weight[int64_t{row} * top_k + j] = p;
    chosen += p;
  }
  if (renormalize) {
    for (int j = 0; j < top_k; ++j) weight[int64_t{row} * top_k + j] /= chosen;
  }
}

__global__ void GatherRowsKernel(const float* src, const int32_t* rows, int hidden, float* dst) {
  const int i = blockIdx.x;
  for (int d = threadIdx.x; d < hidden; d += blockDim.x) {
    dst[int64_t{i} * hidden + d] = src[int64_t{rows[i]} * hidden + d];
  }
}

__global__ void GatherRowsBf16Kernel(const float* src, const int32_t* rows, int hidden,
                                     uint16_t* dst) {
  const int i = blockIdx.x;
  for (int d = threadIdx.x; d < hidden; d += blockDim.x) {
    dst[int64_t{i} * hidden + d] = ToBf16(src[int64_t{rows[i]} * hidden + d]);
  }
}

__global__ void ScatterAddRowsKernel(float* dst, const int32_t* rows, const float* scale,
                                     int hidden, const float* src) {
  const int i = blockIdx.x;
  const float s = scale == nullptr ? 1.0f : scale[i];
  for (int d = threadIdx.x; d < hidden; d += blockDim.x) {
    dst[int64_t{rows[i]} * hidden + d] += s * src[int64_t{i} * hidden + d];
  }
}

__global__ void SiluMulKernel(const float* h1, const float* h3, int64_t n, uint16_t* a) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float g = h1[i];
    a[i] = ToBf16(g / (1.0f + __expf(-g)) * h3[i]);
  }
}

int Blocks(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<int>(b < 65535 ? (b > 0 ? b : 1) : 65535);
}
int RowThreads(int width) { return width >= 256 ? 256 : ((width + 31) / 32) * 32; }

}  // namespace

cudaError_t LaunchFillSeeded(uint16_t* out, int64_t n, uint64_t key, float scale, bool is_norm,
                             cudaStream_t stream) {
  FillSeededKernel<<<Blocks(n, 256), 256, 0, stream>>>(out, n, key, scale, is_norm);
  return cudaGetLastError();
}

cudaError_t LaunchFloatToBf16(const float* in, uint16_t* out, int64_t n, cudaStream_t stream) {
  FloatToBf16Kernel<<<Blocks(n, 256), 256, 0, stream>>>(in, out, n);
  return cudaGetLastError();
}

cudaError_t LaunchEmbed(const int32_t* tokens, int rows, const uint16_t* embed, int hidden,
                        float* residual, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  EmbedKernel<<<rows, RowThreads(hidden), 0, stream>>>(tokens, embed, hidden, residual);
  return cudaGetLastError();
}

cudaError_t LaunchRmsNorm(const float* x, int rows, int hidden, const uint16_t* weight, float eps,
                          uint16_t* out_bf16, float* out_f32, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  RmsNormKernel<<<rows, RowThreads(hidden), 0, stream>>>(x, hidden, weight, eps, out_bf16, out_f32);
  return cudaGetLastError();
}

cudaError_t LaunchRope(float* x, int rows, int heads, int head_dim, const int32_t* positions,
                       double log_theta, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  RopeKernel<<<rows, RowThreads(heads * head_dim / 2), 0, stream>>>(x, heads, head_dim, positions,
                                                                    log_theta);
  return cudaGetLastError();
}

cudaError_t LaunchAppendKv(const float* k, const float* v, int rows, int kv_dim,
                           const int32_t* slots, const int32_t* positions, int layer, int layers,
                           int max_context, uint16_t* k_cache, uint16_t* v_cache,
                           cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  AppendKvKernel<<<rows, RowThreads(kv_dim), 0, stream>>>(k, v, kv_dim, slots, positions, layer,
                                                          layers, max_context, k_cache, v_cache);
  return cudaGetLastError();
}

cudaError_t LaunchAttention(const float* q, int rows, int heads, int kv_heads, int head_dim,
                            const int32_t* slots, const int32_t* positions, int layer, int layers,
                            int max_context, const uint16_t* k_cache, const uint16_t* v_cache,
                            uint16_t* out_bf16, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (head_dim > 1024) return cudaErrorInvalidValue;
  AttentionKernel<<<rows * heads, head_dim, 2 * head_dim * sizeof(float), stream>>>(
      q, heads, kv_heads, head_dim, slots, positions, layer, layers, max_context, k_cache, v_cache,
      out_bf16);
  return cudaGetLastError();
}

cudaError_t LaunchAdd(float* x, const float* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  AddKernel<<<Blocks(n, 256), 256, 0, stream>>>(x, y, n);
  return cudaGetLastError();
}

cudaError_t LaunchGateTopK(const float* logits, int rows, int experts, int top_k, bool renormalize,
                           int32_t* index, float* weight, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (experts > 256) return cudaErrorInvalidValue;
  GateTopKKernel<<<Blocks(rows, 128), 128, 0, stream>>>(logits, rows, experts, top_k, renormalize,
                                                        index, weight);
  return cudaGetLastError();
}

cudaError_t LaunchGatherRows(const float* src, const int32_t* rows, int n, int hidden, float* dst,
                             cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  GatherRowsKernel<<<n, RowThreads(hidden), 0, stream>>>(src, rows, hidden, dst);
  return cudaGetLastError();
}

cudaError_t LaunchGatherRowsBf16(const float* src, const int32_t* rows, int n, int hidden,
                                 uint16_t* dst, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  GatherRowsBf16Kernel<<<n, RowThreads(hidden), 0, stream>>>(src, rows, hidden, dst);
  return cudaGetLastError();
}

cudaError_t LaunchScatterAddRows(float* dst, const int32_t* rows, const float* scale, int n,
                                 int hidden, const float* src, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  ScatterAddRowsKernel<<<n, RowThreads(hidden), 0, stream>>>(dst, rows, scale, hidden, src);
  return cudaGetLastError();
}

cudaError_t LaunchSiluMul(const float* h1, const float* h3, int64_t n, uint16_t* a_bf16,
                          cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  SiluMulKernel<<<Blocks(n, 256), 256, 0, stream>>>(h1, h3, n, a_bf16);
  return cudaGetLastError();
}

}  // namespace moe::cuda

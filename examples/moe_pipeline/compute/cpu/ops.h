// The CPU kernels of the pipeline: fp32, row-major, weights [out, in] (y = x W^T).
#pragma once

#include <cstdint>
#include <span>

#include "compute/cpu/thread_pool.h"

namespace moe::cpu {

// y[r, j] = sum_k x[r, k] * w[j, k] for r < rows, j < n; parallel over j.
void MatMulNT(const float* x, int rows, int k, const float* w, int n, float* y, ThreadPool& pool);
// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight
void RmsNorm(const float* x, int rows, int hidden, const float* weight, float eps, float* out);
// Rotates pairs (i, i + head_dim / 2) of every head of every row by position * theta^(-2i /
// head_dim).
void ApplyRope(float* x, int rows, int heads, int head_dim, const int* positions, double theta);
// In place over n values.
void Softmax(float* x, int n);
// The k largest of probs[0, n) in descending order (ties: lower index first).
void TopK(const float* probs, int n, int k, int* index, float* value);
inline float Silu(float x) { return x / (1.0f + __builtin_expf(-x)); }

}  // namespace moe::cpu

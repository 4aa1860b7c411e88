#include "compute/cpu/ops.h"

#include <algorithm>
#include <cmath>

namespace moe::cpu {

namespace {
// Eight partial sums: independent chains the compiler can keep in vector registers.
inline float Dot(const float* a, const float* b, int k) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= k; i += 8) {
    for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
  }
  float total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; i < k; ++i) total += a[i] * b[i];
  return total;
}
}  // namespace

void MatMulNT(const float* x, int rows, int k, const float* w, int n, float* y, ThreadPool& pool) {
  if (rows <= 0 || n <= 0) return;
  // Per chunk of output columns: each weight row is read once for all rows of x (weights dominate
  // the bytes moved in decode).
  pool.ParallelFor(n, 16, [&](int begin, int end) {
    for (int j = begin; j < end; ++j) {
      const float* wj = w + static_cast<int64_t>(j) * k;
      for (int r = 0; r < rows; ++r)
        y[static_cast<int64_t>(r) * n + j] = Dot(x + static_cast<int64_t>(r) * k, wj, k);
    }
  });
}

void RmsNorm(const float* x, int rows, int hidden, const float* weight, float eps, float* out) {
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<int64_t>(r) * hidden;
    float* o = out + static_cast<int64_t>(r) * hidden;
    float ss = 0;
    for (int i = 0; i < hidden; ++i) ss += xr[i] * xr[i];
    const float scale = 1.0f / std::sqrt(ss / static_cast<float>(hidden) + eps);
    for (int i = 0; i < hidden; ++i) o[i] = xr[i] * scale * weight[i];
  }
}

void ApplyRope(float* x, int rows, int heads, int head_dim, const int* positions, double theta) {
  const int half = head_dim / 2;
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < half; ++i) {
      const double angle = positions[r] * std::pow(theta, -2.0 * i / head_dim);
      const float c = static_cast<float>(std::cos(angle)), s = static_cast<float>(std::sin(angle));
      for (int h = 0; h < heads; ++h) {
        float* v = x + (static_cast<int64_t>(r) * heads + h) * head_dim;
        const float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
      }
    }
  }
}

void Softmax(float* x, int n) {
  const float top = *std::max_element(x, x + n);
  float sum = 0;
  for (int i = 0; i < n; ++i) sum += (x[i] = std::exp(x[i] - top));
  for (int i = 0; i < n; ++i) x[i] /= sum;
}

void TopK(const float* probs, int n, int k, int* index, float* value) {
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int e = 0; e < n; ++e) {
      bool taken = false;
      for (int t = 0; t < j; ++t) taken = taken || index[t] == e;
      if (!taken && (best < 0 || probs[e] > probs[best])) best = e;
    }
    index[j] = best;
    value[j] = probs[best];
  }
}

}  // namespace moe::cpu

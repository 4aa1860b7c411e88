// The CPU expert FFN (expert_ffn.h).
#include "compute/cpu/expert_ffn.h"

#include <cstddef>
#include <cstring>

#include "compute/cpu/ops.h"

namespace moe::cpu {

void ExpertFfn(const ExpertWeights& w, const float* x, int n, int hidden, int intermediate,
               float* y, FfnScratch& s, ThreadPool& pool) {
  if (n <= 0) return;
  const size_t cells = static_cast<size_t>(n) * static_cast<size_t>(intermediate);
  s.h1.resize(cells);
  s.h3.resize(cells);
  MatMulNT(x, n, hidden, w.w1.data(), intermediate, s.h1.data(), pool);
  MatMulNT(x, n, hidden, w.w3.data(), intermediate, s.h3.data(), pool);
  for (size_t i = 0; i < cells; ++i) s.h1[i] = Silu(s.h1[i]) * s.h3[i];
  MatMulNT(s.h1.data(), n, intermediate, w.w2.data(), hidden, y, pool);
}

void ExpertFfnRouted(const ExpertWeights& w, std::span<const RoutedRow> rows,
                     std::span<const ExpertInput> inputs, int hidden, int intermediate,
                     FfnScratch& s, ThreadPool& pool) {
  const size_t h = static_cast<size_t>(hidden);
  s.x.resize(rows.size() * h);
  for (size_t i = 0; i < rows.size(); ++i) {
    const ExpertInput& in = inputs[static_cast<size_t>(rows[i].input)];
    std::memcpy(&s.x[i * h], in.x + static_cast<size_t>(rows[i].row) * h, h * sizeof(float));
  }
  s.y.resize(rows.size() * h);
  ExpertFfn(w, s.x.data(), static_cast<int>(rows.size()), hidden, intermediate, s.y.data(), s,
            pool);
  for (size_t i = 0; i < rows.size(); ++i) {
    float* out =
        inputs[static_cast<size_t>(rows[i].input)].out + static_cast<size_t>(rows[i].row) * h;
    for (size_t d = 0; d < h; ++d) out[d] += rows[i].weight * s.y[i * h + d];
  }
}

}  // namespace moe::cpu

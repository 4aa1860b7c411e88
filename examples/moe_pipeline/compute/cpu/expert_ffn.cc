// The CPU expert FFN (expert_ffn.h).
#include "compute/cpu/expert_ffn.h"

#include <cstddef>

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

}  // namespace moe::cpu

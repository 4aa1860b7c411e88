// The attention rank's side of combine, as a pure function: the top-k weighted sum of the expert
// outputs per token, from the combine messages of every expert rank. The CUDA path will run the
// same sum (same order, fp32 accumulator, one rounding) and be checked against this.
#pragma once

#include <cstddef>
#include <span>

#include "ep/layout.h"
#include "ep/routing.h"

namespace m2n::ep {

// out[t] = sum over j = 0 .. top_k-1 of topk_weights[t][j] * y(t, j), accumulated in fp32 in that
// order and converted to f.dtype once; y(t, j) is row plan.pair_index[t*k+j] of combine_y[owner of
// topk_ids[t][j]] (the y sections of the combine messages, one per expert rank). out: [tokens,
// hidden].
void WeightedSum(const Format& f, const Placement& placement, const DispatchPlan& plan,
                 std::span<const int32_t> topk_ids, std::span<const float> topk_weights,
                 std::span<const std::byte* const> combine_y, std::byte* out);

}  // namespace m2n::ep

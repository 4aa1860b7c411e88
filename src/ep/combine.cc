// The weighted sum of combine (combine.h).
#include "ep/combine.h"

#include <algorithm>
#include <vector>

#include "ep/dtype.h"

namespace m2n::ep {

void WeightedSum(const Format& f, const Placement& placement, const DispatchPlan& plan,
                 std::span<const int32_t> topk_ids, std::span<const float> topk_weights,
                 std::span<const std::byte* const> combine_y, std::byte* out) {
  const size_t k = size_t(plan.top_k), row_bytes = f.row_bytes();
  const int hidden = f.hidden;
  std::vector<float> sum(static_cast<size_t>(hidden));
  for (size_t t = 0; t < size_t(plan.tokens); ++t) {
    std::fill(sum.begin(), sum.end(), 0.0f);
    for (size_t j = 0; j < k; ++j) {
      const size_t at = t * k + j;
      const std::byte* y = combine_y[size_t(placement.owner[size_t(topk_ids[at])])] +
                           size_t(plan.pair_index[at]) * row_bytes;
      const float w = topk_weights[at];
      // One loop per type, so that each vectorizes.
      if (f.dtype == DataType::kFloat32) {
        for (int i = 0; i < hidden; ++i)
          sum[size_t(i)] += w * LoadElement(y, i, DataType::kFloat32);
      } else {
        for (int i = 0; i < hidden; ++i)
          sum[size_t(i)] += w * LoadElement(y, i, DataType::kBFloat16);
      }
    }
    for (int i = 0; i < hidden; ++i) StoreElement(sum[size_t(i)], i, f.dtype, out + t * row_bytes);
  }
}

}  // namespace m2n::ep

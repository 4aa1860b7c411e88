// The test's experts on the device for tests/ep_gpu_test.cc: ep_reference.h's ApplyExpert
// (y = x * (1 + (e % 5) / 4) + e / 8 in fp32, no FMA, stored as dtype) over a DeviceExpertBatch,
// so that a captured graph can run a whole layer (dispatch, experts, combine) with no host step.
#pragma once

#include <cuda_runtime.h>

namespace m2n::testing {

// y[g] = ApplyExpert(experts[l], x[g]) for every row g of the batch, l its local expert (found
// from offsets[0..L]). dtype: 1 fp32, 2 bf16. experts: device, L ids.
cudaError_t LaunchApplyExperts(const void* x, const int* offsets, const int* experts, int L,
                               int max_rows, int hidden, int dtype, void* y, cudaStream_t stream);

}  // namespace m2n::testing

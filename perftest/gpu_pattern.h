// The verifiable pattern of pattern.h, written and checked on the GPU: the producer kernel before a
// send and the consumer kernel after a receive in m2n_perf --use_cuda (the same bytes as
// FillPattern / CountWrongBytes compute on the host).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace m2n::perf {

cudaError_t FillPatternAsync(void* data, size_t bytes, uint64_t seed, cudaStream_t stream);
// Adds the number of bytes of `data` that differ from the pattern to *wrong (device memory).
cudaError_t CountWrongAsync(const void* data, size_t bytes, uint64_t seed,
                            unsigned long long* wrong, cudaStream_t stream);

}  // namespace m2n::perf

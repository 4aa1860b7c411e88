// The NCCL baseline of `m2n_perf --use_cuda --baseline nccl` (built only with CUDA and NCCL): the
// same M-to-N pattern as grouped ncclSend / ncclRecv (ncclGroupStart, one send or receive per
// peer, ncclGroupEnd) on the same stream, GPUs, sizes and timing code as m2n (gpu_bench.h).
// Receives rotate through slot_depth buffers per peer, as m2n's slots do.
#pragma once

#include <memory>
#include <span>
#include <string>

#include "m2n/status.h"
#include "gpu_bench.h"
#include "host_barrier.h"

struct ncclComm;  // nccl.h: ncclComm_t is ncclComm*

namespace m2n::perf {

// Creates the communicator of all ranks (rank 0's unique id travels through the host segment) and
// the receive buffers. Every rank calls it at the same point.
StatusOr<std::unique_ptr<GpuExchange>> MakeNcclExchange(HostSegment& segment, int rank, int world,
                                                        std::span<const int> peers, int depth,
                                                        size_t max_bytes, int64_t timeout_ms);

// An NCCL communicator of `world` ranks: rank 0's unique id travels through `segment` (its blob,
// between two barriers). Every rank calls it at the same point.
StatusOr<ncclComm*> ConnectNccl(HostSegment& segment, int rank, int world, int64_t timeout_ms);

// "NCCL 2.28.3" (ncclGetVersion).
std::string NcclVersion();

}  // namespace m2n::perf

// The NCCL baseline of m2n_ep_gpu_perf: expert-parallel dispatch and combine on device buffers as
// frameworks wrote them before DeepEP, between M attention ranks [0, M) and N expert ranks
// [M, M + N) of one NCCL communicator:
//   dispatch: each attention rank routes on the device (per expert rank the tokens with any of
//             their top-k experts there, in token order; each token once per rank with its ids and
//             weights), sends the counts (grouped ncclSend / ncclRecv), copies them to the host
//             and synchronizes its stream (the host must know the sizes of the next call), then
//             the rows (grouped ncclSend / ncclRecv); each expert rank groups the rows by local
//             expert on the device (the same grouped order as m2n's).
//   combine:  each expert rank sends every (row, j) pair's output row back (grouped; the counts
//             are known from the dispatch, after one more host copy); each attention rank sums the
//             top-k weighted rows per token in fp32 in top-k order, rounded once (m2n's rule).
// Experts are the identity (y = the grouped rows), as on m2n's side of the benchmark. Placement:
// contiguous blocks (expert e on expert rank e * N / experts), as ExpertParallelOptions' default.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "m2n/status.h"
#include "ep_perf.h"
#include "host_barrier.h"

namespace m2n::perf::ep {

// An NCCL communicator of every rank of the job; rank 0's unique id travels through `segment`.
class NcclComm {
 public:
  static StatusOr<std::unique_ptr<NcclComm>> Create(HostSegment& segment, int rank, int world,
                                                    int64_t timeout_ms);
  ~NcclComm();
  void* get() const { return comm_; }  // ncclComm_t

 private:
  void* comm_ = nullptr;
};

class NcclExpertParallel {
 public:
  // Device scratch for the shape; every rank of the communicator calls it.
  static StatusOr<std::unique_ptr<NcclExpertParallel>> Create(NcclComm& comm,
                                                              const EpPerfConfig& config,
                                                              const Shape& shape, int rank);
  ~NcclExpertParallel();
  NcclExpertParallel(const NcclExpertParallel&) = delete;
  NcclExpertParallel& operator=(const NcclExpertParallel&) = delete;

  // Collective. An attention rank passes device pointers to x [tokens, hidden], ids and weights
  // [tokens, top_k]; an expert rank nullptrs. Enqueued on `stream` (cudaStream_t); the host waits
  // for the counts once, as the baseline must.
  Status Dispatch(const void* x, const int32_t* ids, const float* weights, void* stream);
  // Collective. An attention rank gets out [tokens, hidden] (device) of its last Dispatch.
  Status Combine(void* out, void* stream);

  struct State;

 private:
  explicit NcclExpertParallel(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace m2n::perf::ep

// The MPI baseline of m2n_ep_perf: expert-parallel dispatch and combine as frameworks wrote them
// before DeepEP, on every rank of MPI_COMM_WORLD (attention ranks [0, M), expert ranks [M, M+N)):
//   dispatch: each attention rank counts the rows per expert rank (each token once per rank, with
//             its top-k ids and weights), MPI_Ialltoall of the counts, MPI_Ialltoallv of the rows;
//             each expert rank groups the rows by local expert (the same grouped order as m2n);
//   combine:  each expert rank sends every (row, j) pair's output row back, MPI_Ialltoallv (the
//             counts are known from the dispatch); each attention rank sums the top-k weighted
//             rows per token in fp32 in top-k order, rounded once (the same sum as m2n's).
// The experts are the identity (y = x), on both sides of the benchmark. Waits poll MPI_Testall and
// yield the core between polls, bounded by the timeout, as the m2n_perf MPI baseline does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "m2n/status.h"
#include "ep_perf.h"

namespace m2n::perf::ep {

class MpiExpertParallel {
 public:
  MpiExpertParallel(const EpPerfConfig& config, const Shape& shape, int rank);

  // Collective. An attention rank passes its routing (expert ranks nullptr).
  Status Dispatch(const RankRouting* routing);
  // Collective. An attention rank receives out[tokens, hidden] (dtype) of its last Dispatch.
  Status Combine(std::byte* out);

 private:
  void Pack(const RankRouting& routing);
  void Group();
  void WeightedSum(std::byte* out) const;

  EpPerfConfig config_;
  Shape shape_;
  int rank_, world_;
  size_t row_bytes_, record_bytes_;
  const RankRouting* routing_ = nullptr;
  // Per world rank: counts (rows or pairs) and byte displacements of the last exchange.
  std::vector<int> send_rows_, recv_rows_, send_bytes_, recv_bytes_, send_at_, recv_at_;
  std::vector<std::byte> send_, recv_;
  std::vector<int32_t> pair_index_;  // attention: per (t, j), its row in its owner's combine answer
  std::vector<int> pair_count_;  // attention: per world rank, pairs it answers
  // Expert rank: grouped rows, and for each the byte offset of its answer in send_ (combine).
  std::vector<std::byte> grouped_;
  std::vector<size_t> answer_at_;
};

// MPI_Init / MPI_Finalize and the few collectives the driver needs.
Status MpiStart(int* argc, char*** argv, int* rank, int* world);
void MpiStop();
[[noreturn]] void MpiAbort(int code);
Status MpiBarrier();
Status MpiBroadcastInt(int* value);
// Element-wise max (or min) over all ranks of `values`, onto rank 0.
Status MpiReduceOnRankZero(std::vector<double>& values, bool max);
// Sum over all ranks of `value`, onto every rank.
Status MpiSum(int64_t* value);
std::string MpiVersion();

}  // namespace m2n::perf::ep

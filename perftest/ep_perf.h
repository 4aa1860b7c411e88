// m2n_ep_perf: the host twin of the expert-parallel benchmark (issue 10, item 4): dispatch and
// combine time per call of m2n::ExpertParallel (include/m2n/ep.h) against MPI (a count exchange,
// then MPI_Alltoallv) in the same mpirun job, for scaled-down token shapes. This header holds what
// both sides share: the sweep, one row's shape, the routings each attention rank sends, and the
// per-call timing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "m2n/ep.h"
#include "m2n/status.h"

namespace m2n::perf::ep {

struct EpPerfConfig {
  int m = 2, n = 2;  // attention ranks [0, m), expert ranks [m, m + n)
  std::vector<int> tokens = {8, 16, 32,
                             64};  // per attention rank per call (the 64..512 / 8)
  std::vector<int> hidden = {512, 896};  // the 4096 and 7168 / 8
  std::vector<int> top_k = {2, 8};
  std::vector<int> experts = {8, 64};
  DataType dtype = DataType::kBFloat16;
  int iterations = 200;
  int warmup = 20;
  int64_t timeout_ms = 30000;  // every call's deadline
};
// Parses the command line (usage in perftest/README.md) over `defaults`; an error says which flag
// is wrong.
StatusOr<EpPerfConfig> ParseEpPerfArgs(int argc, char** argv, EpPerfConfig defaults = {});
// The GPU sweep's defaults (m2n_ep_gpu_perf): the shapes at full size.
EpPerfConfig GpuEpPerfDefaults();

// One row of the sweep.
struct Shape {
  int tokens = 0, hidden = 0, top_k = 0, experts = 0;
};
std::vector<Shape> Shapes(const EpPerfConfig& config);  // the rows whose top_k <= experts

// A few routings per attention rank, cycled through the iterations (generated outside the timing).
struct RankRouting {
  int tokens = 0;
  std::vector<std::byte> x;  // [tokens, hidden] of dtype
  std::vector<int32_t> ids;  // [tokens, top_k], distinct experts per token, uniform
  std::vector<float> weights;
};
std::vector<RankRouting> MakeRoutings(const EpPerfConfig& config, const Shape& shape, int rank,
                                      int count);

// The layer's options for one row (contiguous placement), and the slot_bytes a group needs for
// every row of the sweep.
ExpertParallelOptions LayerOptions(const EpPerfConfig& config, const Shape& shape);
StatusOr<size_t> SlotBytesForSweep(const EpPerfConfig& config);

// Element i of a row of dtype as fp32, and back (bf16: round to nearest even; the benchmark has no
// NaNs).
float LoadElement(const std::byte* row, int i, DataType dtype);
void StoreElement(float f, int i, DataType dtype, std::byte* row);

// Expert e's rank: contiguous blocks, as ExpertParallelOptions with an empty placement.
inline int OwnerRank(const EpPerfConfig& c, const Shape& s, int expert) {
  return c.m + int(int64_t(expert) * c.n / s.experts);
}

// One side's samples of a row: per iteration, when this rank started and ended each phase
// (steady clock, us). All ranks on one host share that clock, so a phase's time is the latest end
// less the earliest start over the ranks: the first byte leaving to the last rank done.
struct CallTimes {
  std::vector<double> dispatch_start, dispatch_end, combine_start, combine_end;
};

}  // namespace m2n::perf::ep

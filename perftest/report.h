// m2n_perf's output: a header box with the configuration, one row per size (and implementation),
// a footer; the same rows as JSON for machines.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "m2n/status.h"
#include "stats.h"

namespace m2n::perf {

struct RunInfo {
  std::string version;  // m2n's
  int senders = 0;
  int receivers = 0;
  std::string transport;  // the one the Group chose
  std::string transport_requested;
  size_t slot_bytes = 0;
  int slot_depth = 0;
  size_t min_bytes = 0;
  size_t max_bytes = 0;
  uint64_t step_factor = 0;
  int iters = 0;
  int warmup_iters = 0;
  bool check = true;
  std::string host;  // rank 0's host name
  std::string launcher;
  std::string ucx_tls;  // empty: not set
  std::string latency_mode;  // "oneway" or "roundtrip"
  std::string latency_rule;  // one line: what a latency sample is
  std::string spin;  // the waits' spin-then-yield policy
  std::string baseline;  // "none" or "mpi"
  std::string mpi_library;  // with the baseline: MPI_Get_library_version
  std::string nccl_library;  // with --baseline nccl: "NCCL 2.28.3"
  std::string gpu;  // --use_cuda: the GPUs and how ranks map to them; empty: host memory
  std::vector<std::string> topology;  // m2n::DescribeTopology(): a summary, then a line per GPU
  std::string placement;  // rank 0's NIC and proxy core, and why
};

struct Row {
  size_t bytes = 0;
  std::string impl;  // "m2n", "MPI", "NCCL" or "perftest"
  LatencySummary latency;
  double gbps = 0;
  double mmsg_per_s = 0;
  uint64_t wrong = 0;
};

// Table and box. `with_impl` adds the implementation column (with a baseline).
void PrintHeader(std::FILE* out, const RunInfo& info);
void PrintTableHead(std::FILE* out, bool with_impl);
void PrintRow(std::FILE* out, const Row& row, bool with_impl);
// "m2n/MPI" (or "m2n/NCCL") row: p50, p99, max and GB/s of m2n divided by the baseline's
// (latency < 1 and GB/s > 1 favour m2n).
void PrintRatioRow(std::FILE* out, const Row& m2n, const Row& mpi);
void PrintFooter(std::FILE* out, uint64_t total_wrong, double elapsed_s, size_t sizes);

std::string FormatRow(const Row& row, bool with_impl);
std::string FormatJson(const RunInfo& info, const std::vector<Row>& rows, uint64_t total_wrong,
                       double elapsed_s);

}  // namespace m2n::perf

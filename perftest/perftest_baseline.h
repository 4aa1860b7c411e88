// `m2n_perf --baseline perftest`: perftest's ib_write_lat and ib_write_bw on the same RDMA device,
// in the same run, after m2n's sweep: the lower bound an RDMA transport is measured against (the
// MegaScale-Infer paper did the same).
//
// Per size, rank 0 runs a server and a client of each tool on this host (RC, one QP, the RoCE v2
// GID m2n's verbs transport would pick, or M2N_VERBS_DEVICE / M2N_VERBS_GID_INDEX), bounded by
// --timeout_ms, and prints a "perftest" row and an "m2n/perftest" ratio row under m2n's row:
//   p50 = ib_write_lat's t_typical (its median of round trip / 2), p99 = its 99% percentile,
//   max = t_max; GB/s = ib_write_bw's BW average (--report_gbits / 8, GB = 1e9 B); Mmsg/s = its
//   MsgRate.
// perftest runs one pair; for M x N it is the per-pair lower bound, not the same pattern.
// Like the rest of perftest/, this uses only include/m2n/: device and GID come from sysfs.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "m2n/status.h"
#include "cli.h"
#include "report.h"

namespace m2n::perf {

struct PerftestSetup {
  std::string device;  // e.g. rxe0, mlx5_0
  int port = 1;
  int gid_index = 0;
  std::string gid;  // for the header, from sysfs
  std::string address;  // where the client finds the server (M2N_PERFTEST_ADDR, default 127.0.0.1)
  int iters = 1000;
  int64_t timeout_ms = 30000;
};

// Finds the device (M2N_VERBS_DEVICE, else the first in /sys/class/infiniband with an active port)
// and the GID index (M2N_VERBS_GID_INDEX, else RoCE v2 IPv4-mapped, else RoCE v2, else 0), and
// checks that ib_write_lat and ib_write_bw are on PATH.
StatusOr<PerftestSetup> ResolvePerftestSetup(const PerfConfig& config);

// ib_write_lat and ib_write_bw at `bytes`; a Row whose impl is "perftest".
StatusOr<Row> RunPerftestSize(const PerftestSetup& setup, size_t bytes);

// After m2n's sweep (rank 0, group closed): a header line, then per size of `m2n_rows` the m2n row,
// the perftest row and their ratio; returns the perftest rows (for --json). Errors name the tool,
// the size and its output.
StatusOr<std::vector<Row>> ReportPerftestBaseline(const PerfConfig& config,
                                                  const std::vector<Row>& m2n_rows, std::FILE* out);

}  // namespace m2n::perf

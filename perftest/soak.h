// --soak N: m2n_perf repeats its sweep, data check on, until at least N messages have gone from
// senders to receivers, and watches this process's resident memory, so a leak or a corruption that
// needs many messages shows up (issue 5, docs/reliability.md "Soak").
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>

#include "cli.h"

namespace m2n::perf {

// Sender-to-receiver messages of one sweep of `sizes` sizes: per size, warmup + iters latency
// iterations and iters streamed messages, each to every receiver from every sender. Replies and
// "done" messages of the round-trip mode are not counted.
uint64_t MessagesPerSweep(const PerfConfig& config, int senders, int receivers, size_t sizes);

// Sweeps needed for `config.soak_messages` (at least 1; 1 without --soak).
int SoakSweeps(const PerfConfig& config, int senders, int receivers, size_t sizes);

// This process's resident set in bytes (/proc/self/statm); 0 if unreadable.
size_t ResidentBytes();

// The soak's running account on one rank: progress lines (rank 0, at most every `every_s`
// seconds) and the closing lines, on `out`.
class SoakMonitor {
 public:
  SoakMonitor(int rank, int sweeps, uint64_t messages_per_sweep, double every_s = 10);
  // After each sweep: `wrong`, the bytes found wrong so far that this rank knows of.
  void AfterSweep(std::FILE* out, int sweep, uint64_t wrong);
  // Every rank: one line with its resident memory at the start, after the first sweep and at the
  // end; rank 0 also the totals.
  void Finish(std::FILE* out, uint64_t wrong, double elapsed_s) const;

 private:
  int rank_;
  int sweeps_;
  uint64_t messages_per_sweep_;
  double every_s_;
  size_t rss_start_;
  size_t rss_first_ = 0;
  int64_t start_ns_;
  int64_t last_print_ns_;
};

}  // namespace m2n::perf

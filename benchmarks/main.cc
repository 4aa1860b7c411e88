// m2n_microbench: Google Benchmark's main, plus the teardown of the idle Progress benchmark's peer
// process. `m2n_microbench --benchmark_min_time=0.05s` is the short run CI prints.
#include <benchmark/benchmark.h>

#if M2N_BENCH_PROGRESS
#include "progress_bench.h"
#endif

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  int rc = 0;
#if M2N_BENCH_PROGRESS
  rc = m2n::bench::StopProgressPeer();
#endif
  benchmark::Shutdown();
  return rc;
}

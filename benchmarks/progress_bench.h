// The idle Progress benchmark's peer process (progress_bench.cc): main() ends it after the run.
#pragma once

namespace m2n::bench {

// Says goodbye to the forked peer and waits for it, if the benchmark started one; 0 when all went
// well (or nothing was started), else 1 after printing why.
int StopProgressPeer();

}  // namespace m2n::bench

// How a moe_pipeline process becomes a rank, over m2n's launch kit (m2n/launch.h): started by a
// launcher (mpirun, mpiexec, torchrun, srun, or M2N_RANK set by hand), it joins that job; started
// bare, it starts the job itself: `world` copies of itself on this host (m2n::SpawnLocal), waits
// for them with a bound, and stops them all as soon as one fails.
#pragma once

#include "m2n/launch.h"
#include "m2n/status.h"

namespace moe {

// Exit statuses.
inline constexpr int kExitOk = 0;
inline constexpr int kExitCheckFailed =
    1;  // the pipeline ran; its outputs differ from the reference
inline constexpr int kExitUsage = 2;
inline constexpr int kExitFailure = 3;

// Starts `world` ranks of this program with this command line; returns the job's exit status.
int SpawnLocalJob(int world, int attention_workers, int timeout_s, int argc, char** argv);

}  // namespace moe

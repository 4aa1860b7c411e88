// How a moe_pipeline process becomes a rank: started by a launcher (mpirun, torchrun, srun, or
// M2N_RANK set by hand), it joins that job; started bare, it starts the job itself: `world` copies
// of itself on this host (fork + exec of /proc/self/exe with M2N_RANK / M2N_WORLD_SIZE /
// M2N_MASTER_ADDR / M2N_MASTER_PORT / M2N_JOB_ID), waits for them with a bound, and stops them all
// as soon as one fails.
#pragma once

#include "m2n/status.h"

namespace moe {

// Exit statuses.
inline constexpr int kExitOk = 0;
inline constexpr int kExitCheckFailed = 1;  // the pipeline ran; its outputs differ from the reference
inline constexpr int kExitUsage = 2;
inline constexpr int kExitFailure = 3;

// Whether a launcher's variables say this process is a rank of a job.
bool LaunchedAsRank();
// The world size the launcher says, or -1.
int LauncherWorldSize();

// Starts `world` ranks of this program with this command line; returns the job's exit status.
int SpawnLocalJob(int world, int attention_workers, int timeout_s, int argc, char** argv);

}  // namespace moe

// How an m2n_perf process becomes a rank of a job:
//   - started by a launcher (mpirun, torchrun, srun, or M2N_RANK set by hand): join that job;
//   - started bare: spawn M+N copies of itself on this host (m2n::SpawnLocal, m2n/launch.h), wait
//     for them with a bound, and stop them all as soon as one fails;
//   - started bare with --baseline mpi: exec mpirun with this same command line.
#pragma once

#include <string>

#include "m2n/launch.h"
#include "m2n/status.h"
#include "cli.h"

namespace m2n::perf {

enum class LauncherKind {
  kNone,  // no launcher variables: m2n_perf starts the job itself
  kSelf,  // a rank m2n_perf started
  kM2nEnv,  // M2N_RANK / M2N_WORLD_SIZE set by someone else
  kTorchrun,  // RANK / WORLD_SIZE
  kOpenMpi,  // OMPI_COMM_WORLD_RANK / _SIZE
  kPmi,  // PMI_RANK / PMI_SIZE (MPICH's mpiexec)
  kSlurm,  // SLURM_PROCID / SLURM_NTASKS
};

struct LauncherInfo {
  LauncherKind kind = LauncherKind::kNone;
  std::string name;  // for the header: "mpirun (Open MPI)", ...
  int world_size = -1;  // -1: the launcher does not say
  int local_size = -1;  // ranks on this host, -1: the launcher does not say
  bool multi_host = false;  // the launcher says the job spans hosts
};

// What m2n::DetectLaunch found (ResolveOptions' order: M2N_*, torchrun, Open MPI, PMI, Slurm),
// named for the header. A malformed launcher variable is an error naming it.
StatusOr<LauncherInfo> DetectLauncher();

// Set in the ranks m2n_perf spawns itself.
inline constexpr const char* kSpawnedVariable = "M2N_PERF_SPAWNED";

// Runs the job on this host: returns m2n_perf's exit status (0 ok, 1 wrong data, 3 failure).
int SpawnLocalJob(const PerfConfig& config, int argc, char** argv);

// Replaces this process by `mpirun ... <self> <args>`; returns (an exit status) only on failure.
int ExecUnderMpirun(const PerfConfig& config, int argc, char** argv);

// Exit statuses of m2n_perf.
inline constexpr int kExitOk = 0;
inline constexpr int kExitWrongData = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitFailure = 3;

}  // namespace m2n::perf

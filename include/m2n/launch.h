// The launch kit: how a process learns what its launcher said, and how a program with no launcher
// starts the job itself on this host. One home for what m2n_perf, the examples, the tests (and a
// later Python package) need to become ranks of a job:
//
//   auto launch = m2n::DetectLaunch();        // the launcher's variables, or Launcher::kNone
//   if (launch.ok() && launch->launcher == m2n::Launcher::kNone) {
//     auto job = m2n::SpawnLocal({.program = "", .args = {argv, argv + argc}, .num_ranks = 4},
//                                m2n::Deadline::After(std::chrono::minutes(10)));
//   }
//
// Launchers, first match wins (the order m2n::ResolveOptions reads them in, docs/configuration.md):
// M2N_RANK / M2N_WORLD_SIZE; torchrun RANK / WORLD_SIZE; Open MPI OMPI_COMM_WORLD_RANK / _SIZE;
// MPICH and other PMI launchers PMI_RANK / PMI_SIZE; Slurm SLURM_PROCID / SLURM_NTASKS.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "m2n/deadline.h"
#include "m2n/status.h"

namespace m2n {

enum class Launcher {
  kNone,  // no launcher variable: nobody started this process as a rank
  kM2n,  // M2N_RANK, set by hand or by SpawnLocal
  kTorchrun,  // RANK
  kOpenMpi,  // OMPI_COMM_WORLD_RANK
  kPmi,  // PMI_RANK (MPICH / Hydra, Intel MPI)
  kSlurm,  // SLURM_PROCID
};
// "M2N_RANK", "torchrun", "Open MPI", "PMI", "Slurm", or "none".
std::string_view LauncherName(Launcher launcher);

// What the launcher said about this process. -1, 0 or empty: it did not say.
struct LaunchInfo {
  Launcher launcher = Launcher::kNone;
  int rank = -1;
  int world_size = -1;
  // This process's index among the job's processes on this host, and their number: the launcher's
  // own variable (M2N_LOCAL_RANK, LOCAL_RANK, OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID,
  // SLURM_LOCALID and the matching sizes). Use LocalRank() for the rule with its fallback.
  int local_rank = -1;
  int local_size = -1;
  int num_hosts = -1;  // Slurm's node count of the step
  std::string master_addr{};  // M2N_MASTER_ADDR, else torchrun's MASTER_ADDR
  int master_port = 0;  // M2N_MASTER_PORT, else torchrun's MASTER_PORT

  // Whether the launcher says the job spans more than this host.
  bool multi_host() const;
};

// Reads the launcher's variables. A variable that is set but malformed or out of range is
// InvalidArgument naming it and its value.
StatusOr<LaunchInfo> DetectLaunch();

// The local-rank rule (which GPU a rank takes): the launcher's local rank, else the rank itself
// (a job the launcher does not describe is taken to be on one host).
int LocalRank(const LaunchInfo& info, int rank);

// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick).
StatusOr<int> PickFreePort();

// ---- Starting a job on this host ----

// How a wait for a job's ranks treats their ends.
struct WaitOptions {
  // Exit codes that mean "this rank finished" (e.g. 1: it found wrong data and said so).
  std::vector<int> finished_codes{0};
  // Whether any other end stops the job: SIGTERM to the others, SIGKILL `grace` later. The
  // deadline stops the job the same way in any case.
  bool stop_on_failure = true;
  std::chrono::milliseconds grace{2000};
};

struct SpawnOptions {
  std::string program{};  // the executable; empty: this program (/proc/self/exe)
  std::vector<std::string> args{};  // its argv, args[0] included
  int num_ranks = 0;  // M + N processes, ranks 0 .. num_ranks - 1
  // Added to every rank's environment (NAME=VALUE), after the job's own variables below.
  std::vector<std::string> env{};
  std::string job_id{};  // empty: "<program name>-<pid>-<port>"
  int master_port = 0;  // 0: PickFreePort()
  WaitOptions wait{};
};

// How one rank ended.
struct RankExit {
  pid_t pid = -1;
  int exit_code = -1;  // when it exited
  int signal = 0;  // the signal that ended it, if any
  bool running_at_stop =
      false;  // still running when the job was stopped (deadline or another's failure)

  // "exited with status 3", "was killed by signal 9 (Killed)".
  std::string Describe() const;
};

struct JobExit {
  std::vector<RankExit> ranks;  // by rank
  int first_failure = -1;  // the rank whose end stopped the job; -1: none did
  int running_at_failure = 0;  // how many ranks were still running when it did
  bool timed_out = false;  // the deadline passed with ranks running; they were stopped
};

// Starts `num_ranks` processes of `program`, each with this environment minus any job variables
// it had, plus M2N_RANK, M2N_WORLD_SIZE, M2N_LOCAL_RANK, M2N_LOCAL_WORLD_SIZE, M2N_MASTER_ADDR
// (127.0.0.1), M2N_MASTER_PORT, M2N_JOB_ID and a fresh random M2N_JOB_KEY (unless options.env sets
// M2N_JOB_KEY or M2N_JOB_KEY_FILE); each dies with this process (PR_SET_PDEATHSIG).
// Then WaitForJob. An error only when the job could not be started (no port, fork failed: the
// ranks started are killed first); how the ranks ended is in JobExit.
StatusOr<JobExit> SpawnLocal(const SpawnOptions& options, Deadline deadline);

// Waits for child processes of this one (pids[rank]) until all have ended; at `deadline` stops
// those left (and, with stop_on_failure, at the first rank that fails) and waits for them too.
// Polls each pid: the caller's other children are left alone.
JobExit WaitForJob(const std::vector<pid_t>& pids, const WaitOptions& options, Deadline deadline);

}  // namespace m2n

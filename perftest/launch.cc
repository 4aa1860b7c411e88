// m2n_perf's launch rules (launch.h) over m2n's launch kit (m2n/launch.h): the launcher's name for
// the header, the exit status of a self-started job, and the re-exec under mpirun.
#include "launch.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

namespace m2n::perf {
namespace {

bool IsSet(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0';
}

std::string SelfPath() {
  char path[4096];
  ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n <= 0) return "/proc/self/exe";
  path[n] = '\0';
  return path;
}

std::vector<char*> Pointers(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

std::string Name(LauncherKind kind, int world_size) {
  switch (kind) {
    case LauncherKind::kNone:
      return "";
    case LauncherKind::kSelf:
      return "m2n_perf (self-started, " + std::to_string(world_size) + " processes on this host)";
    case LauncherKind::kM2nEnv:
      return "M2N_RANK / M2N_WORLD_SIZE";
    case LauncherKind::kTorchrun:
      return "torchrun (RANK / WORLD_SIZE)";
    case LauncherKind::kOpenMpi:
      return "mpirun (Open MPI)";
    case LauncherKind::kPmi:
      return "mpiexec (PMI_RANK / PMI_SIZE)";
    case LauncherKind::kSlurm:
      return "srun (Slurm)";
  }
  return "";
}

LauncherKind KindOf(Launcher launcher) {
  switch (launcher) {
    case Launcher::kNone:
      return LauncherKind::kNone;
    case Launcher::kM2n:
      return IsSet(kSpawnedVariable) ? LauncherKind::kSelf : LauncherKind::kM2nEnv;
    case Launcher::kTorchrun:
      return LauncherKind::kTorchrun;
    case Launcher::kOpenMpi:
      return LauncherKind::kOpenMpi;
    case Launcher::kPmi:
      return LauncherKind::kPmi;
    case Launcher::kSlurm:
      return LauncherKind::kSlurm;
  }
  return LauncherKind::kNone;
}

}  // namespace

StatusOr<LauncherInfo> DetectLauncher() {
  M2N_ASSIGN_OR_RETURN(const LaunchInfo launch, DetectLaunch());
  LauncherInfo info;
  info.kind = KindOf(launch.launcher);
  info.world_size = launch.world_size;
  info.local_size = launch.local_size;
  info.multi_host = launch.multi_host();
  info.name = Name(info.kind, info.world_size);
  return info;
}

int SpawnLocalJob(const PerfConfig& config, int argc, char** argv) {
  SpawnOptions spawn{.args = std::vector<std::string>(argv, argv + argc),
                     .num_ranks = config.senders + config.receivers,
                     .env = {std::string(kSpawnedVariable) + "=1"},
                     // A rank that found wrong bytes finished; the exit status says so.
                     .wait = {.finished_codes = {kExitOk, kExitWrongData}}};
  // The job id defaults to "m2n_perf-<pid>-<port>".
  auto job = SpawnLocal(spawn, Deadline::After(std::chrono::seconds(config.run_timeout_s)));
  if (!job.ok()) {
    std::fprintf(stderr, "m2n_perf: %s\n", job.status().ToString().c_str());
    return kExitFailure;
  }
  if (job->first_failure >= 0) {
    const int rank = job->first_failure;
    const RankExit& end = job->ranks[static_cast<size_t>(rank)];
    const int others = job->running_at_failure;
    std::fprintf(
        stderr, "m2n_perf: rank %d (%s) %s%s\n", rank,
        rank < config.senders ? "sender" : "receiver", end.Describe().c_str(),
        others > 0 ? ("; stopping the other " + std::to_string(others) + " rank(s)").c_str() : "");
    return end.exit_code == kExitUsage ? kExitUsage : kExitFailure;
  }
  if (job->timed_out) {
    std::string left;
    for (size_t r = 0; r < job->ranks.size(); ++r) {
      if (job->ranks[r].running_at_stop) left += (left.empty() ? "" : ", ") + std::to_string(r);
    }
    std::fprintf(stderr,
                 "m2n_perf: rank(s) %s still running after %lld s (--run_timeout); stopped them\n",
                 left.c_str(), static_cast<long long>(config.run_timeout_s));
    return kExitFailure;
  }
  for (const RankExit& end : job->ranks) {
    if (end.exit_code == kExitWrongData) return kExitWrongData;
  }
  return kExitOk;
}

int ExecUnderMpirun(const PerfConfig& config, int argc, char** argv) {
  const int world = config.senders + config.receivers;
  // The rendezvous of the m2n group: rank 0 of the mpirun job (on this host) serves the store.
  if (!IsSet("M2N_MASTER_ADDR")) setenv("M2N_MASTER_ADDR", "127.0.0.1", 1);
  if (!IsSet("M2N_MASTER_PORT")) {
    auto port = PickFreePort();
    if (!port.ok()) {
      std::fprintf(stderr, "m2n_perf: %s\n", port.status().ToString().c_str());
      return kExitFailure;
    }
    setenv("M2N_MASTER_PORT", std::to_string(*port).c_str(), 1);
  }
  if (!IsSet("M2N_JOB_ID")) {
    setenv("M2N_JOB_ID", ("m2n_perf-mpi-" + std::to_string(getpid())).c_str(), 1);
  }
  std::vector<std::string> args = {"mpirun",    "--oversubscribe",
                                   "-np",       std::to_string(world),
                                   "--timeout", std::to_string(config.run_timeout_s)};
  if (geteuid() == 0) args.push_back("--allow-run-as-root");  // Open MPI refuses root otherwise
  // UCX_TLS picks m2n's transports; let it pick MPI's too, through Open MPI's UCX PML (whose
  // default device filter would refuse shared memory and TCP), unless the user chose a PML.
  if (IsSet("UCX_TLS") && !IsSet("OMPI_MCA_pml")) {
    for (const char* arg : {"--mca", "pml", "ucx", "--mca", "pml_ucx_tls", "any", "--mca",
                            "pml_ucx_devices", "any"}) {
      args.push_back(arg);
    }
  }
  for (const char* name : {"M2N_MASTER_ADDR", "M2N_MASTER_PORT", "M2N_JOB_ID", "UCX_TLS"}) {
    if (IsSet(name)) {
      args.push_back("-x");
      args.push_back(name);
    }
  }
  args.push_back(SelfPath());
  for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
  std::vector<char*> pointers = Pointers(args);
  std::fflush(nullptr);
  execvp("mpirun", pointers.data());
  std::fprintf(
      stderr,
      "m2n_perf: --baseline mpi: cannot run mpirun: %s\n"
      "  install Open MPI (apt-get install openmpi-bin) or start m2n_perf under mpirun yourself\n",
      std::strerror(errno));
  return kExitFailure;
}

}  // namespace m2n::perf

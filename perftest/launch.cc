#include "perftest/launch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string_view>
#include <thread>
#include <vector>

extern char** environ;

namespace m2n::perf {
namespace {

std::optional<int> IntVariable(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  int out = 0;
  const char* end = value + std::strlen(value);
  auto [ptr, ec] = std::from_chars(value, end, out);
  if (ec != std::errc() || ptr != end) return std::nullopt;
  return out;
}

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

std::string DescribeEnd(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    return "was killed by signal " + std::to_string(sig) + " (" + strsignal(sig) + ")";
  }
  return "ended with wait status " + std::to_string(status);
}

// The environment of spawned rank `rank`: ours, minus any M2N_RANK-like leftovers, plus the job's.
std::vector<std::string> RankEnvironment(int rank, int world, int port, const std::string& job_id) {
  static constexpr std::string_view kReplaced[] = {"M2N_RANK=", "M2N_WORLD_SIZE=", "M2N_MASTER_ADDR=",
                                                   "M2N_MASTER_PORT=", "M2N_JOB_ID=",
                                                   "M2N_PERF_SPAWNED="};
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view entry(*e);
    bool replaced = false;
    for (std::string_view prefix : kReplaced) replaced = replaced || entry.rfind(prefix, 0) == 0;
    if (!replaced) env.emplace_back(entry);
  }
  env.push_back("M2N_RANK=" + std::to_string(rank));
  env.push_back("M2N_WORLD_SIZE=" + std::to_string(world));
  env.push_back("M2N_MASTER_ADDR=127.0.0.1");
  env.push_back("M2N_MASTER_PORT=" + std::to_string(port));
  env.push_back("M2N_JOB_ID=" + job_id);
  env.push_back(std::string(kSpawnedVariable) + "=1");
  return env;
}

std::vector<char*> Pointers(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace

bool UnderOpenMpi() { return IsSet("OMPI_COMM_WORLD_RANK"); }

LauncherInfo DetectLauncher() {
  LauncherInfo info;
  if (IsSet("M2N_RANK")) {
    const bool self = IsSet(kSpawnedVariable);
    info.kind = self ? LauncherKind::kSelf : LauncherKind::kM2nEnv;
    info.world_size = IntVariable("M2N_WORLD_SIZE").value_or(-1);
    if (self) {
      info.name = "m2n_perf (self-started, " + std::to_string(info.world_size) +
                  " processes on this host)";
      info.local_size = info.world_size;
    } else {
      info.name = "M2N_RANK / M2N_WORLD_SIZE";
    }
  } else if (IsSet("RANK") && IsSet("WORLD_SIZE")) {
    info.kind = LauncherKind::kTorchrun;
    info.name = "torchrun (RANK / WORLD_SIZE)";
    info.world_size = IntVariable("WORLD_SIZE").value_or(-1);
    info.local_size = IntVariable("LOCAL_WORLD_SIZE").value_or(-1);
  } else if (UnderOpenMpi()) {
    info.kind = LauncherKind::kOpenMpi;
    info.name = "mpirun (Open MPI)";
    info.world_size = IntVariable("OMPI_COMM_WORLD_SIZE").value_or(-1);
    info.local_size = IntVariable("OMPI_COMM_WORLD_LOCAL_SIZE").value_or(-1);
  } else if (IsSet("SLURM_PROCID")) {
    info.kind = LauncherKind::kSlurm;
    info.name = "srun (Slurm)";
    info.world_size = IntVariable("SLURM_NTASKS").value_or(-1);
    // SLURM_NTASKS_PER_NODE is set only when the user asked for it; the node count always is.
    const int nodes = IntVariable("SLURM_STEP_NUM_NODES").value_or(IntVariable("SLURM_NNODES").value_or(-1));
    if (nodes > 1) info.multi_host = true;
    info.local_size = IntVariable("SLURM_NTASKS_PER_NODE").value_or(-1);
  }
  if (info.local_size > 0 && info.world_size > 0 && info.local_size < info.world_size) {
    info.multi_host = true;
  }
  return info;
}

StatusOr<int> PickFreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return InternalError(std::string("socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t length = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) != 0) {
    std::string error = std::strerror(errno);
    close(fd);
    return InternalError("cannot find a free port on 127.0.0.1: " + error);
  }
  close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

int SpawnLocalJob(const PerfConfig& config, int argc, char** argv) {
  const int world = config.senders + config.receivers;
  auto port = PickFreePort();
  if (!port.ok()) {
    std::fprintf(stderr, "m2n_perf: %s\n", port.status().ToString().c_str());
    return kExitFailure;
  }
  const std::string job_id = "m2n_perf-" + std::to_string(getpid()) + "-" + std::to_string(*port);
  const std::string self = SelfPath();
  std::vector<std::string> args(argv, argv + argc);
  std::vector<char*> arg_pointers = Pointers(args);
  std::fflush(nullptr);  // nothing buffered twice

  const pid_t parent = getpid();
  std::vector<pid_t> pids(static_cast<size_t>(world), -1);
  std::vector<bool> running(static_cast<size_t>(world), false);
  auto stop_all = [&](int signal) {
    for (int r = 0; r < world; ++r) {
      if (running[static_cast<size_t>(r)]) kill(pids[static_cast<size_t>(r)], signal);
    }
  };

  int failures = 0;
  bool usage_error = false;  // the first failure was a rank refusing its options (exit 2)
  bool wrong_data = false;
  for (int rank = 0; rank < world; ++rank) {
    std::vector<std::string> env = RankEnvironment(rank, world, *port, job_id);
    std::vector<char*> env_pointers = Pointers(env);
    const pid_t pid = fork();
    if (pid < 0) {
      std::fprintf(stderr, "m2n_perf: fork for rank %d: %s\n", rank, std::strerror(errno));
      ++failures;
      break;
    }
    if (pid == 0) {
      // The ranks die with the launcher, whatever kills it.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(kExitFailure);
      execve(self.c_str(), arg_pointers.data(), env_pointers.data());
      std::fprintf(stderr, "m2n_perf: exec %s for rank %d: %s\n", self.c_str(), rank, std::strerror(errno));
      _exit(127);
    }
    pids[static_cast<size_t>(rank)] = pid;
    running[static_cast<size_t>(rank)] = true;
  }

  using SteadyClock = std::chrono::steady_clock;
  const auto deadline = SteadyClock::now() + std::chrono::seconds(config.run_timeout_s);
  // After a failure or the run timeout: SIGKILL whoever is left at kill_at.
  bool kill_pending = false;
  SteadyClock::time_point kill_at{};
  int alive = 0;
  for (bool r : running) alive += r;
  auto stop_soon = [&] {
    stop_all(SIGTERM);
    kill_pending = true;
    kill_at = SteadyClock::now() + std::chrono::seconds(2);
  };
  if (failures > 0) stop_soon();
  while (alive > 0) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;  // ECHILD: nobody left
    }
    if (pid == 0) {
      const auto now = SteadyClock::now();
      if (kill_pending && now >= kill_at) {
        stop_all(SIGKILL);
        kill_pending = false;
      }
      if (failures == 0 && now >= deadline) {
        std::string left;
        for (int r = 0; r < world; ++r) {
          if (running[static_cast<size_t>(r)]) left += (left.empty() ? "" : ", ") + std::to_string(r);
        }
        std::fprintf(stderr, "m2n_perf: rank(s) %s still running after %lld s (--run_timeout); stopping them\n",
                     left.c_str(), static_cast<long long>(config.run_timeout_s));
        ++failures;
        stop_soon();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    int rank = -1;
    for (int r = 0; r < world; ++r) {
      if (pids[static_cast<size_t>(r)] == pid) rank = r;
    }
    if (rank < 0) continue;
    running[static_cast<size_t>(rank)] = false;
    --alive;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == kExitOk;
    const bool wrong = WIFEXITED(status) && WEXITSTATUS(status) == kExitWrongData;
    if (ok) continue;
    if (wrong) {
      wrong_data = true;  // the rank finished; it found (or was told of) wrong bytes
      continue;
    }
    if (failures++ == 0) {
      usage_error = WIFEXITED(status) && WEXITSTATUS(status) == kExitUsage;
      std::fprintf(stderr, "m2n_perf: rank %d (%s) %s%s\n", rank,
                   rank < config.senders ? "sender" : "receiver", DescribeEnd(status).c_str(),
                   alive > 0 ? ("; stopping the other " + std::to_string(alive) + " rank(s)").c_str() : "");
      stop_soon();
    }
  }
  if (failures > 0) return usage_error ? kExitUsage : kExitFailure;
  return wrong_data ? kExitWrongData : kExitOk;
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
  std::vector<std::string> args = {"mpirun", "--oversubscribe", "-np", std::to_string(world),
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
  std::fprintf(stderr,
               "m2n_perf: --baseline mpi: cannot run mpirun: %s\n"
               "  install Open MPI (apt-get install openmpi-bin) or start m2n_perf under mpirun yourself\n",
               std::strerror(errno));
  return kExitFailure;
}

}  // namespace m2n::perf

#include "runtime/launch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

extern char** environ;

namespace moe {
namespace {

bool IsSet(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0';
}

m2n::StatusOr<int> FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return m2n::InternalError(std::string("socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) != 0) {
    const std::string error = std::strerror(errno);
    close(fd);
    return m2n::InternalError("cannot find a free port on 127.0.0.1: " + error);
  }
  close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

std::string Describe(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  return "ended with wait status " + std::to_string(status);
}

}  // namespace

bool LaunchedAsRank() {
  return IsSet("M2N_RANK") || (IsSet("RANK") && IsSet("WORLD_SIZE")) || IsSet("OMPI_COMM_WORLD_RANK") ||
         IsSet("SLURM_PROCID");
}

int LauncherWorldSize() {
  for (const char* name : {"M2N_WORLD_SIZE", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS"}) {
    if (IsSet(name)) return std::atoi(std::getenv(name));
  }
  return -1;
}

int SpawnLocalJob(int world, int attention_workers, int timeout_s, int argc, char** argv) {
  auto port = FreePort();
  if (!port.ok()) {
    std::fprintf(stderr, "moe_pipeline: %s\n", port.status().ToString().c_str());
    return kExitFailure;
  }
  const std::string job = "moe_pipeline-" + std::to_string(getpid()) + "-" + std::to_string(*port);
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) {
    std::fprintf(stderr, "moe_pipeline: readlink /proc/self/exe: %s\n", std::strerror(errno));
    return kExitFailure;
  }
  self[n] = '\0';
  std::vector<std::string> args(argv, argv + argc);
  std::vector<char*> arg_pointers;
  for (auto& a : args) arg_pointers.push_back(a.data());
  arg_pointers.push_back(nullptr);
  std::fflush(nullptr);

  const pid_t parent = getpid();
  std::vector<pid_t> pids(static_cast<size_t>(world), -1);
  for (int rank = 0; rank < world; ++rank) {
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string_view entry(*e);
      bool ours = false;
      for (std::string_view p : {"M2N_RANK=", "M2N_WORLD_SIZE=", "M2N_MASTER_ADDR=", "M2N_MASTER_PORT=", "M2N_JOB_ID="}) {
        ours = ours || entry.substr(0, p.size()) == p;
      }
      if (!ours) env.emplace_back(entry);
    }
    env.push_back("M2N_RANK=" + std::to_string(rank));
    env.push_back("M2N_WORLD_SIZE=" + std::to_string(world));
    env.push_back("M2N_MASTER_ADDR=127.0.0.1");
    env.push_back("M2N_MASTER_PORT=" + std::to_string(*port));
    env.push_back("M2N_JOB_ID=" + job);
    std::vector<char*> env_pointers;
    for (auto& e : env) env_pointers.push_back(e.data());
    env_pointers.push_back(nullptr);
    const pid_t pid = fork();
    if (pid < 0) {
      std::fprintf(stderr, "moe_pipeline: fork for rank %d: %s\n", rank, std::strerror(errno));
      for (pid_t p : pids) {
        if (p > 0) kill(p, SIGKILL);
      }
      return kExitFailure;
    }
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // the ranks die with the launcher
      if (getppid() != parent) _exit(kExitFailure);
      execve(self, arg_pointers.data(), env_pointers.data());
      std::fprintf(stderr, "moe_pipeline: exec %s for rank %d: %s\n", self, rank, std::strerror(errno));
      _exit(127);
    }
    pids[static_cast<size_t>(rank)] = pid;
  }

  using SteadyClock = std::chrono::steady_clock;
  // Room for set-up and the reference check (whose report is awaited 10 x timeout_s).
  const auto deadline = SteadyClock::now() + std::chrono::seconds(12 * int64_t{timeout_s});
  int alive = world, result = kExitOk;
  bool stopping = false;
  SteadyClock::time_point kill_at{};
  auto stop = [&](int sig) {
    for (pid_t p : pids) {
      if (p > 0) kill(p, sig);
    }
  };
  while (alive > 0) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (pid == 0) {
      const auto now = SteadyClock::now();
      if (!stopping && now >= deadline) {
        std::fprintf(stderr, "moe_pipeline: the job is still running after %lld s (12 x --timeout_s); stopping it\n",
                     12 * static_cast<long long>(timeout_s));
        result = kExitFailure;
        stopping = true;
        kill_at = now + std::chrono::seconds(2);
        stop(SIGTERM);
      }
      if (stopping && now >= kill_at) stop(SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    int rank = -1;
    for (int r = 0; r < world; ++r) {
      if (pids[static_cast<size_t>(r)] == pid) rank = r;
    }
    if (rank < 0) continue;
    pids[static_cast<size_t>(rank)] = -1;
    --alive;
    if (WIFEXITED(status) && WEXITSTATUS(status) == kExitOk) continue;
    if (WIFEXITED(status) && WEXITSTATUS(status) == kExitCheckFailed) {
      if (result == kExitOk) result = kExitCheckFailed;
      continue;
    }
    if (!stopping) {
      std::fprintf(stderr, "moe_pipeline: rank %d (%s worker) %s%s\n", rank,
                   rank < attention_workers ? "attention" : "expert", Describe(status).c_str(),
                   alive > 0 ? "; stopping the others" : "");
      result = WIFEXITED(status) && WEXITSTATUS(status) == kExitUsage ? kExitUsage : kExitFailure;
      stopping = true;
      kill_at = SteadyClock::now() + std::chrono::seconds(2);
      stop(SIGTERM);
    }
  }
  return result;
}

}  // namespace moe

// Starting a job on this host (m2n/launch.h SpawnLocal): fork + exec of M + N ranks with the job's
// variables, then one bounded wait that stops everyone at the deadline or at the first failure.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

#include "m2n/launch.h"

extern char** environ;

namespace m2n {
namespace {

// The variables SpawnLocal sets: a rank's inherited ones would name another job (or hold its key).
constexpr std::string_view kJobVariables[] = {
    "M2N_RANK=",        "M2N_WORLD_SIZE=",  "M2N_LOCAL_RANK=", "M2N_LOCAL_WORLD_SIZE=",
    "M2N_MASTER_ADDR=", "M2N_MASTER_PORT=", "M2N_JOB_ID=",     "M2N_JOB_KEY=",
    "M2N_JOB_KEY_FILE="};

// Whether the caller gives the job its key itself (SpawnOptions::env).
bool CallerSetsKey(const SpawnOptions& o) {
  return std::any_of(o.env.begin(), o.env.end(), [](const std::string& e) {
    return e.starts_with("M2N_JOB_KEY=") || e.starts_with("M2N_JOB_KEY_FILE=");
  });
}

// 32 random bytes as hex: a job key nobody else on the host can guess (the store's handshake,
// docs/security.md). It reaches the ranks only through their environment, which
// /proc/<pid>/environ shows to this user alone.
StatusOr<std::string> NewJobKey() {
  unsigned char bytes[32];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      return InternalError(std::string("SpawnLocal: getrandom for the job key: ") +
                           std::strerror(errno));
    got += static_cast<size_t>(n);
  }
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string key;
  for (unsigned char b : bytes) {
    key += kDigits[b >> 4];
    key += kDigits[b & 15];
  }
  return key;
}

bool Replaced(std::string_view entry, const std::vector<std::string>& extra) {
  for (std::string_view prefix : kJobVariables) {
    if (entry.starts_with(prefix)) return true;
  }
  for (const std::string& e : extra) {
    const std::string_view name = std::string_view(e).substr(0, e.find('=') + 1);
    if (entry.starts_with(name)) return true;
  }
  return false;
}

std::vector<std::string> RankEnvironment(const SpawnOptions& o, int rank, int port,
                                         const std::string& job_id, const std::string& job_key) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!Replaced(*e, o.env)) env.emplace_back(*e);
  }
  const std::string ranks = std::to_string(o.num_ranks);
  for (std::string v : {"M2N_RANK=" + std::to_string(rank), "M2N_WORLD_SIZE=" + ranks,
                        "M2N_LOCAL_RANK=" + std::to_string(rank), "M2N_LOCAL_WORLD_SIZE=" + ranks,
                        std::string("M2N_MASTER_ADDR=127.0.0.1"),
                        "M2N_MASTER_PORT=" + std::to_string(port), "M2N_JOB_ID=" + job_id}) {
    env.push_back(std::move(v));
  }
  if (!job_key.empty()) env.push_back("M2N_JOB_KEY=" + job_key);
  env.insert(env.end(), o.env.begin(), o.env.end());
  return env;
}

std::vector<char*> Pointers(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

StatusOr<std::string> ProgramPath(const SpawnOptions& o) {
  if (!o.program.empty()) return o.program;
  char path[4096];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n <= 0) return InternalError(std::string("readlink /proc/self/exe: ") + std::strerror(errno));
  return std::string(path, static_cast<size_t>(n));
}

// The bounded wait for a job's ranks.
class Job {
 public:
  Job(const std::vector<pid_t>& pids, const WaitOptions& o, Deadline deadline)
      : o_(o), deadline_(deadline) {
    exit_.ranks.resize(pids.size());
    for (size_t r = 0; r < pids.size(); ++r) exit_.ranks[r].pid = pids[r];
    ended_.assign(pids.size(), false);
  }

  JobExit Wait();

 private:
  int size() const { return static_cast<int>(exit_.ranks.size()); }
  bool Running(int rank) const {
    return exit_.ranks[static_cast<size_t>(rank)].pid > 0 && !ended_[static_cast<size_t>(rank)];
  }
  void Signal(int signal);
  void StopSoon();
  void Reap(int rank, int status);

  const WaitOptions& o_;
  Deadline deadline_;
  JobExit exit_;
  std::vector<bool> ended_;
  bool stopping_ = false;
  Clock::time_point kill_at_{};
};

void Job::Signal(int signal) {
  for (int rank = 0; rank < size(); ++rank) {
    if (Running(rank)) kill(exit_.ranks[static_cast<size_t>(rank)].pid, signal);
  }
}

void Job::StopSoon() {
  for (int rank = 0; rank < size(); ++rank)
    exit_.ranks[static_cast<size_t>(rank)].running_at_stop = Running(rank);
  Signal(SIGTERM);
  stopping_ = true;
  kill_at_ = Clock::now() + o_.grace;
}

void Job::Reap(int rank, int status) {
  RankExit& r = exit_.ranks[static_cast<size_t>(rank)];
  ended_[static_cast<size_t>(rank)] = true;
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  const bool finished =
      WIFEXITED(status) && std::find(o_.finished_codes.begin(), o_.finished_codes.end(),
                                     r.exit_code) != o_.finished_codes.end();
  if (finished || stopping_ || !o_.stop_on_failure) return;
  exit_.first_failure = rank;
  for (int other = 0; other < size(); ++other) exit_.running_at_failure += Running(other);
  StopSoon();
}

// Polls each rank by its pid (not waitpid(-1): the caller's other children are not ours to reap).
JobExit Job::Wait() {
  for (;;) {
    int alive = 0;
    for (int rank = 0; rank < size(); ++rank) {
      if (!Running(rank)) continue;
      int status = 0;
      const pid_t done = waitpid(exit_.ranks[static_cast<size_t>(rank)].pid, &status, WNOHANG);
      if (done > 0)
        Reap(rank, status);
      else if (done < 0 && errno != EINTR)
        Reap(rank, 0xff << 8);  // reaped elsewhere: exit status 255
      else
        ++alive;
    }
    if (alive == 0) return exit_;
    if (!stopping_ && deadline_.Expired()) {
      exit_.timed_out = true;
      StopSoon();
    }
    if (stopping_ && Clock::now() >= kill_at_) Signal(SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// Forks and execs the ranks; on a failed fork kills those started and says why.
StatusOr<std::vector<pid_t>> StartRanks(const SpawnOptions& o, const std::string& program, int port,
                                        const std::string& job_id, const std::string& job_key) {
  std::vector<std::string> args = o.args.empty() ? std::vector<std::string>{program} : o.args;
  std::vector<char*> arg_pointers = Pointers(args);
  std::fflush(nullptr);  // nothing buffered twice
  const pid_t parent = getpid();
  std::vector<pid_t> pids;
  for (int rank = 0; rank < o.num_ranks; ++rank) {
    std::vector<std::string> env = RankEnvironment(o, rank, port, job_id, job_key);
    std::vector<char*> env_pointers = Pointers(env);
    const pid_t pid = fork();
    if (pid < 0) {
      const int error = errno;
      for (pid_t started : pids) kill(started, SIGKILL);
      (void)WaitForJob(pids, {.grace = std::chrono::milliseconds(0)},
                       Deadline::After(std::chrono::seconds(10)));
      return InternalError("fork for rank " + std::to_string(rank) + ": " + std::strerror(error));
    }
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // the ranks die with the launcher, whatever kills it
      if (getppid() != parent) _exit(127);
      execve(program.c_str(), arg_pointers.data(), env_pointers.data());
      std::fprintf(stderr, "m2n: exec %s for rank %d: %s\n", program.c_str(), rank,
                   std::strerror(errno));
      _exit(127);
    }
    pids.push_back(pid);
  }
  return pids;
}

}  // namespace

std::string RankExit::Describe() const {
  if (signal != 0)
    return "was killed by signal " + std::to_string(signal) + " (" + strsignal(signal) + ")";
  if (exit_code >= 0) return "exited with status " + std::to_string(exit_code);
  return "did not start";
}

StatusOr<JobExit> SpawnLocal(const SpawnOptions& options, Deadline deadline) {
  if (options.num_ranks < 1) {
    return InvalidArgumentError("SpawnLocal: num_ranks " + std::to_string(options.num_ranks) +
                                " < 1");
  }
  M2N_ASSIGN_OR_RETURN(const std::string program, ProgramPath(options));
  int port = options.master_port;
  if (port == 0) {
    M2N_ASSIGN_OR_RETURN(port, PickFreePort());
  }
  std::string job_id = options.job_id;
  if (job_id.empty()) {
    const std::string name = program.substr(program.rfind('/') + 1);
    job_id = name + "-" + std::to_string(getpid()) + "-" + std::to_string(port);
  }
  std::string job_key;
  if (!CallerSetsKey(options)) {
    M2N_ASSIGN_OR_RETURN(job_key, NewJobKey());
  }
  M2N_ASSIGN_OR_RETURN(const std::vector<pid_t> pids,
                       StartRanks(options, program, port, job_id, job_key));
  return WaitForJob(pids, options.wait, deadline);
}

JobExit WaitForJob(const std::vector<pid_t>& pids, const WaitOptions& options, Deadline deadline) {
  return Job(pids, options, deadline).Wait();
}

}  // namespace m2n

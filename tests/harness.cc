#include "harness.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "m2n/launch.h"

namespace m2n::testing {

Options TestOptions(int num_senders, int num_receivers, int rank, int port) {
  Options o;
  o.num_senders = num_senders;
  o.num_receivers = num_receivers;
  o.bootstrap.rank = rank;
  o.bootstrap.world_size = num_senders + num_receivers;
  o.bootstrap.master_addr = "127.0.0.1";
  o.bootstrap.master_port = port;
  o.bootstrap.timeout = std::chrono::milliseconds(20000);
  o.liveness_check_ms = 100;
  return o;
}

int FreePort() {
  auto port = PickFreePort();
  return port.ok() ? *port : -1;
}

std::vector<RankOutcome> RunRanks(int world_size, const std::function<int(int, int)>& body,
                                  int timeout_s) {
  return RunRanks(world_size, body, timeout_s, nullptr);
}

std::vector<RankOutcome> RunRanks(
    int world_size, const std::function<int(int, int)>& body, int timeout_s,
    const std::function<void(const std::vector<pid_t>&)>& while_running) {
  int port = FreePort();
  std::fflush(nullptr);
  std::vector<pid_t> pids(world_size);
  std::vector<RankOutcome> outcomes(world_size);
  for (int r = 0; r < world_size; ++r) {
    outcomes[r].rank = r;
    pid_t pid = fork();
    if (pid == 0) {
      int code = body(r, port);
      std::fflush(nullptr);
      _exit(code);
    }
    pids[r] = pid;
  }
  const Deadline deadline = Deadline::After(std::chrono::seconds(timeout_s));
  if (while_running) while_running(pids);
  // Every rank runs to its end (a failing rank does not stop the others); stragglers are killed.
  const JobExit job =
      WaitForJob(pids, {.stop_on_failure = false, .grace = std::chrono::milliseconds(0)}, deadline);
  for (int r = 0; r < world_size; ++r) {
    const RankExit& end = job.ranks[static_cast<size_t>(r)];
    outcomes[r].timed_out = end.running_at_stop;
    if (!end.running_at_stop) {
      outcomes[r].exit_code = end.exit_code;
      outcomes[r].signal = end.signal;
    }
  }
  return outcomes;
}

std::string DescribeFailures(const std::vector<RankOutcome>& outcomes) {
  std::string out;
  for (const RankOutcome& o : outcomes) {
    std::string what;
    if (o.timed_out)
      what = "timed out (killed)";
    else if (o.signal != 0)
      what = "killed by signal " + std::to_string(o.signal);
    else if (o.exit_code != 0)
      what = "exit " + std::to_string(o.exit_code);
    if (what.empty()) continue;
    if (!out.empty()) out += "; ";
    out += "rank " + std::to_string(o.rank) + ": " + what;
  }
  return out;
}

void FillPattern(std::byte* data, size_t length, int source, int destination, uint64_t number) {
  for (size_t i = 0; i < length; ++i) data[i] = PatternByte(source, destination, number, i);
}

size_t CountWrong(const std::byte* data, size_t length, int source, int destination,
                  uint64_t number) {
  size_t wrong = 0;
  for (size_t i = 0; i < length; ++i)
    wrong += data[i] != PatternByte(source, destination, number, i);
  return wrong;
}

}  // namespace m2n::testing

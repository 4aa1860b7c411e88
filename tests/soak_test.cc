// Soak (docs/reliability.md): m2n_perf --soak, the real binary with its real processes, moves many
// messages with the data check on; every byte must arrive right and no rank's resident memory may
// grow once the first sweep has warmed it up. A short soak here (a few seconds); the long figures
// are in docs/reliability.md.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "sanitized.h"

namespace {

using namespace std::chrono_literals;

struct PerfRun {
  int exit_code = -1;  // -1: killed at the bound, or did not exit normally
  std::string output;  // stdout and stderr together
};

// Runs m2n_perf with `args`, output to a file, killed (its whole process group) after `bound`.
PerfRun RunPerf(const std::vector<std::string>& args, std::chrono::seconds bound) {
  const std::string log = testing::TempDir() + "/soak_test_" + std::to_string(getpid()) + ".log";
  std::vector<std::string> argv_storage = {M2N_PERF_BIN};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0) _exit(127);
    execv(argv[0], argv.data());
    _exit(127);
  }
  PerfRun run;
  if (pid < 0) return run;
  const auto deadline = std::chrono::steady_clock::now() + bound;
  int status = 0;
  bool exited = false;
  while (!(exited = waitpid(pid, &status, WNOHANG) == pid) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  if (!exited) {
    kill(-pid, SIGKILL);
    waitpid(pid, &status, 0);
  } else if (WIFEXITED(status)) {
    run.exit_code = WEXITSTATUS(status);
  }
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  run.output = text.str();
  std::remove(log.c_str());
  return run;
}

struct RankMemory {
  int rank = -1;
  double start_mib = 0, first_mib = 0, end_mib = 0;
};

// The lines of the output, each read with sscanf (std::regex trips GCC 12's -Wmaybe-uninitialized
// under ASan).
std::vector<std::string> Lines(const std::string& out) {
  std::vector<std::string> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// "# soak rank <r>: RSS start <a> MiB, after sweep 1 <b> MiB, end <c> MiB ..."
std::vector<RankMemory> ParseRankMemory(const std::string& out) {
  std::vector<RankMemory> ranks;
  for (const std::string& line : Lines(out)) {
    RankMemory r;
    if (std::sscanf(line.c_str(),
                    "# soak rank %d: RSS start %lf MiB, after sweep 1 %lf MiB, end %lf MiB",
                    &r.rank, &r.start_mib, &r.first_mib, &r.end_mib) == 4) {
      ranks.push_back(r);
    }
  }
  return ranks;
}

// "# soak: <messages> messages in <sweeps> sweeps, <s> s, #wrong <n>"
bool ParseTotals(const std::string& out, unsigned long long* messages, int* sweeps,
                 unsigned long long* wrong) {
  for (const std::string& line : Lines(out)) {
    double seconds = 0;
    if (std::sscanf(line.c_str(), "# soak: %llu messages in %d sweeps, %lf s, #wrong %llu",
                    messages, sweeps, &seconds, wrong) == 4) {
      return true;
    }
  }
  return false;
}

using ::m2n::testing::kSanitized;

TEST(SoakTest, ShortSoakMovesEveryMessageIntactAndMemoryStaysFlat) {
  // 2 x 2, 8 B .. 16 KB: 12 sizes x 4 pairs x (5 + 2 x 200) = 19440 messages a sweep.
  const unsigned long long kAsked = 400000;
  PerfRun run = RunPerf({"-M", "2", "-N", "2", "-b", "8", "-e", "16K", "-n", "200", "-w", "5",
                         "--soak", std::to_string(kAsked)},
                        240s);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  unsigned long long messages = 0, wrong = 1;
  int sweeps = 0;
  ASSERT_TRUE(ParseTotals(run.output, &messages, &sweeps, &wrong)) << run.output;
  EXPECT_GE(messages, kAsked);
  EXPECT_EQ(sweeps, 21) << "ceil(400000 / 19440) sweeps";
  EXPECT_EQ(wrong, 0u) << run.output;
  std::vector<RankMemory> ranks = ParseRankMemory(run.output);
  ASSERT_EQ(ranks.size(), 4u) << "one memory line per rank\n" << run.output;
  for (const RankMemory& r : ranks) {
    EXPECT_GT(r.start_mib, 0) << "rank " << r.rank;
    if (kSanitized) continue;  // quarantine and shadow memory make resident size meaningless
    // Flat: after the first sweep has grown every pool it needs, 20 more sweeps add nothing beyond
    // allocator noise. Each rank sends or receives 190000 messages in them, so a leak of 23 bytes
    // a message on any rank would pass 4 MiB.
    EXPECT_LE(r.end_mib - r.first_mib, 4.0) << "rank " << r.rank << " grew\n" << run.output;
  }
}

TEST(SoakTest, SoakCountsWrongBytesInEverySweepAndFails) {
  // The test-only corruption flips one byte per size in every sweep: 4 sizes x 3 sweeps.
  PerfRun run = RunPerf({"-M", "1", "-N", "2", "-b", "8", "-e", "64", "-n", "20", "-w", "2",
                         "--soak", "700", "--inject-corruption"},
                        120s);
  EXPECT_EQ(run.exit_code, 1) << run.output;
  unsigned long long messages = 0, wrong = 0;
  int sweeps = 0;
  ASSERT_TRUE(ParseTotals(run.output, &messages, &sweeps, &wrong)) << run.output;
  EXPECT_EQ(sweeps, 3) << "ceil(700 / (4 sizes x 2 pairs x 42))";
  EXPECT_EQ(wrong, 12u) << run.output;
}

}  // namespace

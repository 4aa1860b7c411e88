// m2n_ep_perf end to end (perftest/README.md, "m2n_ep_perf"): a tiny sweep under mpirun, 2 x 1,
// both dtypes' exit status 0, one row per shape, and #diff 0 (m2n's combined output equal, bit for
// bit, to the MPI baseline's). Skipped without mpirun.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <sys/wait.h>

namespace {

struct PerfRun {
  int exit_code = -1;
  std::string out;
};

PerfRun RunPerf(const std::string& args) {
  PerfRun r;
  // `timeout` bounds the whole job; mpirun's output and the ranks' go to one pipe.
  const std::string command = std::string("timeout 120 ") + M2N_EP_PERF_BIN + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return r;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe)) r.out.append(buffer, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

TEST(EpPerf, TinySweepAgreesWithMpi) {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "mpirun is not in PATH";
  for (const char* dtype : {"bf16", "fp32"}) {
    const PerfRun r = RunPerf(
        std::string(
            "-M 2 -N 1 --tokens 0,5 --hidden 16 --top_k 1,2 --experts 3 -n 5 -w 1 --dtype ") +
        dtype);
    ASSERT_EQ(r.exit_code, 0) << r.out;
    int rows = 0;
    std::istringstream lines(r.out);
    for (std::string line; std::getline(lines, line);) {
      if (line.empty() || line[0] == '#' || line.find('|') == std::string::npos) continue;
      ++rows;
      EXPECT_EQ(line.substr(line.find_last_of(' ') + 1), "0") << "#diff in: " << line;
    }
    EXPECT_EQ(rows, 4) << r.out;  // tokens {0, 5} x top_k {1, 2}
    EXPECT_NE(r.out.find("m2n: transport"), std::string::npos) << r.out;
  }
}

}  // namespace

// m2n_perf: its flags, percentile math and data pattern (unit), and the binary end to end on this
// host (a real multi-process run per test, each bounded).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <cctype>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "perftest/bench.h"
#include "perftest/cli.h"
#include "perftest/host_barrier.h"
#include "perftest/launch.h"
#include "perftest/pattern.h"
#include "perftest/report.h"
#include "perftest/stats.h"

namespace m2n::perf {
namespace {

// ---------------------------------------------------------------------------------------------
// Flags

StatusOr<PerfConfig> Parse(std::vector<std::string> args) { return ParseCommandLine(args); }

// Whether `text` holds `lead`, then a list "N, M, ..." of ranks that includes rank 1, then `tail`
// (parsed by hand: std::regex trips GCC 12's -Wmaybe-uninitialized in the ASan build).
bool NamesRankOne(const std::string& text, const std::string& lead, const std::string& tail) {
  for (size_t at = text.find(lead); at != std::string::npos; at = text.find(lead, at + 1)) {
    size_t i = at + lead.size();
    bool has_one = false;
    for (;;) {
      size_t j = i;
      while (j < text.size() && std::isdigit(static_cast<unsigned char>(text[j]))) ++j;
      if (j == i) break;
      has_one = has_one || text.compare(i, j - i, "1") == 0;
      i = j;
      if (text.compare(i, 2, ", ") != 0) break;
      i += 2;
    }
    if (has_one && text.compare(i, tail.size(), tail) == 0) return true;
  }
  return false;
}

TEST(PerfCliTest, ParseSizeAcceptsSuffixesAsPowersOfTwo) {
  EXPECT_EQ(*ParseSize("8"), 8u);
  EXPECT_EQ(*ParseSize("64K"), 65536u);
  EXPECT_EQ(*ParseSize("64k"), 65536u);
  EXPECT_EQ(*ParseSize("4M"), size_t{4} << 20);
  EXPECT_EQ(*ParseSize("1G"), size_t{1} << 30);
  EXPECT_EQ(*ParseSize("3"), 3u);
}

TEST(PerfCliTest, ParseSizeRejectsBadValues) {
  for (const char* bad :
       {"", "K", "-1", "1.5K", "4X", "4KB", "0", "0K", " 8", "8 ", "5G", "99999999999999999999"}) {
    auto parsed = ParseSize(bad);
    EXPECT_FALSE(parsed.ok()) << "'" << bad << "' was accepted";
    if (!parsed.ok()) {
      EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
    }
  }
}

TEST(PerfCliTest, DefaultsCoverAtLeastEightBytesToFourMegabytes) {
  auto config = Parse({});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_LE(config->min_bytes, 8u);
  EXPECT_GE(config->max_bytes, size_t{4} << 20);
  EXPECT_EQ(config->senders, 2);
  EXPECT_EQ(config->receivers, 2);
  EXPECT_TRUE(config->check);
  EXPECT_EQ(config->transport, "auto");
  EXPECT_EQ(config->baseline, Baseline::kNone);
  EXPECT_FALSE(config->inject_corruption);
}

TEST(PerfCliTest, ParsesEveryFlagInBothSpellings) {
  auto config = Parse({"-b",          "8",
                       "-e",          "64K",
                       "-f",          "4",
                       "-n",          "20",
                       "-w",          "3",
                       "-M",          "1",
                       "-N",          "2",
                       "--transport", "ucx",
                       "--no-check",  "-d",
                       "8",           "--json",
                       "/tmp/x.json", "--baseline",
                       "mpi",         "--latency_mode",
                       "roundtrip",   "--timeout_ms",
                       "5000",        "--run_timeout",
                       "60"});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->min_bytes, 8u);
  EXPECT_EQ(config->max_bytes, 65536u);
  EXPECT_EQ(config->step_factor, 4u);
  EXPECT_EQ(config->iters, 20);
  EXPECT_EQ(config->warmup_iters, 3);
  EXPECT_EQ(config->senders, 1);
  EXPECT_EQ(config->receivers, 2);
  EXPECT_TRUE(config->senders_set);
  EXPECT_TRUE(config->receivers_set);
  EXPECT_EQ(config->transport, "ucx");
  EXPECT_FALSE(config->check);
  EXPECT_EQ(config->slot_depth, 8);
  EXPECT_EQ(config->json_path, "/tmp/x.json");
  EXPECT_EQ(config->baseline, Baseline::kMpi);
  EXPECT_EQ(config->latency_mode, LatencyMode::kRoundTrip);
  EXPECT_EQ(config->timeout_ms, 5000);
  EXPECT_EQ(config->run_timeout_s, 60);

  auto joined =
      Parse({"--minbytes=1K", "--maxbytes=2M", "--stepfactor=8", "--iters=7", "--warmup_iters=0",
             "--senders=3", "--receivers=5", "--slot_depth=2", "-c", "-b16"});
  ASSERT_TRUE(joined.ok()) << joined.status().ToString();
  EXPECT_EQ(joined->min_bytes, 16u);  // the last one wins
  EXPECT_EQ(joined->max_bytes, size_t{2} << 20);
  EXPECT_EQ(joined->step_factor, 8u);
  EXPECT_EQ(joined->iters, 7);
  EXPECT_EQ(joined->warmup_iters, 0);
  EXPECT_EQ(joined->senders, 3);
  EXPECT_EQ(joined->receivers, 5);
  EXPECT_EQ(joined->slot_depth, 2);
  EXPECT_TRUE(joined->check);
  EXPECT_FALSE(Parse({})->senders_set);
}

TEST(PerfCliTest, RejectsBadFlagsAndValues) {
  const std::vector<std::vector<std::string>> bad = {
      {"--bogus"},
      {"-z"},
      {"-b"},
      {"-b", "1.5K"},
      {"-e", "0"},
      {"-b", "1M", "-e", "1K"},
      {"-n", "0"},
      {"-n", "x"},
      {"-w", "-1"},
      {"-M", "0"},
      {"-N", "-2"},
      {"-f", "1"},
      {"-d", "0"},
      {"--baseline", "gloo"},
      {"--latency_mode", "x"},
      {"--json"},
      {"--transport="},
      {"stray"},
      {"--no-check=1"},
      {"--timeout_ms", "0"},
  };
  for (const auto& args : bad) {
    auto config = Parse(args);
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    EXPECT_FALSE(config.ok()) << "accepted: " << joined;
    if (!config.ok()) {
      EXPECT_EQ(config.status().code(), StatusCode::kInvalidArgument) << joined;
      EXPECT_FALSE(config.status().message().empty());
    }
  }
  // The message names what was wrong.
  EXPECT_NE(Parse({"--bogus"}).status().message().find("--bogus"), std::string::npos);
  EXPECT_NE(Parse({"-n", "x"}).status().message().find("--iters"), std::string::npos);
}

TEST(PerfCliTest, HelpListsEveryPublicFlag) {
  auto config = Parse({"--help"});
  ASSERT_TRUE(config.ok());
  EXPECT_TRUE(config->help);
  const std::string usage = Usage("m2n_perf");
  for (const char* flag : {"--minbytes",
                           "--maxbytes",
                           "--stepfactor",
                           "--iters",
                           "--warmup_iters",
                           "--senders",
                           "--receivers",
                           "--transport",
                           "--check",
                           "--no-check",
                           "--slot_depth",
                           "--json",
                           "--baseline",
                           "--latency_mode",
                           "--timeout_ms",
                           "--run_timeout",
                           "--help",
                           "-b,",
                           "-e,",
                           "-f,",
                           "-n,",
                           "-w,",
                           "-M,",
                           "-N,",
                           "-d,"}) {
    EXPECT_NE(usage.find(flag), std::string::npos) << flag;
  }
  EXPECT_EQ(usage.find("inject"), std::string::npos) << "the test-only flag stays hidden";
}

TEST(PerfCliTest, SweepSizes) {
  PerfConfig config;
  config.min_bytes = 8;
  config.max_bytes = 64 << 10;
  config.step_factor = 2;
  auto sizes = SweepSizes(config);
  ASSERT_EQ(sizes.size(), 14u);
  EXPECT_EQ(sizes.front(), 8u);
  EXPECT_EQ(sizes.back(), 65536u);
  config.step_factor = 4;
  EXPECT_EQ(SweepSizes(config), (std::vector<size_t>{8, 32, 128, 512, 2048, 8192, 32768}));
  config.min_bytes = 3;
  config.max_bytes = 100;
  config.step_factor = 2;
  EXPECT_EQ(SweepSizes(config), (std::vector<size_t>{3, 6, 12, 24, 48, 96}));
  config.min_bytes = config.max_bytes = 4096;
  EXPECT_EQ(SweepSizes(config), (std::vector<size_t>{4096}));
  config.min_bytes = 1;
  config.max_bytes = size_t{1} << 32;
  config.step_factor = 1024;
  EXPECT_EQ(SweepSizes(config), (std::vector<size_t>{1, 1024, 1 << 20, 1 << 30}));
}

TEST(PerfCliTest, FormatSize) {
  EXPECT_EQ(FormatSize(8), "8");
  EXPECT_EQ(FormatSize(1000), "1000");
  EXPECT_EQ(FormatSize(65536), "64K");
  EXPECT_EQ(FormatSize(size_t{4} << 20), "4M");
  EXPECT_EQ(FormatSize(size_t{3} << 30), "3G");
  EXPECT_EQ(FormatSize(1536), "1536");
}

// ---------------------------------------------------------------------------------------------
// Percentiles

TEST(PerfStatsTest, NearestRankPercentiles) {
  std::vector<double> v;
  for (int i = 1; i <= 100; ++i) v.push_back(i);
  EXPECT_EQ(Percentile(v, 50), 50);
  EXPECT_EQ(Percentile(v, 99), 99);
  EXPECT_EQ(Percentile(v, 100), 100);
  EXPECT_EQ(Percentile(v, 0), 1);
  EXPECT_EQ(Percentile(v, 1), 1);
  EXPECT_EQ(Percentile(v, 99.5), 100);

  std::vector<double> ten = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  EXPECT_EQ(Percentile(ten, 50), 5);
  EXPECT_EQ(Percentile(ten, 99), 10);  // ceil(9.9) = 10th
  EXPECT_EQ(Percentile(ten, 90), 9);

  std::vector<double> one = {42};
  EXPECT_EQ(Percentile(one, 50), 42);
  EXPECT_EQ(Percentile(one, 99), 42);
  EXPECT_EQ(Percentile(std::vector<double>{}, 50), 0);
}

TEST(PerfStatsTest, SummarizeSortsAndKeepsTheMaximum) {
  std::vector<double> samples;
  for (int i = 200; i >= 1; --i) samples.push_back(i);  // descending on purpose
  samples.push_back(1e6);  // one outlier
  LatencySummary s = Summarize(samples);
  EXPECT_EQ(s.samples, 201);
  EXPECT_EQ(s.p50_us, 101);  // ceil(100.5) = 101st of 1..200, 1e6
  EXPECT_EQ(s.p99_us, 199);  // ceil(198.99) = 199th
  EXPECT_EQ(s.max_us, 1e6);
  EXPECT_NEAR(s.mean_us, (200.0 * 201 / 2 + 1e6) / 201, 1e-6);
  EXPECT_EQ(Summarize({}).samples, 0);
}

// ---------------------------------------------------------------------------------------------
// Data pattern

TEST(PerfPatternTest, FilledDataChecksClean) {
  for (size_t size : {1u, 7u, 8u, 13u, 64u, 4099u, 65536u}) {
    std::vector<std::byte> buf(size);
    const uint64_t seed = PatternSeed(1, 3, PatternTag(2, 1, 17));
    FillPattern(buf, seed);
    EXPECT_EQ(CountWrongBytes(buf, seed), 0u) << size;
  }
}

TEST(PerfPatternTest, AFlippedByteIsFoundWherever) {
  const size_t size = 1003;  // a tail of 3 bytes
  const uint64_t seed = PatternSeed(0, 2, PatternTag(0, 1, 0));
  for (size_t at : {size_t{0}, size_t{7}, size_t{8}, size_t{500}, size_t{1000}, size_t{1002}}) {
    std::vector<std::byte> buf(size);
    FillPattern(buf, seed);
    buf[at] ^= std::byte{0x01};
    EXPECT_EQ(CountWrongBytes(buf, seed), 1u) << "flip at " << at;
  }
  std::vector<std::byte> buf(size);
  FillPattern(buf, seed);
  buf[10] ^= std::byte{0xFF};
  buf[11] ^= std::byte{0x80};
  buf[900] = ~buf[900];
  EXPECT_EQ(CountWrongBytes(buf, seed), 3u);
}

TEST(PerfPatternTest, OtherPairsIterationsAndShiftsDoNotPass) {
  const size_t size = 4096;
  const uint64_t tag = PatternTag(3, 1, 5);
  const uint64_t seed = PatternSeed(0, 1, tag);
  std::vector<std::byte> buf(size);
  FillPattern(buf, seed);
  // Wrong source, destination, iteration, size or phase: nearly every byte is wrong.
  for (uint64_t other :
       {PatternSeed(1, 0, tag), PatternSeed(0, 2, tag), PatternSeed(2, 1, tag),
        PatternSeed(0, 1, PatternTag(3, 1, 6)), PatternSeed(0, 1, PatternTag(4, 1, 5)),
        PatternSeed(0, 1, PatternTag(3, 2, 5))}) {
    ASSERT_NE(other, seed);
    EXPECT_GT(CountWrongBytes(buf, other), size * 9 / 10);
  }
  // Data shifted by one word (a wrong offset) fails too.
  std::vector<std::byte> shifted(size);
  std::memcpy(shifted.data() + 8, buf.data(), size - 8);
  FillPattern({shifted.data(), 8}, seed);
  EXPECT_GT(CountWrongBytes(shifted, seed), size * 9 / 10);
  // All zeros (a slot never written) fails.
  std::vector<std::byte> zeros(size);
  EXPECT_GT(CountWrongBytes(zeros, seed), size * 9 / 10);
}

TEST(PerfPatternTest, StreamVariantsNeverDivideTheDepth) {
  EXPECT_EQ(StreamVariants(1), 2);
  EXPECT_EQ(StreamVariants(2), 3);
  EXPECT_EQ(StreamVariants(3), 2);
  EXPECT_EQ(StreamVariants(4), 3);
  EXPECT_EQ(StreamVariants(6), 4);
  EXPECT_EQ(StreamVariants(12), 5);
  for (int depth = 1; depth <= 200; ++depth) EXPECT_NE(depth % StreamVariants(depth), 0);
}

// ---------------------------------------------------------------------------------------------
// Report

TEST(PerfReportTest, RowsAndJson) {
  RunInfo info;
  info.version = "0.1.0";
  info.senders = 2;
  info.receivers = 2;
  info.transport = "ucx";
  info.transport_requested = "auto";
  info.host = "h\"ost";
  info.latency_mode = "oneway";
  info.baseline = "mpi";
  Row m2n{.bytes = 4096,
          .impl = "m2n",
          .latency = {.p50_us = 10, .p99_us = 20, .max_us = 30},
          .gbps = 2,
          .mmsg_per_s = 0.5,
          .wrong = 0};
  Row mpi{.bytes = 4096,
          .impl = "MPI",
          .latency = {.p50_us = 20, .p99_us = 40, .max_us = 50},
          .gbps = 1,
          .mmsg_per_s = 0.25,
          .wrong = 0};
  const std::string row = FormatRow(m2n, false);
  EXPECT_NE(row.find("4096"), std::string::npos);
  EXPECT_NE(row.find("10.00"), std::string::npos);
  EXPECT_NE(FormatRow(m2n, true).find("m2n"), std::string::npos);
  const std::string json = FormatJson(info, {m2n, mpi}, 0, 1.5);
  EXPECT_NE(json.find("\"rows\""), std::string::npos);
  EXPECT_NE(json.find("\"impl\": \"MPI\""), std::string::npos);
  EXPECT_NE(json.find("\"p50\": 0.5"), std::string::npos) << json;  // m2n / MPI
  EXPECT_NE(json.find("\"gb_per_s\": 2"), std::string::npos) << json;
  EXPECT_NE(json.find("h\\\"ost"), std::string::npos) << "strings are escaped";
  EXPECT_NE(json.find("\"total_wrong\": 0"), std::string::npos);
}

// --baseline perftest: its rows come after the sweep, not after each m2n row; the ratios still
// pair each m2n row with the perftest row of its size. The topology lines go into the header.
TEST(PerfReportTest, PerftestRowsAndTopologyInJson) {
  RunInfo info;
  info.baseline = "perftest";
  info.topology = {"hwloc 2.9.0 (this host): 1 package(s)",
                   "GPU 0000:18:00.0 -> mlx5_0 (PCIe switch, 2 PCI hops)"};
  info.placement = "NIC mlx5_0, proxy core 3: why";
  auto row = [](size_t bytes, const char* impl, double p50) {
    return Row{.bytes = bytes,
               .impl = impl,
               .latency = {.p50_us = p50, .p99_us = p50, .max_us = p50},
               .gbps = 1};
  };
  const std::string json = FormatJson(
      info,
      {row(8, "m2n", 12), row(64, "m2n", 15), row(8, "perftest", 10), row(64, "perftest", 10)}, 0,
      1);
  EXPECT_NE(json.find("{\"bytes\": 8, \"p50\": 1.2, \"baseline\": \"perftest\""), std::string::npos)
      << json;
  EXPECT_NE(json.find("{\"bytes\": 64, \"p50\": 1.5, \"baseline\": \"perftest\""),
            std::string::npos)
      << json;
  EXPECT_NE(json.find("\"impl\": \"perftest\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"placement\": \"NIC mlx5_0, proxy core 3: why\""), std::string::npos)
      << json;
  EXPECT_NE(json.find("-> mlx5_0 (PCIe switch"), std::string::npos) << json;
  char* text = nullptr;
  size_t size = 0;
  FILE* out = open_memstream(&text, &size);
  PrintHeader(out, info);
  std::fclose(out);
  const std::string header(text, size);
  std::free(text);
  EXPECT_NE(header.find("| topology    hwloc 2.9.0 (this host)"), std::string::npos) << header;
  EXPECT_NE(header.find("GPU 0000:18:00.0 -> mlx5_0"), std::string::npos) << header;
  EXPECT_NE(header.find("| placement   NIC mlx5_0, proxy core 3"), std::string::npos) << header;
}

// ---------------------------------------------------------------------------------------------
// The host barrier, across two real processes

TEST(PerfHostBarrierTest, TwoProcessesAgreeAndStampInOrder) {
  const std::string name = "/m2n_perf.test-" + std::to_string(getpid());
  int to_child[2], to_parent[2];
  ASSERT_EQ(pipe(to_child), 0);
  ASSERT_EQ(pipe(to_parent), 0);
  constexpr int kRounds = 300;
  // The set-up barrier that Group::Barrier provides in m2n_perf: one byte each way.
  auto pipe_barrier = [](int out, int in) {
    return [out, in]() -> Status {
      char c = 'x';
      if (write(out, &c, 1) != 1 || read(in, &c, 1) != 1) return InternalError("pipe barrier");
      return OkStatus();
    };
  };
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    alarm(60);
    auto segment = HostSegment::Join(name, 1, 2, kRounds, pipe_barrier(to_parent[1], to_child[0]));
    if (!segment.ok() || !(*segment)->shared()) _exit(10);
    for (int i = 0; i < kRounds; ++i) {
      if (!(*segment)->Barrier(Deadline::AfterMs(10000)).ok()) _exit(11);
      (*segment)->stamp(i, 1) = NowNs();
    }
    if (!(*segment)->Barrier(Deadline::AfterMs(10000)).ok()) _exit(12);
    _exit(0);
  }
  auto segment = HostSegment::Join(name, 0, 2, kRounds, pipe_barrier(to_child[1], to_parent[0]));
  ASSERT_TRUE(segment.ok()) << segment.status().ToString();
  ASSERT_TRUE((*segment)->shared()) << (*segment)->why_not_shared();
  std::vector<int64_t> mine(kRounds);
  for (int i = 0; i < kRounds; ++i) {
    ASSERT_TRUE((*segment)->Barrier(Deadline::AfterMs(10000)).ok());
    mine[static_cast<size_t>(i)] = NowNs();
    (*segment)->stamp(i, 0) = mine[static_cast<size_t>(i)];
  }
  ASSERT_TRUE((*segment)->Barrier(Deadline::AfterMs(10000)).ok());
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  // Round i+1 of either process starts only after both finished the barrier of round i+1, which
  // both entered after stamping round i.
  for (int i = 0; i + 1 < kRounds; ++i) {
    EXPECT_LT((*segment)->stamp(i, 1), mine[static_cast<size_t>(i) + 1]);
    EXPECT_LT(mine[static_cast<size_t>(i)], (*segment)->stamp(i + 1, 1));
  }
  // A lone rank's barrier times out instead of hanging.
  EXPECT_EQ((*segment)->Barrier(Deadline::AfterMs(50)).code(), StatusCode::kDeadlineExceeded);
}

// ---------------------------------------------------------------------------------------------
// End to end: the built binary

struct RunResult {
  int exit_code = -1;  // -1: killed or timed out
  bool timed_out = false;
  std::string out;
  std::string err;
};

// Runs m2n_perf bare (no launcher variables), bounded by `timeout`; kills its process group after.
// `while_running`, if given, runs on its own thread with the launcher's pid while the run lasts.
RunResult RunPerf(const std::vector<std::string>& args,
                  std::chrono::seconds timeout = std::chrono::seconds(120),
                  const std::vector<std::string>& env = {},
                  const std::function<void(pid_t)>& while_running = nullptr) {
  RunResult result;
  int out_pipe[2], err_pipe[2];
  if (pipe(out_pipe) != 0 || pipe(err_pipe) != 0) return result;
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    close(out_pipe[0]);
    close(err_pipe[0]);
    for (const char* v :
         {"M2N_RANK", "M2N_WORLD_SIZE", "M2N_MASTER_PORT", "M2N_JOB_ID", "RANK", "WORLD_SIZE",
          "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID", "M2N_PERF_SPAWNED"}) {
      unsetenv(v);
    }
    for (const auto& e : env) putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> argv = {const_cast<char*>(M2N_PERF_BIN)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(M2N_PERF_BIN, argv.data());
    _exit(127);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  std::thread side;
  if (while_running) side = std::thread(while_running, pid);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      kill(-pid, SIGKILL);
      break;
    }
    if (poll(fds, 2, static_cast<int>(std::min<int64_t>(left.count(), 1000))) < 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[4096];
      const ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n > 0) {
        (i == 0 ? result.out : result.err).append(buf, static_cast<size_t>(n));
      } else {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& f : fds) {
    if (f.fd >= 0) close(f.fd);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  kill(-pid, SIGKILL);  // stragglers of the group, if any
  if (side.joinable()) side.join();
  if (!result.timed_out && WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  return result;
}

struct TableRow {
  size_t bytes = 0;
  std::string impl;  // empty without a baseline
  std::vector<std::string> cells;
  uint64_t wrong = 0;
};

// The data rows of the table: lines that start with a byte count.
std::vector<TableRow> ParseRows(const std::string& out) {
  std::vector<TableRow> rows;
  std::istringstream lines(out);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::vector<std::string> cells;
    for (std::string w; words >> w;) cells.push_back(w);
    if (cells.size() < 5 || cells[0].find_first_not_of("0123456789") != std::string::npos) continue;
    TableRow row;
    row.bytes = std::stoull(cells[0]);
    if (cells[1].find_first_not_of("0123456789.") != std::string::npos) row.impl = cells[1];
    if (row.impl != "m2n/MPI") row.wrong = std::stoull(cells.back());
    row.cells = cells;
    rows.push_back(row);
  }
  return rows;
}

std::string Dump(const RunResult& r) {
  return "exit " + std::to_string(r.exit_code) + (r.timed_out ? " (timed out)" : "") +
         "\n--- stdout ---\n" + r.out + "--- stderr ---\n" + r.err;
}

const std::vector<std::string> kSmall = {"-M", "1", "-N", "2", "-b", "8", "-e", "64K", "-n", "20"};

std::vector<std::string> With(std::vector<std::string> base, const std::vector<std::string>& more) {
  base.insert(base.end(), more.begin(), more.end());
  return base;
}

TEST(PerfEndToEndTest, SmallRunPassesTheCheck) {
  RunResult r = RunPerf(kSmall);
  ASSERT_EQ(r.exit_code, 0) << Dump(r);
  EXPECT_NE(r.out.find("#wrong"), std::string::npos) << Dump(r);
  EXPECT_NE(r.out.find("p50 us"), std::string::npos);
  EXPECT_NE(r.out.find("GB/s"), std::string::npos);
  EXPECT_NE(r.out.find("1 x 2"), std::string::npos) << "the header names the shape";
  EXPECT_NE(r.out.find("oneway"), std::string::npos) << "one host: one-way latency";
  EXPECT_NE(r.out.find("total #wrong: 0"), std::string::npos) << Dump(r);
  auto rows = ParseRows(r.out);
  ASSERT_EQ(rows.size(), 14u) << Dump(r);  // 8 B .. 64 KB by 2
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].bytes, size_t{8} << i);
    EXPECT_EQ(rows[i].wrong, 0u);
    EXPECT_EQ(rows[i].cells.size(), 7u) << "bytes p50 p99 max GB/s Mmsg/s #wrong";
  }
}

TEST(PerfEndToEndTest, JsonHasTheSameRows) {
  const std::string path = testing::TempDir() + "/m2n_perf_" + std::to_string(getpid()) + ".json";
  RunResult r = RunPerf(With({"-M", "2", "-N", "1", "-b", "1K", "-e", "16K", "-f", "4", "-n", "10"},
                             {"--json", path}));
  ASSERT_EQ(r.exit_code, 0) << Dump(r);
  std::ifstream file(path);
  std::stringstream json;
  json << file.rdbuf();
  const std::string text = json.str();
  EXPECT_NE(text.find("\"rows\""), std::string::npos) << text;
  size_t rows = 0;
  for (size_t at = text.find("\"bytes\""); at != std::string::npos;
       at = text.find("\"bytes\"", at + 1))
    ++rows;
  EXPECT_EQ(rows, 3u) << text;  // 1K, 4K, 16K
  EXPECT_NE(text.find("\"senders\": 2"), std::string::npos);
  EXPECT_NE(text.find("\"total_wrong\": 0"), std::string::npos);
  std::remove(path.c_str());
}

TEST(PerfEndToEndTest, CorruptionIsCountedAndFailsTheRun) {
  RunResult r = RunPerf(With(kSmall, {"--inject-corruption"}));
  EXPECT_EQ(r.exit_code, 1) << Dump(r);
  auto rows = ParseRows(r.out);
  ASSERT_EQ(rows.size(), 14u) << Dump(r);
  for (const auto& row : rows) EXPECT_EQ(row.wrong, 1u) << "one flipped byte per size";
  EXPECT_NE(r.out.find("FAILED"), std::string::npos) << Dump(r);
}

TEST(PerfEndToEndTest, RoundTripModeWorksAndSaysSo) {
  RunResult r = RunPerf({"-M", "2", "-N", "2", "-b", "8", "-e", "8K", "-f", "8", "-n", "20",
                         "--latency_mode", "roundtrip"});
  ASSERT_EQ(r.exit_code, 0) << Dump(r);
  EXPECT_NE(r.out.find("roundtrip"), std::string::npos) << Dump(r);
  auto rows = ParseRows(r.out);
  ASSERT_EQ(rows.size(), 4u) << Dump(r);  // 8, 64, 512, 4096
  for (const auto& row : rows) EXPECT_EQ(row.wrong, 0u);

  RunResult bad = RunPerf({"-M", "1", "-N", "1", "-b", "8", "-e", "64", "-n", "5", "--latency_mode",
                           "roundtrip", "--inject-corruption"});
  EXPECT_EQ(bad.exit_code, 1) << Dump(bad);
}

TEST(PerfEndToEndTest, BadUsageExitsTwoWithAHint) {
  RunResult r = RunPerf({"--bogus"}, std::chrono::seconds(30));
  EXPECT_EQ(r.exit_code, 2) << Dump(r);
  EXPECT_NE(r.err.find("--bogus"), std::string::npos) << Dump(r);
  EXPECT_NE(r.err.find("--help"), std::string::npos) << Dump(r);
  RunResult size = RunPerf({"-e", "12Q"}, std::chrono::seconds(30));
  EXPECT_EQ(size.exit_code, 2) << Dump(size);

  RunResult json = RunPerf({"-M", "1", "-N", "1", "-e", "64", "--json", "/nonexistent-dir/x.json"},
                           std::chrono::seconds(60));
  EXPECT_EQ(json.exit_code, 2) << Dump(json);
  EXPECT_NE(json.err.find("/nonexistent-dir/x.json"), std::string::npos) << Dump(json);
  EXPECT_EQ(json.out.find("#wrong"), std::string::npos) << "fails before the run";

  RunResult help = RunPerf({"--help"}, std::chrono::seconds(30));
  EXPECT_EQ(help.exit_code, 0) << Dump(help);
  EXPECT_NE(help.out.find("--maxbytes"), std::string::npos);
}

TEST(PerfEndToEndTest, AnUnknownTransportIsBadUsageBeforeAnyRankStarts) {
  RunResult r =
      RunPerf(With(kSmall, {"--transport", "no-such-transport"}), std::chrono::seconds(30));
  EXPECT_FALSE(r.timed_out) << Dump(r);
  EXPECT_EQ(r.exit_code, 2) << "a bad --transport is bad usage\n" << Dump(r);
  EXPECT_NE(r.err.find("no-such-transport"), std::string::npos) << Dump(r);
  EXPECT_NE(r.err.find("'ucx'"), std::string::npos) << "names what this build has\n" << Dump(r);
  EXPECT_EQ(r.err.find("rank"), std::string::npos) << "no rank was started\n" << Dump(r);
}

// The children of `pid`, from /proc (empty once it has none, or is gone).
std::vector<pid_t> ChildrenOf(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  std::vector<pid_t> children;
  for (pid_t c = 0; in >> c;) children.push_back(c);
  return children;
}

TEST(PerfEndToEndTest, AKilledRankStopsTheJobAndIsNamed) {
  // A long run; once all 3 ranks are up, one of them is SIGKILLed. The launcher must stop the
  // others within its grace period and name the rank and how it ended.
  pid_t killed = 0;
  auto killer = [&killed](pid_t launcher) {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < give_up) {
      std::vector<pid_t> ranks = ChildrenOf(launcher);
      if (ranks.size() == 3) {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));  // into the measured loop
        killed = ranks.back();
        kill(killed, SIGKILL);
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  };
  RunResult r = RunPerf({"-M", "1", "-N", "2", "-b", "8", "-e", "1M", "-n", "1000000"},
                        std::chrono::seconds(120), {}, killer);
  ASSERT_NE(killed, 0) << "the ranks never all appeared\n" << Dump(r);
  EXPECT_FALSE(r.timed_out) << Dump(r);
  EXPECT_NE(r.exit_code, 0) << Dump(r);
  EXPECT_NE(r.err.find("was killed by signal 9"), std::string::npos) << Dump(r);
  EXPECT_NE(r.err.find("stopping the other"), std::string::npos) << Dump(r);
}

// One rank of a torchrun-style job (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set for each rank,
// no m2n_perf launcher above it), its stdout and stderr into files of `dir`.
pid_t StartTorchrunRank(int rank, int world, int port, const std::string& dir,
                        const std::vector<std::string>& args) {
  const pid_t pid = fork();
  if (pid != 0) return pid;
  const std::string base = dir + "/rank" + std::to_string(rank);
  const int out = open((base + ".out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  const int err = open((base + ".err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (out < 0 || err < 0) _exit(126);
  dup2(out, 1);
  dup2(err, 2);
  for (const char* v :
       {"M2N_RANK", "M2N_WORLD_SIZE", "M2N_MASTER_PORT", "M2N_MASTER_ADDR", "M2N_JOB_ID",
        "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID", "M2N_PERF_SPAWNED"}) {
    unsetenv(v);
  }
  setenv("RANK", std::to_string(rank).c_str(), 1);
  setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
  setenv("LOCAL_WORLD_SIZE", std::to_string(world).c_str(), 1);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
  std::vector<char*> argv = {const_cast<char*>(M2N_PERF_BIN)};
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  execv(M2N_PERF_BIN, argv.data());
  _exit(127);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// How a process ended: its wait status, and how long after `since` (-1: not within the bound).
struct Exit {
  int status = -1;
  double after_s = -1;
};

// Reaps `pids` as they end, until all have or `bound` after `since` (then it kills the rest).
std::vector<Exit> WaitForExits(const std::vector<pid_t>& pids,
                               std::chrono::steady_clock::time_point since,
                               std::chrono::seconds bound) {
  std::vector<Exit> exits(pids.size());
  size_t left = pids.size();
  while (left > 0 && std::chrono::steady_clock::now() < since + bound) {
    for (size_t i = 0; i < pids.size(); ++i) {
      if (exits[i].after_s >= 0 || waitpid(pids[i], &exits[i].status, WNOHANG) != pids[i]) continue;
      exits[i].after_s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
      --left;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (size_t i = 0; i < pids.size(); ++i) {
    if (exits[i].after_s >= 0) continue;
    kill(pids[i], SIGKILL);
    waitpid(pids[i], nullptr, 0);
  }
  return exits;
}

TEST(PerfEndToEndTest, RanksInTheHostBarrierNameAKilledRankPromptly) {
  // 2 x 2 under a torchrun-style launch, so no launcher stops the survivors: each must find out
  // itself. Rank 1 (a sender) is SIGKILLed in the latency loop of one tiny size with many
  // iterations; rank 0, which never receives from it there, waits in the host barrier. Every
  // survivor must name rank 1 and end long before --timeout_ms.
  constexpr int kWorld = 4;
  constexpr int kTimeoutMs = 60000;
  auto port = PickFreePort();
  ASSERT_TRUE(port.ok()) << port.status().ToString();
  char dir_template[] = "/tmp/m2n_perf_kill.XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  const std::vector<std::string> args = {
      "-b", "8", "-e", "8", "-n", "10000000", "--timeout_ms", std::to_string(kTimeoutMs)};
  std::vector<pid_t> ranks;
  for (int r = 0; r < kWorld; ++r) ranks.push_back(StartTorchrunRank(r, kWorld, *port, dir, args));
  // Rank 0 prints the table head when the measured loop starts.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool ended_early = false;
  while (ReadFile(dir + "/rank0.out").find("#wrong") == std::string::npos &&
         std::chrono::steady_clock::now() < give_up && !ended_early) {
    for (pid_t pid : ranks) ended_early |= waitpid(pid, nullptr, WNOHANG) == pid;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (ended_early) {
    for (pid_t pid : ranks) kill(pid, SIGKILL);
    for (pid_t pid : ranks) waitpid(pid, nullptr, 0);
    FAIL() << "a rank ended before the sweep began:\n"
           << ReadFile(dir + "/rank0.err") << ReadFile(dir + "/rank1.err");
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  kill(ranks[1], SIGKILL);
  const auto killed_at = std::chrono::steady_clock::now();
  const std::vector<Exit> exits = WaitForExits(ranks, killed_at, std::chrono::seconds(30));
  for (int r : {0, 2, 3}) {
    const std::string err = ReadFile(dir + "/rank" + std::to_string(r) + ".err");
    SCOPED_TRACE("rank " + std::to_string(r) + " stderr:\n" + err);
    ASSERT_GE(exits[r].after_s, 0) << "still running 30 s after the kill";
    EXPECT_LT(exits[r].after_s, 10.0) << "--timeout_ms is " << kTimeoutMs;
    EXPECT_TRUE(WIFEXITED(exits[r].status) && WEXITSTATUS(exits[r].status) != 0) << exits[r].status;
    // A survivor that failed and left before another asked may be named too ("ranks 1, 2 died").
    EXPECT_TRUE(NamesRankOne(err, "rank ", " died") || NamesRankOne(err, "ranks ", " died"));
  }
  // Rank 0 was in the host barrier, which names who never came.
  const std::string err0 = ReadFile(dir + "/rank0.err");
  const std::string waiting = "host barrier: rank 0 was waiting for ";
  EXPECT_TRUE(NamesRankOne(err0, waiting + "rank ", "") ||
              NamesRankOne(err0, waiting + "ranks ", ""))
      << err0;
  for (int r = 0; r < kWorld; ++r) {
    for (const char* ext : {".out", ".err"})
      std::remove((dir + "/rank" + std::to_string(r) + ext).c_str());
  }
  rmdir(dir.c_str());
}

TEST(PerfEndToEndTest, MpiBaselineRowsSitNextToM2n) {
#if !M2N_PERF_WITH_MPI
  RunResult r = RunPerf(With(kSmall, {"--baseline", "mpi"}), std::chrono::seconds(30));
  EXPECT_EQ(r.exit_code, 2) << Dump(r);
  EXPECT_NE(r.err.find("without MPI"), std::string::npos) << Dump(r);
  GTEST_SKIP() << "m2n_perf was built without MPI (CMake found none, or -DM2N_WITH_MPI=OFF)";
#else
  if (system("command -v mpirun > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "mpirun is not in PATH (apt-get install openmpi-bin)";
  }
  RunResult r = RunPerf(With(kSmall, {"--baseline", "mpi"}));
  ASSERT_EQ(r.exit_code, 0) << Dump(r);
  auto rows = ParseRows(r.out);
  size_t m2n = 0, mpi = 0, ratio = 0;
  for (const auto& row : rows) {
    m2n += row.impl == "m2n";
    mpi += row.impl == "MPI";
    ratio += row.impl == "m2n/MPI";
    if (row.impl != "m2n/MPI") {
      EXPECT_EQ(row.wrong, 0u);
    }
  }
  EXPECT_EQ(m2n, 14u) << Dump(r);
  EXPECT_EQ(mpi, 14u) << Dump(r);
  EXPECT_EQ(ratio, 14u) << Dump(r);
  EXPECT_NE(r.out.find("mpirun"), std::string::npos) << "the header names the launcher";
#endif
}

}  // namespace
}  // namespace m2n::perf

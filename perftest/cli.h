// m2n_perf's command line: flags in the style of nccl-tests (-b/-e/-f, -n/-w) and perftest (-d).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "m2n/status.h"

namespace m2n::perf {

enum class Baseline { kNone, kMpi, kNccl, kPerftest };

// How a latency sample is taken. kOneWay needs every rank on one host (one CLOCK_MONOTONIC);
// kRoundTrip works across hosts: each sender times its own round trip and halves it.
enum class LatencyMode { kAuto, kOneWay, kRoundTrip };
std::string_view LatencyModeName(LatencyMode mode);

struct PerfConfig {
  size_t min_bytes = 8;
  size_t max_bytes = size_t{4} << 20;
  uint64_t step_factor = 2;  // sizes min, min*f, min*f^2, ... <= max
  int iters = 500;  // measured iterations per size (latency), messages per pair (bandwidth)
  int warmup_iters = 50;
  // --soak N: repeat the sweep until at least N sender-to-receiver messages have gone (0: once).
  uint64_t soak_messages = 0;
  int senders = 2;
  int receivers = 2;
  bool senders_set = false;  // given on the command line (else a launcher's world size may decide)
  bool receivers_set = false;
  std::string transport = "auto";
  bool check = true;
  int slot_depth = 4;
  std::string json_path;
  Baseline baseline = Baseline::kNone;
  LatencyMode latency_mode = LatencyMode::kAuto;
  // --use_cuda: device buffers, Group::*OnStream, one process per GPU (gpu_bench.h).
  bool use_cuda = false;
  // How long a waiting rank spins before it yields the core (Options::spin_us; MPI waits too).
  // -1 (auto): 0 when this host's ranks outnumber its usable cores, else the library's default.
  int spin_us = -1;
  int64_t timeout_ms = 30000;  // bound on every blocking call of a rank
  int64_t run_timeout_s = 600;  // bound on a self-spawned job as a whole
  bool help = false;
  // Test only (not in --help): the first receiver flips one byte of a message it received, once per
  // size and implementation, before it checks the data, so tests can see #wrong > 0 fail the run.
  bool inject_corruption = false;
};

// Parses "123", "64K", "4M", "1G" (powers of two, case-insensitive) into bytes.
StatusOr<size_t> ParseSize(std::string_view text);

// Parses argv[1..]: errors are kInvalidArgument naming the flag and the bad value.
StatusOr<PerfConfig> ParseCommandLine(std::span<const std::string> args);
StatusOr<PerfConfig> ParseCommandLine(int argc, const char* const* argv);

// Message sizes of the sweep, ascending.
std::vector<size_t> SweepSizes(const PerfConfig& config);

// The usage text: every public flag with its default.
std::string Usage(std::string_view program);

// "8", "64K", "4M": the shortest exact spelling of a size.
std::string FormatSize(size_t bytes);

}  // namespace m2n::perf

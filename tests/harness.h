// Multi-process test harness: runs one body per rank in forked processes on this machine, with a
// fresh bootstrap port, and bounds the whole run. Fork happens before the parent creates any m2n
// object, so each child starts clean.
#pragma once

#include <sys/types.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "m2n/options.h"
#include "m2n/status.h"

// In a rank's body (a child process): print what failed and return 1 from the body.
#define CHILD_CHECK(cond, ...)                           \
  do {                                                   \
    if (!(cond)) {                                       \
      fprintf(stderr, "rank check failed: %s: ", #cond); \
      fprintf(stderr, __VA_ARGS__);                      \
      fprintf(stderr, "\n");                             \
      return 1;                                          \
    }                                                    \
  } while (0)
#define CHILD_OK(expr)                                              \
  do {                                                              \
    ::m2n::Status s_ = (expr);                                      \
    CHILD_CHECK(s_.ok(), "%s -> %s", #expr, s_.ToString().c_str()); \
  } while (0)

namespace m2n::testing {

struct RankOutcome {
  int rank = -1;
  int exit_code = -1;  // the body's return value (0 = pass) when it exited
  int signal = 0;  // the signal that ended it, if any
  bool timed_out = false;
};

// Options for `rank` of an M x N job on a port of its own, with short timeouts for tests.
Options TestOptions(int num_senders, int num_receivers, int rank, int port);

// Picks a free TCP port on 127.0.0.1.
int FreePort();

// Runs body(rank, port) in world_size children; returns when all have ended or `timeout_s` passed
// (stragglers are killed and marked timed_out). The body returns 0 on success.
std::vector<RankOutcome> RunRanks(int world_size,
                                  const std::function<int(int rank, int port)>& body,
                                  int timeout_s = 120);
// The same, and once every rank is forked the parent runs while_running(pids) (pids[rank]), e.g.
// to kill one mid-run, before it waits for the ranks; its time counts against timeout_s.
std::vector<RankOutcome> RunRanks(
    int world_size, const std::function<int(int rank, int port)>& body, int timeout_s,
    const std::function<void(const std::vector<pid_t>& pids)>& while_running);

// "rank 1: exit 1; rank 2: killed by signal 9" for failure messages; empty when all passed.
std::string DescribeFailures(const std::vector<RankOutcome>& outcomes);

// Deterministic payload byte for (source, destination, message number, offset).
inline std::byte PatternByte(int source, int destination, uint64_t number, size_t offset) {
  uint64_t x = (uint64_t(source) << 48) ^ (uint64_t(destination) << 32) ^
               (number * 0x9E3779B97F4A7C15ull) ^ (offset / 8 * 0xBF58476D1CE4E5B9ull);
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 29;
  return static_cast<std::byte>(x >> ((offset % 8) * 8));
}
void FillPattern(std::byte* data, size_t length, int source, int destination, uint64_t number);
// Number of bytes that differ from the pattern.
size_t CountWrong(const std::byte* data, size_t length, int source, int destination,
                  uint64_t number);

}  // namespace m2n::testing

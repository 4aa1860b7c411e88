// The transport conformance suite: one transport below the Group, in two real processes (one fork
// per rank), connection bytes and remote keys exchanged over a socketpair. What every transport
// must do is tested once (transport_suite.cc); each transport's file instantiates it with its
// setups and keeps the tests only that transport has:
//
//   INSTANTIATE_TEST_SUITE_P(ucx, TransportTest, ::testing::Values(TransportCase{...}, ...),
//   TransportCaseName);
//
// Each rank runs in a child forked before any transport object exists; a child reports a failure as
// text through a pipe and its exit code, the parent bounds the whole run and kills stragglers.
// Inside a child, gtest assertions would not reach the parent, hence the REQUIRE macros that return
// text.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "m2n/deadline.h"
#include "m2n/status.h"
#include "transport_setup.h"
#include "transports/transport.h"

namespace m2n::testing {

using namespace std::chrono_literals;

// Bound on any single wait inside a child.
inline constexpr auto kWait = 20s;

// ---- Failure text from inside a child ("" = pass). ----

// "transport_suite.cc:123: "
std::string Where(const char* file, int line);
inline const Status& AsStatus(const Status& s) { return s; }
template <typename T>
const Status& AsStatus(const StatusOr<T>& s) {
  return s.status();
}

#define REQUIRE(cond, ...)                                                                \
  do {                                                                                    \
    if (!(cond))                                                                          \
      return Where(__FILE__, __LINE__) + "failed: " #cond " " + std::string(__VA_ARGS__); \
  } while (0)
#define REQUIRE_OK(expr)                                                       \
  do {                                                                         \
    const auto& r_ = (expr);                                                   \
    if (!AsStatus(r_).ok())                                                    \
      return Where(__FILE__, __LINE__) + #expr ": " + AsStatus(r_).ToString(); \
  } while (0)
#define REQUIRE_PASS(expr)      \
  do {                          \
    std::string f_ = (expr);    \
    if (!f_.empty()) return f_; \
  } while (0)
#define M2N_TEST_CONCAT_(a, b) a##b
#define M2N_TEST_CONCAT(a, b) M2N_TEST_CONCAT_(a, b)
#define ASSIGN_OR_FAIL(lhs, expr) ASSIGN_OR_FAIL_IMPL(M2N_TEST_CONCAT(so_, __LINE__), lhs, expr)
#define ASSIGN_OR_FAIL_IMPL(tmp, lhs, expr)                                               \
  auto tmp = (expr);                                                                      \
  if (!tmp.ok()) return Where(__FILE__, __LINE__) + #expr ": " + tmp.status().ToString(); \
  lhs = std::move(tmp).value()

// ---- The socketpair between the two ranks: length-prefixed messages. ----

class Link {
 public:
  explicit Link(int fd) : fd_(fd) {}
  bool Send(const transport::Bytes& bytes);
  std::optional<transport::Bytes> Recv(Deadline deadline = Deadline::After(kWait));
  // Whether a message (or the end of the stream) is waiting.
  bool Readable();
  // Returns false when the other side is gone or the deadline passed.
  bool Sync();

 private:
  bool WriteAll(const void* data, size_t size);
  bool ReadAll(void* data, size_t size, Deadline deadline);
  int fd_;
};

// ---- One rank inside its child. ----

struct Rank {
  int rank = -1;
  int peer = -1;
  Link* link = nullptr;
  const transport::TransportInfo* transport = nullptr;  // the one under test
  std::unique_ptr<transport::Transport> t;
  std::vector<transport::Completion> buffer = std::vector<transport::Completion>(64);
  std::array<std::deque<transport::Completion>, transport::kNumLanes>
      imms;  // arrived, not yet taken
  std::vector<uint64_t> done;  // cookies of kWriteDone, in order seen
  std::vector<transport::Completion> errors;
  std::string info;  // a line the parent prints (benchmarks)
  bool registered_targets = true;  // TransportCase::registered_targets
};

// The registered transport called `name`, or null when it is not compiled in.
const transport::TransportInfo* FindTransport(std::string_view name);

// "ucx: peer rank 1", as the transport's error messages name a peer.
std::string PeerText(const Rank& r, int peer);

// Polls once, sorting what came into r.done, r.imms and r.errors.
std::string Pump(Rank& r);
// Receives a link message while keeping the transport moving (the peer may need our progress).
std::string RecvWhilePumping(Rank& r, transport::Bytes* out, bool allow_errors = false);
std::string NoErrors(const Rank& r, const char* file, int line);
// Waits for the next immediate on `lane`.
std::string WaitImm(Rank& r, transport::Lane lane, transport::Completion* out,
                    Deadline deadline = Deadline::After(kWait));
// Waits until `count` kWriteDone have been seen.
std::string WaitDone(Rank& r, size_t count, Deadline deadline = Deadline::After(kWait));
// The config of a rank in a world of two, talking to the other rank.
transport::Config PairConfig(const Rank& r, int max_unpolled);
// Creates the transport and connects to the other rank through the link.
std::string Connect(Rank& r, int max_unpolled);
// A write target of `memory.size()` bytes: `memory` registered, or where the transport cannot
// export registered memory (Rank::registered_targets false), a region it allocated.
StatusOr<std::unique_ptr<transport::Region>> WriteTarget(Rank& r, std::vector<std::byte>& memory);
// Sends the key of `region` (none: an empty message), receives the peer's and unpacks it if any.
std::string SwapKeys(Rank& r, const transport::Region* region,
                     std::unique_ptr<transport::RemoteRegion>* remote);
// Both ranks arrive here before closing, so neither closes under the other's writes.
std::string CloseAfterSync(Rank& r);

// Payload bytes that depend on (seed, offset), and the check of them.
std::byte Pattern(uint64_t seed, size_t i);
void Fill(std::byte* p, size_t n, uint64_t seed);
// Index of the first wrong byte, or -1.
int64_t FirstWrong(const std::byte* p, size_t n, uint64_t seed);

transport::Write MakeWrite(const Rank& r, transport::Lane lane, const transport::Region* local,
                           size_t local_offset, const transport::RemoteRegion* remote,
                           size_t remote_offset, size_t length, uint32_t imm, uint64_t cookie);

// ---- Running two ranks. ----

// One transport as the suite sees it: how to set it up, and what the transports legitimately
// differ in.
struct TransportCase {
  TransportSetup setup;
  // What capabilities() must report; cuda_memory unset where the build decides it.
  bool native_write_with_imm = false;
  std::optional<bool> cuda_memory;
  // Whether a peer can write into memory the caller registered, not only into memory the transport
  // allocated; false: such a region's PackRemoteKey is UNIMPLEMENTED, and the tests write into
  // allocated regions instead (cuda_ipc exports only its shared-memory segments).
  bool registered_targets = true;
  // PeerExitIsReportedOrNeverHangs: variables that let the transport notice a dead peer within
  // the test's patience, and how long the dying rank keeps polling after its last immediate.
  std::vector<std::pair<std::string, std::string>> peer_exit_env;
  std::chrono::milliseconds peer_exit_settle{0};
  // PingPongLatency's round trips per size; M2N_<TRANSPORT>_PINGPONG_ITERS overrides it.
  int pingpong_iters = 2000;
};

// gtest names the test by the setup's name; this makes ctest's listing say it too.
inline void PrintTo(const TransportCase& c, std::ostream* os) { *os << c.setup.name; }
std::string TransportCaseName(const ::testing::TestParamInfo<TransportCase>& info);

using Body = std::function<std::string(Rank&)>;

// Runs body(rank 0) and body(rank 1) in two children, each with the case's setup applied and then
// `env`; returns the failure text ("" = pass) and appends what rank 0 reported in Rank::info to
// *info.
std::string RunPair(const TransportCase& c, const Body& body, std::chrono::seconds limit = 90s,
                    const std::vector<std::pair<std::string, std::string>>& env = {},
                    std::string* info = nullptr);

// The suite's fixture; a transport's own tests derive theirs from it. Skips, with the reason, a
// case whose transport cannot run here.
class TransportTest : public ::testing::TestWithParam<TransportCase> {
 protected:
  void SetUp() override;
};

}  // namespace m2n::testing

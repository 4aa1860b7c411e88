// Abort reaches every wait of the group's own (docs/reliability.md, "Abort and Close"): the waits
// that do not need a transport are tested here, in one process, each aborted from another thread
// and required to return far sooner than its own bound. The waits inside the transports are
// tested with them (verbs: VerbsTransportTest.AbortEndsWaitForRoom in the Soft-RoCE VM; cuda_ipc:
// CudaIpcGpuTest.AbortEndsWaitForProxyRoom on a GPU); Abort during Close between real ranks is
// KillTest.AbortDuringCloseLeavesWithoutGoodbye.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>

#include "bootstrap/store.h"
#include "group/impl.h"
#include "harness.h"
#include "m2n/m2n.h"
#include "protocol/config_check.h"

namespace m2n::testing {
namespace {

using namespace std::chrono_literals;

// How long after its Abort a wait may return: a few polls, with room for a loaded machine.
constexpr double kPromptlyMs = 500;

double MsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Rank `rank` of a 1 x 1 group, set up only as far as its store (an in-memory one): enough for
// the waits that talk to the store alone.
std::unique_ptr<Group::Impl> ImplWithStore(int rank, int liveness_check_ms = 100) {
  auto impl = std::make_unique<Group::Impl>();
  Options o = TestOptions(1, 1, rank, 0);
  o.liveness_check_ms = liveness_check_ms;
  impl->SetRanks(o);
  impl->store = bootstrap::NewInMemoryStore();
  return impl;
}

// Aborts `token` after `delay`, from a thread of its own; joins on destruction.
class AbortLater {
 public:
  AbortLater(AbortToken token, std::chrono::milliseconds delay)
      : thread_([token, delay, this] {
          std::this_thread::sleep_for(delay);
          at_ = Clock::now();
          token.Abort();
        }) {}
  ~AbortLater() { Join(); }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  Clock::time_point at() {
    Join();
    return at_;
  }

 private:
  Clock::time_point at_;
  std::thread thread_;
};

// Rank 0 keeps the store up in Close until every rank has left the close barrier; a rank that
// never leaves held it until Close's deadline, Abort or not.
TEST(AbortTest, EndsRankZeroWaitForPeersLeavingInClose) {
  auto impl = ImplWithStore(0);
  AbortLater abort(impl->abort, 100ms);
  const auto start = Clock::now();
  Status s = impl->LeaveCloseBarrier(Deadline::After(20s));
  EXPECT_EQ(s.code(), StatusCode::kAborted) << s.ToString();
  EXPECT_LT(MsSince(abort.at()), kPromptlyMs);
  EXPECT_LT(MsSince(start), 2000.0) << "bound of the wait: 20000 ms";
}

// After a transport error naming a peer, the store gets a grace (2 liveness periods, at most 1 s)
// to confirm that the peer died; Abort ends it.
TEST(AbortTest, EndsTransportFailureGrace) {
  auto impl = ImplWithStore(0, /*liveness_check_ms=*/500);
  // The premise: without Abort the grace lasts its full second.
  auto start = Clock::now();
  Status s = impl->TransportFailure(UnavailableError("the link went down"), 1);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_GE(MsSince(start), 1000.0);

  AbortLater abort(impl->abort, 50ms);
  start = Clock::now();
  s = impl->TransportFailure(UnavailableError("the link went down"), 1);
  EXPECT_EQ(s.code(), StatusCode::kAborted) << s.ToString();
  EXPECT_NE(s.message().find("the link went down"), std::string::npos) << s.ToString();
  EXPECT_LT(MsSince(start), 400.0) << "bound of the grace: 1000 ms";
}

// A configuration mismatch: rank 0 (which serves the store) waits until every rank has read every
// configuration. Here rank 1 publishes a different slot size and never reads, so only the
// deadline (20 s) or Abort ends rank 0's Create. Rank 1 is played by this thread, on the store.
TEST(AbortTest, EndsConfigurationMismatchWaitInCreate) {
  const int port = FreePort();
  ASSERT_GT(port, 0);
  AbortToken token;
  StatusOr<std::unique_ptr<Group>> created = InternalError("not run");
  std::thread rank0([&] { created = Group::Create(TestOptions(1, 1, 0, port), token); });

  bootstrap::TcpStoreOptions client;
  client.port = port;
  client.rank = 1;
  client.world_size = 2;
  client.job_id = ResolveOptions(TestOptions(1, 1, 1, port))->bootstrap.job_id;
  auto store = bootstrap::ConnectTcpStore(client, Deadline::After(10s));
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto theirs = (*store)->GetString("m2n/config/0", Deadline::After(10s));
  ASSERT_TRUE(theirs.ok()) << theirs.status().ToString();
  auto fingerprint = protocol::DecodeFingerprint(*theirs);
  ASSERT_TRUE(fingerprint.ok());
  for (auto& [field, value] : *fingerprint) {
    if (field == "slot_bytes") value += "0";
  }
  ASSERT_TRUE((*store)->SetString("m2n/config/1", protocol::EncodeFingerprint(*fingerprint)).ok());

  const auto start = Clock::now();
  AbortLater abort(token, 200ms);
  rank0.join();
  EXPECT_EQ(created.status().code(), StatusCode::kFailedPrecondition)
      << created.status().ToString();
  EXPECT_NE(created.status().message().find("slot_bytes"), std::string::npos)
      << created.status().ToString();
  EXPECT_LT(MsSince(abort.at()), kPromptlyMs);
  EXPECT_LT(MsSince(start), 3000.0) << "bound of the wait: 20000 ms";
}

// A token aborted before Create: Create fails at once, before it reaches the store.
TEST(AbortTest, CreateWithAbortedTokenFails) {
  AbortToken token;
  token.Abort();
  const auto start = Clock::now();
  auto created = Group::Create(TestOptions(1, 1, 1, FreePort()), token);
  EXPECT_EQ(created.status().code(), StatusCode::kAborted) << created.status().ToString();
  EXPECT_LT(MsSince(start), 1000.0);
}

// Every copy of a token aborts alike, and a copy stays usable after everything else is gone.
TEST(AbortTest, TokenCopiesShareOneFlag) {
  AbortToken kept;
  {
    AbortToken a = kept;
    AbortToken b = a;
    EXPECT_FALSE(kept.aborted());
    b.Abort();
    EXPECT_TRUE(a.aborted());
  }
  EXPECT_TRUE(kept.aborted());
  kept.Abort();  // idempotent
}

}  // namespace
}  // namespace m2n::testing

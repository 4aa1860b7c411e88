// See kill_suite.h. One trial: 3 senders and 3 receivers exchange messages both ways in rounds,
// every call with a deadline of kCallTimeoutMs; once every rank has done a few rounds (the group is
// established and traffic flows), the test process SIGKILLs one rank at random. Each survivor
// records the first error it gets and when; the test then checks that every survivor's error is
// UNAVAILABLE naming the killed rank, came within 2 x kCallTimeoutMs of the kill, and that every
// survivor then closed its group and exited normally (no hang, no crash).
//
// M2N_KILL_TRIALS sets the number of trials (default 50; 10 in sanitized builds).
#include "kill_suite.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"
#include "m2n/m2n.h"

namespace m2n::testing {
namespace {

constexpr int kSenders = 3;
constexpr int kReceivers = 3;
constexpr int kWorld = kSenders + kReceivers;
// The deadline of every call, and 2x it the bound on reporting the dead rank. Sanitized builds run
// several times slower on the same 2 cores, so their calls get more time before a stall looks
// like a timeout.
// They also start each process many times slower, so they run a few trials: the sanitizers look
// for races and memory errors on the failure paths, which a few kills reach; the 50 trials that
// establish the bound run in the normal build.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr int kCallTimeoutMs = 3000;
constexpr int kDefaultTrials = 10;
#else
constexpr int kCallTimeoutMs = 1000;
constexpr int kDefaultTrials = 50;
#endif
constexpr int kLivenessCheckMs = 100;
constexpr size_t kMessageBytes = 256;
// Rounds every rank completes before the kill: the group is up and traffic flows both ways.
constexpr int kRoundsBeforeKill = 3;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

// Shared by the test process and its ranks (MAP_SHARED, mapped before the fork). steady_clock is
// CLOCK_MONOTONIC, one clock for every process of the machine.
struct Board {
  std::atomic<int> rounds[kWorld];
  std::atomic<int64_t> killed_at_ns;
  struct Report {
    std::atomic<int> done;  // 1: an error was recorded; 2: the rank ran out of rounds without one
    int code;
    int64_t at_ns;
    int64_t close_ms;
    int close_code;
    char message[1024];
  } report[kWorld];
};

// Does `text` name rank `r` ("rank 4 died", not "rank 40")?
bool NamesRank(const std::string& text, int r) {
  const std::string want = "rank " + std::to_string(r) + " died";
  return text.find(want) != std::string::npos;
}

int Trial(const TransportSetup& setup, Board* board, int rank, int port) {
  ApplySetup(setup);
  Options o = TestOptions(kSenders, kReceivers, rank, port);
  o.slot_bytes = kMessageBytes;
  o.slot_depth = 2;
  o.liveness_check_ms = kLivenessCheckMs;
  auto created = Group::Create(o);
  CHILD_OK(created.status());
  Group& g = **created;
  std::vector<int> peers(g.peers().begin(), g.peers().end());
  std::vector<std::byte> buffer(kMessageBytes * peers.size());
  auto region = g.RegisterMemory(buffer.data(), buffer.size());
  CHILD_OK(region.status());
  const bool sender = g.role() == Role::kSender;

  auto send_all = [&](uint64_t round) {
    std::vector<SendRequest> requests;
    for (size_t i = 0; i < peers.size(); ++i) {
      std::byte* data = buffer.data() + i * kMessageBytes;
      FillPattern(data, kMessageBytes, rank, peers[i], round);
      requests.push_back({peers[i], data, kMessageBytes});
    }
    return g.Send(requests, Deadline::AfterMs(kCallTimeoutMs));
  };
  auto receive_all = [&](uint64_t round) -> Status {
    std::vector<Message> got(peers.size());
    Status s;
    // A receive that times out consumed nothing and may be retried: on a loaded machine a stall
    // before the kill is no failure of the protocol. After the kill, the first error counts.
    do {
      s = g.Receive(peers, got, Deadline::AfterMs(kCallTimeoutMs));
    } while (s.code() == StatusCode::kDeadlineExceeded && board->killed_at_ns.load() == 0);
    M2N_RETURN_IF_ERROR(s);
    for (size_t i = 0; i < peers.size(); ++i) {
      // Wrong data is never an acceptable outcome, dead peer or not.
      if (got[i].length != kMessageBytes || got[i].sequence != round ||
          CountWrong(got[i].data, kMessageBytes, peers[i], rank, round) != 0) {
        return InternalError("TEST: wrong message " + std::to_string(got[i].sequence) +
                             " from rank " + std::to_string(peers[i]));
      }
    }
    return g.Release(got);
  };

  Status s;
  const auto give_up = Clock::now() + std::chrono::seconds(30);
  for (uint64_t round = 0; s.ok() && Clock::now() < give_up; ++round) {
    s = sender ? send_all(round) : receive_all(round);
    if (s.ok()) s = sender ? receive_all(round) : send_all(round);
    if (s.ok()) board->rounds[rank].fetch_add(1);
  }
  Board::Report& report = board->report[rank];
  report.at_ns = NowNs();
  report.code = static_cast<int>(s.code());
  snprintf(report.message, sizeof report.message, "%s", s.ToString().c_str());
  report.done.store(s.ok() ? 2 : 1);
  // Closing after the failure must neither hang nor fail.
  auto start = Clock::now();
  Status closed = g.Close(Deadline::AfterMs(2 * kCallTimeoutMs));
  report.close_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
  report.close_code = static_cast<int>(closed.code());
  return 0;
}

}  // namespace

std::string KillSetupName(const ::testing::TestParamInfo<TransportSetup>& info) {
  return info.param.name;
}

void KillTest::SetUp() {
  std::string reason = SkipReason(GetParam());
  if (!reason.empty()) GTEST_SKIP() << reason;
}

TEST_P(KillTest, SigkillRandomRankMidRun3x3) {
  int trials = kDefaultTrials;
  if (const char* env = getenv("M2N_KILL_TRIALS")) trials = std::max(1, atoi(env));
  void* mapped =
      mmap(nullptr, sizeof(Board), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mapped, MAP_FAILED);
  Board* board = static_cast<Board*>(mapped);
  std::mt19937 rng(20261121);
  int passed = 0;
  std::vector<double> detect_ms;
  std::string failures;
  for (int trial = 0; trial < trials; ++trial) {
    std::memset(static_cast<void*>(board), 0, sizeof(Board));
    const int victim = static_cast<int>(rng() % kWorld);
    const int extra_us = static_cast<int>(rng() % 3000);
    bool killed = false;
    auto outcomes = RunRanks(
        kWorld, [&](int rank, int port) { return Trial(GetParam(), board, rank, port); }, 60,
        [&](const std::vector<pid_t>& pids) {
          // Kill once every rank has done its first rounds, a random moment into the next ones.
          auto until = Clock::now() + std::chrono::seconds(30);
          while (Clock::now() < until) {
            bool ready = true;
            for (int r = 0; r < kWorld; ++r)
              ready = ready && board->rounds[r].load() >= kRoundsBeforeKill;
            bool someone_ended = false;
            for (int r = 0; r < kWorld; ++r)
              someone_ended = someone_ended || board->report[r].done.load() != 0;
            if (ready || someone_ended) break;
            std::this_thread::sleep_for(std::chrono::microseconds(200));
          }
          std::this_thread::sleep_for(std::chrono::microseconds(extra_us));
          kill(pids[victim], SIGKILL);
          board->killed_at_ns.store(NowNs());
          killed = true;
        });
    std::string why;
    auto fail = [&](const std::string& text) { why += (why.empty() ? "" : "; ") + text; };
    if (!killed) fail("the victim was never killed");
    for (int r = 0; r < kWorld; ++r) {
      const RankOutcome& o = outcomes[r];
      const Board::Report& report = board->report[r];
      const std::string who = "rank " + std::to_string(r);
      if (r == victim) {
        if (o.signal != SIGKILL)
          fail(who + " (the victim) did not die by SIGKILL: " + DescribeFailures({o}));
        continue;
      }
      if (o.timed_out || o.signal != 0 || o.exit_code != 0) {
        fail(who + " " + DescribeFailures({o}) +
             (report.done ? std::string(" after: ") + report.message : ""));
        continue;
      }
      if (report.done.load() != 1) {
        fail(who + " saw no error");
        continue;
      }
      const double ms = static_cast<double>(report.at_ns - board->killed_at_ns.load()) / 1e6;
      detect_ms.push_back(ms);
      if (report.code != static_cast<int>(StatusCode::kUnavailable) ||
          !NamesRank(report.message, victim)) {
        fail(who + " reported something else than rank " + std::to_string(victim) + " dead, " +
             std::to_string(ms) + " ms after the kill: " + report.message);
      }
      if (ms > 2 * kCallTimeoutMs) {
        fail(who + " took " + std::to_string(ms) + " ms (more than 2 x " +
             std::to_string(kCallTimeoutMs) + " ms)");
      }
      if (report.close_code != 0)
        fail(who +
             " failed to close: " + std::string(StatusCodeName(StatusCode(report.close_code))));
      if (report.close_ms > 2 * kCallTimeoutMs)
        fail(who + " took " + std::to_string(report.close_ms) + " ms to close");
    }
    if (why.empty()) {
      ++passed;
    } else {
      failures += "\n  trial " + std::to_string(trial) + " (rank " + std::to_string(victim) +
                  " killed): " + why;
    }
  }
  munmap(mapped, sizeof(Board));
  std::sort(detect_ms.begin(), detect_ms.end());
  const double median = detect_ms.empty() ? 0 : detect_ms[detect_ms.size() / 2];
  const double worst = detect_ms.empty() ? 0 : detect_ms.back();
  printf(
      "[ kill     ] %s/%s: %d of %d trials passed; survivors reported the dead rank %.1f ms after "
      "the kill "
      "(median), %.1f ms (max); bound %d ms\n",
      GetParam().transport.c_str(), GetParam().name.c_str(), passed, trials, median, worst,
      2 * kCallTimeoutMs);
  EXPECT_EQ(passed, trials) << failures;
}

}  // namespace m2n::testing

namespace m2n::testing {

// Group::Abort from another thread: rank 1's main thread is blocked in a Receive that nothing will
// satisfy; a second thread aborts the group. The Receive returns kAborted at once, every later call
// returns kAborted, and Close succeeds without waiting. Rank 1 then leaves without a goodbye, so
// the other ranks, blocked on their own Receives, fail naming it instead of waiting out their
// deadlines.
TEST_P(KillTest, AbortFromAnotherThreadEndsBlockedCallsAndCloseSucceeds) {
  auto outcomes = RunRanks(
      3,
      [&](int rank, int port) {
        ApplySetup(GetParam());
        Options o = TestOptions(1, 2, rank, port);
        o.liveness_check_ms = kLivenessCheckMs;
        auto created = Group::Create(o);
        CHILD_OK(created.status());
        Group& g = **created;
        CHILD_OK(g.Barrier(Deadline::AfterMs(10000)));
        constexpr int kLongMs = 20000;
        if (rank == 1) {
          std::atomic<int64_t> aborted_at_ns{0};
          std::thread aborter([&] {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            aborted_at_ns.store(NowNs());
            g.Abort();
            g.Abort();  // idempotent
          });
          Status s = g.Receive(0, Deadline::AfterMs(kLongMs)).status();
          const double ms = static_cast<double>(NowNs() - aborted_at_ns.load()) / 1e6;
          aborter.join();
          CHILD_CHECK(
              s.code() == StatusCode::kAborted && s.message().find("aborted") != std::string::npos,
              "%s", s.ToString().c_str());
          CHILD_CHECK(ms < 1000, "Receive returned %.0f ms after Abort", ms);
          std::vector<std::byte> buffer(8);
          CHILD_CHECK(g.RegisterMemory(buffer.data(), buffer.size()).status().code() ==
                          StatusCode::kAborted,
                      "a call after Abort did not return kAborted");
          CHILD_CHECK(g.Barrier(Deadline::AfterMs(kLongMs)).code() == StatusCode::kAborted,
                      "Barrier after Abort");
          auto start = Clock::now();
          CHILD_OK(g.Close(Deadline::AfterMs(kLongMs)));
          const double close_ms =
              std::chrono::duration<double, std::milli>(Clock::now() - start).count();
          CHILD_CHECK(close_ms < 1000, "Close after Abort took %.0f ms", close_ms);
          CHILD_CHECK(g.Close(Deadline::AfterMs(100)).code() == StatusCode::kFailedPrecondition,
                      "second Close");
          return 0;
        }
        // Ranks 0 and 2 wait for messages that never come; rank 1's leaving must end the wait.
        auto start = Clock::now();
        Status s = g.Receive(rank == 0 ? 2 : 0, Deadline::AfterMs(kLongMs)).status();
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
        CHILD_CHECK(s.code() == StatusCode::kUnavailable && NamesRank(s.message(), 1), "%s",
                    s.ToString().c_str());
        CHILD_CHECK(ms < 5000, "took %.0f ms to see rank 1 leave", ms);
        CHILD_OK(g.Close(Deadline::AfterMs(5000)));
        return 0;
      },
      60);
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

}  // namespace m2n::testing

namespace m2n::testing {

// Abort during Close, from another thread: rank 1 (a receiver) sends rank 0 a message that rank 0
// holds and never releases, then closes; its Close waits for that release until an Abort cuts it
// short. Close then returns kAborted at once and rank 1 leaves without a goodbye, dropping its
// store connection, so rank 0's blocked Receive fails naming rank 1 instead of waiting out its
// deadline. A copy of the group's AbortToken stays safe to abort after the Group is gone.
TEST_P(KillTest, AbortDuringCloseLeavesWithoutGoodbye) {
  constexpr int kLongMs = 20000;
  auto outcomes = RunRanks(
      2,
      [&](int rank, int port) {
        ApplySetup(GetParam());
        Options o = TestOptions(1, 1, rank, port);
        o.liveness_check_ms = kLivenessCheckMs;
        auto created = Group::Create(o);
        CHILD_OK(created.status());
        std::unique_ptr<Group> g = std::move(created).value();
        if (rank == 0) {
          auto held = g->Receive(1, Deadline::AfterMs(10000));  // held, never released
          CHILD_OK(held.status());
          auto start = Clock::now();
          Status s = g->Receive(1, Deadline::AfterMs(kLongMs)).status();
          const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
          CHILD_CHECK(s.code() == StatusCode::kUnavailable && NamesRank(s.message(), 1), "%s",
                      s.ToString().c_str());
          CHILD_CHECK(ms < 5000, "took %.0f ms to see rank 1 leave (deadline %d ms)", ms, kLongMs);
          CHILD_OK(g->Close(Deadline::AfterMs(5000)));
          return 0;
        }
        std::vector<std::byte> buffer(64, std::byte{7});
        auto region = g->RegisterMemory(buffer.data(), buffer.size());
        CHILD_OK(region.status());
        CHILD_OK(g->Send(SendRequest{0, buffer.data(), buffer.size()}, Deadline::AfterMs(10000)));
        AbortToken token = g->abort_token();
        std::atomic<int64_t> aborted_at_ns{0};
        std::thread aborter([&] {
          std::this_thread::sleep_for(std::chrono::milliseconds(300));
          aborted_at_ns.store(NowNs());
          g->Abort();
        });
        Status s = g->Close(Deadline::AfterMs(kLongMs));
        const double ms = static_cast<double>(NowNs() - aborted_at_ns.load()) / 1e6;
        aborter.join();
        CHILD_CHECK(s.code() == StatusCode::kAborted, "Close cut short by Abort: %s",
                    s.ToString().c_str());
        CHILD_CHECK(ms < 1000, "Close returned %.0f ms after Abort", ms);
        *region = MemoryRegion();
        g.reset();
        token.Abort();  // the Group is gone; its token is not
        CHILD_CHECK(token.aborted(), "token");
        return 0;
      },
      60);
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

}  // namespace m2n::testing

namespace m2n::testing {

// What the test process and the 3 ranks of a SIGSTOP test share (anonymous shared memory).
struct StopProgress {
  std::atomic<int> ready;  // ranks past set-up; one more once the test has stopped its rank
  std::atomic<int> finished;  // ranks done
  void WaitUntilStopped() const {
    while (ready.load() < 4) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
};

// Runs 3 ranks of `body`; once all 3 counted themselves ready, rank `stopped` is SIGSTOPped (it
// should then be idle), and once the 2 others counted themselves finished, SIGKILLed. Every rank
// but the stopped one must succeed.
void RunWithOneRankStopped(int stopped,
                           const std::function<int(int rank, int port, StopProgress&)>& body) {
  void* mapped = mmap(nullptr, sizeof(StopProgress), PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mapped, MAP_FAILED);
  StopProgress* shared = new (mapped) StopProgress{};
  auto outcomes = RunRanks(
      3, [&](int rank, int port) { return body(rank, port, *shared); }, 60,
      [&](const std::vector<pid_t>& pids) {
        auto until = Clock::now() + std::chrono::seconds(30);
        while (shared->ready.load() < 3 && Clock::now() < until)
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        kill(pids[static_cast<size_t>(stopped)], SIGSTOP);
        shared->ready.fetch_add(1);
        while (shared->finished.load() < 2 && Clock::now() < until) {
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        kill(pids[static_cast<size_t>(stopped)], SIGKILL);
      });
  munmap(mapped, sizeof(StopProgress));
  ASSERT_EQ(outcomes.size(), 3u);
  EXPECT_EQ(outcomes[static_cast<size_t>(stopped)].signal, SIGKILL);
  outcomes.erase(outcomes.begin() + stopped);
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

// A hung rank (SIGSTOP: alive, connected, silent) is not a dead one: the calls waiting on it return
// DEADLINE_EXCEEDED by their deadline, naming what they waited for. The sender then aborts and
// closes at once; the other receiver, waiting on the sender, sees it leave.
TEST_P(KillTest, SigstoppedRankTimesOutCallsByTheirDeadline) {
  constexpr int kDeadlineMs = 300;
  RunWithOneRankStopped(2, [&](int rank, int port, StopProgress& shared) {
    ApplySetup(GetParam());
    Options o = TestOptions(1, 2, rank, port);
    o.slot_depth = 2;
    o.liveness_check_ms = kLivenessCheckMs;
    auto created = Group::Create(o);
    CHILD_OK(created.status());
    Group& g = **created;
    std::vector<std::byte> buffer(64);
    auto region = g.RegisterMemory(buffer.data(), buffer.size());
    CHILD_OK(region.status());
    CHILD_OK(g.Barrier(Deadline::AfterMs(10000)));
    shared.ready.fetch_add(1);
    if (rank == 2) {
      // Stopped by the test from here on; it never gets to receive.
      for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    }
    if (rank == 0) {
      shared.WaitUntilStopped();
      // Two slots at rank 2: the third send waits for a credit that never comes.
      Status s;
      double ms = 0;
      for (int i = 0; i < 3 && s.ok(); ++i) {
        auto start = Clock::now();
        s = g.Send({2, buffer.data(), 8}, Deadline::AfterMs(kDeadlineMs));
        ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
      }
      fprintf(stderr, "rank 0 saw, after %.0f ms: %s\n", ms, s.ToString().c_str());
      // Waiting for a credit from rank 2, or (over TCP, where a write needs the peer's progress
      // to complete) for the write to rank 2 to leave.
      CHILD_CHECK(s.code() == StatusCode::kDeadlineExceeded &&
                      (s.message().find("waiting for a free slot at rank 2") != std::string::npos ||
                       s.message().find("(to rank 2: 1)") != std::string::npos),
                  "%s", s.ToString().c_str());
      CHILD_CHECK(ms >= kDeadlineMs - 1 && ms < kDeadlineMs + 500,
                  "returned after %.0f ms, deadline %d ms", ms, kDeadlineMs);
      g.Abort();
      auto start = Clock::now();
      CHILD_OK(g.Close(Deadline::AfterMs(10000)));
      const double close_ms =
          std::chrono::duration<double, std::milli>(Clock::now() - start).count();
      CHILD_CHECK(close_ms < 1000, "Close after Abort took %.0f ms with a hung peer", close_ms);
      shared.finished.fetch_add(1);
      return 0;
    }
    // rank 1: sees the sender leave.
    Status s = g.Receive(0, Deadline::AfterMs(10000)).status();
    CHILD_CHECK(s.code() == StatusCode::kUnavailable && NamesRank(s.message(), 0), "%s",
                s.ToString().c_str());
    CHILD_OK(g.Close(Deadline::AfterMs(1000)));
    shared.finished.fetch_add(1);
    return 0;
  });
}

// Rank 0 serves the bootstrap store, so a stopped rank 0 also stops the store every liveness check
// asks. Calls must still end by their deadline (plus the short grace of the last liveness check),
// say that the store was silent, and Abort must end a blocked call within about one liveness
// period.
TEST_P(KillTest, SigstoppedRankZeroStillBoundsCallsAndAbort) {
  constexpr int kDeadlineMs = 500;
  RunWithOneRankStopped(0, [&](int rank, int port, StopProgress& shared) {
    ApplySetup(GetParam());
    Options o = TestOptions(1, 2, rank, port);
    o.liveness_check_ms = kLivenessCheckMs;
    auto created = Group::Create(o);
    CHILD_OK(created.status());
    Group& g = **created;
    CHILD_OK(g.Barrier(Deadline::AfterMs(10000)));
    shared.ready.fetch_add(1);
    if (rank == 0) {
      for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));  // stopped by the test
    }
    shared.WaitUntilStopped();
    // A receive from the stopped sender runs out at its deadline, naming the silent store.
    auto start = Clock::now();
    Status s = g.Receive(0, Deadline::AfterMs(kDeadlineMs)).status();
    double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    CHILD_CHECK(
        s.code() == StatusCode::kDeadlineExceeded &&
            s.message().find("bootstrap store on rank 0 has not answered") != std::string::npos,
        "%s", s.ToString().c_str());
    CHILD_CHECK(ms >= kDeadlineMs - 1 && ms < 2 * kDeadlineMs,
                "returned after %.0f ms, deadline %d ms", ms, kDeadlineMs);
    // Abort from another thread ends a long blocked receive while the store is still silent.
    std::thread aborter([&g] {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      g.Abort();
    });
    start = Clock::now();
    s = g.Receive(0, Deadline::AfterMs(20000)).status();
    ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    aborter.join();
    CHILD_CHECK(s.code() == StatusCode::kAborted, "%s", s.ToString().c_str());
    CHILD_CHECK(ms < 200 + 10 * kLivenessCheckMs,
                "Abort took effect after %.0f ms with rank 0 stopped", ms);
    start = Clock::now();
    CHILD_OK(g.Close(Deadline::AfterMs(10000)));
    ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    CHILD_CHECK(ms < 1000, "Close after Abort took %.0f ms with rank 0 stopped", ms);
    shared.finished.fetch_add(1);
    return 0;
  });
}

}  // namespace m2n::testing

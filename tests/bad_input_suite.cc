// Bad input gets a clear error naming the problem, within the deadline, and loses nothing:
// wrong rank or world size, an unregistered buffer, a message larger than a slot, a slot released
// twice, a peer on the wrong side, a configuration that differs between ranks, an unreachable
// master, a peer that exits mid-run. In real processes, over the transport of the instantiation
// (bad_input_test.cc: ucx; bad_input_verbs_test.cc: verbs).
#include "bad_input_suite.h"

#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include "harness.h"
#include "m2n/m2n.h"

namespace m2n::testing {
namespace {

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

std::string SetupName(const ::testing::TestParamInfo<TransportSetup>& info) {
  return info.param.name;
}

void BadInputTest::SetUp() {
  std::string reason = SkipReason(GetParam());
  if (!reason.empty()) GTEST_SKIP() << reason;
}

TEST_P(BadInputTest, WrongRankOrWorldSizeIsRefusedBeforeAnyConnection) {
  Options o = TestOptions(2, 2, /*rank=*/4, FreePort());
  auto g = Group::Create(o);
  EXPECT_EQ(g.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(g.status().message(), "rank 4 is outside [0, 4)")) << g.status().message();
  o.bootstrap.rank = 0;
  o.bootstrap.world_size = 3;
  g = Group::Create(o);
  EXPECT_EQ(g.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(g.status().message(), "world size 3 != M + N = 2 + 2"))
      << g.status().message();
}

TEST_P(BadInputTest, UnregisteredBufferOversizeMessageAndWrongPeerSendNothing) {
  auto outcomes = RunRanks(3, [&](int rank, int port) {
    ApplySetup(GetParam());
    Options o = TestOptions(/*M=*/2, /*N=*/1, rank, port);
    o.slot_bytes = 1024;
    auto created = Group::Create(o);
    CHILD_OK(created.status());
    Group& g = **created;
    if (rank == 0) {
      std::vector<std::byte> registered(2048, std::byte{7}), unregistered(64, std::byte{1});
      auto region = g.RegisterMemory(registered.data(), registered.size());
      CHILD_OK(region.status());
      Status s = g.Send({2, unregistered.data(), unregistered.size()}, Deadline::AfterMs(5000));
      CHILD_CHECK(s.code() == StatusCode::kInvalidArgument &&
                      Contains(s.message(), "not inside memory registered"),
                  "%s", s.ToString().c_str());
      // A buffer that starts inside a region but runs past its end is not registered either.
      s = g.Send({2, registered.data() + 2000, 100}, Deadline::AfterMs(5000));
      CHILD_CHECK(s.code() == StatusCode::kInvalidArgument, "%s", s.ToString().c_str());
      s = g.Send({2, registered.data(), 1025}, Deadline::AfterMs(5000));
      CHILD_CHECK(
          s.code() == StatusCode::kInvalidArgument &&
              Contains(s.message(), "1025 bytes to rank 2 is larger than a slot (1024 bytes"),
          "%s", s.ToString().c_str());
      s = g.Send({1, registered.data(), 8}, Deadline::AfterMs(5000));
      CHILD_CHECK(s.code() == StatusCode::kInvalidArgument && Contains(s.message(), "own side"),
                  "%s", s.ToString().c_str());
      s = g.Send({7, registered.data(), 8}, Deadline::AfterMs(5000));
      CHILD_CHECK(
          s.code() == StatusCode::kInvalidArgument && Contains(s.message(), "outside [0, 3)"), "%s",
          s.ToString().c_str());
      // A batch with one bad request sends none of it.
      std::vector<SendRequest> batch = {{2, registered.data(), 8}, {2, unregistered.data(), 8}};
      s = g.Send(batch, Deadline::AfterMs(5000));
      CHILD_CHECK(s.code() == StatusCode::kInvalidArgument, "%s", s.ToString().c_str());
      // The only message that goes: 16 bytes of 7s.
      CHILD_OK(g.Send({2, registered.data(), 16}, Deadline::AfterMs(5000)));
    }
    if (rank == 2) {
      auto m = g.Receive(0, Deadline::AfterMs(10000));
      CHILD_OK(m.status());
      CHILD_CHECK(m->length == 16 && m->data[0] == std::byte{7} && m->data[15] == std::byte{7},
                  "length %zu", m->length);
      CHILD_OK(g.Release(*m));
      // Nothing else arrived: the refused sends left no trace.
      Message extra;
      auto more = g.TryReceive(0, &extra);
      CHILD_CHECK(more.ok() && !*more, "an unexpected second message arrived");
      Status s = g.Receive(2, Deadline::AfterMs(100)).status();
      CHILD_CHECK(s.code() == StatusCode::kInvalidArgument, "receive from self: %s",
                  s.ToString().c_str());
    }
    CHILD_OK(g.Close(Deadline::AfterMs(10000)));
    return 0;
  });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

TEST_P(BadInputTest, SlotReleasedTwiceIsRefused) {
  auto outcomes = RunRanks(2, [&](int rank, int port) {
    ApplySetup(GetParam());
    Options o = TestOptions(1, 1, rank, port);
    o.slot_depth = 1;
    auto created = Group::Create(o);
    CHILD_OK(created.status());
    Group& g = **created;
    std::vector<std::byte> buffer(64);
    auto region = g.RegisterMemory(buffer.data(), buffer.size());
    CHILD_OK(region.status());
    if (rank == 0) {
      for (int i = 0; i < 2; ++i) {
        buffer[0] = std::byte(i);
        CHILD_OK(g.Send({1, buffer.data(), 1}, Deadline::AfterMs(10000)));
      }
    } else {
      auto first = g.Receive(0, Deadline::AfterMs(10000));
      CHILD_OK(first.status());
      CHILD_OK(g.Release(*first));
      Status twice = g.Release(*first);
      CHILD_CHECK(twice.code() == StatusCode::kFailedPrecondition &&
                      Contains(twice.message(), "already released"),
                  "%s", twice.ToString().c_str());
      // The slot was reused by the second message; the stale release must not have freed it.
      auto second = g.Receive(0, Deadline::AfterMs(10000));
      CHILD_OK(second.status());
      CHILD_CHECK(second->data[0] == std::byte{1} && second->sequence == 1,
                  "second message corrupted");
      Status stale = g.Release(*first);
      CHILD_CHECK(stale.code() == StatusCode::kFailedPrecondition, "%s", stale.ToString().c_str());
      CHILD_OK(g.Release(*second));
    }
    CHILD_OK(g.Close(Deadline::AfterMs(10000)));
    return 0;
  });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

TEST_P(BadInputTest, ConfigurationDifferingBetweenRanksIsReportedOnEveryRank) {
  auto outcomes = RunRanks(3, [&](int rank, int port) {
    ApplySetup(GetParam());
    Options o = TestOptions(1, 2, rank, port);
    o.slot_bytes = rank == 2 ? 8192 : 4096;
    auto created = Group::Create(o);
    CHILD_CHECK(created.status().code() == StatusCode::kFailedPrecondition, "%s",
                created.status().ToString().c_str());
    CHILD_CHECK(
        Contains(created.status().message(), "slot_bytes is 4096 on rank 0 but 8192 on rank 2"),
        "%s", created.status().message().c_str());
    return 0;
  });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

TEST_P(BadInputTest, TransportDifferingBetweenRanksIsReportedOnEveryRank) {
  auto outcomes = RunRanks(2, [&](int rank, int port) {
    ApplySetup(GetParam());
    if (rank == 1) setenv("M2N_TRANSPORT", "carrier-pigeon", 1);
    auto created = Group::Create(TestOptions(1, 1, rank, port));
    CHILD_CHECK(created.status().code() == StatusCode::kFailedPrecondition, "%s",
                created.status().ToString().c_str());
    CHILD_CHECK(Contains(created.status().message(),
                         "transport is " + GetParam().transport +
                             " on rank 0 but <unknown transport 'carrier-pigeon'"),
                "%s", created.status().message().c_str());
    return 0;
  });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

TEST_P(BadInputTest, UnreachableMasterTimesOutNamingIt) {
  ApplySetup(GetParam());
  int port = FreePort();
  Options o = TestOptions(1, 1, /*rank=*/1, port);  // rank 0, the master, never starts
  o.bootstrap.timeout = std::chrono::milliseconds(1500);
  auto start = std::chrono::steady_clock::now();
  auto g = Group::Create(o);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(g.status().code(), StatusCode::kDeadlineExceeded) << g.status().ToString();
  EXPECT_TRUE(Contains(g.status().message(), "127.0.0.1:" + std::to_string(port)))
      << g.status().message();
  EXPECT_LT(seconds, 3.0);
}

// The receiver rank 2 exits without closing after its first message. The sender, blocked on
// credits to it, reports rank 2 dead; then the sender exits too, and receiver rank 1, waiting for
// the sender, reports one of them. Every survivor errs by name within the bound, none hangs.
TEST_P(BadInputTest, PeerThatExitsMidRunIsReportedByRank) {
  auto outcomes = RunRanks(
      3,
      [&](int rank, int port) {
        ApplySetup(GetParam());
        Options o = TestOptions(1, 2, rank, port);
        o.slot_depth = 2;
        auto created = Group::Create(o);
        CHILD_OK(created.status());
        Group& g = **created;
        std::vector<std::byte> buffer(64);
        auto region = g.RegisterMemory(buffer.data(), buffer.size());
        CHILD_OK(region.status());
        if (rank == 2) {
          auto m = g.Receive(0, Deadline::AfterMs(10000));
          CHILD_OK(m.status());
          _exit(0);  // gone, without Close and without releasing
        }
        if (rank == 0) {
          Status s;
          auto start = std::chrono::steady_clock::now();
          for (int i = 0; i < 100 && s.ok(); ++i) {
            std::vector<SendRequest> both = {{1, buffer.data(), 8}, {2, buffer.data(), 8}};
            s = g.Send(both, Deadline::AfterMs(10000));
          }
          double seconds =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          CHILD_CHECK(s.code() == StatusCode::kUnavailable && Contains(s.message(), "rank 2"), "%s",
                      s.ToString().c_str());
          CHILD_CHECK(seconds < 5.0, "took %.1f s to notice", seconds);
          fprintf(stderr, "rank 0 saw: %s\n", s.ToString().c_str());
          _exit(0);  // leave without Close: rank 1 must notice this too
        }
        // rank 1: receives, releasing, until the sender disappears.
        Status s;
        while (s.ok()) {
          auto m = g.Receive(0, Deadline::AfterMs(10000));
          s = m.status();
          if (s.ok()) s = g.Release(*m);
        }
        // A group is one fault domain: rank 1 may first see rank 2 (the root cause) or rank 0 gone.
        CHILD_CHECK(s.code() == StatusCode::kUnavailable && (Contains(s.message(), "rank 2 died") ||
                                                             Contains(s.message(), "rank 0 died")),
                    "%s", s.ToString().c_str());
        fprintf(stderr, "rank 1 saw: %s\n", s.ToString().c_str());
        return 0;
      },
      60);
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

}  // namespace m2n::testing

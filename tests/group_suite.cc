#include "group_suite.h"

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "harness.h"
#include "m2n/m2n.h"

namespace m2n::testing {
namespace {

// One round per size: every sender sends to every receiver (dispatch), every receiver checks and
// answers every sender with the same size (combine), every sender checks.
int ExchangeBothDirections(const TransportSetup& setup, int m, int n, int rank, int port) {
  ApplySetup(setup);
  const std::vector<size_t> sizes = {1, 7, 64, 4096, 65536, size_t{1} << 20, size_t{4} << 20};
  Options o = TestOptions(m, n, rank, port);
  o.slot_bytes = sizes.back();
  o.slot_depth = 2;
  auto created = Group::Create(o);
  CHILD_OK(created.status());
  Group& g = **created;
  std::vector<int> peers(g.peers().begin(), g.peers().end());
  std::vector<std::byte> buffer(sizes.back() * peers.size());
  auto region = g.RegisterMemory(buffer.data(), buffer.size());
  CHILD_OK(region.status());
  const bool sender = g.role() == Role::kSender;
  for (int round = 0; round < 3; ++round) {
    for (size_t size : sizes) {
      uint64_t number = round * 100 + size;
      auto send_all = [&]() -> Status {
        std::vector<SendRequest> requests;
        for (size_t i = 0; i < peers.size(); ++i) {
          std::byte* data = buffer.data() + i * sizes.back();
          FillPattern(data, size, rank, peers[i], number);
          requests.push_back({peers[i], data, size});
        }
        return g.Send(requests, Deadline::AfterMs(20000));
      };
      auto receive_all = [&]() -> int {
        std::vector<Message> got(peers.size());
        Status s = g.Receive(peers, got, Deadline::AfterMs(20000));
        CHILD_CHECK(s.ok(), "%s", s.ToString().c_str());
        for (size_t i = 0; i < peers.size(); ++i) {
          CHILD_CHECK(got[i].peer == peers[i] && got[i].length == size, "peer %d length %zu",
                      got[i].peer, got[i].length);
          size_t wrong = CountWrong(got[i].data, size, peers[i], rank, number);
          CHILD_CHECK(wrong == 0, "%zu wrong bytes of %zu from rank %d", wrong, size, peers[i]);
        }
        Status r = g.Release(got);
        CHILD_CHECK(r.ok(), "%s", r.ToString().c_str());
        return 0;
      };
      if (sender) {
        CHILD_OK(send_all());
        if (receive_all() != 0) return 1;
      } else {
        if (receive_all() != 0) return 1;
        CHILD_OK(send_all());
      }
    }
  }
  GroupStats st = g.stats();
  CHILD_CHECK(st.messages_sent == st.messages_received, "sent %llu received %llu",
              (unsigned long long)st.messages_sent, (unsigned long long)st.messages_received);
  CHILD_CHECK(g.transport_name() == setup.transport, "transport %s, expected %s",
              std::string(g.transport_name()).c_str(), setup.transport.c_str());
  CHILD_OK(g.Close(Deadline::AfterMs(20000)));
  return 0;
}

// `messages` per (sender, receiver) pair with 2 slots per peer: the sender is always out of
// credits, the receiver holds messages and releases them out of order, every payload is checked.
int CreditPressure(const TransportSetup& setup, int m, int n, int rank, int port) {
  ApplySetup(setup);
  const int messages = setup.credit_messages;
  constexpr size_t kMax = 4096;
  Options o = TestOptions(m, n, rank, port);
  o.slot_bytes = kMax;
  o.slot_depth = 2;
  auto created = Group::Create(o);
  CHILD_OK(created.status());
  Group& g = **created;
  std::vector<int> peers(g.peers().begin(), g.peers().end());
  auto size_of = [&](int src, int dst, int i) {
    return size_t(1 + (i * 131 + src * 7 + dst) % kMax);
  };
  if (g.role() == Role::kSender) {
    std::vector<std::byte> buffer(kMax * peers.size());
    auto region = g.RegisterMemory(buffer.data(), buffer.size());
    CHILD_OK(region.status());
    for (int i = 0; i < messages; ++i) {
      std::vector<SendRequest> requests;
      for (size_t p = 0; p < peers.size(); ++p) {
        size_t size = size_of(rank, peers[p], i);
        FillPattern(buffer.data() + p * kMax, size, rank, peers[p], i);
        requests.push_back({peers[p], buffer.data() + p * kMax, size});
      }
      CHILD_OK(g.Send(requests, Deadline::AfterMs(20000)));
    }
    CHILD_CHECK(g.stats().credit_waits > 0, "credit pressure expected, got no waits");
  } else {
    std::mt19937 rng(rank);
    std::vector<Message> held;
    for (int i = 0; i < messages; ++i) {
      for (int peer : peers) {
        auto got = g.Receive(peer, Deadline::AfterMs(20000));
        CHILD_OK(got.status());
        CHILD_CHECK(got->sequence == uint64_t(i), "sequence %llu, expected %d",
                    (unsigned long long)got->sequence, i);
        size_t size = size_of(peer, rank, i);
        CHILD_CHECK(got->length == size, "length %zu, expected %zu", got->length, size);
        size_t wrong = CountWrong(got->data, size, peer, rank, i);
        CHILD_CHECK(wrong == 0, "message %d from rank %d: %zu wrong bytes", i, peer, wrong);
        held.push_back(*got);
      }
      // Hold up to one message per peer and release in a shuffled order.
      if (held.size() >= peers.size() * 2 || i == messages - 1) {
        std::shuffle(held.begin(), held.end(), rng);
        CHILD_OK(g.Release(held));
        held.clear();
      }
    }
  }
  CHILD_OK(g.Close(Deadline::AfterMs(20000)));
  return 0;
}

}  // namespace

std::string GroupCaseName(const ::testing::TestParamInfo<GroupCase>& info) {
  return info.param.setup.name + "_" + std::to_string(info.param.senders) + "x" +
         std::to_string(info.param.receivers);
}

void GroupTest::SetUp() {
  std::string reason = SkipReason(GetParam().setup);
  if (!reason.empty()) GTEST_SKIP() << reason;
}

void GroupCreditTest::SetUp() {
  std::string reason = SkipReason(GetParam().setup);
  if (!reason.empty()) GTEST_SKIP() << reason;
}

TEST_P(GroupTest, ExchangeBothDirections) {
  const GroupCase& c = GetParam();
  auto outcomes = RunRanks(c.senders + c.receivers, [&](int rank, int port) {
    return ExchangeBothDirections(c.setup, c.senders, c.receivers, rank, port);
  });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

TEST_P(GroupCreditTest, ManyMessagesUnderCreditPressure) {
  const GroupCase& c = GetParam();
  auto outcomes = RunRanks(
      c.senders + c.receivers,
      [&](int rank, int port) {
        return CreditPressure(c.setup, c.senders, c.receivers, rank, port);
      },
      240);
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

}  // namespace m2n::testing

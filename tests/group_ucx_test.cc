// M x N groups over the UCX transport, in real processes on loopback: shared memory and TCP.
// Shapes 1x1, 2x2, 3x2, 1x4; both directions; 1 B to 4 MB; 10,000 messages under credit pressure.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "harness.h"
#include "m2n/m2n.h"

namespace m2n {
namespace {

using testing::CountWrong;
using testing::DescribeFailures;
using testing::FillPattern;
using testing::RunRanks;
using testing::TestOptions;

// UCX_TLS per instantiation: shared memory, or TCP over loopback only.
void UseTls(const std::string& tls) {
  setenv("M2N_TRANSPORT", "ucx", 1);
  if (tls == "shm") {
    setenv("UCX_TLS", "shm,self", 1);
  } else {
    setenv("UCX_TLS", "tcp,self", 1);
    setenv("UCX_NET_DEVICES", "lo", 1);
  }
}


using Shape = std::tuple<std::string, int, int>;  // tls, M, N

std::string ShapeName(const ::testing::TestParamInfo<Shape>& info) {
  return std::get<0>(info.param) + "_" + std::to_string(std::get<1>(info.param)) + "x" +
         std::to_string(std::get<2>(info.param));
}

class GroupUcxTest : public ::testing::TestWithParam<Shape> {};

// One round per size: every sender sends to every receiver (dispatch), every receiver checks and
// answers every sender with the same size (combine), every sender checks.
int ExchangeBothDirections(const std::string& tls, int m, int n, int rank, int port) {
  UseTls(tls);
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
          CHILD_CHECK(got[i].peer == peers[i] && got[i].length == size, "peer %d length %zu", got[i].peer,
                      got[i].length);
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
  CHILD_OK(g.Close(Deadline::AfterMs(20000)));
  return 0;
}

TEST_P(GroupUcxTest, ExchangeBothDirections) {
  auto [tls, m, n] = GetParam();
  auto outcomes = RunRanks(m + n, [&](int rank, int port) { return ExchangeBothDirections(tls, m, n, rank, port); });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

INSTANTIATE_TEST_SUITE_P(ucx, GroupUcxTest,
                         ::testing::Values(Shape{"shm", 1, 1}, Shape{"shm", 2, 2}, Shape{"shm", 3, 2},
                                           Shape{"shm", 1, 4}, Shape{"tcp", 1, 1}, Shape{"tcp", 2, 2},
                                           Shape{"tcp", 3, 2}, Shape{"tcp", 1, 4}),
                         ShapeName);

// 10,000 messages per (sender, receiver) pair with 2 slots per peer: the sender is always out of
// credits, the receiver holds messages and releases them out of order, every payload is checked.
class GroupUcxCreditTest : public ::testing::TestWithParam<Shape> {};

int CreditPressure(const std::string& tls, int m, int n, int rank, int port) {
  UseTls(tls);
  constexpr int kMessages = 10000;
  constexpr size_t kMax = 4096;
  Options o = TestOptions(m, n, rank, port);
  o.slot_bytes = kMax;
  o.slot_depth = 2;
  auto created = Group::Create(o);
  CHILD_OK(created.status());
  Group& g = **created;
  std::vector<int> peers(g.peers().begin(), g.peers().end());
  auto size_of = [&](int src, int dst, int i) { return size_t(1 + (i * 131 + src * 7 + dst) % kMax); };
  if (g.role() == Role::kSender) {
    std::vector<std::byte> buffer(kMax * peers.size());
    auto region = g.RegisterMemory(buffer.data(), buffer.size());
    CHILD_OK(region.status());
    for (int i = 0; i < kMessages; ++i) {
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
    for (int i = 0; i < kMessages; ++i) {
      for (int peer : peers) {
        auto got = g.Receive(peer, Deadline::AfterMs(20000));
        CHILD_OK(got.status());
        CHILD_CHECK(got->sequence == uint64_t(i), "sequence %llu, expected %d", (unsigned long long)got->sequence, i);
        size_t size = size_of(peer, rank, i);
        CHILD_CHECK(got->length == size, "length %zu, expected %zu", got->length, size);
        size_t wrong = CountWrong(got->data, size, peer, rank, i);
        CHILD_CHECK(wrong == 0, "message %d from rank %d: %zu wrong bytes", i, peer, wrong);
        held.push_back(*got);
      }
      // Hold up to one message per peer and release in a shuffled order.
      if (held.size() >= peers.size() * 2 || i == kMessages - 1) {
        std::shuffle(held.begin(), held.end(), rng);
        CHILD_OK(g.Release(held));
        held.clear();
      }
    }
  }
  CHILD_OK(g.Close(Deadline::AfterMs(20000)));
  return 0;
}

TEST_P(GroupUcxCreditTest, TenThousandMessagesUnderCreditPressure) {
  auto [tls, m, n] = GetParam();
  auto outcomes = RunRanks(m + n, [&](int rank, int port) { return CreditPressure(tls, m, n, rank, port); }, 240);
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

INSTANTIATE_TEST_SUITE_P(ucx, GroupUcxCreditTest,
                         ::testing::Values(Shape{"shm", 1, 1}, Shape{"shm", 2, 2}, Shape{"tcp", 1, 1},
                                           Shape{"tcp", 2, 2}),
                         ShapeName);

}  // namespace
}  // namespace m2n

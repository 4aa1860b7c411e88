// The protocol under injected faults (fault_transport.h), in real processes over UCX shared memory:
// one sender sends numbered, patterned messages to one receiver through 4 slots; the plan of the
// case disturbs one rank's transport. Whatever happens, the receiver is never handed a wrong,
// duplicated or out-of-order message: every delivered message is checked byte by byte and by
// number. A fault the protocol cannot deliver through is reported as the case expects (DATA_LOSS
// naming the peer and what was expected, or the failed post), within the deadline; a fault it can
// deliver through (delays) changes nothing. A rank that fails aborts and closes its group, so the
// other one sees it leave and ends too; nobody hangs.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "fault_transport.h"
#include "group/group_factory.h"
#include "harness.h"
#include "m2n/m2n.h"
#include "transport_setup.h"

namespace m2n::testing {
namespace {

using transport::Lane;

const TransportSetup kShm{"shm", "ucx", {{"UCX_TLS", "shm,self"}}};
constexpr size_t kSlotBytes = 1024;

struct FaultCase {
  std::string name = {};
  int faulty_rank = 1;  // 0: the sender, 1: the receiver, -1: both (each with its own seed)
  FaultPlan plan = {};
  bool checksum = false;
  int messages = 32;
  int call_timeout_ms = 3000;
  // The first error of the reporting rank (default: the faulty one): its code and a part of its
  // message; kOk: no error anywhere. With any_error, either rank may fail, with DATA_LOSS,
  // UNAVAILABLE or DEADLINE_EXCEEDED.
  int reporting_rank = -1;
  StatusCode code = StatusCode::kOk;
  std::string says = {};
  bool any_error = false;
  // At most this many messages are delivered (the ones before the fault); -1: no bound.
  int delivered_at_most = -1;
};

void PrintTo(const FaultCase& c, std::ostream* os) { *os << c.name; }

size_t SizeOf(int i) { return 1 + (static_cast<size_t>(i) * 97) % kSlotBytes; }

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

int RunRank(const FaultCase& c, int rank, int port) {
  ApplySetup(kShm);
  Options o = TestOptions(1, 1, rank, port);
  o.slot_bytes = kSlotBytes;
  o.slot_depth = 4;
  o.checksum = c.checksum;
  o.liveness_check_ms = 50;
  FaultCounts counts;
  const bool faulty = c.faulty_rank < 0 || rank == c.faulty_rank;
  const int reporting = c.reporting_rank >= 0 ? c.reporting_rank : c.faulty_rank;
  FaultPlan plan = c.plan;
  plan.seed += static_cast<uint64_t>(rank) * 1000;
  auto wrap = [&](std::unique_ptr<transport::Transport> inner) {
    return faulty ? WrapWithFaults(std::move(inner), plan, &counts) : std::move(inner);
  };
  auto created = GroupFactory::Create(o, wrap);
  CHILD_OK(created.status());
  Group& g = **created;
  std::vector<std::byte> buffer(kSlotBytes);
  auto region = g.RegisterMemory(buffer.data(), buffer.size());
  CHILD_OK(region.status());

  Status s;
  int delivered = 0;
  for (int i = 0; i < c.messages && s.ok(); ++i) {
    if (rank == 0) {
      FillPattern(buffer.data(), SizeOf(i), 0, 1, i);
      s = g.Send({1, buffer.data(), SizeOf(i)}, Deadline::AfterMs(c.call_timeout_ms));
    } else {
      auto m = g.Receive(0, Deadline::AfterMs(c.call_timeout_ms));
      s = m.status();
      if (!s.ok()) break;
      // The one property no fault may break: what is delivered is the right message, once.
      CHILD_CHECK(m->sequence == static_cast<uint64_t>(i) && m->length == SizeOf(i),
                  "message %d: got number %llu, %zu bytes", i, (unsigned long long)m->sequence,
                  m->length);
      size_t wrong = CountWrong(m->data, m->length, 0, 1, i);
      CHILD_CHECK(wrong == 0, "message %d: %zu wrong bytes delivered", i, wrong);
      ++delivered;
      s = g.Release(*m);
    }
  }
  fprintf(stderr, "[%s] rank %d: %d delivered, %llu faults fired: %s\n", c.name.c_str(), rank,
          delivered, (unsigned long long)counts.total(), s.ToString().c_str());
  if (rank == 1 && c.delivered_at_most >= 0) {
    CHILD_CHECK(delivered <= c.delivered_at_most, "%d messages delivered, at most %d expected",
                delivered, c.delivered_at_most);
  }
  if (c.code == StatusCode::kOk && !c.any_error) {
    CHILD_OK(s);
    CHILD_CHECK(rank != 1 || delivered == c.messages, "%d of %d delivered", delivered, c.messages);
    CHILD_OK(g.Close(Deadline::AfterMs(5000)));
    return 0;
  }
  if (c.any_error) {
    CHILD_CHECK(s.ok() || s.code() == StatusCode::kDataLoss ||
                    s.code() == StatusCode::kUnavailable ||
                    s.code() == StatusCode::kDeadlineExceeded,
                "unexpected error: %s", s.ToString().c_str());
  } else {
    if (faulty) CHILD_CHECK(counts.total() > 0, "the fault never fired");
  }
  if (!c.any_error && rank == reporting) {
    CHILD_CHECK(s.code() == c.code && Contains(s.message(), c.says), "expected %s '%s', got %s",
                std::string(StatusCodeName(c.code)).c_str(), c.says.c_str(), s.ToString().c_str());
    // The error is sticky: the group stays failed.
    CHILD_CHECK(g.Progress().code() == c.code, "the error did not stick");
  }
  if (!s.ok()) g.Abort();  // let the other rank see this one leave instead of waiting for it
  auto start = Clock::now();
  Status closed = g.Close(Deadline::AfterMs(5000));
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  if (!s.ok()) CHILD_OK(closed);  // after a failure or an abort, Close succeeds at once
  CHILD_CHECK(ms < 3000, "Close took %.0f ms", ms);
  return 0;
}

FaultPlan One(Fault fault, Lane lane, int64_t nth) {
  return FaultPlan{{FaultRule{fault, lane, -1, nth}}};
}

std::vector<FaultCase> Cases() {
  std::vector<FaultCase> cases;
  auto add = [&](FaultCase c) { cases.push_back(std::move(c)); };
  // Immediates of data: the receiver sees the gap, the repeat, the swap or the damage.
  add({.name = "dropped_data_immediate",
       .faulty_rank = 1,
       .plan = One(Fault::kDrop, Lane::kData, 5),
       .code = StatusCode::kDataLoss,
       .says = "message from rank 0 out of sequence: expected number 5",
       .delivered_at_most = 5});
  add({.name = "duplicated_data_immediate",
       .faulty_rank = 1,
       .plan = One(Fault::kDuplicate, Lane::kData, 5),
       .code = StatusCode::kDataLoss,
       .says = "message from rank 0 out of sequence: expected number 6",
       .delivered_at_most = 6});
  add({.name = "reordered_data_immediates",
       .faulty_rank = 1,
       .plan = One(Fault::kReorder, Lane::kData, 5),
       .code = StatusCode::kDataLoss,
       .says = "message from rank 0 out of sequence: expected number 5",
       .delivered_at_most = 5});
  add({.name = "corrupted_data_immediate",
       .faulty_rank = 1,
       .plan = One(Fault::kCorrupt, Lane::kData, 5),
       .code = StatusCode::kDataLoss,
       .says = "from rank 0 fails its check",
       .delivered_at_most = 5});
  // ACKs: the sender sees them.
  add({.name = "dropped_ack",
       .faulty_rank = 0,
       .plan = One(Fault::kDrop, Lane::kAck, 3),
       .code = StatusCode::kDataLoss,
       .says = "ACK from rank 1 out of sequence: expected number 3"});
  add({.name = "duplicated_ack",
       .faulty_rank = 0,
       .plan = One(Fault::kDuplicate, Lane::kAck, 3),
       .code = StatusCode::kDataLoss,
       .says = "ACK from rank 1 out of sequence: expected number 4"});
  add({.name = "reordered_acks",
       .faulty_rank = 0,
       .plan = One(Fault::kReorder, Lane::kAck, 3),
       .code = StatusCode::kDataLoss,
       .says = "ACK from rank 1 out of sequence: expected number 3"});
  add({.name = "corrupted_ack",
       .faulty_rank = 0,
       .plan = One(Fault::kCorrupt, Lane::kAck, 3),
       .code = StatusCode::kDataLoss,
       .says = "from rank 1 fails its check"});
  // Posts that fail: the error of the transport, naming the peer.
  add({.name = "failed_data_post",
       .faulty_rank = 0,
       .plan = One(Fault::kFailPost, Lane::kData, 10),
       .code = StatusCode::kUnavailable,
       .says = "posting a write to rank 1 on the data lane failed",
       .delivered_at_most = 10});
  add({.name = "failed_ack_post",
       .faulty_rank = 1,
       .plan = One(Fault::kFailPost, Lane::kAck, 3),
       .code = StatusCode::kUnavailable,
       .says = "posting a write to rank 0 on the ACK lane failed",
       .delivered_at_most = 4});
  // A payload damaged on the way: the checksum option catches it; the message is not delivered.
  add({.name = "corrupted_payload_with_checksum",
       .faulty_rank = 0,
       .plan = One(Fault::kCorruptPayload, Lane::kData, 5),
       .checksum = true,
       .reporting_rank = 1,
       .code = StatusCode::kDataLoss,
       .says = "message 5 from rank 0",
       .delivered_at_most = 5});
  // What the protocol must carry through unchanged: delays (order kept), with and without checksum.
  FaultPlan delays{{FaultRule{Fault::kDelay, Lane::kData, -1, -1, 0.3, 2000},
                    FaultRule{Fault::kDelay, Lane::kAck, -1, -1, 0.3, 2000}},
                   7};
  add({.name = "delayed_immediates_and_acks", .faulty_rank = 1, .plan = delays, .messages = 200});
  add({.name = "delayed_acks_at_sender", .faulty_rank = 0, .plan = delays, .messages = 200});
  add({.name = "checksum_without_faults",
       .faulty_rank = 1,
       .plan = {},
       .checksum = true,
       .messages = 200});
  // Everything at once, at random: never a wrong or duplicated delivery, never a hang.
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    FaultPlan chaos{{FaultRule{Fault::kDrop, Lane::kData, -1, -1, 0.01},
                     FaultRule{Fault::kDuplicate, Lane::kData, -1, -1, 0.01},
                     FaultRule{Fault::kReorder, Lane::kData, -1, -1, 0.01},
                     FaultRule{Fault::kCorrupt, Lane::kData, -1, -1, 0.01},
                     FaultRule{Fault::kDelay, Lane::kData, -1, -1, 0.05, 500},
                     FaultRule{Fault::kDrop, Lane::kAck, -1, -1, 0.01},
                     FaultRule{Fault::kCorrupt, Lane::kAck, -1, -1, 0.01},
                     FaultRule{Fault::kCorruptPayload, Lane::kData, -1, -1, 0.01}},
                    seed};
    add({.name = "random_faults_seed" + std::to_string(seed),
         .faulty_rank = -1,
         .plan = chaos,
         .checksum = true,
         .messages = 300,
         .call_timeout_ms = 1000,
         .any_error = true});
  }
  return cases;
}

class FaultTest : public ::testing::TestWithParam<FaultCase> {
 protected:
  void SetUp() override {
    std::string reason = SkipReason(kShm);
    if (!reason.empty()) GTEST_SKIP() << reason;
  }
};

TEST_P(FaultTest, NeverDeliversWrongDataAndReportsWhatItCannotDeliver) {
  const FaultCase& c = GetParam();
  auto outcomes = RunRanks(
      2, [&](int rank, int port) { return RunRank(c, rank, port); }, 60);
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

// The checksum is computed by the CPU: receive slots in device memory are refused at creation,
// before any connection, naming the option.
TEST(FaultChecksumOptionTest, RefusesSlotsInDeviceMemory) {
  Options o = TestOptions(1, 1, /*rank=*/0, FreePort());
  o.checksum = true;
  o.slot_memory = MemoryKind::kCuda;
  auto g = Group::Create(o);
  EXPECT_EQ(g.status().code(), StatusCode::kInvalidArgument) << g.status().ToString();
  EXPECT_TRUE(
      Contains(g.status().message(), "Options::checksum needs receive slots in host memory"))
      << g.status().message();
}

INSTANTIATE_TEST_SUITE_P(ucx, FaultTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<FaultCase>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace m2n::testing

// The expert-parallel layer (m2n/ep.h) between real processes over UCX shared memory on this host
// (and two cases over UCX TCP and over verbs, skipped without an RDMA device): each shape 1x1, 2x2,
// 3x1, 1x3, 2x3 in bf16 and fp32 runs a sequence of calls with every routing
// kind (random, all tokens to one expert, a token's experts on one rank, no tokens, the most
// tokens, a rank that receives nothing), two calls in flight at a time (micro-batches); every
// expert rank checks its rows and every attention rank its combined output against the plain
// reference (ep_reference.h). Then the failures: bad calls with clear errors, and a receiver that
// never comes.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "ep_reference.h"
#include "harness.h"
#include "m2n/m2n.h"
#include "transport_setup.h"

namespace m2n::testing {
namespace {

const TransportSetup kShm{"shm", "ucx", {{"UCX_TLS", "shm,self"}}};
const TransportSetup kTcp{"tcp", "ucx", {{"UCX_TLS", "tcp,self"}, {"UCX_NET_DEVICES", "lo"}}};
const TransportSetup kRc{"rc", "verbs", {}};  // skipped, with the reason, without an RDMA device
constexpr int64_t kCallMs = 20000;

const RoutingKind kSchedule[] = {RoutingKind::kRandom,    RoutingKind::kOneExpert,
                                 RoutingKind::kSameRank,  RoutingKind::kNoTokens,
                                 RoutingKind::kMaxTokens, RoutingKind::kSkipLastRank,
                                 RoutingKind::kRandom,    RoutingKind::kMaxTokens};
constexpr int kCalls = sizeof(kSchedule) / sizeof(kSchedule[0]);

bool Contains(const Status& s, const std::string& text) {
  return s.message().find(text) != std::string::npos;
}

// A group sized for the case, and the layer on it.
struct Rank {
  std::unique_ptr<Group> group;
  std::unique_ptr<ExpertParallel> ep;
};
StatusOr<Rank> MakeRank(const EpCase& c, int rank, int port, size_t slot_bytes = 0,
                        const TransportSetup& setup = kShm) {
  ApplySetup(setup);
  Options o = TestOptions(c.m, c.n, rank, port);
  M2N_ASSIGN_OR_RETURN(size_t need, ExpertParallel::SlotBytesNeeded(c.options, c.m, c.n));
  o.slot_bytes = slot_bytes > 0 ? slot_bytes : need;
  o.slot_depth = 2;
  Rank r;
  M2N_ASSIGN_OR_RETURN(r.group, Group::Create(o));
  M2N_ASSIGN_OR_RETURN(r.ep, ExpertParallel::Create(*r.group, c.options));
  return r;
}

// An attention rank: dispatches two calls, then receives their combines (two in flight), and
// checks.
int AttentionRank(const EpCase& c, ExpertParallel& ep, int rank) {
  std::vector<Routing> routings;
  for (int call = 0; call < kCalls; ++call)
    routings.push_back(MakeRouting(c, kSchedule[call], rank, uint64_t(call)));
  for (int call = 0; call < kCalls; call += 2) {
    for (int i = call; i < call + 2; ++i) {
      const Routing& r = routings[size_t(i)];
      CHILD_OK(ep.Dispatch(r.x.data(), r.tokens, r.ids, r.weights, Deadline::AfterMs(kCallMs)));
    }
    CHILD_CHECK(ep.calls_in_flight() == 2, "%d calls in flight", ep.calls_in_flight());
    // A third would need a slot the expert ranks may not have released: refused, nothing sent.
    const Routing& next = routings[size_t(call)];
    Status third =
        ep.Dispatch(next.x.data(), next.tokens, next.ids, next.weights, Deadline::AfterMs(kCallMs));
    CHILD_CHECK(
        third.code() == StatusCode::kFailedPrecondition && Contains(third, "2 calls are in flight"),
        "%s", third.ToString().c_str());
    for (int i = call; i < call + 2; ++i) {
      const Routing& r = routings[size_t(i)];
      std::vector<std::byte> out(r.x.size());
      CHILD_OK(ep.ReceiveCombine(out.data(), Deadline::AfterMs(kCallMs)));
      const std::string diff = CompareRows(c, out.data(), ExpectedOutput(c, r).data(), r.tokens);
      CHILD_CHECK(diff.empty(), "call %d (%s): %s", i, RoutingKindName(kSchedule[i]), diff.c_str());
    }
  }
  return 0;
}

// Checks one ExpertBatch against the reference rows of every attention rank's routing.
int CheckBatch(const EpCase& c, const ExpertBatch& batch, int rank, int call) {
  std::vector<Routing> routings;
  for (int a = 0; a < c.m; ++a)
    routings.push_back(MakeRouting(c, kSchedule[call], a, uint64_t(call)));
  const auto want = ExpectedRows(c, rank, routings);
  const size_t row_bytes = size_t(c.options.hidden) * DataTypeBytes(c.options.dtype);
  CHILD_CHECK(batch.call == uint64_t(call) && batch.counts.size() == want.size(),
              "call %llu, %zu experts", (unsigned long long)batch.call, batch.counts.size());
  for (size_t l = 0; l < want.size(); ++l) {
    CHILD_CHECK(batch.counts[l] == int(want[l].size()) &&
                    batch.offsets[l + 1] - batch.offsets[l] == batch.counts[l],
                "call %d expert %d: %d rows, want %zu", call, batch.experts[l], batch.counts[l],
                want[l].size());
    for (size_t i = 0; i < want[l].size(); ++i) {
      const size_t row = size_t(batch.offsets[l]) + i;
      const ExpertRowSource& s = batch.sources[row];
      const ExpectedRow& w = want[l][i];
      CHILD_CHECK(
          s.rank == w.rank && s.token == w.token && s.top_k_slot == w.slot && s.weight == w.weight,
          "call %d expert %d row %zu: from (%d, %d, %d), want (%d, %d, %d)", call, batch.experts[l],
          i, s.rank, s.token, s.top_k_slot, w.rank, w.token, w.slot);
      const std::string diff = CompareRows(c, batch.x + row * row_bytes, w.x, 1);
      CHILD_CHECK(diff.empty(), "call %d expert %d row %zu: %s", call, batch.experts[l], i,
                  diff.c_str());
    }
  }
  return 0;
}

// An expert rank: receives each call, checks it, runs the test's experts, combines.
int ExpertRank(const EpCase& c, ExpertParallel& ep, int rank) {
  const size_t row_bytes = size_t(c.options.hidden) * DataTypeBytes(c.options.dtype);
  for (int call = 0; call < kCalls; ++call) {
    auto batch = ep.ReceiveDispatch(Deadline::AfterMs(kCallMs));
    CHILD_OK(batch.status());
    if (CheckBatch(c, *batch, rank, call) != 0) return 1;
    std::vector<std::byte> y(size_t(batch->rows) * row_bytes);
    for (size_t l = 0; l < batch->experts.size(); ++l) {
      for (int row = batch->offsets[l]; row < batch->offsets[l + 1]; ++row) {
        ApplyExpert(c, batch->experts[l], batch->x + size_t(row) * row_bytes,
                    y.data() + size_t(row) * row_bytes);
      }
    }
    CHILD_OK(ep.Combine(y.data(), Deadline::AfterMs(kCallMs)));
  }
  return 0;
}

int DispatchAndCombine(const TransportSetup& setup, const EpCase& c, int rank, int port) {
  auto made = MakeRank(c, rank, port, 0, setup);
  CHILD_OK(made.status());
  const int code = rank < c.m ? AttentionRank(c, *made->ep, rank) : ExpertRank(c, *made->ep, rank);
  if (code != 0) return code;
  CHILD_OK(made->group->Close(Deadline::AfterMs(kCallMs)));
  return 0;
}

EpCase MakeCase(int m, int n, DataType dtype, int experts, int top_k,
                std::vector<int> placement = {}) {
  EpCase c{m, n, {}};
  c.options = {.num_experts = experts,
               .top_k = top_k,
               .hidden = 24,
               .dtype = dtype,
               .max_tokens = 13,
               .placement = std::move(placement)};
  return c;
}

struct EpRun {
  TransportSetup setup;
  EpCase c;
};
void PrintTo(const EpRun& run, std::ostream* os) {
  *os << run.setup.transport << "_" << run.setup.name << "_" << EpCaseName(run.c);
}

class EpTest : public ::testing::TestWithParam<EpRun> {
 protected:
  void SetUp() override {
    std::string reason = SkipReason(GetParam().setup);
    if (!reason.empty()) GTEST_SKIP() << reason;
  }
};

TEST_P(EpTest, DispatchAndCombineEveryRoutingKind) {
  const EpRun& run = GetParam();
  const EpCase& c = run.c;
  auto outcomes = RunRanks(
      c.m + c.n, [&](int rank, int port) { return DispatchAndCombine(run.setup, c, rank, port); },
      120);
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

// Every shape in both dtypes over shared memory; two over TCP and over verbs (other transports, the
// same layer: it uses only the Group API).
std::vector<EpRun> Runs() {
  std::vector<EpRun> runs;
  for (DataType dtype : {DataType::kBFloat16, DataType::kFloat32}) {
    runs.push_back({kShm, MakeCase(1, 1, dtype, 4, 2)});
    runs.push_back({kShm, MakeCase(2, 2, dtype, 8, 2, {3, 2, 3, 2, 2, 3, 3, 2})});  // scattered
    runs.push_back({kShm, MakeCase(3, 1, dtype, 8, 8)});  // every expert of every token
    runs.push_back({kShm, MakeCase(1, 3, dtype, 4, 2, {1, 1, 3, 3})});  // rank 2 holds no expert
    runs.push_back({kShm, MakeCase(2, 3, dtype, 8, 3, {4, 2, 4, 3, 2, 4, 4, 2})});
  }
  for (const TransportSetup& setup : {kTcp, kRc}) {
    runs.push_back({setup, MakeCase(2, 3, DataType::kBFloat16, 8, 3, {4, 2, 4, 3, 2, 4, 4, 2})});
    runs.push_back({setup, MakeCase(3, 1, DataType::kFloat32, 8, 8)});
  }
  return runs;
}

INSTANTIATE_TEST_SUITE_P(transports, EpTest, ::testing::ValuesIn(Runs()),
                         [](const ::testing::TestParamInfo<EpRun>& info) {
                           return info.param.setup.transport + "_" + info.param.setup.name + "_" +
                                  EpCaseName(info.param.c);
                         });

// 1 x 1: creation errors, bad calls (each named, nothing sent), then one good call still works.
int BadCalls(int rank, int port) {
  EpCase c = MakeCase(1, 1, DataType::kFloat32, 4, 2);
  auto need = ExpertParallel::SlotBytesNeeded(c.options, 1, 1);
  CHILD_OK(need.status());
  auto made =
      MakeRank(MakeCase(1, 1, DataType::kFloat32, 4, 1), rank, port, *need - 1);  // top_k 1 fits
  CHILD_OK(made.status());
  Group& g = *made->group;
  ExpertParallel& ep = *made->ep;
  auto too_small = ExpertParallel::Create(g, c.options);
  CHILD_CHECK(too_small.status().code() == StatusCode::kInvalidArgument &&
                  Contains(too_small.status(), "need slot_bytes >= " + std::to_string(*need)),
              "%s", too_small.status().ToString().c_str());
  ExpertParallelOptions misplaced = c.options;
  misplaced.placement = {1, 1, 0, 1};
  auto bad_placement = ExpertParallel::Create(g, misplaced);
  CHILD_CHECK(Contains(bad_placement.status(), "placement[2] = 0 is not an expert rank"), "%s",
              bad_placement.status().ToString().c_str());
  c = MakeCase(1, 1, DataType::kFloat32, 4, 1);
  const Deadline deadline = Deadline::AfterMs(kCallMs);
  if (rank == 0) {
    Routing r = MakeRouting(c, RoutingKind::kMaxTokens, 0, 0);
    std::vector<std::byte> x(r.x.size() + 8 * sizeof(float));
    std::vector<int32_t> ids(size_t(r.tokens) + 1, 0);
    std::vector<float> weights(ids.size(), 1.0f);
    Status s = ep.Dispatch(x.data(), r.tokens + 1, ids, weights, deadline);
    CHILD_CHECK(Contains(s, "Dispatch of 14 tokens; this layer takes 0 to max_tokens = 13"), "%s",
                s.ToString().c_str());
    r.ids[5] = 4;
    s = ep.Dispatch(r.x.data(), r.tokens, r.ids, r.weights, deadline);
    CHILD_CHECK(Contains(s, "topk_ids[5][0] = 4 is not an expert id in [0, 4)"), "%s",
                s.ToString().c_str());
    s = ep.ReceiveCombine(x.data(), deadline);
    CHILD_CHECK(s.code() == StatusCode::kFailedPrecondition, "%s", s.ToString().c_str());
    CHILD_CHECK(Contains(ep.ReceiveDispatch(deadline).status(), "is for expert ranks"),
                "wrong side not named");
    if (AttentionRank(c, ep, rank) != 0)
      return 1;  // the schedule still passes: nothing bad was sent
  } else {
    Status s = ep.Combine(nullptr, deadline);
    CHILD_CHECK(Contains(s, "no received dispatch is waiting"), "%s", s.ToString().c_str());
    if (ExpertRank(c, ep, rank) != 0) return 1;
  }
  CHILD_OK(g.Close(Deadline::AfterMs(kCallMs)));
  return 0;
}

// 1 x 2: expert rank 2 comes late. The attention rank's bounded wait names it (and not rank 1);
// after a barrier rank 2 answers and the same call, retried, completes.
int LateReceiver(int rank, int port) {
  const EpCase c = MakeCase(1, 2, DataType::kBFloat16, 4, 2);
  auto made = MakeRank(c, rank, port);
  CHILD_OK(made.status());
  Group& g = *made->group;
  ExpertParallel& ep = *made->ep;
  const size_t row_bytes = size_t(c.options.hidden) * 2;
  auto answer = [&]() -> int {
    auto batch = ep.ReceiveDispatch(Deadline::AfterMs(kCallMs));
    CHILD_OK(batch.status());
    std::vector<std::byte> y(size_t(batch->rows) * row_bytes);
    for (size_t l = 0; l < batch->experts.size(); ++l) {
      for (int row = batch->offsets[l]; row < batch->offsets[l + 1]; ++row) {
        ApplyExpert(c, batch->experts[l], batch->x + size_t(row) * row_bytes,
                    y.data() + size_t(row) * row_bytes);
      }
    }
    CHILD_OK(ep.Combine(y.data(), Deadline::AfterMs(kCallMs)));
    return 0;
  };
  if (rank == 0) {
    const Routing r = MakeRouting(c, RoutingKind::kMaxTokens, 0, 0);
    CHILD_OK(ep.Dispatch(r.x.data(), r.tokens, r.ids, r.weights, Deadline::AfterMs(kCallMs)));
    std::vector<std::byte> out(r.x.size());
    const auto start = std::chrono::steady_clock::now();
    Status s = ep.ReceiveCombine(out.data(), Deadline::AfterMs(300));
    const auto waited = std::chrono::steady_clock::now() - start;
    CHILD_CHECK(s.code() == StatusCode::kDeadlineExceeded && Contains(s, "from rank(s) 2") &&
                    !Contains(s, "1, 2"),
                "%s", s.ToString().c_str());
    CHILD_CHECK(waited < std::chrono::seconds(5), "the wait was not bounded by its deadline");
    CHILD_OK(g.Barrier(Deadline::AfterMs(kCallMs)));
    CHILD_OK(ep.ReceiveCombine(out.data(), Deadline::AfterMs(kCallMs)));
    const std::string diff = CompareRows(c, out.data(), ExpectedOutput(c, r).data(), r.tokens);
    CHILD_CHECK(diff.empty(), "%s", diff.c_str());
  } else if (rank == 1) {
    if (answer() != 0) return 1;
    CHILD_OK(g.Barrier(Deadline::AfterMs(kCallMs)));
  } else {
    CHILD_OK(g.Barrier(Deadline::AfterMs(kCallMs)));
    if (answer() != 0) return 1;
  }
  CHILD_OK(g.Close(Deadline::AfterMs(kCallMs)));
  return 0;
}

TEST(EpFailures, BadCallsAreNamedAndSendNothing) {
  if (std::string reason = SkipReason(kShm); !reason.empty()) GTEST_SKIP() << reason;
  EXPECT_EQ(DescribeFailures(RunRanks(2, BadCalls, 60)), "");
}

TEST(EpFailures, AReceiverThatDoesNotComeIsNamed) {
  if (std::string reason = SkipReason(kShm); !reason.empty()) GTEST_SKIP() << reason;
  EXPECT_EQ(DescribeFailures(RunRanks(3, LateReceiver, 60)), "");
}

}  // namespace
}  // namespace m2n::testing

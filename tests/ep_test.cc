// The expert-parallel layer's pure functions (src/ep/: routing, layout, combine) against the plain
// reference of ep_reference.h: whole dispatch / combine round trips through the message bytes,
// without a Group, for every shape, dtype and routing kind; and their error messages.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "ep/combine.h"
#include "ep/dtype.h"
#include "ep/layout.h"
#include "ep/routing.h"
#include "ep_reference.h"

namespace m2n::testing {
namespace {

using ep::DispatchPlan;
using ep::Format;
using ep::Placement;

EpCase MakeCase(int m, int n, DataType dtype, int experts, int top_k,
                std::vector<int> placement = {}) {
  EpCase c{m, n, {}};
  c.options = {.num_experts = experts,
               .top_k = top_k,
               .hidden = 5,
               .dtype = dtype,
               .max_tokens = 11,
               .placement = std::move(placement)};
  return c;
}

// The shapes of the issue, each with a placement of its own (contiguous, scattered, a rank with
// none).
std::vector<EpCase> AllCases() {
  std::vector<EpCase> cases;
  for (DataType dtype : {DataType::kBFloat16, DataType::kFloat32}) {
    cases.push_back(MakeCase(1, 1, dtype, 4, 2));
    cases.push_back(MakeCase(2, 2, dtype, 8, 2, {3, 2, 3, 2, 2, 3, 3, 2}));
    cases.push_back(MakeCase(3, 1, dtype, 8, 8));
    cases.push_back(MakeCase(1, 3, dtype, 4, 2, {1, 1, 3, 3}));  // rank 2 holds no expert
    cases.push_back(MakeCase(2, 3, dtype, 8, 3, {4, 2, 4, 3, 2, 4, 4, 2}));
    cases.push_back(MakeCase(2, 3, dtype, 2, 1));  // fewer experts than expert ranks
  }
  return cases;
}

const RoutingKind kKinds[] = {RoutingKind::kRandom,    RoutingKind::kOneExpert,
                              RoutingKind::kSameRank,  RoutingKind::kNoTokens,
                              RoutingKind::kMaxTokens, RoutingKind::kSkipLastRank};

// Expert rank d's side of one call: read, group, check against the reference, apply the experts,
// write the combines into combines[a].
void ExpertSide(const EpCase& c, const Placement& p, const Format& f, int d, uint32_t call,
                const std::vector<std::vector<std::byte>>& dispatches,
                const std::vector<Routing>& routings,
                std::vector<std::vector<std::byte>>& combines) {
  std::vector<ep::DispatchView> views;
  std::vector<ep::ReceivedRows> received;
  for (int a = 0; a < c.m; ++a) {
    auto v =
        ep::ReadDispatch(f, call, a, dispatches[size_t(a)].data(), dispatches[size_t(a)].size());
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    views.push_back(*v);
    received.push_back({a, v->rows, v->expert});
  }
  ep::ExpertGrouping g;
  ASSERT_TRUE(ep::GroupByExpert(p, d, f.top_k, received, &g).ok());
  std::vector<std::byte> x(size_t(g.rows()) * f.row_bytes()), y(x.size());
  ep::GatherRows(f, g, views, x.data());
  const auto want = ExpectedRows(c, c.m + d, routings);
  ASSERT_EQ(want.size(), p.experts_of[size_t(d)].size());
  for (size_t l = 0; l < want.size(); ++l) {
    ASSERT_EQ(g.offsets[l + 1] - g.offsets[l], int(want[l].size()))
        << "expert " << p.experts_of[size_t(d)][l];
    for (size_t i = 0; i < want[l].size(); ++i) {
      const size_t row = size_t(g.offsets[l]) + i;
      const ExpectedRow& w = want[l][i];
      const ep::DispatchView& v = views[size_t(g.message[row])];
      EXPECT_EQ(v.source, w.rank);
      EXPECT_EQ(v.token[g.row[row]], w.token);
      EXPECT_EQ(g.slot[row], w.slot);
      EXPECT_EQ(v.weight[size_t(g.row[row]) * size_t(f.top_k) + size_t(g.slot[row])], w.weight);
      EXPECT_EQ(CompareRows(c, x.data() + row * f.row_bytes(), w.x, 1), "");
      ApplyExpert(c, p.experts_of[size_t(d)][l], x.data() + row * f.row_bytes(),
                  y.data() + row * f.row_bytes());
    }
  }
  for (int a = 0; a < c.m; ++a) {
    combines[size_t(a)].resize(ep::CombineLayout(f, size_t(g.pair_count[size_t(a)])).bytes);
    EXPECT_EQ(ep::WriteCombine(f, call, g, a, y.data(), combines[size_t(a)].data()),
              combines[size_t(a)].size());
  }
}

// One call of every attention rank through the pure functions and the message bytes.
void RoundTrip(const EpCase& c, RoutingKind kind, uint32_t call) {
  SCOPED_TRACE(EpCaseName(c) + " " + RoutingKindName(kind) + " call " + std::to_string(call));
  auto placement = ep::MakePlacement(c.options.num_experts, c.options.placement, c.m, c.n);
  ASSERT_TRUE(placement.ok()) << placement.status().ToString();
  const Placement& p = *placement;
  const Format f{c.options.dtype, c.options.hidden, c.options.top_k,
                 ep::OptionsFingerprint(c.options, p)};
  const size_t slot = ep::SlotBytesNeeded(f, c.options.max_tokens, p.max_local_experts);
  std::vector<Routing> routings;
  std::vector<DispatchPlan> plans(size_t(c.m));
  // dispatches[d][a]: a's message to d; combines[a][d]: d's answer to a.
  std::vector<std::vector<std::vector<std::byte>>> dispatches(
      size_t(c.n), std::vector<std::vector<std::byte>>(size_t(c.m)));
  std::vector<std::vector<std::vector<std::byte>>> combines(
      size_t(c.m), std::vector<std::vector<std::byte>>(size_t(c.n)));
  for (int a = 0; a < c.m; ++a) {
    routings.push_back(MakeRouting(c, kind, a, call));
    const Routing& r = routings.back();
    ASSERT_TRUE(ep::PlanDispatch(p, r.tokens, f.top_k, r.ids, &plans[size_t(a)]).ok());
    for (int d = 0; d < c.n; ++d) {
      std::vector<std::byte>& msg = dispatches[size_t(d)][size_t(a)];
      msg.resize(slot);
      msg.resize(ep::WriteDispatch(f, call, p, plans[size_t(a)], d, r.x.data(), r.ids, r.weights,
                                   msg.data()));
      ASSERT_LE(msg.size(), slot);
    }
  }
  for (int d = 0; d < c.n; ++d) {
    std::vector<std::vector<std::byte>> answers(size_t(c.m));
    ExpertSide(c, p, f, d, call, dispatches[size_t(d)], routings, answers);
    for (int a = 0; a < c.m; ++a) combines[size_t(a)][size_t(d)] = std::move(answers[size_t(a)]);
  }
  for (int a = 0; a < c.m; ++a) {
    std::vector<const std::byte*> y;
    for (int d = 0; d < c.n; ++d) {
      const auto& msg = combines[size_t(a)][size_t(d)];
      ASSERT_LE(msg.size(), slot);
      auto read = ep::ReadCombine(f, call, c.m + d, plans[size_t(a)].pair_count[size_t(d)],
                                  msg.data(), msg.size());
      ASSERT_TRUE(read.ok()) << read.status().ToString();
      y.push_back(*read);
    }
    const Routing& r = routings[size_t(a)];
    std::vector<std::byte> out(r.x.size());
    ep::WeightedSum(f, p, plans[size_t(a)], r.ids, r.weights, y, out.data());
    EXPECT_EQ(CompareRows(c, out.data(), ExpectedOutput(c, r).data(), r.tokens), "")
        << "attention rank " << a;
  }
}

TEST(EpRoundTrip, EveryShapeDtypeAndRoutingKind) {
  for (const EpCase& c : AllCases()) {
    for (RoutingKind kind : kKinds) {
      for (uint32_t call = 0; call < 3; ++call) RoundTrip(c, kind, call);
    }
  }
}

TEST(EpRoundTrip, LargerRandomShapes) {
  for (int seed = 0; seed < 20; ++seed) {
    EpCase c = MakeCase(1 + seed % 4, 1 + seed / 4 % 4,
                        seed % 2 ? DataType::kFloat32 : DataType::kBFloat16, 1 + seed % 16, 1, {});
    c.options.top_k = 1 + seed % c.options.num_experts;
    c.options.hidden = 1 + seed * 7;
    c.options.max_tokens = 1 + seed * 3;
    RoundTrip(c, RoutingKind::kRandom, uint32_t(seed));
  }
}

TEST(EpDtype, BFloat16RoundsToNearestEven) {
  EXPECT_EQ(ep::FloatToBFloat16(1.0f), 0x3F80);
  EXPECT_EQ(ep::FloatToBFloat16(1.0f + 1.0f / 256), 0x3F80);  // a tie: to the even 1.0
  EXPECT_EQ(ep::FloatToBFloat16(1.0f + 3.0f / 256), 0x3F82);  // a tie: to the even 1 + 2/128
  EXPECT_EQ(ep::FloatToBFloat16(1.0f + 1.0f / 256 + 1.0f / 65536), 0x3F81);  // above the tie: up
  EXPECT_EQ(ep::FloatToBFloat16(-2.5f), 0xC020);
  EXPECT_EQ(ep::FloatToBFloat16(INFINITY), 0x7F80);
  EXPECT_TRUE(std::isnan(ep::BFloat16ToFloat(ep::FloatToBFloat16(NAN))));
  EXPECT_EQ(ep::BFloat16ToFloat(0x3F81), 1.0f + 1.0f / 128);
}

TEST(EpPlacement, ContiguousByDefaultAndAnyMap) {
  auto p = ep::MakePlacement(8, {}, 2, 3);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->experts_of, (std::vector<std::vector<int>>{{0, 1, 2}, {3, 4, 5}, {6, 7}}));
  EXPECT_EQ(p->max_local_experts, 3);
  const std::vector<int> scattered = {4, 2, 4, 2};
  p = ep::MakePlacement(4, scattered, 2, 3);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->experts_of, (std::vector<std::vector<int>>{{1, 3}, {}, {0, 2}}));
  EXPECT_EQ(p->local_index, (std::vector<int>{0, 0, 1, 1}));
}

TEST(EpPlacement, NamesANonExpertRank) {
  const std::vector<int> bad = {2, 2, 1, 3};
  auto p = ep::MakePlacement(4, bad, 2, 2);
  EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(p.status().message().find("placement[2] = 1 is not an expert rank"), std::string::npos)
      << p.status().message();
  const std::vector<int> short_map = {2, 2};
  EXPECT_NE(ep::MakePlacement(4, short_map, 2, 2).status().message().find("one per expert (4)"),
            std::string::npos);
}

TEST(EpRouting, ATokenGoesOncePerRankWithItsPairsInOrder) {
  auto p = ep::MakePlacement(4, {}, 1, 2);  // experts 0, 1 on rank 1; 2, 3 on rank 2
  ASSERT_TRUE(p.ok());
  const std::vector<int32_t> ids = {
      1, 0, 2, 1, 3, 2};  // token 0: both on rank 1; 1: one each; 2: both on rank 2
  DispatchPlan plan;
  ASSERT_TRUE(ep::PlanDispatch(*p, 3, 2, ids, &plan).ok());
  EXPECT_EQ(plan.rows(0), 2);
  EXPECT_EQ(plan.rows(1), 2);
  EXPECT_EQ(plan.row_token, (std::vector<int32_t>{0, 1, 1, 2}));
  EXPECT_EQ(plan.pair_count, (std::vector<int32_t>{3, 3}));
  EXPECT_EQ(plan.pair_index, (std::vector<int32_t>{0, 1, 0, 2, 1, 2}));
}

TEST(EpRouting, NamesAnExpertIdOutOfRange) {
  auto p = ep::MakePlacement(8, {}, 1, 2);
  ASSERT_TRUE(p.ok());
  DispatchPlan plan;
  const std::vector<int32_t> ids = {0, 1, 9, 2};
  Status s = ep::PlanDispatch(*p, 2, 2, ids, &plan);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("topk_ids[1][0] = 9 is not an expert id in [0, 8)"), std::string::npos)
      << s.message();
  const std::vector<int32_t> negative = {-1, 1};
  EXPECT_FALSE(ep::PlanDispatch(*p, 1, 2, negative, &plan).ok());
}

TEST(EpLayout, SlotBytesAndTheirError) {
  const ExpertParallelOptions o{.num_experts = 8,
                                .top_k = 2,
                                .hidden = 64,
                                .dtype = DataType::kBFloat16,
                                .max_tokens = 16,
                                .placement = {}};
  auto need = ExpertParallel::SlotBytesNeeded(o, 2, 2);
  ASSERT_TRUE(need.ok());
  // dispatch of 16 rows: header 32 + tokens 64 + ids 128 + weights 128 = 352 -> 384, + 16 x 128 B
  // of x combine of 32 pairs: 64 + 32 x 128 = 4160, the larger.
  EXPECT_EQ(*need, 4160u);
  ExpertParallelOptions bad = o;
  bad.top_k = 9;
  EXPECT_NE(ExpertParallel::SlotBytesNeeded(bad, 2, 2).status().message().find("top_k is 9"),
            std::string::npos);
  bad = o;
  bad.placement = {0, 2, 2, 2, 3, 3, 3, 3};
  EXPECT_NE(ExpertParallel::SlotBytesNeeded(bad, 2, 2).status().message().find("placement[0] = 0"),
            std::string::npos);
}

TEST(EpLayout, ReadingChecksTheHeader) {
  EpCase c = MakeCase(1, 1, DataType::kFloat32, 2, 1);
  auto p = ep::MakePlacement(2, {}, 1, 1);
  ASSERT_TRUE(p.ok());
  const Format f{DataType::kFloat32, 5, 1, ep::OptionsFingerprint(c.options, *p)};
  Routing r = MakeRouting(c, RoutingKind::kMaxTokens, 0, 0);
  DispatchPlan plan;
  ASSERT_TRUE(ep::PlanDispatch(*p, r.tokens, 1, r.ids, &plan).ok());
  std::vector<std::byte> msg(ep::SlotBytesNeeded(f, c.options.max_tokens, 2));
  const size_t length =
      ep::WriteDispatch(f, 7, *p, plan, 0, r.x.data(), r.ids, r.weights, msg.data());
  EXPECT_TRUE(ep::ReadDispatch(f, 7, 0, msg.data(), length).ok());
  Status s = ep::ReadDispatch(f, 6, 0, msg.data(), length).status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("the dispatch from rank 0 is for call 7, this rank expects call 6"),
            std::string::npos)
      << s.message();
  Format other = f;
  other.config ^= 1;
  EXPECT_NE(ep::ReadDispatch(other, 7, 0, msg.data(), length)
                .status()
                .message()
                .find("other expert-parallel options"),
            std::string::npos);
  s = ep::ReadDispatch(f, 7, 0, msg.data(), length - 4).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_EQ(ep::ReadCombine(f, 7, 0, 0, msg.data(), length).status().code(),
            StatusCode::kDataLoss);  // a dispatch
}

TEST(EpRouting, GroupingNamesARowForAnotherRanksExpert) {
  auto p = ep::MakePlacement(4, {}, 1, 2);
  ASSERT_TRUE(p.ok());
  const std::vector<int32_t> experts = {0, 3};  // expert 3 lives on the other expert rank
  const ep::ReceivedRows rows{0, 1, experts.data()};
  ep::ExpertGrouping g;
  Status s = ep::GroupByExpert(*p, 0, 2, {&rows, 1}, &g);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("from rank 0 routes a row to expert 3"), std::string::npos)
      << s.message();
}

}  // namespace
}  // namespace m2n::testing

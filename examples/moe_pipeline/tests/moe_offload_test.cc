// Expert offloading (offload/): the cache's accounting invariants, each policy's choices on small
// hand-made traces, the fMoE map store's replacement, routing traces and their errors, and the
// CPU backend: experts served from the cache arena compute what they compute from the host copy.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "compute/compute.h"
#include "model/config.h"
#include "model/weights.h"
#include "offload/cache.h"
#include "offload/map_store.h"
#include "offload/offloaded_experts.h"
#include "offload/record.h"
#include "offload/sim.h"
#include "offload/trace.h"
#include "tests/temp_dir.h"

namespace moe::offload {
namespace {

const OffloadShape kShape{.layers = 4, .experts = 4, .top_k = 2, .expert_bytes = 100};

bool Has(const std::vector<ExpertId>& v, ExpertId id) {
  return std::find(v.begin(), v.end(), id) != v.end();
}

// A random walk over acquire / release / prefetch: the invariants hold after every step.
TEST(MoeOffload, CacheInvariantsUnderEveryPolicy) {
  for (const char* name : {"lru", "frequency", "fmoe"}) {
    auto policy = MakePolicy(name, kShape);
    ASSERT_TRUE(policy.ok());
    NoCopy backend;
    auto cache = ExpertCache::Create(kShape, 5, policy->get(), &backend);
    ASSERT_TRUE(cache.ok()) << cache.status().ToString();
    std::mt19937 rng(7);
    std::vector<float> probs(4, 0.25f), emb(3, 1.0f);
    (*policy)->Learn(emb, 1, std::vector<float>(static_cast<size_t>(kShape.total()), 0.25f));
    (*policy)->BeginRequest(emb);
    for (int step = 0; step < 400; ++step) {
      const int layer = step % 4;
      if (layer == 0) (*policy)->BeginIteration();
      const std::vector<int> chosen = {static_cast<int>(rng() % 2),
                                       2 + static_cast<int>(rng() % 2)};
      (*policy)->ObserveGate(layer, probs, chosen);
      ASSERT_TRUE((*cache)->Acquire(layer, chosen).ok());
      // Pinned: a prefetch of everything else must not push them out.
      std::vector<ExpertId> all;
      for (int l = 0; l < 4; ++l)
        for (int e = 0; e < 4; ++e) all.push_back({l, e});
      ASSERT_TRUE((*cache)->Prefetch(all).ok());
      for (int e : chosen) EXPECT_GE((*cache)->SlotOf({layer, e}), 0) << name;
      (*cache)->Release(layer, chosen);
      ASSERT_TRUE((*cache)->Prefetch((*policy)->Prefetch(layer)).ok());
      ASSERT_TRUE((*cache)->CheckInvariants().ok()) << name;
      EXPECT_LE((*cache)->resident(), 5);
    }
    (*cache)->Finish();
    const CacheStats& s = (*cache)->stats();
    EXPECT_EQ(s.hits + s.misses, 800) << name;
    // Every byte moved is a miss or a prefetch (nothing loaded twice), every prefetch used or
    // wasted.
    EXPECT_EQ(s.bytes_moved, (s.misses + s.prefetches) * kShape.expert_bytes) << name;
    EXPECT_EQ(s.prefetch_used + s.prefetch_wasted, s.prefetches) << name;
  }
}

TEST(MoeOffload, BudgetBelowOneLayersTopKIsRefused) {
  auto policy = MakeLruPolicy();
  NoCopy backend;
  auto cache = ExpertCache::Create(kShape, 1, policy.get(), &backend);
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().code(), m2n::StatusCode::kInvalidArgument);
  EXPECT_NE(cache.status().ToString().find("at least one layer's top-k (2)"), std::string::npos)
      << cache.status().ToString();
  EXPECT_FALSE(MakePolicy("belady", kShape).ok());
}

TEST(MoeOffload, AllSlotsPinnedIsAClearError) {
  auto policy = MakeLruPolicy();
  NoCopy backend;
  auto cache = ExpertCache::Create(kShape, 2, policy.get(), &backend);
  ASSERT_TRUE(cache.ok());
  ASSERT_TRUE((*cache)->Acquire(0, std::vector<int>{0, 1}).ok());
  const m2n::Status s = (*cache)->Acquire(1, std::vector<int>{0});
  EXPECT_EQ(s.code(), m2n::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.ToString().find("pinned"), std::string::npos) << s.ToString();
}

TEST(MoeOffload, LruEvictsTheLeastRecentlyUsed) {
  auto policy = MakeLruPolicy();
  NoCopy backend;
  auto cache = ExpertCache::Create(kShape, 3, policy.get(), &backend);
  ASSERT_TRUE(cache.ok());
  for (auto [layer, e] : {std::pair{0, 0}, {0, 1}, {0, 2}, {0, 0}, {1, 3}}) {
    ASSERT_TRUE((*cache)->Acquire(layer, std::vector<int>{e}).ok());
    (*cache)->Release(layer, std::vector<int>{e});
  }
  EXPECT_LT((*cache)->SlotOf({0, 1}), 0);  // the least recent when (1, 3) came
  EXPECT_GE((*cache)->SlotOf({0, 0}), 0);
  EXPECT_GE((*cache)->SlotOf({0, 2}), 0);
  EXPECT_EQ((*cache)->stats().hits, 1);
  EXPECT_EQ((*cache)->stats().misses, 4);
}

TEST(MoeOffload, FrequencyPrefetchesTheRequestsMostActivated) {
  auto policy = MakeFrequencyPolicy(kShape, 2);
  policy->BeginRequest({});
  for (int i = 0; i < 3; ++i) policy->ObserveGate(1, {}, std::vector<int>{3, 1});
  policy->ObserveGate(2, {}, std::vector<int>{2, 0});
  const std::vector<ExpertId> p = policy->Prefetch(0);  // layers 1 and 2, top-2 each
  ASSERT_EQ(p.size(), 4u);
  EXPECT_TRUE(Has(p, {1, 3}) && Has(p, {1, 1}) && Has(p, {2, 2}) && Has(p, {2, 0}));
  EXPECT_GT(policy->KeepScore({1, 3}, 0), policy->KeepScore({1, 0}, 0));
}

// Two maps: A (prompt embedding e1) prefers experts 0 then 1 everywhere, B (e2) 3 then 2.
std::vector<float> Map(int first, int second, float p1, float p2) {
  std::vector<float> m(static_cast<size_t>(kShape.total()), (1 - p1 - p2) / 2);
  for (int l = 0; l < kShape.layers; ++l)
    m[static_cast<size_t>(l * 4 + first)] = p1, m[static_cast<size_t>(l * 4 + second)] = p2;
  return m;
}

TEST(MoeOffload, FmoeSemanticThenTrajectoryPrefetch) {
  auto policy = MakeFmoePolicy(kShape, {.store_capacity = 8, .semantic_layers = 1, .distance = 2});
  const std::vector<float> e1 = {1, 0}, e2 = {0, 1};
  policy->Learn(e1, 1, Map(0, 1, 0.6f, 0.3f));
  policy->Learn(e2, 1, Map(3, 2, 0.6f, 0.3f));
  policy->BeginRequest(e1);
  policy->BeginIteration();
  // Similarity 1: delta 0, so exactly the top-2 of layers 0 and 1, nearest and likeliest first.
  std::vector<ExpertId> p = policy->Prefetch(-1);
  EXPECT_EQ(p, (std::vector<ExpertId>{{0, 0}, {0, 1}, {1, 0}, {1, 1}}));
  // The gates disagree with the prompt: trajectory search beyond the first layer follows them.
  const std::vector<float> b = {0.05f, 0.05f, 0.3f, 0.6f};
  policy->ObserveGate(0, b, std::vector<int>{3, 2});
  policy->ObserveGate(1, b, std::vector<int>{3, 2});
  p = policy->Prefetch(1);
  ASSERT_GE(p.size(), 2u);
  EXPECT_EQ(p[0], (ExpertId{2, 3}));
  EXPECT_EQ(p[1], (ExpertId{2, 2}));
  // A miss on layer 2 pauses prefetching there.
  policy->Missed({2, 1});
  EXPECT_TRUE(policy->Prefetch(2).empty());
}

TEST(MoeOffload, FmoePrefetchesMoreWhenTheMatchIsPoor) {
  auto policy = MakeFmoePolicy(kShape, {.store_capacity = 8, .semantic_layers = 1, .distance = 1});
  policy->Learn(std::vector<float>{1, 0}, 1, Map(0, 1, 0.4f, 0.3f));
  policy->BeginRequest(
      std::vector<float>{1, 1});  // cosine 0.71: delta 0.29, the top-2 already reach it
  policy->BeginIteration();
  EXPECT_EQ(policy->Prefetch(-1).size(), 2u);
  policy->BeginRequest(std::vector<float>{-1, 0.1f});  // cosine < 0: delta 1, every expert
  policy->BeginIteration();
  EXPECT_EQ(policy->Prefetch(-1).size(), 4u);
}

TEST(MoeOffload, MapStoreReplacesTheMostRedundant) {
  MapStore store(2, kShape.layers, kShape.experts);
  const std::vector<float> e = {1};
  store.Add(e, Map(0, 1, 0.6f, 0.3f));
  store.Add(e, Map(3, 2, 0.6f, 0.3f));
  store.Add(e, Map(0, 1, 0.55f, 0.35f));  // nearly the first: one of the two goes
  EXPECT_EQ(store.size(), 2);
  EXPECT_EQ(store.replaced(), 1);
  bool kept_b = false;
  for (int i = 0; i < store.size(); ++i) kept_b |= store.Map(i)[3] > 0.5f;
  EXPECT_TRUE(kept_b) << "the distinct map must stay";
  store.Add(e, Map(1, 2, 0.6f, 0.3f));  // new routing: replaces one of the near-duplicates, not B
  kept_b = false;
  for (int i = 0; i < store.size(); ++i) kept_b |= store.Map(i)[3] > 0.5f;
  EXPECT_TRUE(kept_b);
  EXPECT_EQ(store.replaced(), 2);
}

Trace SmallTrace() {
  Trace t{.layers = 4, .experts = 4, .top_k = 2, .embed_dim = 2, .requests = {}};
  for (int r = 0; r < 4; ++r) {
    TraceRequest q{.kind = r % 2 ? "code" : "prose",
                   .held_out = r >= 2,
                   .tokens = 3,
                   .embedding = {1.0f * (r % 2), 1.0f},
                   .gates = {}};
    for (int tok = 0; tok < 3; ++tok) {
      const std::vector<float> m = r % 2 ? Map(3, 2, 0.6f, 0.3f) : Map(0, 1, 0.6f, 0.3f);
      q.gates.insert(q.gates.end(), m.begin(), m.end());
    }
    t.requests.push_back(q);
  }
  return t;
}

TEST(MoeOffload, TraceRoundTripAndSimulation) {
  moe::TempDir dir("moe_offload_test");
  ASSERT_TRUE(WriteTrace(dir / "t.trace", SmallTrace()).ok());
  auto t = ReadTrace(dir / "t.trace");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  ASSERT_EQ(t->requests.size(), 4u);
  EXPECT_EQ(t->requests[1].kind, "code");
  EXPECT_EQ(t->requests[2].gates, SmallTrace().requests[2].gates);
  for (const char* p : {"lru", "frequency", "fmoe"}) {
    auto r = Simulate(*t, kShape, p, 4, {});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->tokens, 6);
    EXPECT_EQ(r->stats.hits + r->stats.misses, 6 * 4 * 2);
  }
  // fMoE learned these exact routings: nearly every expert is there before it is needed.
  EXPECT_GT(Simulate(*t, kShape, "fmoe", 4, {})->stats.HitRate(),
            Simulate(*t, kShape, "lru", 4, {})->stats.HitRate());
}

TEST(MoeOffload, TraceOfAnotherShapeOrNotATraceIsRefused) {
  moe::TempDir dir("moe_offload_test");
  auto r = Simulate(SmallTrace(),
                    OffloadShape{.layers = 32, .experts = 8, .top_k = 2, .expert_bytes = 1}, "lru",
                    8, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().ToString().find("another model's shape"), std::string::npos)
      << r.status().ToString();
  {
    std::FILE* f = std::fopen((dir / "bad.trace").c_str(), "wb");
    std::fputs("safetensors?", f);
    std::fclose(f);
  }
  auto t = ReadTrace(dir / "bad.trace");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().ToString().find("not a routing trace"), std::string::npos);
  Trace cut = SmallTrace();
  ASSERT_TRUE(WriteTrace(dir / "cut.trace", cut).ok());
  std::filesystem::resize_file(dir / "cut.trace", 200);
  EXPECT_NE(ReadTrace(dir / "cut.trace").status().ToString().find("truncated"), std::string::npos);
}

// One expert's SwiGLU, y = w2 (silu(w1 x) * w3 x), from weights laid out w1 | w3 | w2.
std::vector<float> Expert(const float* w, const ModelConfig& c, const std::vector<float>& x) {
  const int h = c.hidden_size, n = c.intermediate_size;
  const float *w1 = w, *w3 = w + n * h, *w2 = w + 2 * n * h;
  std::vector<float> mid(static_cast<size_t>(n)), y(static_cast<size_t>(h), 0.0f);
  for (int i = 0; i < n; ++i) {
    float g = 0, u = 0;
    for (int j = 0; j < h; ++j)
      g += w1[i * h + j] * x[static_cast<size_t>(j)],
          u += w3[i * h + j] * x[static_cast<size_t>(j)];
    mid[static_cast<size_t>(i)] = g / (1 + std::exp(-g)) * u;
  }
  for (int j = 0; j < h; ++j)
    for (int i = 0; i < n; ++i)
      y[static_cast<size_t>(j)] += w2[j * n + i] * mid[static_cast<size_t>(i)];
  return y;
}

// The CPU backend: the cache holds a quarter of the tiny model's experts in its own arena, misses
// copy from the host copy; every expert output equals the one computed from the host copy.
TEST(MoeOffload, OutputsWithOffloadingEqualOutputsWithout) {
  auto config = LoadModelConfig(std::string(MOE_PIPELINE_CONFIG_DIR) + "/tiny.json");
  ASSERT_TRUE(config.ok());
  std::vector<int> all(static_cast<size_t>(config->num_local_experts));
  for (int e = 0; e < config->num_local_experts; ++e) all[static_cast<size_t>(e)] = e;
  auto shard = LoadExpertShard(*config, WeightSource{}, all);
  ASSERT_TRUE(shard.ok()) << shard.status().ToString();
  const size_t floats =
      3 * static_cast<size_t>(config->hidden_size) * static_cast<size_t>(config->intermediate_size);
  const OffloadShape shape{config->num_hidden_layers, config->num_local_experts,
                           config->num_experts_per_tok,
                           static_cast<int64_t>(floats * sizeof(float))};
  HostArena arena(shape, shape.total() / 4);
  for (int l = 0; l < shape.layers; ++l) {
    for (int e = 0; e < shape.experts; ++e) {
      const ExpertWeights& w = shard->layers[static_cast<size_t>(l)][static_cast<size_t>(e)];
      std::byte* out = arena.Host({l, e}).data();
      std::memcpy(out, w.w1.data(), w.w1.size() * 4);
      std::memcpy(out + w.w1.size() * 4, w.w3.data(), w.w3.size() * 4);
      std::memcpy(out + (w.w1.size() + w.w3.size()) * 4, w.w2.data(), w.w2.size() * 4);
    }
  }
  auto policy = MakeLruPolicy();
  auto cache = ExpertCache::Create(shape, shape.total() / 4, policy.get(), &arena);
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  for (int token = 0; token < 20; ++token) {
    for (int l = 0; l < shape.layers; ++l) {
      std::vector<float> x(static_cast<size_t>(config->hidden_size));
      for (float& v : x) v = normal(rng);
      const std::vector<int> chosen = {static_cast<int>(rng() % 4),
                                       4 + static_cast<int>(rng() % 4)};
      ASSERT_TRUE((*cache)->Acquire(l, chosen).ok());
      for (int e : chosen) {
        const float* resident =
            reinterpret_cast<const float*>(arena.Slot((*cache)->SlotOf({l, e})).data());
        const float* host = reinterpret_cast<const float*>(arena.Host({l, e}).data());
        EXPECT_EQ(Expert(resident, *config, x), Expert(host, *config, x));
      }
      (*cache)->Release(l, chosen);
    }
  }
  EXPECT_GT((*cache)->stats().misses, 0);
  EXPECT_GT((*cache)->stats().hits, 0);
}

}  // namespace
}  // namespace moe::offload

namespace moe::offload {
namespace {

// moe_pipeline --trace: the committed trained model's routing of two text prompts.
TEST(MoeOffload, RecordsTheTrainedModelsRouting) {
  const std::string dir = std::string(MOE_PIPELINE_CONFIG_DIR) + "/..";
  auto config = LoadModelConfig(dir + "/configs/mixtral-8x7b-tiny.json");
  ASSERT_TRUE(config.ok());
  moe::TempDir tmp("moe_offload_test");
  {
    std::FILE* f = std::fopen((tmp / "p.tsv").c_str(), "wb");
    std::fputs("code\t0\tdef main():\\n    return 0\nlicence\t1\tPermission is hereby granted\n",
               f);
    std::fclose(f);
  }
  auto prompts = ReadPrompts(tmp / "p.tsv");
  ASSERT_TRUE(prompts.ok()) << prompts.status().ToString();
  ASSERT_EQ(prompts->size(), 2u);
  EXPECT_EQ((*prompts)[0].tokens.size(), 24u);  // "\n" unescaped
  auto trace = RecordTrace(
      *config, WeightSource{.seed = 1, .checkpoint = dir + "/models/mixtral-8x7b-tiny.safetensors"},
      *prompts, 32);
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  ASSERT_EQ(trace->layers, 32);
  const TraceRequest& q = trace->requests[1];
  EXPECT_TRUE(q.held_out);
  ASSERT_EQ(q.gates.size(), static_cast<size_t>(q.tokens) * 32 * 8);
  float sum = 0;
  for (int e = 0; e < 8; ++e) sum += q.gates[static_cast<size_t>(e)];
  EXPECT_NEAR(sum, 1.0f, 1e-5f);
  // The tiny test model has 2 layers: this trace is not its routing.
  auto tiny = LoadModelConfig(dir + "/configs/tiny.json");
  ASSERT_TRUE(tiny.ok());
  EXPECT_FALSE(CheckTraceShape(
                   *trace,
                   {tiny->num_hidden_layers, tiny->num_local_experts, tiny->num_experts_per_tok, 1},
                   "t")
                   .ok());
  EXPECT_FALSE(ReadPrompts(tmp / "missing.tsv").ok());
}

}  // namespace
}  // namespace moe::offload

namespace moe::offload {
namespace {

// The expert side with offloading against the same backend with every expert resident, on the
// trained tiny model: random tokens routed to random experts, layer after layer, through a cache
// of 12 of its 256 experts; every output equal, bit for bit (same kernels, only residency
// differs). "cuda" runs where a GPU is visible (the CUDA expert cache, offload/cuda_experts.h).
class OffloadedExpertsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(OffloadedExpertsTest, SameOutputsAsEveryExpertResident) {
  const std::string backend = GetParam();
  if (backend == "cuda" && ResolveBackend("auto") != "cuda")
    GTEST_SKIP() << "no CUDA backend built or no GPU visible";
  const std::string dir = std::string(MOE_PIPELINE_CONFIG_DIR) + "/..";
  auto config = LoadModelConfig(dir + "/configs/mixtral-8x7b-tiny.json");
  ASSERT_TRUE(config.ok());
  const WeightSource weights{.seed = 1,
                             .checkpoint = dir + "/models/mixtral-8x7b-tiny.safetensors"};
  std::vector<int> all(8);
  for (int e = 0; e < 8; ++e) all[static_cast<size_t>(e)] = e;
  ComputeOptions co;
  co.max_tokens = 8;
  auto plain = MakeExpertCompute(backend, *config, weights, all, co);
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  for (const char* policy : {"lru", "fmoe"}) {
    auto cached = MakeOffloadedExperts(backend, *config, weights, all, co, {policy, 12, ""});
    ASSERT_TRUE(cached.ok()) << cached.status().ToString();
    EXPECT_NE((*cached)->name().find(policy), std::string::npos) << (*cached)->name();
    std::mt19937 rng(11);
    std::normal_distribution<float> normal;
    const int rows = 4, h = config->hidden_size;
    for (int step = 0; step < 3; ++step) {
      for (int layer = 0; layer < config->num_hidden_layers; ++layer) {
        std::vector<float> x(static_cast<size_t>(rows * h)), a(x.size()), b(x.size());
        for (float& v : x) v = normal(rng);
        std::vector<int32_t> experts;
        std::vector<float> gates;
        for (int r = 0; r < rows; ++r) {
          const int first = static_cast<int>(rng() % 8);
          experts.insert(experts.end(), {first, (first + 1 + static_cast<int>(rng() % 7)) % 8});
          gates.insert(gates.end(), {0.6f, 0.4f});
        }
        const ExpertInput in_a{rows, x.data(), experts.data(), gates.data(), a.data()};
        const ExpertInput in_b{rows, x.data(), experts.data(), gates.data(), b.data()};
        ASSERT_TRUE((*plain)->Forward(layer, 2, {&in_a, 1}).ok());
        auto s = (*cached)->Forward(layer, 2, {&in_b, 1});
        ASSERT_TRUE(s.ok()) << s.ToString();
        ASSERT_EQ(a, b) << backend << " " << policy << ", layer " << layer << ", step " << step;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, OffloadedExpertsTest, ::testing::Values("cpu", "cuda"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace moe::offload

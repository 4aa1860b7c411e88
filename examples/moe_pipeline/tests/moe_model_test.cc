// The model files: JSON, configs, safetensors (written here, read back), seeded weights, workload.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "model/config.h"
#include "model/json.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "reference/reference.h"
#include "runtime/workload.h"
#include "tests/temp_dir.h"

namespace moe {
namespace {

struct TempDir : moe::TempDir {
  TempDir() : moe::TempDir("moe_model_test") {}
};

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

ModelConfig Tiny() {
  auto c = LoadModelConfig(std::string(MOE_PIPELINE_CONFIG_DIR) + "/tiny.json");
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return *c;
}

TEST(MoeJson, ParsesAndDumps) {
  auto j =
      Json::Parse(R"({"a": [1, 2.5, -3e2], "b": {"c": "x\"y\n"}, "d": true, "e": null})", "test");
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  EXPECT_EQ(j->Find("a")->items()[2].as_number(), -300);
  EXPECT_EQ(j->Find("b")->Find("c")->as_string(), "x\"y\n");
  auto again = Json::Parse(j->Dump(2), "dump");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->Dump(), j->Dump());
}

TEST(MoeJson, ErrorsSayWhere) {
  auto j = Json::Parse("{\n  \"a\": 1,\n  \"b\" 2\n}", "cfg.json");
  ASSERT_FALSE(j.ok());
  EXPECT_NE(j.status().message().find("cfg.json"), std::string::npos);
  EXPECT_NE(j.status().message().find("line 3"), std::string::npos) << j.status().message();
  EXPECT_FALSE(Json::Parse("[1, 2", "x").ok());
  EXPECT_FALSE(Json::Parse("{\"a\": 1, \"a\": 2}", "x").ok());
  EXPECT_FALSE(Json::Parse("1 2", "x").ok());
}

TEST(MoeConfig, ShippedConfigsLoad) {
  const ModelConfig tiny = Tiny();
  EXPECT_EQ(tiny.hidden_size, 64);
  EXPECT_EQ(tiny.num_key_value_heads, 2);
  auto mixtral = LoadModelConfig(std::string(MOE_PIPELINE_CONFIG_DIR) + "/mixtral-8x7b.json");
  ASSERT_TRUE(mixtral.ok()) << mixtral.status().ToString();
  EXPECT_EQ(mixtral->head_dim, 128);
  EXPECT_EQ(mixtral->num_local_experts, 8);
  // ~46.7 B parameters, as Mixtral-8x7B.
  EXPECT_NEAR(static_cast<double>(mixtral->ParameterCount()) / 1e9, 46.7, 0.3);
}

TEST(MoeConfig, BadConfigsNameTheField) {
  TempDir dir;
  WriteFile(dir / "missing.json", R"({"hidden_size": 64, "num_attention_heads": 4})");
  auto c = LoadModelConfig(dir / "missing.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), m2n::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("num_hidden_layers"), std::string::npos)
      << c.status().message();

  WriteFile(dir / "gqa.json",
            R"({"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 3,
    "num_hidden_layers": 1, "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 8,
    "vocab_size": 16})");
  c = LoadModelConfig(dir / "gqa.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("num_key_value_heads"), std::string::npos)
      << c.status().message();

  WriteFile(dir / "topk.json",
            R"({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
    "num_local_experts": 2, "num_experts_per_tok": 3, "intermediate_size": 8, "vocab_size": 16})");
  c = LoadModelConfig(dir / "topk.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("num_experts_per_tok"), std::string::npos);

  c = LoadModelConfig(dir / "absent.json");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("absent.json"), std::string::npos);
}

TEST(MoeSafetensors, RoundTripF32AndBf16) {
  TempDir dir;
  std::vector<float> a(6 * 5), b(7);
  for (size_t i = 0; i < a.size(); ++i) a[i] = std::sin(static_cast<float>(i)) * 3.0f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = -1.0f / static_cast<float>(i + 1);
  const std::vector<TensorToWrite> tensors = {{"layer.a.weight", {6, 5}, a}, {"b", {7}, b}};
  for (Dtype dtype : {Dtype::kF32, Dtype::kBF16}) {
    const std::string path = dir / (std::string("t_") + DtypeName(dtype) + ".safetensors");
    ASSERT_TRUE(WriteSafetensors(path, tensors, dtype).ok());
    auto file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status().ToString();
    ASSERT_EQ((*file)->tensors().size(), 2u);
    const TensorInfo* info = (*file)->Find("layer.a.weight");
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->dtype, dtype);
    EXPECT_EQ(info->shape, (std::vector<int64_t>{6, 5}));
    std::vector<float> got(a.size());
    ASSERT_TRUE((*file)->ReadFloat(*info, got).ok());
    for (size_t i = 0; i < a.size(); ++i) {
      const float want = dtype == Dtype::kF32 ? a[i] : Bf16ToFloat(FloatToBf16(a[i]));
      EXPECT_EQ(got[i], want) << i;
      EXPECT_NEAR(got[i], a[i], std::fabs(a[i]) / 128) << i;
    }
  }
}

TEST(MoeSafetensors, Bf16AndF16Conversions) {
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f)), 1.0f);
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(-2.5f)), -2.5f);
  EXPECT_EQ(FloatToBf16(1.0f + 1.0f / 256), FloatToBf16(1.0f));  // ties to even
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::nanf("")))));
  EXPECT_EQ(F16ToFloat(0x3C00), 1.0f);
  EXPECT_EQ(F16ToFloat(0xC000), -2.0f);
  EXPECT_EQ(F16ToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
}

TEST(MoeSafetensors, BrokenFilesAreClearErrors) {
  TempDir dir;
  std::vector<float> a(64, 1.0f);
  const std::vector<TensorToWrite> tensors = {{"a", {8, 8}, a}};
  const std::string good = dir / "good.safetensors";
  ASSERT_TRUE(WriteSafetensors(good, tensors, Dtype::kF32).ok());
  const auto size = std::filesystem::file_size(good);

  // Truncated: the tensor's bytes run past the end.
  std::filesystem::copy_file(good, dir / "short.safetensors");
  std::filesystem::resize_file(dir / "short.safetensors", size - 10);
  auto f = SafetensorsFile::Open(dir / "short.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), m2n::StatusCode::kDataLoss);
  EXPECT_NE(f.status().message().find("\"a\""), std::string::npos) << f.status().message();

  // Not a safetensors file at all.
  WriteFile(dir / "text.safetensors", "hello, this is not a tensor file");
  f = SafetensorsFile::Open(dir / "text.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("header length"), std::string::npos) << f.status().message();

  // A header that lies about a tensor's size.
  std::string header = R"({"a":{"dtype":"F32","shape":[8,8],"data_offsets":[0,200]}})";
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i)
    bytes[static_cast<size_t>(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xFF);
  WriteFile(dir / "lie.safetensors", bytes + header + std::string(256, '\0'));
  f = SafetensorsFile::Open(dir / "lie.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("256 expected"), std::string::npos) << f.status().message();

  // An unsupported dtype.
  header = R"({"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})";
  for (int i = 0; i < 8; ++i)
    bytes[static_cast<size_t>(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xFF);
  WriteFile(dir / "dtype.safetensors", bytes + header + std::string(8, '\0'));
  f = SafetensorsFile::Open(dir / "dtype.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("I64"), std::string::npos) << f.status().message();

  // A checkpoint read with the wrong shape or a missing name.
  auto checkpoint = Checkpoint::Open(good);
  ASSERT_TRUE(checkpoint.ok());
  std::vector<float> out(64);
  const int64_t wrong[] = {4, 16};
  m2n::Status s = checkpoint->Read("a", wrong, out);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("[8, 8]"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("[4, 16]"), std::string::npos) << s.message();
  const int64_t right[] = {8, 8};
  s = checkpoint->Read("b", right, out);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), m2n::StatusCode::kNotFound);
  EXPECT_TRUE(checkpoint->Read("a", right, out).ok());
}

// The seeded model written as a sharded checkpoint (index + files) loads back to the same weights.
TEST(MoeWeights, SeededCheckpointLoadsBackEqual) {
  TempDir dir;
  const ModelConfig c = Tiny();
  ASSERT_TRUE(SaveSeededCheckpoint(c, 7, dir.path(), 3, /*bf16=*/false).ok());
  EXPECT_TRUE(std::filesystem::exists(dir / "model.safetensors.index.json"));
  EXPECT_TRUE(std::filesystem::exists(dir / "model-00003-of-00003.safetensors"));
  const WeightSource seeded{.seed = 7, .checkpoint = ""}, file{.seed = 0, .checkpoint = dir.path()};
  auto a = LoadAttentionWeights(c, seeded), b = LoadAttentionWeights(c, file);
  ASSERT_TRUE(a.ok() && b.ok()) << b.status().ToString();
  EXPECT_EQ(a->embed, b->embed);
  EXPECT_EQ(a->lm_head, b->lm_head);
  EXPECT_EQ(a->layers[1].wk, b->layers[1].wk);
  EXPECT_EQ(a->layers[0].gate, b->layers[0].gate);
  const int experts[] = {3, 5};
  auto x = LoadExpertShard(c, seeded, experts), y = LoadExpertShard(c, file, experts);
  ASSERT_TRUE(x.ok() && y.ok()) << y.status().ToString();
  EXPECT_EQ(x->layers[1][1].w2, y->layers[1][1].w2);
  EXPECT_EQ(x->layers[0][0].w1, y->layers[0][0].w1);
  // Other seeds give other weights.
  auto other = LoadAttentionWeights(c, WeightSource{.seed = 8, .checkpoint = ""});
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->embed, a->embed);
}

TEST(MoeWeights, MissingTensorNamesIt) {
  TempDir dir;
  const ModelConfig c = Tiny();
  ASSERT_TRUE(SaveSeededCheckpoint(c, 1, dir.path(), 1, /*bf16=*/true).ok());
  // Drop the index and keep only a file without the experts of layer 1: rewrite it partially.
  std::vector<float> zeros(static_cast<size_t>(c.hidden_size), 0.0f);
  std::filesystem::remove(dir / "model.safetensors.index.json");
  std::filesystem::remove(dir / "model-00001-of-00001.safetensors");
  const std::vector<TensorToWrite> one = {{"model.norm.weight", {c.hidden_size}, zeros}};
  ASSERT_TRUE(WriteSafetensors(dir / "partial.safetensors", one, Dtype::kBF16).ok());
  auto w = LoadAttentionWeights(c, WeightSource{.seed = 1, .checkpoint = dir.path()});
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("model.embed_tokens.weight"), std::string::npos)
      << w.status().message();
}

// The reference following a routing it is given (the pipeline's): its own routing changes nothing,
// a swap across a near-tie is followed and computed, a choice the gate does not explain is an
// error.
TEST(MoeReference, FollowsNearTieRoutingAndReportsOthers) {
  const ModelConfig c = Tiny();
  auto model =
      ReferenceModel::Load(c, WeightSource{.seed = 3, .checkpoint = ""}, /*bf16_weights=*/false);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  const std::vector<int> tokens = {5, 77, 200, 13, 42, 9, 130, 61};
  const int n = static_cast<int>(tokens.size()), L = c.num_hidden_layers, E = c.num_local_experts;
  const int k = c.num_experts_per_tok;
  auto own = model->Forward(tokens, 0, 1e-5);
  ASSERT_TRUE(own.ok()) << own.status().ToString();
  ASSERT_EQ(own->routing.size(), static_cast<size_t>(n * L * k));
  ASSERT_EQ(own->gate_logits.size(), static_cast<size_t>(n * L * E));
  EXPECT_EQ(own->routings, n * L);
  EXPECT_EQ(own->followed_near_ties, 0);
  EXPECT_TRUE(own->routing_errors.empty());

  // (a) Its own routing, in any order within a token: the same logits, bit for bit.
  std::vector<int32_t> forced = own->routing;
  for (size_t at = 0; at < forced.size(); at += static_cast<size_t>(k)) {
    std::reverse(forced.begin() + static_cast<std::ptrdiff_t>(at),
                 forced.begin() + static_cast<std::ptrdiff_t>(at) + k);
  }
  auto same = model->Forward(tokens, 0, 1e-5, forced);
  ASSERT_TRUE(same.ok()) << same.status().ToString();
  EXPECT_EQ(same->logits, own->logits);
  EXPECT_EQ(same->followed_near_ties, 0);
  EXPECT_TRUE(same->routing_errors.empty());

  // At the last position's last layer (nothing later depends on it but that token's logits): the
  // k-th expert replaced by the (k+1)-th, and by the one with the lowest gate logit.
  const int pos = n - 1, layer = L - 1;
  const size_t route_at = static_cast<size_t>((pos * L + layer) * k);
  const float* gate = own->gate_logits.data() + static_cast<size_t>((pos * L + layer) * E);
  std::vector<int> order(static_cast<size_t>(E));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return gate[a] > gate[b]; });
  ASSERT_EQ(own->routing[route_at + static_cast<size_t>(k - 1)], order[static_cast<size_t>(k - 1)]);
  const int kth = order[static_cast<size_t>(k - 1)], next = order[static_cast<size_t>(k)];
  const int last = order.back();
  const double gap = static_cast<double>(gate[kth]) - gate[next];
  const double far = static_cast<double>(gate[kth]) - gate[last];
  const size_t vocab = static_cast<size_t>(c.vocab_size);
  const std::vector<float> earlier(own->logits.begin(),
                                   own->logits.end() - static_cast<std::ptrdiff_t>(vocab));

  // (b) A swap within the threshold: followed, and this token's logits are the other experts'.
  forced = own->routing;
  forced[route_at + static_cast<size_t>(k - 1)] = next;
  const double threshold = gap * 1.5 + 1e-4;
  ASSERT_LT(threshold, far)
      << "the tiny model's gate logits are too close to tell a near-tie from a far one";
  auto swapped = model->Forward(tokens, 0, threshold, forced);
  ASSERT_TRUE(swapped.ok()) << swapped.status().ToString();
  EXPECT_EQ(swapped->followed_near_ties, 1);
  EXPECT_TRUE(swapped->routing_errors.empty());
  EXPECT_EQ(std::vector<float>(swapped->logits.begin(),
                               swapped->logits.end() - static_cast<std::ptrdiff_t>(vocab)),
            earlier);
  double diff = 0;
  for (size_t v = 0; v < vocab; ++v) {
    diff = std::max(
        diff, std::fabs(static_cast<double>(swapped->logits[swapped->logits.size() - vocab + v]) -
                        own->logits[own->logits.size() - vocab + v]));
  }
  EXPECT_GT(diff, 1e-4) << "the swapped expert did not change the token's logits";
  EXPECT_EQ(swapped->routing[route_at + static_cast<size_t>(k - 1)], next);
  // The same swap with a threshold below its gap: an error, not followed.
  auto strict = model->Forward(tokens, 0, gap * 0.5, forced);
  ASSERT_TRUE(strict.ok()) << strict.status().ToString();
  EXPECT_EQ(strict->followed_near_ties, 0);
  EXPECT_EQ(strict->routing_errors.size(), 1u);
  EXPECT_EQ(strict->logits, own->logits);

  // (c) An expert far below the k-th: a routing error that says where and how far; the reference
  // keeps its own routing.
  forced = own->routing;
  forced[route_at + static_cast<size_t>(k - 1)] = last;
  auto wrong = model->Forward(tokens, 0, threshold, forced);
  ASSERT_TRUE(wrong.ok()) << wrong.status().ToString();
  EXPECT_EQ(wrong->followed_near_ties, 0);
  ASSERT_EQ(wrong->routing_errors.size(), 1u);
  const RoutingError& e = wrong->routing_errors[0];
  EXPECT_EQ(e.position, pos);
  EXPECT_EQ(e.layer, layer);
  EXPECT_NEAR(e.gap, far, 1e-5);
  EXPECT_NE(std::find(e.pipeline.begin(), e.pipeline.end(), last), e.pipeline.end());
  EXPECT_EQ(e.reference, std::vector<int>(order.begin(), order.begin() + k));
  EXPECT_EQ(wrong->logits, own->logits);

  // A routing of the wrong size, or naming no expert, is refused.
  EXPECT_FALSE(
      model
          ->Forward(tokens, 0, threshold, std::span<const int32_t>(forced).first(forced.size() - 1))
          .ok());
  forced = own->routing;
  forced[3] = -1;
  auto bad = model->Forward(tokens, 0, threshold, forced);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("-1"), std::string::npos) << bad.status().message();
}

// Continuous batching: every request finishes, never more than `batch` in flight, micro-batches
// within budget, prompts chunked.
TEST(MoeWorkload, ContinuousBatchingRunsEveryRequestToTheEnd) {
  WorkloadOptions o;
  o.requests = 20;
  o.batch = 5;
  o.micro_batches = 3;
  o.max_tokens = 64;
  o.record = false;
  auto w = Workload::Create(o, 0, 256, 4096);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  std::vector<double> tbt, ttft;
  std::vector<float> logits;
  int iterations = 0;
  int64_t prompt = 0, output = 0;
  for (const Request& r : w->requests()) {
    prompt += r.input_len;
    output += r.output_len;
  }
  while (!w->finished() && iterations < 100000) {
    const auto plans = w->NextIteration(iterations);
    int in_flight = 0;
    for (const auto& p : plans) {
      EXPECT_LE(static_cast<int>(p.tokens.size()), o.max_tokens);
      in_flight += static_cast<int>(p.logit_rows.size());
      logits.assign(p.logit_rows.size() * 256, 0.0f);
      for (size_t i = 0; i < p.logit_rows.size(); ++i)
        logits[i * 256 + (i * 7 + iterations) % 256] = 1.0f;
      w->Complete(p, logits, iterations + 1, &tbt, &ttft);
    }
    EXPECT_LE(in_flight, o.batch);
    ++iterations;
  }
  EXPECT_TRUE(w->finished());
  EXPECT_EQ(w->generated_tokens(), output);
  EXPECT_EQ(w->prefill_tokens(), prompt);
  EXPECT_EQ(static_cast<int64_t>(ttft.size()), o.requests);
  EXPECT_EQ(static_cast<int64_t>(tbt.size()), output - o.requests);
  for (const Request& r : w->requests())
    EXPECT_EQ(static_cast<int>(r.tokens.size()), r.input_len + r.output_len);
  // The schedule does not depend on the tokens: counted with other logits, the same iterations.
  auto counted = Workload::CountIterations(o, 0, 256, 4096);
  ASSERT_TRUE(counted.ok()) << counted.status().ToString();
  EXPECT_EQ(*counted, iterations);
}

TEST(MoeWorkload, ProductionLengthsHaveTheirMedians) {
  WorkloadOptions o;
  o.requests = 2001;
  o.record = false;
  auto w = Workload::Create(o, 0, 256, 32768);
  ASSERT_TRUE(w.ok());
  std::vector<int> in, out;
  for (const Request& r : w->requests()) {
    in.push_back(r.input_len);
    out.push_back(r.output_len);
  }
  std::nth_element(in.begin(), in.begin() + 1000, in.end());
  std::nth_element(out.begin(), out.begin() + 1000, out.end());
  EXPECT_NEAR(in[1000], 571, 60);
  EXPECT_NEAR(out[1000], 159, 20);
}

}  // namespace
}  // namespace moe

#include "runtime/profile.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <vector>

#include "compute/compute.h"

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kRepeats = 5;  // per point: the median, after one warm-up
constexpr int kMaxExpertsHeld = 8;  // experts timed together (all of a small model's)

double MedianMs(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double Since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

std::vector<int> Powers(int from, int factor, int upto) {
  std::vector<int> v;
  for (int x = from; x <= upto; x *= factor) v.push_back(x);
  return v;
}

Json Round(double ms) { return Json::Number(std::round(ms * 1e4) / 1e4); }

// One attention micro-batch of `batch` decode tokens at position context - 1: per-layer time
// (attention + gate, gather, scatter-add) and head time (embedding + LM head), medians.
m2n::Status TimeAttention(AttentionCompute& a, const ModelConfig& c, int batch, int context,
                          double* layer_ms, double* head_ms) {
  std::vector<TokenRef> tokens;
  std::vector<int32_t> rows;
  for (int i = 0; i < batch; ++i) {
    tokens.push_back({i, context - 1, i % c.vocab_size});
    rows.push_back(i);
  }
  std::vector<float> moe_rows(static_cast<size_t>(batch) * c.hidden_size);
  std::vector<float> logits(static_cast<size_t>(batch) * c.vocab_size);
  std::vector<double> layers_ms, heads_ms;
  Routing routing;
  for (int r = 0; r <= kRepeats; ++r) {
    auto t0 = Clock::now();
    M2N_RETURN_IF_ERROR(a.Begin(0, tokens));
    double head = Since(t0);
    t0 = Clock::now();
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      M2N_RETURN_IF_ERROR(a.AttentionAndGate(0, l, &routing));
      M2N_RETURN_IF_ERROR(a.GatherRows(0, rows, moe_rows.data()));
      M2N_RETURN_IF_ERROR(a.ScatterAddRows(0, rows, moe_rows.data()));
    }
    const double layers = Since(t0) / c.num_hidden_layers;
    t0 = Clock::now();
    M2N_RETURN_IF_ERROR(a.Logits(0, rows, logits.data()));
    head += Since(t0);
    if (r == 0) continue;  // warm-up
    layers_ms.push_back(layers);
    heads_ms.push_back(head);
  }
  *layer_ms = MedianMs(layers_ms);
  *head_ms = MedianMs(heads_ms);
  return m2n::OkStatus();
}

// `held` experts, each over `tokens` tokens of its own (so that their weights stream from memory as
// in the pipeline, not from a cache that one expert would fit): per-layer time per expert, median.
m2n::Status TimeExperts(ExpertCompute& e, const ModelConfig& c, int held, int tokens,
                        double* layer_ms) {
  const int k = c.num_experts_per_tok, rows = held * tokens;
  std::vector<float> x(static_cast<size_t>(rows) * c.hidden_size, 0.01f);
  std::vector<float> out(x.size());
  std::vector<int32_t> expert(static_cast<size_t>(rows) * k, -1);
  std::vector<float> weight(expert.size(), 0.0f);
  for (int r = 0; r < rows; ++r) {
    expert[static_cast<size_t>(r) * k] = r / tokens;
    weight[static_cast<size_t>(r) * k] = 1.0f;
  }
  const ExpertInput input{rows, x.data(), expert.data(), weight.data(), out.data()};
  std::vector<double> ms;
  for (int r = 0; r <= kRepeats; ++r) {
    const auto t0 = Clock::now();
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      M2N_RETURN_IF_ERROR(e.Forward(l, k, std::span<const ExpertInput>(&input, 1)));
    }
    if (r > 0) ms.push_back(Since(t0) / c.num_hidden_layers / held);
  }
  *layer_ms = MedianMs(ms);
  return m2n::OkStatus();
}

Json ModelJson(const ModelConfig& c) {
  Json m = Json::Object();
  m.Set("name", Json::String(c.name));
  m.Set("hidden_size", Json::Number(c.hidden_size));
  m.Set("num_attention_heads", Json::Number(c.num_attention_heads));
  m.Set("num_key_value_heads", Json::Number(c.num_key_value_heads));
  m.Set("head_dim", Json::Number(c.head_dim));
  m.Set("num_hidden_layers", Json::Number(c.num_hidden_layers));
  m.Set("num_local_experts", Json::Number(c.num_local_experts));
  m.Set("num_experts_per_tok", Json::Number(c.num_experts_per_tok));
  m.Set("intermediate_size", Json::Number(c.intermediate_size));
  m.Set("vocab_size", Json::Number(c.vocab_size));
  return m;
}

m2n::Status SweepAttention(const PipelineOptions& o, Json* points, Json* heads,
                           std::string* compute_name) {
  const ModelConfig& c = o.config;
  const std::vector<int> batches = Powers(1, 2, o.workload.max_tokens);
  const int max_batch = batches.back();
  const int max_context = std::min(o.workload.max_context, c.max_position_embeddings);
  std::vector<int> contexts = Powers(64, 4, max_context);
  if (contexts.empty()) contexts.push_back(max_context);
  for (int context : contexts) {
    const ComputeOptions co{.threads = o.threads,
                            .micro_batches = 1,
                            .max_tokens = max_batch,
                            .kv_slots = max_batch,
                            .max_context = context,
                            .local_rank = 0};
    M2N_ASSIGN_OR_RETURN(auto attention, MakeAttentionCompute(o.backend, c, o.weights, co));
    *compute_name = attention->name();
    for (int b : batches) {
      double layer_ms = 0, head_ms = 0;
      M2N_RETURN_IF_ERROR(TimeAttention(*attention, c, b, context, &layer_ms, &head_ms));
      Json p = Json::Object();
      p.Set("batch", Json::Number(b));
      p.Set("context", Json::Number(context));
      p.Set("ms_per_layer", Round(layer_ms));
      points->Push(std::move(p));
      if (context == contexts.front()) {
        Json h = Json::Object();
        h.Set("batch", Json::Number(b));
        h.Set("ms", Round(head_ms));
        heads->Push(std::move(h));
      }
      if (o.progress)
        std::fprintf(stderr, "profile: attention batch %d context %d: %.4f ms/layer\n", b, context,
                     layer_ms);
    }
  }
  return m2n::OkStatus();
}

m2n::Status SweepExperts(const PipelineOptions& o, Json* points, int* held_count) {
  const ModelConfig& c = o.config;
  std::vector<int> held;
  for (int e = 0; e < std::min(c.num_local_experts, kMaxExpertsHeld); ++e) held.push_back(e);
  *held_count = static_cast<int>(held.size());
  const ComputeOptions co{.threads = o.threads,
                          .micro_batches = 1,
                          .max_tokens = o.workload.max_tokens,
                          .kv_slots = 1,
                          .max_context = 1,
                          .local_rank = 0};
  M2N_ASSIGN_OR_RETURN(auto experts, MakeExpertCompute(o.backend, c, o.weights, held, co));
  for (int t : Powers(1, 2, o.workload.max_tokens)) {
    double ms = 0;
    M2N_RETURN_IF_ERROR(TimeExperts(*experts, c, *held_count, t, &ms));
    Json p = Json::Object();
    p.Set("tokens", Json::Number(t));
    p.Set("ms_per_layer", Round(ms));
    points->Push(std::move(p));
    if (o.progress)
      std::fprintf(stderr, "profile: %d tokens per expert: %.4f ms/layer per expert\n", t, ms);
  }
  return m2n::OkStatus();
}

}  // namespace

m2n::Status WriteComputeProfile(const PipelineOptions& o, const std::string& path) {
  Json attention = Json::Array(), heads = Json::Array(), experts = Json::Array();
  std::string compute_name;
  M2N_RETURN_IF_ERROR(SweepAttention(o, &attention, &heads, &compute_name));
  int held = 0;
  M2N_RETURN_IF_ERROR(SweepExperts(o, &experts, &held));
  M2N_ASSIGN_OR_RETURN(Precision precision, BackendPrecision(o.backend));
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  Json j = Json::Object();
  j.Set("tool", Json::String("moe_pipeline --profile"));
  j.Set("format", Json::Number(1));
  j.Set("model", ModelJson(o.config));
  j.Set("config_path", Json::String(o.config_path));
  j.Set("backend", Json::String(o.backend));
  j.Set("compute", Json::String(compute_name));
  j.Set("dtype", Json::String(precision.what));
  j.Set("threads", Json::Number(o.threads));
  j.Set("host", Json::String(host));
  j.Set("repeats", Json::Number(kRepeats));
  j.Set("attention", std::move(attention));
  j.Set("head", std::move(heads));
  j.Set("experts_held", Json::Number(held));
  j.Set("expert", std::move(experts));
  std::ofstream out(path);
  out << j.Dump(2) << "\n";
  if (!out) return m2n::InvalidArgumentError("--profile " + path + ": cannot write");
  return m2n::OkStatus();
}

}  // namespace moe

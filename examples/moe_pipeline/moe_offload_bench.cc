// moe_offload_bench: the timed expert-offloading run on one GPU (README.md "Expert offloading",
// issue 12). Mixtral-8x7B's expert shapes (hidden 4096, ffn 14336, 8 experts, top-2, bf16 seeded
// weights in pinned host memory) for the first --layers layers; C device slots (the expert cache,
// offload/cache.h, loading through CudaCopyBackend on a copy stream of its own); decode steps whose
// gate decisions are replayed from a routing trace of the trained tiny model (held-out prompts,
// batch B = B prompts' tokens at the same position); the expert FFN computed for real by the GPU
// backend's expert step (compute/cuda/: cuBLAS bf16 GEMMs) reading the cache's slots. Per policy x
// cache size x batch: decode tokens/s, time per output token p50 / p99, stall time per token (the
// compute stream waiting for loads), hit rate, bytes moved per token, as a markdown table.
//
// Attention-free: this times the expert part of a decode step, the part offloading changes.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <limits>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "compute/cuda/cuda_compute.h"
#include "model/config.h"
#include "offload/cache.h"
#include "offload/cli.h"
#include "offload/cuda_backend.h"
#include "offload/sim.h"
#include "offload/trace.h"

#ifndef MOE_PIPELINE_CONFIG_DIR
#define MOE_PIPELINE_CONFIG_DIR "configs"
#endif

namespace moe::offload {
namespace {

constexpr const char* kUsage = R"(usage: moe_offload_bench --trace FILE [options]
  --trace FILE        routing trace of the trained model (32 layers, 8 experts, top-2; made by
                      moe_pipeline --trace OUT --prompts models/mixtral-8x7b-tiny.prompts ...)
  --layers N          layers timed (default 8: 64 experts, 22.5 GB of pinned memory; all 32 need
                      ~90 GB); times per token are for these N layers
  --tokens N          decode steps per prompt batch (default 16)
  --policies LIST     default lru,frequency,fmoe
  --cache LIST        resident fractions of the N x 8 experts (default 0.25,0.5)
  --batches LIST      prompts per decode step (default 1,4,16)
  --warmup N          steps per configuration not timed nor counted (default 2)
  --time_limit_s N    whole run, set-up included (default 180); each configuration gets its share
  --quick             a 30-second smoke: --layers 4 --tokens 4 --batches 1,4 --cache 0.5
                      --time_limit_s 30
exit status: 0 ok, 2 bad usage, 3 failure
)";

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

struct Cli {
  std::string trace;
  int layers = 8, tokens = 16, warmup = 2;
  double time_limit_s = 180;
  std::vector<std::string> policies = {"lru", "frequency", "fmoe"};
  std::vector<double> cache = {0.25, 0.5};
  std::vector<int> batches = {1, 4, 16};
};

m2n::StatusOr<Cli> ParseCli(int argc, char** argv) {
  Cli cli;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      cli.layers = 4, cli.tokens = 4, cli.batches = {1, 4}, cli.cache = {0.5};
      cli.time_limit_s = 30;
      continue;
    }
    if (i + 1 >= argc) return m2n::InvalidArgumentError(a + " needs a value");
    const std::string v = argv[++i];
    if (a == "--trace") {
      cli.trace = v;
      continue;
    }
    if (a == "--policies") {
      cli.policies = moe::offload::SplitCommas(v);
      continue;
    }
    const bool known = a == "--cache" || a == "--batches" || a == "--layers" || a == "--tokens" ||
                       a == "--warmup" || a == "--time_limit_s";
    if (!known) return m2n::InvalidArgumentError("unknown argument \"" + a + "\"");
    M2N_ASSIGN_OR_RETURN(const std::vector<double> numbers,
                         moe::offload::ParsePositiveNumbers(
                             a, v, a == "--cache" ? 1.0 : std::numeric_limits<double>::max()));
    if (a == "--cache") {
      cli.cache = numbers;
    } else if (a == "--batches") {
      cli.batches.assign(numbers.begin(), numbers.end());
    } else if (a == "--layers") {
      cli.layers = std::min(32, static_cast<int>(numbers[0]));
    } else if (a == "--tokens") {
      cli.tokens = static_cast<int>(numbers[0]);
    } else if (a == "--warmup") {
      cli.warmup = static_cast<int>(numbers[0]);
    } else {
      cli.time_limit_s = numbers[0];
    }
  }
  if (cli.trace.empty()) return m2n::InvalidArgumentError("--trace FILE is required");
  return cli;
}

m2n::Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return m2n::OkStatus();
  return m2n::InternalError(std::string("moe_offload_bench: ") + what + ": " +
                            cudaGetErrorString(e));
}

// The expert cache as the GPU expert step's weights, with the compute stream's wait for loads
// timed: an event before and after the waits of each layer (nothing else runs between them on the
// stream, so their distance is the stall). The bench drives the policy itself (the full gate
// distributions of the trace); this only acquires, releases and prefetches.
class TimedResidency final : public cuda::ExpertResidency {
 public:
  TimedResidency(const ModelConfig& c, CudaCopyBackend* backend) : c_(c), backend_(backend) {}
  ~TimedResidency() override {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  void Use(ExpertCache* cache, OffloadPolicy* policy) { cache_ = cache, policy_ = policy; }
  std::string name() const override { return "timed expert cache"; }

  m2n::Status Acquire(int layer, std::span<const int> experts, std::span<const float>, void* stream,
                      std::vector<cuda::DeviceExpert>* weights) override {
    M2N_RETURN_IF_ERROR(cache_->Acquire(layer, experts));
    auto s = static_cast<cudaStream_t>(stream);
    while (events_.size() < used_ + 2) {
      cudaEvent_t e = nullptr;
      M2N_RETURN_IF_ERROR(Cuda(cudaEventCreate(&e), "cudaEventCreate"));
      events_.push_back(e);
    }
    M2N_RETURN_IF_ERROR(Cuda(cudaEventRecord(events_[used_++], s), "cudaEventRecord"));
    for (int e : experts) {
      const int slot = cache_->SlotOf({layer, e});
      M2N_RETURN_IF_ERROR(backend_->WaitOn(slot, stream));
      weights->push_back(
          cuda::ExpertInBlock(static_cast<const std::byte*>(backend_->Slot(slot)), c_));
    }
    return Cuda(cudaEventRecord(events_[used_++], s), "cudaEventRecord");
  }

  m2n::Status Release(int layer, std::span<const int> experts, void* stream) override {
    for (int e : experts)
      M2N_RETURN_IF_ERROR(backend_->MarkRead(cache_->SlotOf({layer, e}), stream));
    cache_->Release(layer, experts);
    return cache_->Prefetch(policy_->Prefetch(layer));
  }

  // Seconds the compute stream waited since the last call; after the step is synchronized.
  m2n::StatusOr<double> TakeStall() {
    double s = 0;
    for (size_t i = 0; i + 1 < used_; i += 2) {
      float ms = 0;
      M2N_RETURN_IF_ERROR(
          Cuda(cudaEventElapsedTime(&ms, events_[i], events_[i + 1]), "cudaEventElapsedTime"));
      s += ms * 1e-3;
    }
    used_ = 0;
    return s;
  }

 private:
  ModelConfig c_;
  CudaCopyBackend* backend_;
  ExpertCache* cache_ = nullptr;
  OffloadPolicy* policy_ = nullptr;
  std::vector<cudaEvent_t> events_;
  size_t used_ = 0;
};

struct Row {
  std::string policy;
  int capacity = 0, batch = 0, steps = 0;
  double tokens_per_s = 0, p50_ms = 0, p99_ms = 0, stall_ms = 0, hit_rate = 0, gb_per_step = 0;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = static_cast<size_t>(p / 100 * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

class Bench {
 public:
  explicit Bench(const Cli& cli) : cli_(cli) {}
  m2n::Status SetUp();
  m2n::StatusOr<Row> Run(const std::string& policy, int capacity, int batch, double budget_s);
  std::string Header() const { return header_; }

 private:
  m2n::Status Step(std::span<const TraceRequest* const> batch, int t);
  std::span<const float> Gates(const TraceRequest& q, int t, int layer) const {
    const size_t e = static_cast<size_t>(trace_.experts);
    return {q.gates.data() + (static_cast<size_t>(t) * static_cast<size_t>(trace_.layers) +
                              static_cast<size_t>(layer)) *
                                 e,
            e};
  }

  const Cli& cli_;
  ModelConfig config_;
  Trace trace_;
  OffloadShape shape_;
  std::vector<const TraceRequest*> held_out_;
  std::vector<std::pair<const TraceRequest*, std::vector<float>>> learn_;  // gates of L layers
  int first_ = 0;  // the first decode position of each prompt
  std::unique_ptr<CudaCopyBackend> backend_;
  TimedResidency* residency_ = nullptr;  // owned by experts_
  std::unique_ptr<ExpertCompute> experts_;
  OffloadPolicy* policy_ = nullptr;
  ExpertCache* cache_ = nullptr;
  std::vector<float> x_, out_;
  std::string header_;
};

m2n::Status Bench::SetUp() {
  const auto start = Clock::now();
  M2N_ASSIGN_OR_RETURN(
      config_, LoadModelConfig(std::string(MOE_PIPELINE_CONFIG_DIR) + "/mixtral-8x7b.json"));
  config_.num_hidden_layers = cli_.layers;
  M2N_ASSIGN_OR_RETURN(trace_, ReadTrace(cli_.trace));
  if (trace_.experts != config_.num_local_experts || trace_.top_k != config_.num_experts_per_tok ||
      trace_.layers < cli_.layers) {
    return m2n::InvalidArgumentError(
        "--trace " + cli_.trace + ": a trace of " + std::to_string(trace_.layers) + " layers x " +
        std::to_string(trace_.experts) + " experts, top-" + std::to_string(trace_.top_k) +
        ", but the timed model has " + std::to_string(cli_.layers) +
        " x 8, top-2 (a trace from "
        "another model's shape)");
  }
  shape_ = {cli_.layers, trace_.experts, trace_.top_k,
            static_cast<int64_t>(cuda::ExpertBlockBytes(config_))};
  int shortest = 1 << 30;
  for (const TraceRequest& q : trace_.requests) {
    if (q.held_out) {
      held_out_.push_back(&q);
      shortest = std::min(shortest, q.tokens);
      continue;
    }
    std::vector<float> g;  // the first L layers of each token
    for (int t = 0; t < q.tokens; ++t) {
      for (int l = 0; l < cli_.layers; ++l) {
        const std::span<const float> p = Gates(q, t, l);
        g.insert(g.end(), p.begin(), p.end());
      }
    }
    learn_.emplace_back(&q, std::move(g));
  }
  if (held_out_.empty()) return m2n::InvalidArgumentError("--trace: no held-out prompts");
  if (shortest < cli_.tokens) {
    return m2n::InvalidArgumentError("--tokens " + std::to_string(cli_.tokens) +
                                     ": the shortest held-out prompt has " +
                                     std::to_string(shortest));
  }
  first_ = std::min(32, shortest - cli_.tokens);  // decode after the prompt where it fits
  const double most = *std::max_element(cli_.cache.begin(), cli_.cache.end());
  const int slots = std::max(shape_.top_k, static_cast<int>(most * shape_.total() + 0.5));
  M2N_RETURN_IF_ERROR(cuda::UseDevice(0));
  M2N_ASSIGN_OR_RETURN(backend_, CudaCopyBackend::Create(shape_, slots));
  std::vector<int> all(static_cast<size_t>(shape_.experts));
  std::iota(all.begin(), all.end(), 0);
  CudaCopyBackend* pinned = backend_.get();
  M2N_RETURN_IF_ERROR(cuda::ReadExpertBlocks(config_, WeightSource{.seed = 1, .checkpoint = ""},
                                             all, [&](int l, int e) {
                                               return pinned->Host({l, e}).data();
                                             }));
  auto residency = std::make_unique<TimedResidency>(config_, backend_.get());
  residency_ = residency.get();
  const int rows = *std::max_element(cli_.batches.begin(), cli_.batches.end());
  ComputeOptions co;
  co.max_tokens = rows;
  M2N_ASSIGN_OR_RETURN(
      experts_, cuda::MakeCudaExperts(config_, WeightSource{}, all, co, std::move(residency)));
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  x_.resize(static_cast<size_t>(rows) * static_cast<size_t>(config_.hidden_size));
  for (float& v : x_) v = normal(rng);
  out_.resize(x_.size());

  // The copy path's bandwidth: 4 loads of one expert, alone.
  M2N_RETURN_IF_ERROR(Cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize"));
  const auto t = Clock::now();
  for (int i = 0; i < 4; ++i) M2N_RETURN_IF_ERROR(backend_->Load({0, i}, i % slots));
  M2N_RETURN_IF_ERROR(Cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize"));
  const double gbps = 4.0 * static_cast<double>(shape_.expert_bytes) / Since(t) / 1e9;
  cudaDeviceProp prop{};
  int device = 0;
  M2N_RETURN_IF_ERROR(Cuda(cudaGetDevice(&device), "cudaGetDevice"));
  M2N_RETURN_IF_ERROR(Cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties"));
  char line[1024];
  std::snprintf(
      line, sizeof(line),
      "# moe_offload_bench on %s: Mixtral-8x7B experts (hidden %d, ffn %d, bf16, %.0f MB each), "
      "the first %d of 32 layers (%d experts, %.1f GB pinned), top-2\n"
      "# routing: %zu held-out prompts of %s (map store / priors from %zu training prompts), "
      "decode positions %d..%d; one step = one token for each of the batch's prompts\n"
      "# attention-free: the expert part of a decode step only (what offloading changes); times "
      "per token are for %d layers\n"
      "# host -> device copy of one expert alone: %.1f GB/s; set-up %.1f s; warm-up %d steps per "
      "row, not counted\n",
      prop.name, config_.hidden_size, config_.intermediate_size,
      static_cast<double>(shape_.expert_bytes) / 1e6, cli_.layers, shape_.total(),
      static_cast<double>(shape_.expert_bytes) * shape_.total() / 1e9, held_out_.size(),
      cli_.trace.c_str(), learn_.size(), first_, first_ + cli_.tokens - 1, cli_.layers, gbps,
      Since(start), cli_.warmup);
  header_ = line;
  return m2n::OkStatus();
}

// One decode step: every layer's gates from the trace, the policy told, the experts run.
m2n::Status Bench::Step(std::span<const TraceRequest* const> batch, int t) {
  policy_->BeginIteration();
  M2N_RETURN_IF_ERROR(cache_->Prefetch(policy_->Prefetch(-1)));
  const int b = static_cast<int>(batch.size()), k = shape_.top_k;
  std::vector<int32_t> ids(static_cast<size_t>(b * k));
  std::vector<float> weights(ids.size()), mean(static_cast<size_t>(shape_.experts));
  for (int l = 0; l < shape_.layers; ++l) {
    std::fill(mean.begin(), mean.end(), 0.0f);
    std::vector<int> chosen;
    for (int r = 0; r < b; ++r) {
      const std::span<const float> p = Gates(*batch[static_cast<size_t>(r)], first_ + t, l);
      const std::vector<int> top = TopK(p, k);
      float sum = 0;
      for (int e : top) sum += p[static_cast<size_t>(e)];
      for (int j = 0; j < k; ++j) {  // renormalized top-k, as Mixtral's gate
        ids[static_cast<size_t>(r * k + j)] = top[static_cast<size_t>(j)];
        weights[static_cast<size_t>(r * k + j)] =
            p[static_cast<size_t>(top[static_cast<size_t>(j)])] / sum;
        chosen.push_back(top[static_cast<size_t>(j)]);
      }
      for (size_t e = 0; e < mean.size(); ++e) mean[e] += p[e] / static_cast<float>(b);
    }
    std::sort(chosen.begin(), chosen.end());
    chosen.erase(std::unique(chosen.begin(), chosen.end()), chosen.end());
    policy_->ObserveGate(l, mean, chosen);
    const ExpertInput in{b, x_.data(), ids.data(), weights.data(), out_.data()};
    M2N_RETURN_IF_ERROR(experts_->Forward(l, k, {&in, 1}));
  }
  return m2n::OkStatus();
}

// One row: a fresh policy (trained on the training prompts) and an empty cache of `capacity`,
// batches of `batch` held-out prompts decoded step by step until they or `budget_s` run out.
m2n::StatusOr<Row> Bench::Run(const std::string& name, int capacity, int batch, double budget_s) {
  if (static_cast<size_t>(batch) > held_out_.size()) {
    return m2n::InvalidArgumentError("batch " + std::to_string(batch) + ": only " +
                                     std::to_string(held_out_.size()) + " held-out prompts");
  }
  M2N_ASSIGN_OR_RETURN(std::unique_ptr<OffloadPolicy> policy, MakePolicy(name, shape_));
  for (const auto& [q, gates] : learn_) policy->Learn(q->embedding, q->tokens, gates);
  M2N_ASSIGN_OR_RETURN(std::unique_ptr<ExpertCache> cache,
                       ExpertCache::Create(shape_, capacity, policy.get(), backend_.get()));
  policy_ = policy.get(), cache_ = cache.get();
  residency_->Use(cache_, policy_);
  std::vector<double> step_s;
  double stall_s = 0;
  CacheStats warm;
  int steps = 0;
  const auto start = Clock::now();
  for (size_t first = 0; first + static_cast<size_t>(batch) <= held_out_.size(); first += batch) {
    const std::span<const TraceRequest* const> prompts(held_out_.data() + first,
                                                       static_cast<size_t>(batch));
    std::vector<float> embedding(prompts[0]->embedding.size(), 0.0f);
    for (const TraceRequest* q : prompts) {
      for (size_t i = 0; i < embedding.size(); ++i) embedding[i] += q->embedding[i] / batch;
    }
    policy_->BeginRequest(embedding);
    for (int t = 0; t < cli_.tokens; ++t) {
      const auto t0 = Clock::now();
      M2N_RETURN_IF_ERROR(Step(prompts, t));
      M2N_RETURN_IF_ERROR(Cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize"));
      const double dt = Since(t0);
      M2N_ASSIGN_OR_RETURN(const double stall, residency_->TakeStall());
      if (++steps <= cli_.warmup) {
        warm = cache_->stats();
        continue;
      }
      step_s.push_back(dt);
      stall_s += stall;
      if (Since(start) > budget_s) break;
    }
    if (Since(start) > budget_s) break;
  }
  // Loads still in flight would delay the next row's first steps.
  M2N_RETURN_IF_ERROR(Cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize"));
  cache_->Finish();
  const CacheStats& all = cache_->stats();
  residency_->Use(nullptr, nullptr);
  Row r;
  r.policy = name, r.capacity = capacity, r.batch = batch;
  r.steps = static_cast<int>(step_s.size());
  const double timed = std::accumulate(step_s.begin(), step_s.end(), 0.0);
  const double n = std::max<double>(1, static_cast<double>(step_s.size()));
  const double hits = static_cast<double>(all.hits - warm.hits);
  const double misses = static_cast<double>(all.misses - warm.misses);
  r.tokens_per_s = timed > 0 ? static_cast<double>(step_s.size()) * batch / timed : 0;
  r.p50_ms = Percentile(step_s, 50) * 1e3;
  r.p99_ms = Percentile(step_s, 99) * 1e3;
  r.stall_ms = stall_s / n * 1e3;
  r.hit_rate = hits + misses > 0 ? hits / (hits + misses) : 0;
  r.gb_per_step = static_cast<double>(all.bytes_moved - warm.bytes_moved) / n / 1e9;
  return r;
}

std::string Table(const std::vector<Row>& rows, int total) {
  std::string t =
      "| policy | cache (experts) | batch | decode tokens/s | TPOT p50 ms | TPOT p99 ms | "
      "stall ms / step | hit rate | GB moved / step | steps |\n"
      "|---|---|---|---|---|---|---|---|---|---|\n";
  char line[512];
  for (const Row& r : rows) {
    std::snprintf(line, sizeof(line),
                  "| %s | %d (%.0f%%) | %d | %.1f | %.1f | %.1f | %.1f | %.3f | %.2f | %d |\n",
                  r.policy.c_str(), r.capacity, 100.0 * r.capacity / total, r.batch, r.tokens_per_s,
                  r.p50_ms, r.p99_ms, r.stall_ms, r.hit_rate, r.gb_per_step, r.steps);
    t += line;
  }
  // FineMoE's targets: hit rate >= 1.36x LRU's, time per output token <= 0.53x LRU's.
  for (const Row& f : rows) {
    if (f.policy != "fmoe") continue;
    for (const Row& l : rows) {
      if (l.policy != "lru" || l.capacity != f.capacity || l.batch != f.batch) continue;
      std::snprintf(line, sizeof(line),
                    "fmoe / lru at %d experts, batch %d: hit rate x%.2f (target >= 1.36), TPOT "
                    "p50 x%.2f (target <= 0.53)\n",
                    f.capacity, f.batch, l.hit_rate > 0 ? f.hit_rate / l.hit_rate : 0,
                    l.p50_ms > 0 ? f.p50_ms / l.p50_ms : 0);
      t += line;
    }
  }
  return t;
}

int Main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "-h") == 0 || std::strcmp(argv[i], "--help") == 0) {
      std::printf("%s", kUsage);
      return 0;
    }
  }
  auto cli = ParseCli(argc, argv);
  if (!cli.ok()) {
    std::fprintf(stderr, "moe_offload_bench: %s\n%s", cli.status().ToString().c_str(), kUsage);
    return 2;
  }
  const auto start = Clock::now();
  Bench bench(*cli);
  if (m2n::Status s = bench.SetUp(); !s.ok()) {
    std::fprintf(stderr, "moe_offload_bench: %s\n", s.ToString().c_str());
    return s.code() == m2n::StatusCode::kInvalidArgument ? 2 : 3;
  }
  std::printf("%s", bench.Header().c_str());
  std::fflush(stdout);
  const int total = cli->layers * 8;
  const size_t configs = cli->policies.size() * cli->cache.size() * cli->batches.size();
  std::vector<Row> rows;
  for (double fraction : cli->cache) {
    for (int batch : cli->batches) {
      for (const std::string& policy : cli->policies) {
        const double left = cli->time_limit_s - Since(start);
        const double budget = std::max(1.0, left / static_cast<double>(configs - rows.size()));
        const int capacity = std::max(2, static_cast<int>(fraction * total + 0.5));
        auto row = bench.Run(policy, capacity, batch, budget);
        if (!row.ok()) {
          std::fprintf(stderr, "moe_offload_bench: %s, %d experts, batch %d: %s\n", policy.c_str(),
                       capacity, batch, row.status().ToString().c_str());
          return row.status().code() == m2n::StatusCode::kInvalidArgument ? 2 : 3;
        }
        rows.push_back(*row);
        std::fprintf(stderr,
                     "[moe_offload_bench] %zu/%zu %s, %d experts, batch %d: %d steps, TPOT p50 "
                     "%.1f ms, hit rate %.3f (%.0f s so far)\n",
                     rows.size(), configs, policy.c_str(), capacity, batch, row->steps, row->p50_ms,
                     row->hit_rate, Since(start));
      }
    }
  }
  std::printf("\n%s", Table(rows, total).c_str());
  std::printf("# total %.1f s\n", Since(start));
  return 0;
}

}  // namespace
}  // namespace moe::offload

int main(int argc, char** argv) { return moe::offload::Main(argc, argv); }

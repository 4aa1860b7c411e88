// moe_offload_sim: the trace-driven measurement of expert offloading (README.md, "Expert
// offloading"). Every policy replays the same routing trace's held-out requests through an expert
// cache of C experts, for C from 10% to 90% of all experts; it prints hit rate and bytes moved per
// token (at the --config model's expert size), and fMoE's hit rate over LRU's.
#include <charconv>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "model/config.h"
#include "offload/cli.h"
#include "offload/sim.h"

namespace {

constexpr const char* kUsage = R"(usage: moe_offload_sim --trace FILE [options]
  --trace FILE        routing trace (tools/train_tiny_moe.py writes one; moe_pipeline --trace too)
  --config NAME|PATH  the model whose expert size counts the bytes (default mixtral-8x7b)
  --dtype_bytes N     bytes per weight (default 2: bf16)
  --policies LIST     comma-separated (default lru,frequency,fmoe)
  --fractions LIST    resident fractions of all experts (default 0.1,0.2,...,0.9)
  --distance N        prefetch distance in layers, fMoE and frequency (default 3)
  --store N           fMoE map store capacity (default 1024)
  --markdown          print the table as markdown (docs/PERFORMANCE.md)
exit status: 0 ok, 2 bad usage, 3 failure
)";

struct Cli {
  std::string trace, config = "mixtral-8x7b";
  int dtype_bytes = 2;
  std::vector<std::string> policies = {"lru", "frequency", "fmoe"};
  std::vector<double> fractions = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9};
  moe::offload::FmoeOptions fmoe;
  bool markdown = false;
};

m2n::StatusOr<Cli> ParseCli(int argc, char** argv) {
  Cli cli;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--markdown") {
      cli.markdown = true;
      continue;
    }
    if (i + 1 >= argc) return m2n::InvalidArgumentError(a + " needs a value");
    const std::string v = argv[++i];
    if (a == "--trace")
      cli.trace = v;
    else if (a == "--config")
      cli.config = v;
    else if (a == "--dtype_bytes")
      cli.dtype_bytes = std::atoi(v.c_str());
    else if (a == "--policies")
      cli.policies = moe::offload::SplitCommas(v);
    else if (a == "--distance")
      cli.fmoe.distance = std::atoi(v.c_str());
    else if (a == "--store")
      cli.fmoe.store_capacity = std::atoi(v.c_str());
    else if (a == "--fractions") {
      M2N_ASSIGN_OR_RETURN(cli.fractions, moe::offload::ParsePositiveNumbers(a, v, 1.0));
    } else {
      return m2n::InvalidArgumentError("unknown flag " + a);
    }
  }
  if (cli.trace.empty()) return m2n::InvalidArgumentError("--trace FILE is required");
  if (cli.dtype_bytes <= 0 || cli.fmoe.distance < 1 || cli.fmoe.store_capacity < 1) {
    return m2n::InvalidArgumentError(
        "--dtype_bytes, --distance and --store need positive integers");
  }
  return cli;
}

std::string ConfigPath(const std::string& name) {
  if (name.find('/') != std::string::npos || name.find(".json") != std::string::npos) return name;
  return std::string(MOE_PIPELINE_CONFIG_DIR) + "/" + name + ".json";
}

void PrintRow(const Cli& cli, const moe::offload::SimResult& r, double fraction, double lru_hit) {
  // LRU can hit nothing at all (a cache smaller than a cycle through the layers): "inf".
  char ratio[16] = "   inf";
  if (r.policy == "lru")
    std::snprintf(ratio, sizeof(ratio), " 1.00x");
  else if (lru_hit > 0 || r.stats.HitRate() == 0)
    std::snprintf(ratio, sizeof(ratio), "%5.2fx", lru_hit > 0 ? r.stats.HitRate() / lru_hit : 0.0);
  const double gb = r.BytesPerToken() / 1e9;
  if (cli.markdown) {
    std::printf("| %-9s | %3.0f%% (%3d) | %6.3f | %s | %8.2f | %6lld / %6lld |\n", r.policy.c_str(),
                fraction * 100, r.capacity, r.stats.HitRate(), ratio, gb,
                static_cast<long long>(r.stats.prefetch_used),
                static_cast<long long>(r.stats.prefetches));
  } else {
    std::printf("%-10s %5.0f%% %5d %8.3f %8s %12.2f %10lld %10lld %10lld\n", r.policy.c_str(),
                fraction * 100, r.capacity, r.stats.HitRate(), ratio, gb,
                static_cast<long long>(r.stats.prefetches),
                static_cast<long long>(r.stats.prefetch_used),
                static_cast<long long>(r.stats.prefetch_wasted));
  }
}

int Run(const Cli& cli) {
  auto config = moe::LoadModelConfig(ConfigPath(cli.config));
  auto trace = moe::offload::ReadTrace(cli.trace);
  if (!config.ok() || !trace.ok()) {
    std::fprintf(stderr, "moe_offload_sim: %s\n",
                 (config.ok() ? trace.status() : config.status()).ToString().c_str());
    return 3;
  }
  const moe::offload::OffloadShape shape{
      config->num_hidden_layers, config->num_local_experts, config->num_experts_per_tok,
      3LL * config->hidden_size * config->intermediate_size * cli.dtype_bytes};
  int held_out = 0;
  for (const auto& q : trace->requests) held_out += q.held_out ? q.tokens : 0;
  std::printf("# %s: %zu requests, %d held-out tokens; experts of %s, %.1f MB each\n",
              cli.trace.c_str(), trace->requests.size(), held_out, config->name.c_str(),
              static_cast<double>(shape.expert_bytes) / 1e6);
  if (cli.markdown) {
    std::printf(
        "| policy | resident (experts) | hit rate | vs LRU | GB moved / token | prefetches used / "
        "issued |\n");
    std::printf("|---|---|---|---|---|---|\n");
  } else {
    std::printf("%-10s %6s %5s %8s %8s %12s %10s %10s %10s\n", "policy", "frac", "C", "hit",
                "vs_lru", "GB/token", "prefetch", "used", "wasted");
  }
  for (double f : cli.fractions) {
    const int capacity = std::max(shape.top_k, static_cast<int>(f * shape.total() + 0.5));
    double lru_hit = 0;
    for (const std::string& name : cli.policies) {
      auto r = moe::offload::Simulate(*trace, shape, name, capacity, cli.fmoe);
      if (!r.ok()) {
        std::fprintf(stderr, "moe_offload_sim: %s\n", r.status().ToString().c_str());
        return 3;
      }
      if (name == "lru") lru_hit = r->stats.HitRate();
      PrintRow(cli, *r, f, lru_hit);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "-h") == 0 || std::strcmp(argv[i], "--help") == 0) {
      std::printf("%s", kUsage);
      return 0;
    }
  }
  auto cli = ParseCli(argc, argv);
  if (!cli.ok()) {
    std::fprintf(stderr, "moe_offload_sim: %s\nRun 'moe_offload_sim --help' for usage.\n",
                 cli.status().ToString().c_str());
    return 2;
  }
  return Run(*cli);
}

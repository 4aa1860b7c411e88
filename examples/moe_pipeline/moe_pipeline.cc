// moe_pipeline: a Mixture-of-Experts decode pipeline over m2n, attention and expert workers in
// separate processes, micro-batches in ping-pong, checked against a single-process reference.
// See README.md. With no arguments: the tiny model, 2 attention + 2 expert processes on this host.
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include "m2n/m2n.h"
#include "compute/compute.h"
#include "model/config.h"
#include "model/weights.h"
#include "offload/policy.h"
#include "offload/record.h"
#include "offload/sim.h"
#include "runtime/collocated.h"
#include "runtime/launch.h"
#include "runtime/pipeline.h"
#include "runtime/profile.h"
#include "runtime/report.h"
#include "runtime/single.h"

#ifndef MOE_PIPELINE_CONFIG_DIR
#define MOE_PIPELINE_CONFIG_DIR "configs"
#endif

namespace moe {
namespace {

constexpr const char* kUsage = R"(usage: moe_pipeline [options]
A Mixture-of-Experts decode pipeline: attention workers (data parallel, KV caches) and expert
workers (expert parallel) in separate processes, tokens dispatched and combined through m2n every
layer, m micro-batches in ping-pong. Started bare, it starts its own A + E processes on this host;
under mpirun / torchrun / srun (or M2N_RANK / M2N_WORLD_SIZE) it is one rank of that job.

model
  --config NAME|PATH    tiny (default), mixtral-8x7b, or a config.json shaped like Mixtral's
  --weights PATH        safetensors file or folder (Mixtral tensor names); default: seeded random
  --seed N              seed of the random weights and of the workload (default 1)
  --save_weights DIR    write the seeded model as a safetensors checkpoint and exit (--bf16: in bf16)
  --offload POLICY      expert offloading on the expert workers (or the single process): lru,
                        frequency or fmoe (README.md "Expert offloading"); --gpu_experts C experts
                        resident per worker (on cuda: C device slots, the rest in pinned host
                        memory); --offload_maps TRACE: history the policy learns from (fMoE's maps)
  --trace OUT --prompts FILE  record the routing of FILE's text prompts (byte tokens) through the
                        reference forward to the trace OUT (for moe_offload_sim) and exit
  --profile FILE        time the backend's compute (attention against batch and context up to
                        --max_tokens / --max_context, one expert against its tokens), write JSON for
                        the planner (tools/plan/m2n_plan) and exit; no workers are started
workers and schedule
  -A, --attention N     attention worker processes (default 2)
  -E, --experts N       expert worker processes (default 2)
  -m, --micro_batches N micro-batches in ping-pong (default 2)
  --single              one process runs the whole model (attention + every expert), no m2n: the
                        single-process path (-A / -E unused); --collocated 1 means the same
  --collocated N        the baseline instead: N processes (GPUs), each running attention and a share
                        of the experts, tokens exchanged by NCCL all-to-all (needs CUDA + NCCL)
  -b, --batch N         requests in flight per attention worker (default 4)
  --max_tokens N        tokens per micro-batch: decode tokens + prefill chunks (default 256)
  --max_context N       KV-cache positions per request with production lengths (default 4096)
  --threads N           compute threads per process (default: cores / processes, at least 1)
  --backend NAME        compute backend: auto (default: cuda when built and a GPU is visible, else
                        cpu), cpu, cuda
workload
  --requests N          requests per attention worker (default 8)
  --input_len N         fixed prompt length (default: production-like, median 571)
  --output_len N        fixed output length (default: production-like, median 159)
run
  --transport NAME      m2n transport (default auto)
  --timeout_s N         deadline of every m2n call, seconds (default 120); reports (sent after the
                        reference check) are awaited 10x as long, a self-started job stopped after 12x
  --json PATH           write the metrics there (default moe_pipeline.json; --json '' for none)
  --no_check            skip the comparison with the single-process reference
  --no_cuda_graphs      on the cuda backend's device path, enqueue every layer eagerly instead of
                        replaying CUDA graphs of the shapes that repeat
  --quiet               no progress line
  --fault swap_experts  route expert 0's tokens to expert 1 and back: the check must fail
  --fault kill_expert   the first expert worker dies after 3 rounds: the run must fail, naming it
exit status: 0 ok, 1 outputs differ from the reference, 2 bad usage, 3 failure
)";

struct Cli {
  PipelineOptions pipeline;
  std::string json_path = "moe_pipeline.json";
  std::string save_weights;
  std::string trace, prompts;  // --trace: record routing (offload/record.h) and exit
  std::string profile;  // --profile: the compute sweep's JSON file (runtime/profile.h)
  bool bf16 = false;
  bool threads_set = false;
};

m2n::StatusOr<int> ParseInt(const std::string& flag, const char* text, int lo, int hi) {
  int v = 0;
  const char* end = text + std::strlen(text);
  auto [p, ec] = std::from_chars(text, end, v);
  if (ec != std::errc() || p != end || v < lo || v > hi) {
    return m2n::InvalidArgumentError(flag + " needs an integer in [" + std::to_string(lo) + ", " +
                                     std::to_string(hi) + "], got \"" + text + "\"");
  }
  return v;
}

m2n::StatusOr<Cli> ParseCli(int argc, char** argv) {
  Cli cli;
  PipelineOptions& p = cli.pipeline;
  std::string config = "tiny";
  bool input_set = false, output_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> m2n::StatusOr<const char*> {
      if (i + 1 >= argc) return m2n::InvalidArgumentError(a + " needs a value");
      return argv[++i];
    };
    auto integer = [&](int lo, int hi, int* out) -> m2n::Status {
      M2N_ASSIGN_OR_RETURN(const char* v, value());
      M2N_ASSIGN_OR_RETURN(*out, ParseInt(a, v, lo, hi));
      return m2n::OkStatus();
    };
    if (a == "--config") {
      M2N_ASSIGN_OR_RETURN(const char* v, value());
      config = v;
    } else if (a == "--weights") {
      M2N_ASSIGN_OR_RETURN(const char* v, value());
      p.weights.checkpoint = v;
    } else if (a == "--seed") {
      int seed = 0;
      M2N_RETURN_IF_ERROR(integer(0, 1 << 30, &seed));
      p.weights.seed = static_cast<uint64_t>(seed);
      p.workload.seed = static_cast<uint64_t>(seed);
    } else if (a == "--save_weights") {
      M2N_ASSIGN_OR_RETURN(const char* v, value());
      cli.save_weights = v;
    } else if (a == "--profile") {
      M2N_ASSIGN_OR_RETURN(const char* v, value());
      cli.profile = v;
    } else if (a == "--bf16") {
      cli.bf16 = true;
    } else if (a == "--offload") {
      M2N_ASSIGN_OR_RETURN(const char* v, value());
      p.offload = v;
    } else if (a == "--offload_maps") {
      M2N_ASSIGN_OR_RETURN(const char* v, value());
      p.offload_maps = v;
    } else if (a == "--gpu_experts") {
      M2N_RETURN_IF_ERROR(integer(1, 1 << 20, &p.gpu_experts));
    } else if (a == "--trace" || a == "--prompts") {
      M2N_ASSIGN_OR_RETURN(const char* v, value());
      (a == "--trace" ? cli.trace : cli.prompts) = v;
    } else if (a == "-A" || a == "--attention") {
      M2N_RETURN_IF_ERROR(integer(1, 4096, &p.attention_workers));
    } else if (a == "-E" || a == "--experts") {
      M2N_RETURN_IF_ERROR(integer(1, 4096, &p.expert_workers));
    } else if (a == "--single") {
      p.single = true;
    } else if (a == "--collocated") {
      M2N_RETURN_IF_ERROR(integer(1, 4096, &p.collocated));
      if (p.collocated == 1) p.single = true, p.collocated = 0;  // a collocated job of one
    } else if (a == "-m" || a == "--micro_batches") {
      M2N_RETURN_IF_ERROR(integer(1, 64, &p.workload.micro_batches));
    } else if (a == "-b" || a == "--batch") {
      M2N_RETURN_IF_ERROR(integer(1, 1 << 16, &p.workload.batch));
    } else if (a == "--max_tokens") {
      M2N_RETURN_IF_ERROR(integer(1, 1 << 20, &p.workload.max_tokens));
    } else if (a == "--max_context") {
      M2N_RETURN_IF_ERROR(integer(8, 1 << 24, &p.workload.max_context));
    } else if (a == "--threads") {
      M2N_RETURN_IF_ERROR(integer(1, 1024, &p.threads));
      cli.threads_set = true;
    } else if (a == "--backend") {
      M2N_ASSIGN_OR_RETURN(const char* v, value());
      p.backend = v;
    } else if (a == "--requests") {
      M2N_RETURN_IF_ERROR(integer(1, 1 << 24, &p.workload.requests));
    } else if (a == "--input_len") {
      M2N_RETURN_IF_ERROR(integer(1, 1 << 24, &p.workload.input_len));
      input_set = true;
    } else if (a == "--output_len") {
      M2N_RETURN_IF_ERROR(integer(1, 1 << 24, &p.workload.output_len));
      output_set = true;
    } else if (a == "--transport") {
      M2N_ASSIGN_OR_RETURN(const char* v, value());
      p.transport = v;
    } else if (a == "--timeout_s") {
      M2N_RETURN_IF_ERROR(integer(1, 86400, &p.timeout_s));
    } else if (a == "--json") {
      M2N_ASSIGN_OR_RETURN(const char* v, value());
      cli.json_path = v;
    } else if (a == "--no_check") {
      p.check = false;
    } else if (a == "--no_cuda_graphs") {
      p.cuda_graphs = false;
    } else if (a == "--quiet") {
      p.progress = false;
    } else if (a == "--fault") {
      M2N_ASSIGN_OR_RETURN(const char* v, value());
      p.fault = v;
      if (p.fault != "swap_experts" && p.fault != "kill_expert") {
        return m2n::InvalidArgumentError("--fault: unknown fault \"" + p.fault +
                                         "\" (swap_experts, kill_expert)");
      }
    } else {
      return m2n::InvalidArgumentError("unknown argument \"" + a + "\"");
    }
  }
  if (input_set != output_set) {
    return m2n::InvalidArgumentError("--input_len and --output_len go together (fixed lengths)");
  }
  p.workload.production = !input_set;
  p.backend = ResolveBackend(p.backend);
  if (p.collocated > 0) {
    if (!CollocatedAvailable()) {
      return m2n::InvalidArgumentError("--collocated needs NCCL and CUDA, which this build lacks");
    }
    if (p.backend != "cuda")
      return m2n::InvalidArgumentError("--collocated needs --backend cuda (NCCL moves GPU memory)");
  }
  if (p.offload.empty() != (p.gpu_experts == 0)) {
    return m2n::InvalidArgumentError("--offload POLICY and --gpu_experts C go together");
  }
  if (p.single && p.collocated > 0)
    return m2n::InvalidArgumentError("--single and --collocated N (N > 1) exclude each other");
  if (p.single && p.fault == "kill_expert")
    return m2n::InvalidArgumentError("--fault kill_expert needs expert workers (not --single)");
  if (!p.offload.empty() && p.collocated > 0) {
    return m2n::InvalidArgumentError(
        "--offload runs in the expert workers and the single process (--single), not in the "
        "collocated baseline");
  }
  M2N_RETURN_IF_ERROR(BackendPrecision(p.backend).status());
  p.config_path = config.find('/') == std::string::npos && config.find(".json") == std::string::npos
                      ? std::string(MOE_PIPELINE_CONFIG_DIR) + "/" + config + ".json"
                      : config;
  M2N_ASSIGN_OR_RETURN(p.config, LoadModelConfig(p.config_path));
  if (!p.offload.empty()) {  // a usage error here, not a failure in every expert worker
    const offload::OffloadShape shape{p.config.num_hidden_layers, p.config.num_local_experts,
                                      p.config.num_experts_per_tok, 0};
    M2N_RETURN_IF_ERROR(offload::MakePolicy(p.offload, shape).status());
    if (!p.offload_maps.empty()) {
      M2N_ASSIGN_OR_RETURN(const offload::Trace maps, offload::ReadTrace(p.offload_maps));
      M2N_RETURN_IF_ERROR(
          offload::CheckTraceShape(maps, shape, "--offload_maps " + p.offload_maps));
    }
    if (p.gpu_experts < shape.top_k) {
      return m2n::InvalidArgumentError("--gpu_experts " + std::to_string(p.gpu_experts) +
                                       ": the cache must hold at least one layer's top-k (" +
                                       std::to_string(shape.top_k) + ")");
    }
  }
  if (!cli.threads_set) {
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int processes = p.single           ? 1
                          : p.collocated > 0 ? p.collocated
                                             : p.attention_workers + p.expert_workers;
    p.threads = std::max(1, cores / processes);
  }
  return cli;
}

int PrintSummary(const Cli& cli, const Json& reports, const std::string& transport);

int RunRank(const Cli& cli) {
  const PipelineOptions& p = cli.pipeline;
  m2n::Options options;
  options.num_senders = p.attention_workers;
  options.num_receivers = p.expert_workers;
  options.slot_bytes = SlotBytesFor(p);
  options.slot_depth = std::max(2, p.workload.micro_batches);  // m dispatches / combines in flight
  options.transport = p.transport;
  if (p.collocated > 0) {  // the group carries only the NCCL id and the reports
    options.num_senders = 1;
    options.num_receivers = p.collocated - 1;
    options.slot_bytes = size_t{64} << 10;
    options.slot_depth = 2;
  }
  auto resolved = m2n::ResolveOptions(options);
  if (!resolved.ok()) {
    std::fprintf(stderr, "moe_pipeline: %s\n", resolved.status().ToString().c_str());
    return kExitUsage;
  }
  const int rank = resolved->bootstrap.rank;
  const bool attention = rank < p.attention_workers;
  const std::string who = "rank " + std::to_string(rank) + " (" +
                          (p.collocated > 0 ? "collocated"
                           : attention      ? "attention"
                                            : "expert") +
                          " worker)";
  auto group = m2n::Group::Create(*resolved);
  if (!group.ok()) {
    std::fprintf(stderr, "moe_pipeline: %s: %s\n", who.c_str(), group.status().ToString().c_str());
    return group.status().code() == m2n::StatusCode::kInvalidArgument ? kExitUsage : kExitFailure;
  }
  m2n::Group& g = **group;
  Json reports;
  const m2n::Status status = p.collocated > 0 ? RunCollocatedRank(g, p, &reports)
                             : attention      ? RunAttentionWorker(g, p, &reports)
                                              : RunExpertWorker(g, p);
  if (!status.ok()) {
    std::fprintf(stderr, "moe_pipeline: %s: %s\n", who.c_str(), status.ToString().c_str());
    return status.code() == m2n::StatusCode::kInvalidArgument ? kExitUsage : kExitFailure;
  }
  const std::string transport(g.transport_name());
  if (m2n::Status s = g.Close(m2n::Deadline::After(std::chrono::seconds(p.timeout_s))); !s.ok()) {
    std::fprintf(stderr, "moe_pipeline: %s: close: %s\n", who.c_str(), s.ToString().c_str());
    return kExitFailure;
  }
  if (rank != 0) return kExitOk;
  return PrintSummary(cli, reports, transport);
}

// Rank 0's (or the single process's) summary on stdout and in --json.
int PrintSummary(const Cli& cli, const Json& reports, const std::string& transport) {
  const Summary summary = Summarize(reports, cli.pipeline, transport);
  std::printf("%s", summary.text.c_str());
  if (!cli.json_path.empty()) {
    std::ofstream out(cli.json_path);
    out << summary.json.Dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "moe_pipeline: cannot write %s\n", cli.json_path.c_str());
      return kExitFailure;
    }
    std::printf("metrics written to %s\n", cli.json_path.c_str());
  }
  std::fflush(stdout);
  return summary.check_ran && !summary.check_passed ? kExitCheckFailed : kExitOk;
}

// --single: the whole model in this process (runtime/single.h).
int RunSingle(const Cli& cli) {
  Json reports;
  if (m2n::Status s = RunSingleProcess(cli.pipeline, &reports); !s.ok()) {
    std::fprintf(stderr, "moe_pipeline: single process: %s\n", s.ToString().c_str());
    return s.code() == m2n::StatusCode::kInvalidArgument ? kExitUsage : kExitFailure;
  }
  return PrintSummary(cli, reports, "none (single process)");
}

// --trace OUT --prompts FILE: the routing of text prompts, for moe_offload_sim (README.md).
int RecordRouting(const Cli& cli) {
  if (cli.prompts.empty()) {
    std::fprintf(stderr,
                 "moe_pipeline: --trace needs --prompts FILE (KIND<TAB>0|1<TAB>TEXT lines)\n");
    return kExitUsage;
  }
  auto prompts = offload::ReadPrompts(cli.prompts);
  m2n::Status s = prompts.status();
  if (prompts.ok()) {
    auto trace = offload::RecordTrace(cli.pipeline.config, cli.pipeline.weights, *prompts, 32);
    s = trace.ok() ? offload::WriteTrace(cli.trace, *trace) : trace.status();
  }
  if (!s.ok()) {
    std::fprintf(stderr, "moe_pipeline: %s\n", s.ToString().c_str());
    return kExitFailure;
  }
  std::printf("wrote the routing of %zu prompts to %s\n", prompts->size(), cli.trace.c_str());
  return kExitOk;
}

int Main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "-h") == 0 || std::strcmp(argv[i], "--help") == 0) {
      std::printf("%s", kUsage);
      return kExitOk;
    }
  }
  auto cli = ParseCli(argc, argv);
  if (!cli.ok()) {
    std::fprintf(stderr, "moe_pipeline: %s\nRun 'moe_pipeline --help' for usage.\n",
                 cli.status().ToString().c_str());
    return kExitUsage;
  }
  const PipelineOptions& p = cli->pipeline;
  if (!cli->trace.empty()) return RecordRouting(*cli);
  if (!cli->save_weights.empty()) {
    const int files = std::max(1, p.config.num_hidden_layers / 2);
    if (m2n::Status s =
            SaveSeededCheckpoint(p.config, p.weights.seed, cli->save_weights, files, cli->bf16);
        !s.ok()) {
      std::fprintf(stderr, "moe_pipeline: %s\n", s.ToString().c_str());
      return kExitFailure;
    }
    std::printf("wrote %s (%s, seed %llu) to %s\n", p.config.name.c_str(),
                cli->bf16 ? "bf16" : "fp32", static_cast<unsigned long long>(p.weights.seed),
                cli->save_weights.c_str());
    return kExitOk;
  }
  if (!cli->profile.empty()) {
    if (m2n::Status s = WriteComputeProfile(p, cli->profile); !s.ok()) {
      std::fprintf(stderr, "moe_pipeline: %s\n", s.ToString().c_str());
      return s.code() == m2n::StatusCode::kInvalidArgument ? kExitUsage : kExitFailure;
    }
    std::printf("compute profile of %s on %s written to %s\n", p.config.name.c_str(),
                p.backend.c_str(), cli->profile.c_str());
    return kExitOk;
  }
  const int world = p.collocated > 0 ? p.collocated : p.attention_workers + p.expert_workers;
  auto launch = m2n::DetectLaunch();
  if (!launch.ok()) {
    std::fprintf(stderr, "moe_pipeline: %s\n", launch.status().ToString().c_str());
    return kExitUsage;
  }
  if (p.single) {
    if (launch->launcher != m2n::Launcher::kNone && launch->world_size > 1) {
      std::fprintf(stderr, "moe_pipeline: --single runs as one process, the launcher started %d\n",
                   launch->world_size);
      return kExitUsage;
    }
    return RunSingle(*cli);
  }
  if (launch->launcher != m2n::Launcher::kNone) {
    const int launched = launch->world_size;
    if (launched > 0 && launched != world) {
      std::fprintf(stderr, "moe_pipeline: this layout needs %d ranks, the launcher started %d\n",
                   world, launched);
      return kExitUsage;
    }
    return RunRank(*cli);
  }
  return SpawnLocalJob(world, p.collocated > 0 ? world : p.attention_workers, p.timeout_s, argc,
                       argv);
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) { return moe::Main(argc, argv); }

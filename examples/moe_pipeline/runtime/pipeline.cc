// What the disaggregated pipeline's two workers share (workers.h) and what the collocated baseline
// and the single process take from it (pipeline.h): the serving workload, the expert side, the slot
// sizes, the EP layer's options and the device path's group. The workers themselves are
// attention_worker.cc and expert_worker.cc.
#include "runtime/pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "compute/compute.h"
#include "m2n/ep.h"
#include "m2n/launch.h"
#include "offload/offloaded_experts.h"
#include "runtime/wire.h"
#include "runtime/workers.h"

namespace moe {
namespace {

constexpr size_t kMinSlotBytes = size_t{64} << 10;  // report chunks

}  // namespace

m2n::Deadline CallDeadline(const PipelineOptions& o) {
  return m2n::Deadline::After(std::chrono::seconds(o.timeout_s));
}

std::string Where(const m2n::Group& g, const char* what) {
  return std::string(what) + " on rank " + std::to_string(g.rank()) + " (" +
         (g.role() == m2n::Role::kSender ? "attention" : "expert") + " worker)";
}

// This process's index on its host: m2n's local-rank rule (the launcher's local rank, else the
// rank). A launcher variable that does not parse failed the process at start (moe_pipeline.cc).
int LocalRank(const m2n::Group& g) {
  auto launch = m2n::DetectLaunch();
  return m2n::LocalRank(launch.ok() ? *launch : m2n::LaunchInfo{}, g.rank());
}

m2n::StatusOr<ComputeOptions> MakeServingWorkload(const m2n::Group& g, const PipelineOptions& o,
                                                  std::unique_ptr<Workload>* workload) {
  return MakeServingWorkload(g.rank(), LocalRank(g), o, workload);
}

m2n::StatusOr<ComputeOptions> MakeServingWorkload(int rank, int local_rank,
                                                  const PipelineOptions& o,
                                                  std::unique_ptr<Workload>* workload) {
  const ModelConfig& c = o.config;
  const int max_context = MaxContext(o.workload, c.max_position_embeddings);
  M2N_ASSIGN_OR_RETURN(Workload w, Workload::Create(o.workload, rank, c.vocab_size, max_context));
  *workload = std::make_unique<Workload>(std::move(w));
  ComputeOptions co{.threads = o.threads,
                    .micro_batches = o.workload.micro_batches,
                    .max_tokens = o.workload.max_tokens,
                    .kv_slots = o.workload.batch,
                    .max_context = max_context,
                    .local_rank = local_rank,
                    .cuda_graphs = o.cuda_graphs};
  return co;
}

m2n::StatusOr<std::unique_ptr<ExpertCompute>> MakeWorkerExperts(const PipelineOptions& o,
                                                                std::span<const int> experts,
                                                                const ComputeOptions& co) {
  if (o.offload.empty()) return MakeExpertCompute(o.backend, o.config, o.weights, experts, co);
  return offload::MakeOffloadedExperts(o.backend, o.config, o.weights, experts, co,
                                       {o.offload, o.gpu_experts, o.offload_maps});
}

DispatchLayout WriteDispatch(const Routing& routing, int w, int workers, int hidden,
                             int64_t iteration, int layer, int mb, std::vector<int32_t>* rows,
                             std::byte* msg) {
  const int k = routing.top_k, tokens = static_cast<int>(routing.expert.size()) / std::max(k, 1);
  rows->clear();
  for (int t = 0; t < tokens; ++t) {
    bool mine = false;
    for (int j = 0; j < k; ++j)
      mine = mine || ExpertOwner(routing.expert[static_cast<size_t>(t * k + j)], workers) == w;
    if (mine) rows->push_back(t);
  }
  const DispatchLayout layout(rows->size(), static_cast<size_t>(k), static_cast<size_t>(hidden));
  Header h;
  h.kind = static_cast<uint16_t>(MessageKind::kDispatch);
  h.top_k = static_cast<uint16_t>(k);
  h.iteration = static_cast<uint32_t>(iteration);
  h.layer = static_cast<uint16_t>(layer);
  h.micro_batch = static_cast<uint16_t>(mb);
  h.rows = static_cast<uint32_t>(rows->size());
  h.hidden = static_cast<uint32_t>(hidden);
  std::memcpy(msg, &h, sizeof(h));
  if (!rows->empty()) std::memcpy(msg + layout.rows, rows->data(), rows->size() * 4);
  auto* experts = reinterpret_cast<int32_t*>(msg + layout.experts);
  auto* weights = reinterpret_cast<float*>(msg + layout.weights);
  for (size_t r = 0; r < rows->size(); ++r) {
    for (int j = 0; j < k; ++j) {
      const size_t at = static_cast<size_t>((*rows)[r]) * k + j;
      const bool mine = ExpertOwner(routing.expert[at], workers) == w;
      experts[r * k + j] = mine ? routing.expert[at] : -1;
      weights[r * k + j] = mine ? routing.weight[at] : 0.0f;
    }
  }
  return layout;
}

Json Samples(const std::vector<double>& v) {
  Json a = Json::Array();
  for (double x : v) a.Push(Json::Number(std::round(x * 1e3) / 1e3));
  return a;
}

void SetWorkloadReport(Json& r, const Workload& w, const std::vector<double>& tbt_ms,
                       const std::vector<double>& ttft_ms) {
  r.Set("requests", Json::Number(static_cast<double>(w.requests().size())));
  r.Set("generated_tokens", Json::Number(static_cast<double>(w.generated_tokens())));
  r.Set("prefill_tokens", Json::Number(static_cast<double>(w.prefill_tokens())));
  int64_t input = 0, output = 0;
  for (const Request& q : w.requests()) {
    input += q.input_len;
    output += q.output_len;
  }
  r.Set("input_tokens", Json::Number(static_cast<double>(input)));
  r.Set("output_tokens", Json::Number(static_cast<double>(output)));
  r.Set("tbt_ms", Samples(tbt_ms));
  r.Set("ttft_ms", Samples(ttft_ms));
}

m2n::Status SendBuffers::Register(m2n::Group& g, size_t peers) {
  slot_bytes = g.options().slot_bytes;
  buffer.resize(peers * slot_bytes);
  auto registered = g.RegisterMemory(buffer.data(), buffer.size());
  if (!registered.ok()) return registered.status();
  region.emplace(std::move(*registered));
  for (size_t p = 0; p < peers; ++p) send.push_back(buffer.data() + p * slot_bytes);
  return m2n::OkStatus();
}

m2n::ExpertParallelOptions EpOptions(const PipelineOptions& o) {
  const ModelConfig& c = o.config;
  m2n::ExpertParallelOptions ep{.num_experts = c.num_local_experts,
                                .top_k = c.num_experts_per_tok,
                                .hidden = c.hidden_size,
                                .dtype = m2n::DataType::kFloat32,
                                .max_tokens = o.workload.max_tokens,
                                .placement = {}};
  for (int e = 0; e < c.num_local_experts; ++e)
    ep.placement.push_back(o.attention_workers + ExpertOwner(e, o.expert_workers));
  return ep;
}

m2n::StatusOr<int64_t> RunIterations(const PipelineOptions& o) {
  const int max_context = MaxContext(o.workload, o.config.max_position_embeddings);
  int64_t most = 0;
  for (int w = 0; w < o.attention_workers; ++w) {
    M2N_ASSIGN_OR_RETURN(const int64_t n, Workload::CountIterations(
                                              o.workload, w, o.config.vocab_size, max_context));
    most = std::max(most, n);
  }
  return most;
}

std::string Step(int64_t iteration, int layer, int mb) {
  return "iteration " + std::to_string(iteration) + " layer " + std::to_string(layer) +
         " micro-batch " + std::to_string(mb);
}

bool DevicePath(const PipelineOptions& o) {
  return o.backend == "cuda" && o.fault != "swap_experts" && o.offload.empty();
}

m2n::StatusOr<std::unique_ptr<m2n::Group>> MakeDeviceGroup(const m2n::Group& g,
                                                           const PipelineOptions& o) {
  m2n::Options d = g.options();
  d.slot_memory = m2n::MemoryKind::kCuda;
  d.transport = "auto";  // one that serves the device-side API
  d.checksum = false;
  M2N_ASSIGN_OR_RETURN(const size_t need, m2n::ExpertParallel::SlotBytesNeeded(
                                              EpOptions(o), g.num_senders(), g.num_receivers()));
  d.slot_bytes = (need + 15) / 16 * 16;  // the device path's alignment
  d.bootstrap.master_port = g.options().bootstrap.master_port + 1;
  d.bootstrap.job_id += "/ep";
  // A device wait gives up after the bootstrap timeout: the same bound as a host call's deadline.
  d.bootstrap.timeout =
      std::max<std::chrono::milliseconds>(d.bootstrap.timeout, std::chrono::seconds(o.timeout_s));
  // d is resolved (the host group's options): Create does not let a launcher's M2N_MASTER_PORT
  // send it back to the host group's store.
  return m2n::Group::Create(d);
}

m2n::Status CloseDeviceGroup(std::unique_ptr<m2n::ExpertParallel>& ep,
                             std::unique_ptr<m2n::Group>& group, const PipelineOptions& o) {
  ep.reset();
  if (group == nullptr) return m2n::OkStatus();
  M2N_RETURN_IF_ERROR(group->Close(CallDeadline(o)));
  group.reset();
  return m2n::OkStatus();
}

size_t SlotBytesFor(const PipelineOptions& o) {
  // Bad options: the least; ExpertParallel::Create then names what is wrong.
  const m2n::StatusOr<size_t> ep =
      m2n::ExpertParallel::SlotBytesNeeded(EpOptions(o), o.attention_workers, o.expert_workers);
  return std::max(ep.ok() ? *ep : 0, kMinSlotBytes);
}

size_t WireSlotBytes(const PipelineOptions& o) {
  const size_t dispatch = DispatchLayout(static_cast<size_t>(o.workload.max_tokens),
                                         static_cast<size_t>(o.config.num_experts_per_tok),
                                         static_cast<size_t>(o.config.hidden_size))
                              .bytes;
  return std::max(AlignUp(dispatch), kMinSlotBytes);
}

}  // namespace moe

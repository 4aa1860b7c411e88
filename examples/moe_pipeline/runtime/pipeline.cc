// The disaggregated pipeline's two workers (pipeline.h describes the schedule): the attention
// worker, which serves requests and dispatches each layer's tokens to the expert workers through
// m2n::ExpertParallel, and the expert worker, which runs its experts over the ExpertBatch of every
// attention worker's rows and combines their outputs back. The report transfer is
// runtime/report.cc's, the check reference/check.cc's, the injected faults runtime/fault.cc's.
#include "runtime/pipeline.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <numeric>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "compute/compute.h"
#include "m2n/ep.h"
#include "m2n/launch.h"
#include "offload/offloaded_experts.h"
#include "reference/check.h"
#include "runtime/fault.h"
#include "runtime/report.h"
#include "runtime/wire.h"

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// Accumulates the seconds of a scope into *sum.
class Timed {
 public:
  explicit Timed(double* sum) : sum_(sum), start_(Clock::now()) {}
  ~Timed() { *sum_ += Seconds(start_, Clock::now()); }
  Timed(const Timed&) = delete;
  Timed& operator=(const Timed&) = delete;

 private:
  double* sum_;
  Clock::time_point start_;
};

constexpr size_t kMinSlotBytes = size_t{64} << 10;  // report chunks

}  // namespace

m2n::Deadline CallDeadline(const PipelineOptions& o) {
  return m2n::Deadline::After(std::chrono::seconds(o.timeout_s));
}

namespace {

std::string Where(const m2n::Group& g, const char* what) {
  return std::string(what) + " on rank " + std::to_string(g.rank()) + " (" +
         (g.role() == m2n::Role::kSender ? "attention" : "expert") + " worker)";
}

}  // namespace

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

namespace {

// A worker's send buffers: one slot of registered memory per peer, kept for the whole run.
struct SendBuffers {
  m2n::Status Register(m2n::Group& g, size_t peers) {
    slot_bytes = g.options().slot_bytes;
    buffer.resize(peers * slot_bytes);
    auto registered = g.RegisterMemory(buffer.data(), buffer.size());
    if (!registered.ok()) return registered.status();
    region.emplace(std::move(*registered));
    for (size_t p = 0; p < peers; ++p) send.push_back(buffer.data() + p * slot_bytes);
    return m2n::OkStatus();
  }
  std::byte* operator[](size_t peer_index) const { return send[peer_index]; }

  size_t slot_bytes = 0;
  std::vector<std::byte> buffer;
  // MemoryRegion's default constructor needs its Impl's size: held in an optional instead.
  std::optional<m2n::MemoryRegion> region;
  std::vector<std::byte*> send;
};

// The EP layer of the pipeline: the hidden states travel in fp32 (the compute backends' activations
// on the host); expert e lives on expert worker ExpertOwner(e, E), global rank A + that.
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

// The iterations every attention worker runs: the longest workload's (pipeline.h).
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

// The device path (pipeline.h): the cuda backend's EP layer on device memory, over a group of its
// own (receive slots in GPU memory; one group, one data path), while the finish and the reports
// stay on the host group. Not with the faults that rewrite the routing on the host, nor with
// expert offloading (its cache takes host routing): those keep the host path.
bool DevicePath(const PipelineOptions& o) {
  return o.backend == "cuda" && o.fault != "swap_experts" && o.offload.empty();
}

// The device path's group: the host group's ranks and bootstrap, its store on the next port.
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

// Ends the device path once the caller has synchronized its streams: the layer, then its group.
m2n::Status CloseDeviceGroup(std::unique_ptr<m2n::ExpertParallel>& ep,
                             std::unique_ptr<m2n::Group>& group, const PipelineOptions& o) {
  ep.reset();
  if (group == nullptr) return m2n::OkStatus();
  M2N_RETURN_IF_ERROR(group->Close(CallDeadline(o)));
  group.reset();
  return m2n::OkStatus();
}

// ---- Attention worker ----

class AttentionWorker {
 public:
  AttentionWorker(m2n::Group& group, const PipelineOptions& o) : g_(group), o_(o), c_(o.config) {}

  m2n::Status Run(Json* summary) {
    M2N_RETURN_IF_ERROR(SetUp());
    M2N_RETURN_IF_ERROR(g_.Barrier(CallDeadline(o_)));
    start_ = Clock::now();
    while (!workload_->finished()) {
      if (iteration_ == iterations_) {
        return m2n::InternalError(Where(g_, "schedule") + ": the workload needs more than the " +
                                  std::to_string(iterations_) + " iterations counted");
      }
      M2N_RETURN_IF_ERROR(Iteration());
    }
    wall_s_ = Seconds(start_, Clock::now());
    served_ = iteration_;
    // Empty micro-batches until the longest workload is done: every EP call needs every rank.
    draining_ = true;
    while (iteration_ < iterations_) {
      M2N_RETURN_IF_ERROR(Layers());
      ++iteration_;
    }
    if (device_group_ != nullptr) {
      M2N_RETURN_IF_ERROR(compute_->SyncDevice().WithContext(Where(g_, "device path")));
      M2N_RETURN_IF_ERROR(
          CloseDeviceGroup(ep_, device_group_, o_).WithContext(Where(g_, "device path")));
    }
    M2N_RETURN_IF_ERROR(SendFinish());
    if (o_.progress && g_.rank() == 0 && tty_) std::fprintf(stderr, "\n");
    return SendReports(summary);
  }

 private:
  m2n::Status SetUp() {
    M2N_ASSIGN_OR_RETURN(const ComputeOptions co, MakeServingWorkload(g_, o_, &workload_));
    M2N_ASSIGN_OR_RETURN(compute_, MakeAttentionCompute(o_.backend, c_, o_.weights, co));
    M2N_ASSIGN_OR_RETURN(iterations_, RunIterations(o_));
    if (DevicePath(o_)) {  // after the compute: the group's slots go on its GPU
      M2N_ASSIGN_OR_RETURN(device_group_, MakeDeviceGroup(g_, o_));
      device_.resize(static_cast<size_t>(o_.workload.micro_batches));
    }
    M2N_ASSIGN_OR_RETURN(ep_, m2n::ExpertParallel::Create(
                                  device_group_ != nullptr ? *device_group_ : g_, EpOptions(o_)));
    experts_.assign(g_.peers().begin(), g_.peers().end());
    M2N_RETURN_IF_ERROR(send_.Register(g_, experts_.size()));
    requests_.resize(experts_.size());
    const size_t m = static_cast<size_t>(o_.workload.micro_batches);
    const size_t rows = static_cast<size_t>(o_.workload.max_tokens);
    routing_.resize(m);
    tokens_.assign(m, 0);
    all_rows_.resize(rows);
    std::iota(all_rows_.begin(), all_rows_.end(), 0);
    x_.resize(std::max<size_t>(rows, 1) * static_cast<size_t>(c_.hidden_size));
    out_.resize(x_.size());
    return m2n::OkStatus();
  }

  m2n::Status Iteration() {
    const int m = o_.workload.micro_batches;
    {
      Timed t(&compute_s_);
      plans_ = workload_->NextIteration(Seconds(start_, Clock::now()));
      for (int i = 0; i < m; ++i)
        M2N_RETURN_IF_ERROR(compute_->Begin(i, plans_[static_cast<size_t>(i)].tokens));
    }
    M2N_RETURN_IF_ERROR(Layers());
    if (device_group_ != nullptr) M2N_RETURN_IF_ERROR(RecordDeviceRouting());
    {
      Timed t(&compute_s_);
      const double now = Seconds(start_, Clock::now());
      for (int i = 0; i < m; ++i) {
        const MicroBatchPlan& plan = plans_[static_cast<size_t>(i)];
        logits_.resize(plan.logit_rows.size() * static_cast<size_t>(c_.vocab_size));
        M2N_RETURN_IF_ERROR(compute_->Logits(i, plan.logit_rows, logits_.data()));
        workload_->Complete(plan, logits_, now, &tbt_ms_, &ttft_ms_);
      }
    }
    ++iteration_;
    if (o_.progress && g_.rank() == 0) ShowProgress();
    return m2n::OkStatus();
  }

  // The ping-pong over the layers of one iteration (pipeline.h).
  m2n::Status Layers() {
    const int m = o_.workload.micro_batches, L = c_.num_hidden_layers;
    for (int l = 0; l < L; ++l) {
      for (int i = 0; i < m; ++i) {
        if (l > 0) M2N_RETURN_IF_ERROR(ReceiveCombine(i, l - 1));
        M2N_RETURN_IF_ERROR(Dispatch(i, l));
      }
    }
    for (int i = 0; i < m; ++i) M2N_RETURN_IF_ERROR(ReceiveCombine(i, L - 1));
    return m2n::OkStatus();
  }

  m2n::Status Dispatch(int mb, int layer) {
    if (device_group_ != nullptr) return DispatchOnDevice(mb, layer);
    Routing& routing = routing_[static_cast<size_t>(mb)];
    int& tokens = tokens_[static_cast<size_t>(mb)];
    tokens = 0;
    routing.expert.clear();
    routing.weight.clear();
    if (!draining_) {
      Timed t(&compute_s_);
      M2N_RETURN_IF_ERROR(compute_->AttentionAndGate(mb, layer, &routing));
      // The gate's choice, for the check (a routing bug after this point is the check's to catch).
      const MicroBatchPlan& plan = plans_[static_cast<size_t>(mb)];
      M2N_RETURN_IF_ERROR(workload_->RecordRouting(plan, layer, c_.num_hidden_layers, routing));
      InjectRoutingFault(o_, &routing);
      tokens = static_cast<int>(plan.tokens.size());
      M2N_RETURN_IF_ERROR(compute_->GatherRows(mb, Rows(tokens), x_.data()));
      rows_dispatched_ += RowsSent(routing);
    }
    in_flight_.push_back({layer, mb});
    Timed t(&send_s_);
    return ep_->Dispatch(x_.data(), tokens, routing.expert, routing.weight, CallDeadline(o_))
        .WithContext(Where(g_, "dispatch"));
  }

  // The EP layer answers Dispatch calls in order; the schedule must ask for them in that order.
  m2n::Status ReceiveCombine(int mb, int layer) {
    if (in_flight_.empty() || in_flight_.front() != std::pair{layer, mb}) {
      return m2n::InternalError(
          Where(g_, "combine") + ": " + Step(iteration_, layer, mb) + " is not the oldest " +
          (in_flight_.empty()
               ? std::string("(none in flight)")
               : "(" + Step(iteration_, in_flight_.front().first, in_flight_.front().second) +
                     ")"));
    }
    in_flight_.pop_front();
    if (device_group_ != nullptr) return ReceiveCombineOnDevice(mb);
    {
      Timed t(&wait_s_);
      M2N_RETURN_IF_ERROR(
          ep_->ReceiveCombine(out_.data(), CallDeadline(o_)).WithContext(Where(g_, "combine")));
    }
    const int tokens = tokens_[static_cast<size_t>(mb)];
    if (tokens == 0) return m2n::OkStatus();
    Timed t(&compute_s_);
    return compute_->ScatterAddRows(mb, Rows(tokens), out_.data());
  }

  // ---- Device path: the EP calls on micro-batch mb's stream, no host copy of token data ----
  // (Host timers here measure enqueueing only: the device waits surface in the iteration's
  // synchronization, RecordDeviceRouting's.)
  m2n::Status DispatchOnDevice(int mb, int layer) {
    int& tokens = tokens_[static_cast<size_t>(mb)];
    DeviceDispatch& d = device_[static_cast<size_t>(mb)];
    tokens = 0;
    if (draining_) {
      M2N_RETURN_IF_ERROR(compute_->DeviceLane(mb, &d));
    } else {
      Timed t(&compute_s_);
      M2N_RETURN_IF_ERROR(compute_->AttentionAndGateOnDevice(mb, layer, &d));
      tokens = static_cast<int>(plans_[static_cast<size_t>(mb)].tokens.size());
    }
    in_flight_.push_back({layer, mb});
    Timed t(&send_s_);
    M2N_RETURN_IF_ERROR(compute_->BeforeEpCall(mb, true));
    M2N_RETURN_IF_ERROR(ep_->DispatchOnStream(d.x, tokens, d.topk_ids, d.topk_weights, d.stream)
                            .WithContext(Where(g_, "dispatch")));
    return compute_->AfterEpCall(mb, true);
  }

  m2n::Status ReceiveCombineOnDevice(int mb) {
    const DeviceDispatch& d = device_[static_cast<size_t>(mb)];
    {
      Timed t(&wait_s_);
      M2N_RETURN_IF_ERROR(compute_->BeforeEpCall(mb, false));
      M2N_RETURN_IF_ERROR(
          ep_->ReceiveCombineOnStream(d.combined, d.stream).WithContext(Where(g_, "combine")));
      M2N_RETURN_IF_ERROR(compute_->AfterEpCall(mb, false));
    }
    Timed t(&compute_s_);
    return compute_->AddCombinedOnDevice(mb, tokens_[static_cast<size_t>(mb)]);
  }

  // The gate's choices of this iteration, for the check, from their pinned host copies (one wait
  // for the compute stream, which has waited for every micro-batch's combine).
  m2n::Status RecordDeviceRouting() {
    Timed t(&wait_s_);
    for (int l = 0; l < c_.num_hidden_layers; ++l) {
      for (size_t i = 0; i < plans_.size(); ++i) {
        Routing& routing = routing_[i];
        M2N_RETURN_IF_ERROR(compute_->RoutingOnHost(static_cast<int>(i), l, &routing));
        M2N_RETURN_IF_ERROR(workload_->RecordRouting(plans_[i], l, c_.num_hidden_layers, routing));
        rows_dispatched_ += RowsSent(routing);
      }
    }
    return m2n::OkStatus();
  }

  std::span<const int32_t> Rows(int tokens) const {
    return std::span<const int32_t>(all_rows_).first(static_cast<size_t>(tokens));
  }

  // Token rows sent: each token once per expert worker that holds one of its experts.
  int64_t RowsSent(const Routing& routing) const {
    const int k = routing.top_k, E = static_cast<int>(experts_.size());
    int64_t rows = 0;
    for (size_t t = 0; t * static_cast<size_t>(k) < routing.expert.size(); ++t) {
      const int* e = &routing.expert[t * static_cast<size_t>(k)];
      for (int j = 0; j < k; ++j) {
        bool first = true;
        for (int i = 0; i < j; ++i) first = first && ExpertOwner(e[i], E) != ExpertOwner(e[j], E);
        rows += first ? 1 : 0;
      }
    }
    return rows;
  }

  // After the run's last EP call (pipeline.h): the group is free for the pipeline's messages.
  m2n::Status SendFinish() {
    for (size_t w = 0; w < experts_.size(); ++w) {
      Header h;
      h.kind = static_cast<uint16_t>(MessageKind::kFinish);
      std::memcpy(send_[w], &h, sizeof(h));
      requests_[w] = {experts_[w], send_[w], sizeof(h)};
    }
    return g_.Send(requests_, CallDeadline(o_)).WithContext(Where(g_, "finish"));
  }

  m2n::Status SendReports(Json* summary) {
    Json report = Report();
    if (o_.check)
      report.Set("check", CheckAgainstReference(o_.config, o_.weights, o_.backend, *workload_));
    M2N_RETURN_IF_ERROR(SendReport(g_, experts_[0], report.Dump(), send_[0], send_.slot_bytes, o_));
    if (g_.rank() != 0) return m2n::OkStatus();
    // Rank 0 gathers everyone's: the first expert worker forwards the attention workers' reports.
    Json all = Json::Array();
    std::vector<Json> attention(static_cast<size_t>(g_.num_senders()));
    for (size_t w = 0; w < experts_.size(); ++w) {
      M2N_ASSIGN_OR_RETURN(Json r, ReceiveReport(g_, experts_[w], o_));
      all.Push(std::move(r));
      if (w == 0) {
        for (auto& a : attention) {
          M2N_ASSIGN_OR_RETURN(a, ReceiveReport(g_, experts_[0], o_));
        }
      }
    }
    Json ordered = Json::Array();
    for (auto& a : attention) ordered.Push(std::move(a));
    for (const Json& e : all.items()) ordered.Push(e);
    *summary = std::move(ordered);
    return m2n::OkStatus();
  }

  void ShowProgress() {
    const double now = Seconds(start_, Clock::now());
    if (now < next_progress_s_ && !workload_->finished()) return;
    next_progress_s_ = now + 1.0;
    // One line rewritten in place on a terminal; a line per second in a log.
    std::fprintf(
        stderr,
        "%s[moe_pipeline] %5.1f s  attention rank 0: %d/%zu requests done, %lld tokens generated "
        "(%.0f tok/s), iteration %lld%s",
        tty_ ? "\r" : "", now, workload_->finished_count(), workload_->requests().size(),
        static_cast<long long>(workload_->generated_tokens()),
        static_cast<double>(workload_->generated_tokens()) / std::max(now, 1e-9),
        static_cast<long long>(iteration_), tty_ ? "   " : "\n");
  }

  Json Report() const {
    Json r = Json::Object();
    r.Set("role", Json::String("attention"));
    r.Set("ep_path", Json::String(device_group_ != nullptr ? "device" : "host"));
    r.Set("rank", Json::Number(g_.rank()));
    r.Set("backend", Json::String(compute_->name()));
    r.Set("wall_s", Json::Number(wall_s_));
    r.Set("compute_s", Json::Number(compute_s_));
    r.Set("send_s", Json::Number(send_s_));
    r.Set("wait_s", Json::Number(wait_s_));
    r.Set("iterations", Json::Number(static_cast<double>(served_)));
    r.Set("layers", Json::Number(c_.num_hidden_layers));
    r.Set("rows_dispatched", Json::Number(static_cast<double>(rows_dispatched_)));
    SetWorkloadReport(r, *workload_, tbt_ms_, ttft_ms_);
    return r;
  }

  m2n::Group& g_;
  const PipelineOptions& o_;
  const ModelConfig& c_;
  std::unique_ptr<Workload> workload_;
  std::unique_ptr<AttentionCompute> compute_;
  std::unique_ptr<m2n::Group> device_group_;  // the device path's (null: the host path)
  std::unique_ptr<m2n::ExpertParallel> ep_;  // on device_group_ when there is one, else on g_
  std::vector<DeviceDispatch> device_;  // [mb]: the device path's buffers and stream
  std::vector<int> experts_;
  SendBuffers send_;  // one buffer per expert worker: the finish, the report
  std::vector<m2n::SendRequest> requests_;
  std::vector<MicroBatchPlan> plans_;  // this iteration's
  std::vector<Routing> routing_;  // [mb]
  std::vector<int> tokens_;  // [mb]: tokens of its dispatch in flight
  std::deque<std::pair<int, int>> in_flight_;  // (layer, mb) of the Dispatch calls not combined
  std::vector<int32_t> all_rows_;  // 0, 1, ..., max_tokens - 1
  std::vector<float> x_, out_;  // a micro-batch's dispatched rows; its combined rows
  std::vector<float> logits_;
  Clock::time_point start_;
  int64_t iterations_ = 0;  // the run's (every attention worker's), pipeline.h
  int64_t iteration_ = 0;
  int64_t served_ = 0;  // iterations with this worker's own tokens
  bool draining_ = false;  // own workload done: empty micro-batches until the run's end
  int64_t rows_dispatched_ = 0;
  double wall_s_ = 0, compute_s_ = 0, send_s_ = 0, wait_s_ = 0;
  double next_progress_s_ = 0;
  const bool tty_ = isatty(2) != 0;
  std::vector<double> tbt_ms_, ttft_ms_;
};

// ---- Expert worker ----

class ExpertWorker {
 public:
  ExpertWorker(m2n::Group& group, const PipelineOptions& o) : g_(group), o_(o), c_(o.config) {}

  m2n::Status Run() {
    M2N_RETURN_IF_ERROR(SetUp());
    M2N_RETURN_IF_ERROR(g_.Barrier(CallDeadline(o_)));
    const auto start = Clock::now();
    const int64_t calls = iterations_ * c_.num_hidden_layers * o_.workload.micro_batches;
    while (round_ < calls) {
      M2N_RETURN_IF_ERROR(device_group_ != nullptr ? ServeCallOnDevice() : ServeCall());
      InjectExpertDeath(o_, g_, round_);
    }
    if (device_group_ != nullptr) {
      M2N_RETURN_IF_ERROR(experts_->SyncDevice().WithContext(Where(g_, "device path")));
      M2N_RETURN_IF_ERROR(
          CloseDeviceGroup(ep_, device_group_, o_).WithContext(Where(g_, "device path")));
    }
    wall_s_ = Seconds(start, Clock::now());
    M2N_RETURN_IF_ERROR(ReceiveFinish());
    return SendReports();
  }

 private:
  // One EP call: every attention worker's rows of (iteration, layer, micro-batch) round_, grouped
  // by expert; each expert over its rows; the unweighted outputs back.
  m2n::Status ServeCall() {
    const int m = o_.workload.micro_batches, L = c_.num_hidden_layers;
    const int layer = static_cast<int>(round_ / m % L);
    m2n::StatusOr<m2n::ExpertBatch> batch = m2n::ExpertBatch{};
    {
      Timed t(&wait_s_);
      batch = ep_->ReceiveDispatch(CallDeadline(o_));
    }
    M2N_RETURN_IF_ERROR(batch.status().WithContext(Where(g_, "dispatch")));
    if (batch->call != static_cast<uint64_t>(round_)) {
      return m2n::DataLossError(
          Where(g_, "dispatch") + ": the EP layer delivered call " + std::to_string(batch->call) +
          ", expected call " + std::to_string(round_) + " (" +
          Step(round_ / (int64_t{m} * L), layer, static_cast<int>(round_ % m)) + ")");
    }
    {
      Timed t(&compute_s_);
      y_.resize(static_cast<size_t>(std::max(batch->rows, 1)) *
                static_cast<size_t>(c_.hidden_size));
      M2N_RETURN_IF_ERROR(experts_->ForwardGrouped(layer, *batch, y_.data()));
      rows_ += TokensIn(*batch);
    }
    Timed t(&send_s_);
    M2N_RETURN_IF_ERROR(
        ep_->Combine(y_.data(), CallDeadline(o_)).WithContext(Where(g_, "combine")));
    ++round_;
    return m2n::OkStatus();
  }

  // The device path's call: the batch stays in device memory; the host waits only for its counts
  // (cuBLAS takes host sizes), timed as the wait. The layer checks the call numbers on the device.
  m2n::Status ServeCallOnDevice() {
    const int layer = static_cast<int>(round_ / o_.workload.micro_batches % c_.num_hidden_layers);
    void* stream = experts_->device_stream();
    m2n::DeviceExpertBatch batch;
    M2N_RETURN_IF_ERROR(
        ep_->ReceiveDispatchOnStream(&batch, stream).WithContext(Where(g_, "dispatch")));
    {
      Timed t(&wait_s_);
      M2N_RETURN_IF_ERROR(experts_->SyncDevice().WithContext(Where(g_, "dispatch")));
    }
    const float* y = nullptr;
    {
      Timed t(&compute_s_);
      M2N_RETURN_IF_ERROR(experts_->ForwardGroupedOnDevice(layer, batch, &y));
      rows_ += batch.host_counts[batch.experts.size()];  // (token, local expert) rows
    }
    Timed t(&send_s_);
    M2N_RETURN_IF_ERROR(ep_->CombineOnStream(y, stream).WithContext(Where(g_, "combine")));
    ++round_;
    return m2n::OkStatus();
  }

  // Tokens received (a token routed to two of this worker's experts arrived once: it counts once).
  int64_t TokensIn(const m2n::ExpertBatch& b) {
    const int64_t stamp = round_ + 1;
    int64_t tokens = 0;
    for (const m2n::ExpertRowSource& s : b.sources) {
      int64_t& mark =
          seen_[static_cast<size_t>(s.rank) * static_cast<size_t>(o_.workload.max_tokens) +
                static_cast<size_t>(s.token)];
      tokens += mark != stamp ? 1 : 0;
      mark = stamp;
    }
    return tokens;
  }

  // The attention workers' finish: after the last EP call, so both sides agree where it ended.
  m2n::Status ReceiveFinish() {
    std::vector<m2n::Message> got(attention_.size());
    M2N_RETURN_IF_ERROR(
        g_.Receive(attention_, got, CallDeadline(o_)).WithContext(Where(g_, "finish")));
    m2n::Status status;
    for (const m2n::Message& msg : got) {
      if (status.ok())
        status = CheckMessage(msg.data, msg.length, msg.peer, MessageKind::kFinish, Header{});
    }
    M2N_RETURN_IF_ERROR(g_.Release(got));
    return status.WithContext(Where(g_, "finish"));
  }

  // Reports: the first expert worker forwards the attention workers' to rank 0.
  m2n::Status SendReports() {
    std::vector<Json> attention_reports;
    if (g_.rank() == g_.num_senders()) {
      for (int a : attention_) {
        M2N_ASSIGN_OR_RETURN(Json r, ReceiveReport(g_, a, o_));
        attention_reports.push_back(std::move(r));
      }
    }
    M2N_RETURN_IF_ERROR(
        SendReport(g_, attention_[0], Report().Dump(), send_[0], send_.slot_bytes, o_));
    for (const Json& r : attention_reports) {
      M2N_RETURN_IF_ERROR(SendReport(g_, attention_[0], r.Dump(), send_[0], send_.slot_bytes, o_));
    }
    return m2n::OkStatus();
  }

  m2n::Status SetUp() {
    const int worker = g_.rank() - g_.num_senders();
    for (int e = 0; e < c_.num_local_experts; ++e) {
      if (ExpertOwner(e, g_.num_receivers()) == worker) held_.push_back(e);
    }
    ComputeOptions co{.threads = o_.threads,
                      .micro_batches = o_.workload.micro_batches,
                      .max_tokens = o_.workload.max_tokens,
                      .kv_slots = 0,
                      .max_context = 0,
                      .local_rank = LocalRank(g_)};
    M2N_ASSIGN_OR_RETURN(experts_, MakeWorkerExperts(o_, held_, co));
    M2N_ASSIGN_OR_RETURN(iterations_, RunIterations(o_));
    if (DevicePath(o_)) {
      M2N_ASSIGN_OR_RETURN(device_group_, MakeDeviceGroup(g_, o_));
    }
    M2N_ASSIGN_OR_RETURN(ep_, m2n::ExpertParallel::Create(
                                  device_group_ != nullptr ? *device_group_ : g_, EpOptions(o_)));
    attention_.assign(g_.peers().begin(), g_.peers().end());
    M2N_RETURN_IF_ERROR(send_.Register(g_, attention_.size()));
    seen_.assign(attention_.size() * static_cast<size_t>(o_.workload.max_tokens), 0);
    return m2n::OkStatus();
  }

  Json Report() const {
    Json r = Json::Object();
    r.Set("role", Json::String("expert"));
    r.Set("ep_path", Json::String(device_group_ != nullptr ? "device" : "host"));
    r.Set("rank", Json::Number(g_.rank()));
    r.Set("backend", Json::String(experts_->name()));
    Json held = Json::Array();
    for (int e : held_) held.Push(Json::Number(e));
    r.Set("experts", std::move(held));
    r.Set("wall_s", Json::Number(wall_s_));
    r.Set("compute_s", Json::Number(compute_s_));
    r.Set("send_s", Json::Number(send_s_));
    r.Set("wait_s", Json::Number(wait_s_));
    r.Set("rounds", Json::Number(static_cast<double>(round_)));
    r.Set("rows", Json::Number(static_cast<double>(rows_)));
    return r;
  }

  m2n::Group& g_;
  const PipelineOptions& o_;
  const ModelConfig& c_;
  std::vector<int> held_;
  std::unique_ptr<ExpertCompute> experts_;
  std::unique_ptr<m2n::Group> device_group_;  // the device path's (null: the host path)
  std::unique_ptr<m2n::ExpertParallel> ep_;  // on device_group_ when there is one, else on g_
  std::vector<int> attention_;
  SendBuffers send_;  // one report buffer per attention worker
  std::vector<float> y_;  // the current call's expert outputs
  std::vector<int64_t> seen_;  // [attention worker][token]: the last call that token arrived in
  int64_t iterations_ = 0;  // the run's, pipeline.h
  int64_t round_ = 0;  // EP calls served
  int64_t rows_ = 0;  // tokens received
  double wall_s_ = 0, compute_s_ = 0, send_s_ = 0, wait_s_ = 0;
};

}  // namespace

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

m2n::Status RunAttentionWorker(m2n::Group& group, const PipelineOptions& options, Json* summary) {
  return AttentionWorker(group, options).Run(summary);
}

m2n::Status RunExpertWorker(m2n::Group& group, const PipelineOptions& options) {
  return ExpertWorker(group, options).Run();
}

}  // namespace moe

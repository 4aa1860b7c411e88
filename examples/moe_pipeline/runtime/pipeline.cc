// The disaggregated pipeline's two workers (pipeline.h describes the schedule): the attention
// worker, which serves requests and dispatches each layer's tokens to the expert workers, and the
// expert worker, which runs its experts over every attention worker's tokens and sends the combines
// back. The report transfer is runtime/report.cc's, the check reference/check.cc's, the injected
// faults runtime/fault.cc's.
#include "runtime/pipeline.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <optional>
#include <vector>

#include "compute/compute.h"
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
                    .local_rank = local_rank};
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

// ---- Attention worker ----

class AttentionWorker {
 public:
  AttentionWorker(m2n::Group& group, const PipelineOptions& o) : g_(group), o_(o), c_(o.config) {}

  m2n::Status Run(Json* summary) {
    M2N_RETURN_IF_ERROR(SetUp());
    M2N_RETURN_IF_ERROR(g_.Barrier(CallDeadline(o_)));
    start_ = Clock::now();
    while (!workload_->finished()) M2N_RETURN_IF_ERROR(Iteration());
    // No more dispatches: every expert worker stops waiting for this rank.
    for (size_t w = 0; w < experts_.size(); ++w) {
      Header h;
      h.kind = static_cast<uint16_t>(MessageKind::kFinish);
      std::memcpy(send_[w], &h, sizeof(h));
      requests_[w] = {experts_[w], send_[w], sizeof(h)};
    }
    M2N_RETURN_IF_ERROR(g_.Send(requests_, CallDeadline(o_)));
    wall_s_ = Seconds(start_, Clock::now());
    if (o_.progress && g_.rank() == 0 && tty_) std::fprintf(stderr, "\n");

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

 private:
  m2n::Status SetUp() {
    M2N_ASSIGN_OR_RETURN(const ComputeOptions co, MakeServingWorkload(g_, o_, &workload_));
    M2N_ASSIGN_OR_RETURN(compute_, MakeAttentionCompute(o_.backend, c_, o_.weights, co));
    experts_.assign(g_.peers().begin(), g_.peers().end());
    M2N_RETURN_IF_ERROR(send_.Register(g_, experts_.size()));
    requests_.resize(experts_.size());
    combines_.resize(experts_.size());
    const size_t m = static_cast<size_t>(o_.workload.micro_batches);
    sent_rows_.assign(m, std::vector<std::vector<int32_t>>(experts_.size()));
    routing_.resize(m);
    return m2n::OkStatus();
  }

  m2n::Status Iteration() {
    const int m = o_.workload.micro_batches, L = c_.num_hidden_layers;
    std::vector<MicroBatchPlan>& plans = plans_;
    {
      Timed t(&compute_s_);
      plans = workload_->NextIteration(Seconds(start_, Clock::now()));
      for (int i = 0; i < m; ++i)
        M2N_RETURN_IF_ERROR(compute_->Begin(i, plans[static_cast<size_t>(i)].tokens));
    }
    for (int l = 0; l < L; ++l) {
      for (int i = 0; i < m; ++i) {
        if (l > 0) M2N_RETURN_IF_ERROR(ReceiveCombine(i, l - 1));
        M2N_RETURN_IF_ERROR(Dispatch(i, l));
      }
    }
    for (int i = 0; i < m; ++i) M2N_RETURN_IF_ERROR(ReceiveCombine(i, L - 1));
    {
      Timed t(&compute_s_);
      const double now = Seconds(start_, Clock::now());
      for (int i = 0; i < m; ++i) {
        const MicroBatchPlan& plan = plans[static_cast<size_t>(i)];
        logits_.resize(plan.logit_rows.size() * static_cast<size_t>(c_.vocab_size));
        M2N_RETURN_IF_ERROR(compute_->Logits(i, plan.logit_rows, logits_.data()));
        workload_->Complete(plan, logits_, now, &tbt_ms_, &ttft_ms_);
      }
    }
    ++iteration_;
    if (o_.progress && g_.rank() == 0) ShowProgress();
    return m2n::OkStatus();
  }

  m2n::Status Dispatch(int mb, int layer) {
    Routing& routing = routing_[static_cast<size_t>(mb)];
    {
      Timed t(&compute_s_);
      M2N_RETURN_IF_ERROR(compute_->AttentionAndGate(mb, layer, &routing));
      // The gate's choice, for the check (a routing bug after this point is the check's to catch).
      M2N_RETURN_IF_ERROR(workload_->RecordRouting(plans_[static_cast<size_t>(mb)], layer,
                                                   c_.num_hidden_layers, routing));
      InjectRoutingFault(o_, &routing);
      const int N = static_cast<int>(experts_.size());
      for (int w = 0; w < N; ++w) {
        std::vector<int32_t>& rows = sent_rows_[static_cast<size_t>(mb)][static_cast<size_t>(w)];
        std::byte* msg = send_[static_cast<size_t>(w)];
        const DispatchLayout layout =
            WriteDispatch(routing, w, N, c_.hidden_size, iteration_, layer, mb, &rows, msg);
        M2N_RETURN_IF_ERROR(
            compute_->GatherRows(mb, rows, reinterpret_cast<float*>(msg + layout.x)));
        requests_[static_cast<size_t>(w)] = {experts_[static_cast<size_t>(w)], msg, layout.bytes};
        rows_dispatched_ += static_cast<int64_t>(rows.size());
      }
    }
    Timed t(&send_s_);
    return g_.Send(requests_, CallDeadline(o_)).WithContext(Where(g_, "dispatch"));
  }

  m2n::Status ReceiveCombine(int mb, int layer) {
    {
      Timed t(&wait_s_);
      M2N_RETURN_IF_ERROR(
          g_.Receive(experts_, combines_, CallDeadline(o_)).WithContext(Where(g_, "combine")));
    }
    Timed t(&compute_s_);
    Header want;
    want.iteration = static_cast<uint32_t>(iteration_);
    want.layer = static_cast<uint16_t>(layer);
    want.micro_batch = static_cast<uint16_t>(mb);
    want.hidden = static_cast<uint32_t>(c_.hidden_size);
    m2n::Status status;
    for (size_t w = 0; w < experts_.size() && status.ok(); ++w) {
      const m2n::Message& msg = combines_[w];
      status = CheckMessage(msg.data, msg.length, msg.peer, MessageKind::kCombine, want);
      if (!status.ok()) break;
      const Header h = ReadHeader(msg.data);
      const std::vector<int32_t>& sent = sent_rows_[static_cast<size_t>(mb)][w];
      const CombineLayout layout(h.rows, h.hidden);
      if (h.rows != sent.size() ||
          (!sent.empty() &&
           std::memcmp(msg.data + layout.rows, sent.data(), sent.size() * 4) != 0)) {
        status = m2n::DataLossError("combine from rank " + std::to_string(msg.peer) +
                                    " answers other tokens than " + "were dispatched to it (" +
                                    std::to_string(h.rows) + " rows, " +
                                    std::to_string(sent.size()) + " sent)");
        break;
      }
      status =
          compute_->ScatterAddRows(mb, sent, reinterpret_cast<const float*>(msg.data + layout.y));
    }
    M2N_RETURN_IF_ERROR(g_.Release(combines_));
    return status;
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
    r.Set("rank", Json::Number(g_.rank()));
    r.Set("backend", Json::String(compute_->name()));
    r.Set("wall_s", Json::Number(wall_s_));
    r.Set("compute_s", Json::Number(compute_s_));
    r.Set("send_s", Json::Number(send_s_));
    r.Set("wait_s", Json::Number(wait_s_));
    r.Set("iterations", Json::Number(static_cast<double>(iteration_)));
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
  std::vector<int> experts_;
  SendBuffers send_;  // one send buffer per expert worker
  std::vector<m2n::SendRequest> requests_;
  std::vector<m2n::Message> combines_;
  std::vector<std::vector<std::vector<int32_t>>> sent_rows_;  // [mb][expert worker]
  std::vector<MicroBatchPlan> plans_;  // this iteration's
  std::vector<Routing> routing_;
  std::vector<float> logits_;
  Clock::time_point start_;
  int64_t iteration_ = 0;
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
    std::vector<int> active(attention_);
    while (!active.empty()) {
      M2N_RETURN_IF_ERROR(ServeRound(active));
      InjectExpertDeath(o_, g_, round_);
    }
    wall_s_ = Seconds(start, Clock::now());
    return SendReports();
  }

 private:
  // One round: the next dispatch from each of `active` (those still running; a FINISH drops one),
  // the experts over all their tokens, a combine back to each.
  m2n::Status ServeRound(std::vector<int>& active) {
    const int m = o_.workload.micro_batches, L = c_.num_hidden_layers;
    got_.resize(active.size());
    {
      Timed t(&wait_s_);
      M2N_RETURN_IF_ERROR(
          g_.Receive(active, got_, CallDeadline(o_)).WithContext(Where(g_, "dispatch")));
    }
    Header want;
    want.iteration = static_cast<uint32_t>(round_ / (int64_t{m} * L));
    want.layer = static_cast<uint16_t>(round_ / m % L);
    want.micro_batch = static_cast<uint16_t>(round_ % m);
    want.hidden = static_cast<uint32_t>(c_.hidden_size);
    inputs_.clear();
    answers_.clear();
    std::vector<int> still;
    m2n::Status status;
    {
      Timed t(&compute_s_);
      for (size_t i = 0; i < got_.size() && status.ok(); ++i) {
        const m2n::Message& msg = got_[i];
        if (msg.length >= sizeof(Header) &&
            ReadHeader(msg.data).kind == static_cast<uint16_t>(MessageKind::kFinish)) {
          continue;
        }
        still.push_back(active[i]);
        status = TakeDispatch(msg, want);
      }
      if (status.ok() && !inputs_.empty())
        status = experts_->Forward(want.layer, c_.num_experts_per_tok, inputs_);
    }
    if (status.ok() && !answers_.empty()) {
      Timed t(&send_s_);
      status = g_.Send(answers_, CallDeadline(o_)).WithContext(Where(g_, "combine"));
    }
    M2N_RETURN_IF_ERROR(g_.Release(got_));
    M2N_RETURN_IF_ERROR(status);
    if (!inputs_.empty()) ++round_;
    active = std::move(still);
    return m2n::OkStatus();
  }

  // Checks one dispatch against `want`, writes its combine's header and expert ids, and queues its
  // rows for the experts (inputs_) and its combine for the send (answers_).
  m2n::Status TakeDispatch(const m2n::Message& msg, const Header& want) {
    M2N_RETURN_IF_ERROR(CheckMessage(msg.data, msg.length, msg.peer, MessageKind::kDispatch, want));
    const Header h = ReadHeader(msg.data);
    const int top_k = c_.num_experts_per_tok;
    if (h.top_k != top_k) {
      return m2n::DataLossError("dispatch from rank " + std::to_string(msg.peer) + " has top_k " +
                                std::to_string(h.top_k) + ", the model " + std::to_string(top_k));
    }
    const DispatchLayout in(h.rows, h.top_k, h.hidden);
    const CombineLayout out(h.rows, h.hidden);
    std::byte* answer = send_[static_cast<size_t>(Index(msg.peer))];
    Header a = h;
    a.kind = static_cast<uint16_t>(MessageKind::kCombine);
    std::memcpy(answer, &a, sizeof(a));
    std::memcpy(answer + out.rows, msg.data + in.rows, size_t{h.rows} * 4);
    inputs_.push_back({static_cast<int>(h.rows), reinterpret_cast<const float*>(msg.data + in.x),
                       reinterpret_cast<const int32_t*>(msg.data + in.experts),
                       reinterpret_cast<const float*>(msg.data + in.weights),
                       reinterpret_cast<float*>(answer + out.y)});
    answers_.push_back({msg.peer, answer, out.bytes});
    rows_ += h.rows;
    return m2n::OkStatus();
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
    attention_.assign(g_.peers().begin(), g_.peers().end());
    M2N_RETURN_IF_ERROR(send_.Register(g_, attention_.size()));
    return m2n::OkStatus();
  }

  int Index(int attention_rank) const { return attention_rank; }  // attention ranks are [0, A)

  Json Report() const {
    Json r = Json::Object();
    r.Set("role", Json::String("expert"));
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
  std::vector<int> attention_;
  SendBuffers send_;  // one combine buffer per attention worker
  // The current round's messages, expert inputs and combines (kept to reuse their memory).
  std::vector<m2n::Message> got_;
  std::vector<ExpertInput> inputs_;
  std::vector<m2n::SendRequest> answers_;
  int64_t round_ = 0;
  int64_t rows_ = 0;
  double wall_s_ = 0, compute_s_ = 0, send_s_ = 0, wait_s_ = 0;
};

}  // namespace

size_t SlotBytesFor(const PipelineOptions& o) {
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

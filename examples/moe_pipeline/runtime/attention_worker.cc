// The disaggregated pipeline's attention worker (pipeline.h describes the schedule): it serves its
// requests and, per layer and micro-batch, dispatches the tokens to the expert workers through
// m2n::ExpertParallel and adds the top-k weighted sum that comes back. The report transfer is
// runtime/report.cc's, the check reference/check.cc's, the injected faults runtime/fault.cc's.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <numeric>
#include <span>
#include <utility>
#include <vector>

#include "compute/compute.h"
#include "m2n/ep.h"
#include "reference/check.h"
#include "runtime/fault.h"
#include "runtime/pipeline.h"
#include "runtime/report.h"
#include "runtime/timing.h"
#include "runtime/wire.h"
#include "runtime/workers.h"

namespace moe {
namespace {

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
    times_.wall_s = Seconds(start_, Clock::now());
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
      device_path_ = true;
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
      Timed t(&times_.compute_s);
      plans_ = workload_->NextIteration(Seconds(start_, Clock::now()));
      for (int i = 0; i < m; ++i)
        M2N_RETURN_IF_ERROR(compute_->Begin(i, plans_[static_cast<size_t>(i)].tokens));
    }
    M2N_RETURN_IF_ERROR(Layers());
    if (device_group_ != nullptr) M2N_RETURN_IF_ERROR(RecordDeviceRouting());
    {
      Timed t(&times_.compute_s);
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
      Timed t(&times_.compute_s);
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
    Timed t(&times_.send_s);
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
      Timed t(&times_.wait_s);
      M2N_RETURN_IF_ERROR(
          ep_->ReceiveCombine(out_.data(), CallDeadline(o_)).WithContext(Where(g_, "combine")));
    }
    const int tokens = tokens_[static_cast<size_t>(mb)];
    if (tokens == 0) return m2n::OkStatus();
    Timed t(&times_.compute_s);
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
      Timed t(&times_.compute_s);
      M2N_RETURN_IF_ERROR(compute_->AttentionAndGateOnDevice(mb, layer, &d));
      tokens = static_cast<int>(plans_[static_cast<size_t>(mb)].tokens.size());
    }
    in_flight_.push_back({layer, mb});
    Timed t(&times_.send_s);
    M2N_RETURN_IF_ERROR(compute_->BeforeEpCall(mb, true));
    M2N_RETURN_IF_ERROR(ep_->DispatchOnStream(d.x, tokens, d.topk_ids, d.topk_weights, d.stream)
                            .WithContext(Where(g_, "dispatch")));
    return compute_->AfterEpCall(mb, true);
  }

  m2n::Status ReceiveCombineOnDevice(int mb) {
    const DeviceDispatch& d = device_[static_cast<size_t>(mb)];
    {
      Timed t(&times_.wait_s);
      M2N_RETURN_IF_ERROR(compute_->BeforeEpCall(mb, false));
      M2N_RETURN_IF_ERROR(
          ep_->ReceiveCombineOnStream(d.combined, d.stream).WithContext(Where(g_, "combine")));
      M2N_RETURN_IF_ERROR(compute_->AfterEpCall(mb, false));
    }
    Timed t(&times_.compute_s);
    return compute_->AddCombinedOnDevice(mb, tokens_[static_cast<size_t>(mb)]);
  }

  // The gate's choices of this iteration, for the check, from their pinned host copies (one wait
  // for the compute stream, which has waited for every micro-batch's combine).
  m2n::Status RecordDeviceRouting() {
    Timed t(&times_.wait_s);
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
    r.Set("ep_path", Json::String(device_path_ ? "device" : "host"));
    r.Set("rank", Json::Number(g_.rank()));
    r.Set("backend", Json::String(compute_->name()));
    times_.Report(r);
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
  bool device_path_ = false;  // for the report: device_group_ is closed before it
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
  ProcessTimes times_;
  double next_progress_s_ = 0;
  const bool tty_ = isatty(2) != 0;
  std::vector<double> tbt_ms_, ttft_ms_;
};

}  // namespace

m2n::Status RunAttentionWorker(m2n::Group& group, const PipelineOptions& options, Json* summary) {
  return AttentionWorker(group, options).Run(summary);
}

}  // namespace moe

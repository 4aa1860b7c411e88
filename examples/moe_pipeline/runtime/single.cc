// The single-process path (single.h): per iteration and micro-batch, each layer's attention and
// gate, then every routed token through this process's experts and back into the residual.
#include "runtime/single.h"

#include <chrono>
#include <memory>
#include <numeric>
#include <vector>

#include "compute/compute.h"
#include "reference/check.h"
#include "runtime/fault.h"
#include "runtime/timing.h"
#include "runtime/workload.h"

namespace moe {
namespace {

class SingleProcess {
 public:
  explicit SingleProcess(const PipelineOptions& o) : o_(o), c_(o.config) {}

  m2n::Status Run(Json* summary) {
    M2N_ASSIGN_OR_RETURN(const ComputeOptions co, MakeServingWorkload(0, 0, o_, &workload_));
    M2N_ASSIGN_OR_RETURN(attention_, MakeAttentionCompute(o_.backend, c_, o_.weights, co));
    std::vector<int> all(static_cast<size_t>(c_.num_local_experts));
    std::iota(all.begin(), all.end(), 0);
    M2N_ASSIGN_OR_RETURN(experts_, MakeWorkerExperts(o_, all, co));
    start_ = Clock::now();
    while (!workload_->finished()) M2N_RETURN_IF_ERROR(Iteration());
    const double wall_s = Seconds(start_, Clock::now());
    Json r = Json::Object();
    r.Set("role", Json::String("single"));
    r.Set("rank", Json::Number(0));
    r.Set("backend", Json::String(experts_->name()));
    ProcessTimes{.wall_s = wall_s, .compute_s = wall_s}.Report(r);  // nothing to send or wait for
    r.Set("iterations", Json::Number(static_cast<double>(iteration_)));
    r.Set("layers", Json::Number(c_.num_hidden_layers));
    SetWorkloadReport(r, *workload_, tbt_ms_, ttft_ms_);
    // The expert side's counters (the offload cache's) are printed when it is destroyed: before
    // the check's output, as a worker's are.
    experts_.reset();
    if (o_.check)
      r.Set("check", CheckAgainstReference(o_.config, o_.weights, o_.backend, *workload_));
    Json all_reports = Json::Array();
    all_reports.Push(std::move(r));
    *summary = std::move(all_reports);
    return m2n::OkStatus();
  }

 private:
  m2n::Status Iteration() {
    const int m = o_.workload.micro_batches, L = c_.num_hidden_layers;
    const std::vector<MicroBatchPlan> plans =
        workload_->NextIteration(Seconds(start_, Clock::now()));
    for (int i = 0; i < m; ++i)
      M2N_RETURN_IF_ERROR(attention_->Begin(i, plans[static_cast<size_t>(i)].tokens));
    for (int i = 0; i < m; ++i) {
      for (int l = 0; l < L; ++l) M2N_RETURN_IF_ERROR(Layer(i, l, plans[static_cast<size_t>(i)]));
    }
    const double now = Seconds(start_, Clock::now());
    for (int i = 0; i < m; ++i) {
      const MicroBatchPlan& plan = plans[static_cast<size_t>(i)];
      logits_.resize(plan.logit_rows.size() * static_cast<size_t>(c_.vocab_size));
      M2N_RETURN_IF_ERROR(attention_->Logits(i, plan.logit_rows, logits_.data()));
      workload_->Complete(plan, logits_, now, &tbt_ms_, &ttft_ms_);
    }
    ++iteration_;
    return m2n::OkStatus();
  }

  // Every token has all of its top-k experts here: the whole micro-batch is one expert input.
  m2n::Status Layer(int mb, int layer, const MicroBatchPlan& plan) {
    Routing routing;
    M2N_RETURN_IF_ERROR(attention_->AttentionAndGate(mb, layer, &routing));
    M2N_RETURN_IF_ERROR(workload_->RecordRouting(plan, layer, c_.num_hidden_layers, routing));
    InjectRoutingFault(o_, &routing);
    const int k = routing.top_k;
    const int tokens = k > 0 ? static_cast<int>(routing.expert.size()) / k : 0;
    const size_t h = static_cast<size_t>(c_.hidden_size);
    rows_.resize(static_cast<size_t>(tokens));
    std::iota(rows_.begin(), rows_.end(), 0);
    x_.resize(static_cast<size_t>(tokens) * h);
    y_.resize(static_cast<size_t>(tokens) * h);
    M2N_RETURN_IF_ERROR(attention_->GatherRows(mb, rows_, x_.data()));
    const ExpertInput input{tokens, x_.data(), routing.expert.data(), routing.weight.data(),
                            y_.data()};
    M2N_RETURN_IF_ERROR(experts_->Forward(layer, k, {&input, 1}));
    return attention_->ScatterAddRows(mb, rows_, y_.data());
  }

  const PipelineOptions& o_;
  const ModelConfig& c_;
  std::unique_ptr<Workload> workload_;
  std::unique_ptr<AttentionCompute> attention_;
  std::unique_ptr<ExpertCompute> experts_;
  std::vector<int32_t> rows_;
  std::vector<float> x_, y_, logits_;
  Clock::time_point start_;
  int64_t iteration_ = 0;
  std::vector<double> tbt_ms_, ttft_ms_;
};

}  // namespace

m2n::Status RunSingleProcess(const PipelineOptions& options, Json* summary) {
  return SingleProcess(options).Run(summary);
}

}  // namespace moe

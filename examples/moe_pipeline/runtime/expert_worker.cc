// The disaggregated pipeline's expert worker (pipeline.h describes the schedule): it runs its
// experts over the ExpertBatch of every attention worker's rows and combines their outputs back,
// until the attention workers' finish; then it sends its report.

#include <algorithm>
#include <chrono>
#include <memory>
#include <utility>
#include <vector>

#include "compute/compute.h"
#include "m2n/ep.h"
#include "runtime/fault.h"
#include "runtime/pipeline.h"
#include "runtime/report.h"
#include "runtime/timing.h"
#include "runtime/wire.h"
#include "runtime/workers.h"

namespace moe {
namespace {

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
    times_.wall_s = Seconds(start, Clock::now());
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
      Timed t(&times_.wait_s);
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
      Timed t(&times_.compute_s);
      y_.resize(static_cast<size_t>(std::max(batch->rows, 1)) *
                static_cast<size_t>(c_.hidden_size));
      M2N_RETURN_IF_ERROR(experts_->ForwardGrouped(layer, *batch, y_.data()));
      rows_ += TokensIn(*batch);
    }
    Timed t(&times_.send_s);
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
      Timed t(&times_.wait_s);
      M2N_RETURN_IF_ERROR(experts_->SyncDevice().WithContext(Where(g_, "dispatch")));
    }
    const float* y = nullptr;
    {
      Timed t(&times_.compute_s);
      M2N_RETURN_IF_ERROR(experts_->ForwardGroupedOnDevice(layer, batch, &y));
      rows_ += batch.host_counts[batch.experts.size()];  // (token, local expert) rows
    }
    Timed t(&times_.send_s);
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
      device_path_ = true;
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
    r.Set("ep_path", Json::String(device_path_ ? "device" : "host"));
    r.Set("rank", Json::Number(g_.rank()));
    r.Set("backend", Json::String(experts_->name()));
    Json held = Json::Array();
    for (int e : held_) held.Push(Json::Number(e));
    r.Set("experts", std::move(held));
    times_.Report(r);
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
  bool device_path_ = false;  // for the report: device_group_ is closed before it
  std::unique_ptr<m2n::ExpertParallel> ep_;  // on device_group_ when there is one, else on g_
  std::vector<int> attention_;
  SendBuffers send_;  // one report buffer per attention worker
  std::vector<float> y_;  // the current call's expert outputs
  std::vector<int64_t> seen_;  // [attention worker][token]: the last call that token arrived in
  int64_t iterations_ = 0;  // the run's, pipeline.h
  int64_t round_ = 0;  // EP calls served
  int64_t rows_ = 0;  // tokens received
  ProcessTimes times_;
};

}  // namespace

m2n::Status RunExpertWorker(m2n::Group& group, const PipelineOptions& options) {
  return ExpertWorker(group, options).Run();
}

}  // namespace moe

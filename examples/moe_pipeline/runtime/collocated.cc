#include "runtime/collocated.h"

#if MOE_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "compute/compute.h"
#include "reference/check.h"
#include "runtime/fault.h"
#include "runtime/report.h"
#include "runtime/timing.h"
#include "runtime/wire.h"
#include "runtime/workload.h"
#endif

namespace moe {

#if !MOE_WITH_NCCL

bool CollocatedAvailable() { return false; }

m2n::Status RunCollocatedRank(m2n::Group&, const PipelineOptions&, Json*) {
  return m2n::UnimplementedError(
      "the collocated baseline needs NCCL and CUDA; this build has neither");
}

#else

namespace {

m2n::Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return m2n::OkStatus();
  return m2n::InternalError(std::string("collocated: ") + what + ": " + cudaGetErrorString(e));
}
m2n::Status Nccl(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return m2n::OkStatus();
  return m2n::InternalError(std::string("collocated: ") + what + ": " + ncclGetErrorString(r));
}
#define MOE_CUDA_OK(expr) M2N_RETURN_IF_ERROR(Cuda((expr), #expr))
#define MOE_NCCL_OK(expr) M2N_RETURN_IF_ERROR(Nccl((expr), #expr))

class CollocatedRank {
 public:
  CollocatedRank(m2n::Group& g, const PipelineOptions& o)
      : g_(g), o_(o), c_(o.config), P_(g.world_size()) {}

  ~CollocatedRank() {
    if (comm_ != nullptr) ncclCommDestroy(comm_);
    for (void* p : {send_dev_, recv_dev_, sizes_dev_}) {
      if (p != nullptr) cudaFree(p);
    }
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  m2n::Status Run(Json* summary) {
    M2N_RETURN_IF_ERROR(SetUp());
    M2N_RETURN_IF_ERROR(g_.Barrier(CallDeadline(o_)));
    start_ = Clock::now();
    while (!all_finished_) M2N_RETURN_IF_ERROR(Iteration());
    times_.wall_s = Seconds(start_, Clock::now());

    Json r = Json::Object();
    r.Set("role", Json::String("collocated"));
    r.Set("rank", Json::Number(g_.rank()));
    r.Set("backend", Json::String(attention_->name()));
    times_.Report(r);  // wait_s: the all-to-all
    r.Set("iterations", Json::Number(static_cast<double>(iteration_)));
    r.Set("layers", Json::Number(c_.num_hidden_layers));
    SetWorkloadReport(r, *workload_, tbt_ms_, ttft_ms_);
    if (o_.check)
      r.Set("check", CheckAgainstReference(o_.config, o_.weights, o_.backend, *workload_));
    if (g_.rank() != 0)
      return SendReport(g_, 0, r.Dump(), report_buffer_.data(), report_buffer_.size(), o_);
    Json all = Json::Array();
    all.Push(std::move(r));
    for (int peer : g_.peers()) {
      M2N_ASSIGN_OR_RETURN(Json other, ReceiveReport(g_, peer, o_));
      all.Push(std::move(other));
    }
    *summary = std::move(all);
    return m2n::OkStatus();
  }

 private:
  m2n::Status SetUp() {
    M2N_ASSIGN_OR_RETURN(const ComputeOptions co, MakeServingWorkload(g_, o_, &workload_));
    const int local = co.local_rank;
    M2N_ASSIGN_OR_RETURN(attention_, MakeAttentionCompute(o_.backend, c_, o_.weights, co));
    for (int e = 0; e < c_.num_local_experts; ++e) {
      if (e % P_ == g_.rank()) held_.push_back(e);
    }
    M2N_ASSIGN_OR_RETURN(experts_, MakeExpertCompute(o_.backend, c_, o_.weights, held_, co));

    // The NCCL id travels from rank 0 (the group's sender) to every other rank over m2n.
    report_buffer_.resize(g_.options().slot_bytes);
    auto region = g_.RegisterMemory(report_buffer_.data(), report_buffer_.size());
    if (!region.ok()) return region.status();
    region_.emplace(std::move(*region));
    ncclUniqueId id;
    if (g_.rank() == 0) {
      MOE_NCCL_OK(ncclGetUniqueId(&id));
      std::memcpy(report_buffer_.data(), &id, sizeof(id));
      std::vector<m2n::SendRequest> sends;
      for (int peer : g_.peers()) sends.push_back({peer, report_buffer_.data(), sizeof(id)});
      M2N_RETURN_IF_ERROR(g_.Send(sends, CallDeadline(o_)));
    } else {
      M2N_ASSIGN_OR_RETURN(m2n::Message m, g_.Receive(0, CallDeadline(o_)));
      const bool ok = m.length == sizeof(id);
      if (ok) std::memcpy(&id, m.data, sizeof(id));
      M2N_RETURN_IF_ERROR(g_.Release(m));
      if (!ok)
        return m2n::DataLossError("collocated: the NCCL id from rank 0 has the wrong length");
    }
    int devices = 0;
    MOE_CUDA_OK(cudaGetDeviceCount(&devices));
    if (devices == 0) return m2n::FailedPreconditionError("collocated: no CUDA device visible");
    MOE_CUDA_OK(cudaSetDevice(local % devices));
    MOE_NCCL_OK(ncclCommInitRank(&comm_, P_, id, g_.rank()));
    MOE_CUDA_OK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    slot_ = WireSlotBytes(o_);
    device_rows_ = o_.backend == "cuda";
    if (device_rows_) {
      const size_t t = static_cast<size_t>(o_.workload.max_tokens);
      const size_t h = static_cast<size_t>(c_.hidden_size);
      dispatch_head_ = DispatchLayout(t, static_cast<size_t>(c_.num_experts_per_tok), h).x;
      combine_head_ = CombineLayout(t, h).y;
    }
    const size_t all = slot_ * static_cast<size_t>(P_);
    MOE_CUDA_OK(cudaMalloc(&send_dev_, all));
    MOE_CUDA_OK(cudaMalloc(&recv_dev_, all));
    MOE_CUDA_OK(cudaMalloc(&sizes_dev_, 2 * sizeof(int64_t) * static_cast<size_t>(P_)));
    send_host_.resize(all);
    recv_host_.resize(all);
    answer_host_.resize(all);
    back_host_.resize(all);
    sent_rows_.assign(static_cast<size_t>(P_), {});
    return m2n::OkStatus();
  }

  m2n::Status Iteration() {
    const int m = o_.workload.micro_batches, L = c_.num_hidden_layers;
    std::vector<MicroBatchPlan> plans;
    {
      const auto t = Clock::now();
      plans = workload_->NextIteration(Seconds(start_, Clock::now()));
      for (int i = 0; i < m; ++i)
        M2N_RETURN_IF_ERROR(attention_->Begin(i, plans[static_cast<size_t>(i)].tokens));
      times_.compute_s += Seconds(t, Clock::now());
    }
    for (int i = 0; i < m; ++i) {
      for (int l = 0; l < L; ++l) M2N_RETURN_IF_ERROR(Layer(i, l, plans[static_cast<size_t>(i)]));
    }
    const auto t = Clock::now();
    const double now = Seconds(start_, t);
    for (int i = 0; i < m; ++i) {
      const MicroBatchPlan& plan = plans[static_cast<size_t>(i)];
      logits_.resize(plan.logit_rows.size() * static_cast<size_t>(c_.vocab_size));
      M2N_RETURN_IF_ERROR(attention_->Logits(i, plan.logit_rows, logits_.data()));
      workload_->Complete(plan, logits_, now, &tbt_ms_, &ttft_ms_);
    }
    times_.compute_s += Seconds(t, Clock::now());
    ++iteration_;
    // Every rank runs the same number of iterations (the all-to-all needs every rank): a finished
    // rank goes on with empty micro-batches until all are done, which one more tiny all-to-all
    // says.
    const int64_t mine = workload_->finished() ? 1 : 0;
    std::vector<int64_t> flags(static_cast<size_t>(P_), mine), theirs(static_cast<size_t>(P_), 0);
    M2N_RETURN_IF_ERROR(ExchangeSizes(flags, &theirs));
    all_finished_ = true;
    for (int64_t f : theirs) all_finished_ = all_finished_ && f == 1;
    return m2n::OkStatus();
  }

  m2n::Status Layer(int mb, int layer, const MicroBatchPlan& plan) {
    const auto t0 = Clock::now();
    Routing routing;
    M2N_RETURN_IF_ERROR(attention_->AttentionAndGate(mb, layer, &routing));
    // The gate's choice, for the check (a routing bug after this point is the check's to catch).
    M2N_RETURN_IF_ERROR(workload_->RecordRouting(plan, layer, c_.num_hidden_layers, routing));
    InjectRoutingFault(o_, &routing);
    const int k = routing.top_k;
    const size_t hidden = static_cast<size_t>(c_.hidden_size);
    std::vector<int64_t> sizes(static_cast<size_t>(P_), 0), heads(sizes);
    for (int p = 0; p < P_; ++p) {
      std::vector<int32_t>& rows = sent_rows_[static_cast<size_t>(p)];
      std::byte* msg = send_host_.data() + static_cast<size_t>(p) * slot_;
      const DispatchLayout layout =
          WriteDispatch(routing, p, P_, c_.hidden_size, iteration_, layer, mb, &rows, msg);
      // The rows go straight into the NCCL send buffer on the GPU backend (Rows()).
      M2N_RETURN_IF_ERROR(attention_->GatherRows(
          mb, rows, reinterpret_cast<float*>(Rows(send_dev_, send_host_, p) + layout.x)));
      sizes[static_cast<size_t>(p)] = static_cast<int64_t>(layout.bytes);
      heads[static_cast<size_t>(p)] = static_cast<int64_t>(device_rows_ ? layout.x : layout.bytes);
    }
    const auto t1 = Clock::now();
    times_.compute_s += Seconds(t0, t1);
    std::vector<int64_t> received;
    M2N_RETURN_IF_ERROR(AllToAll(send_host_, sizes, heads, dispatch_head_, &recv_host_, &received));
    const auto t2 = Clock::now();
    times_.wait_s += Seconds(t1, t2);

    // This rank's experts over every rank's tokens.
    Header want;
    want.iteration = static_cast<uint32_t>(iteration_);
    want.layer = static_cast<uint16_t>(layer);
    want.micro_batch = static_cast<uint16_t>(mb);
    want.hidden = static_cast<uint32_t>(hidden);
    std::vector<ExpertInput> inputs;
    std::vector<int64_t> answer_sizes(static_cast<size_t>(P_), 0), answer_heads(answer_sizes);
    for (int p = 0; p < P_; ++p) {
      const std::byte* msg = recv_host_.data() + static_cast<size_t>(p) * slot_;
      M2N_RETURN_IF_ERROR(CheckMessage(msg, static_cast<size_t>(received[static_cast<size_t>(p)]),
                                       p, MessageKind::kDispatch, want));
      const Header h = ReadHeader(msg);
      const DispatchLayout in(h.rows, h.top_k, h.hidden);
      const CombineLayout out(h.rows, h.hidden);
      std::byte* answer = answer_host_.data() + static_cast<size_t>(p) * slot_;
      Header a = h;
      a.kind = static_cast<uint16_t>(MessageKind::kCombine);
      std::memcpy(answer, &a, sizeof(a));
      std::memcpy(answer + out.rows, msg + in.rows, size_t{h.rows} * 4);
      // The answers are built in the send buffer on the GPU backend: its dispatches have left.
      inputs.push_back({static_cast<int>(h.rows),
                        reinterpret_cast<const float*>(Rows(recv_dev_, recv_host_, p) + in.x),
                        reinterpret_cast<const int32_t*>(msg + in.experts),
                        reinterpret_cast<const float*>(msg + in.weights),
                        reinterpret_cast<float*>(Rows(send_dev_, answer_host_, p) + out.y)});
      answer_sizes[static_cast<size_t>(p)] = static_cast<int64_t>(out.bytes);
      answer_heads[static_cast<size_t>(p)] = static_cast<int64_t>(device_rows_ ? out.y : out.bytes);
    }
    M2N_RETURN_IF_ERROR(experts_->Forward(layer, k, inputs));
    const auto t3 = Clock::now();
    times_.compute_s += Seconds(t2, t3);
    std::vector<int64_t> back;
    M2N_RETURN_IF_ERROR(
        AllToAll(answer_host_, answer_sizes, answer_heads, combine_head_, &back_host_, &back));
    const auto t4 = Clock::now();
    times_.wait_s += Seconds(t3, t4);
    for (int p = 0; p < P_; ++p) {
      const std::byte* msg = back_host_.data() + static_cast<size_t>(p) * slot_;
      M2N_RETURN_IF_ERROR(CheckMessage(msg, static_cast<size_t>(back[static_cast<size_t>(p)]), p,
                                       MessageKind::kCombine, want));
      const std::vector<int32_t>& rows = sent_rows_[static_cast<size_t>(p)];
      const CombineLayout layout(rows.size(), hidden);
      if (ReadHeader(msg).rows != rows.size())
        return m2n::DataLossError("collocated: a combine of the wrong size");
      M2N_RETURN_IF_ERROR(attention_->ScatterAddRows(
          mb, rows, reinterpret_cast<const float*>(Rows(recv_dev_, back_host_, p) + layout.y)));
    }
    times_.compute_s += Seconds(t4, Clock::now());
    return m2n::OkStatus();
  }

  // One int64 to and from every rank.
  m2n::Status ExchangeSizes(const std::vector<int64_t>& out, std::vector<int64_t>* in) {
    auto* d = static_cast<int64_t*>(sizes_dev_);
    MOE_CUDA_OK(cudaMemcpyAsync(d, out.data(), sizeof(int64_t) * out.size(), cudaMemcpyHostToDevice,
                                stream_));
    MOE_NCCL_OK(ncclGroupStart());
    for (int p = 0; p < P_; ++p) {
      MOE_NCCL_OK(ncclSend(d + p, 1, ncclInt64, p, comm_, stream_));
      MOE_NCCL_OK(ncclRecv(d + P_ + p, 1, ncclInt64, p, comm_, stream_));
    }
    MOE_NCCL_OK(ncclGroupEnd());
    in->assign(static_cast<size_t>(P_), 0);
    MOE_CUDA_OK(cudaMemcpyAsync(in->data(), d + P_, sizeof(int64_t) * static_cast<size_t>(P_),
                                cudaMemcpyDeviceToHost, stream_));
    return Cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

  // Where message p's payload rows are: the NCCL buffer `dev` on the GPU backend (rows never
  // cross to the host), else the host copy `host`.
  std::byte* Rows(void* dev, std::vector<std::byte>& host, int p) {
    return (device_rows_ ? static_cast<std::byte*>(dev) : host.data()) +
           static_cast<size_t>(p) * slot_;
  }

  // Message p (sizes[p] bytes at p * slot) to rank p, rank p's message to us in; the count
  // exchange, then grouped NCCL send / recv between the device buffers. Of `out` (host), the first
  // heads[p] bytes of message p go up first (the whole message; on the GPU backend its header and
  // routing, the rows being in send_dev_ already); of each message in, at most in_head bytes come
  // down into `in` (the rows stay in recv_dev_ on the GPU backend).
  m2n::Status AllToAll(const std::vector<std::byte>& out, const std::vector<int64_t>& sizes,
                       const std::vector<int64_t>& heads, size_t in_head,
                       std::vector<std::byte>* in, std::vector<int64_t>* in_sizes) {
    M2N_RETURN_IF_ERROR(ExchangeSizes(sizes, in_sizes));
    auto* send = static_cast<char*>(send_dev_);
    auto* recv = static_cast<char*>(recv_dev_);
    for (int p = 0; p < P_; ++p) {
      MOE_CUDA_OK(cudaMemcpyAsync(
          send + static_cast<size_t>(p) * slot_, out.data() + static_cast<size_t>(p) * slot_,
          static_cast<size_t>(heads[static_cast<size_t>(p)]), cudaMemcpyHostToDevice, stream_));
    }
    MOE_NCCL_OK(ncclGroupStart());
    for (int p = 0; p < P_; ++p) {
      MOE_NCCL_OK(ncclSend(send + static_cast<size_t>(p) * slot_,
                           static_cast<size_t>(sizes[static_cast<size_t>(p)]), ncclChar, p, comm_,
                           stream_));
      MOE_NCCL_OK(ncclRecv(recv + static_cast<size_t>(p) * slot_,
                           static_cast<size_t>((*in_sizes)[static_cast<size_t>(p)]), ncclChar, p,
                           comm_, stream_));
    }
    MOE_NCCL_OK(ncclGroupEnd());
    for (int p = 0; p < P_; ++p) {
      const size_t bytes =
          std::min(static_cast<size_t>((*in_sizes)[static_cast<size_t>(p)]), in_head);
      MOE_CUDA_OK(cudaMemcpyAsync(in->data() + static_cast<size_t>(p) * slot_,
                                  recv + static_cast<size_t>(p) * slot_, bytes,
                                  cudaMemcpyDeviceToHost, stream_));
    }
    return Cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

  m2n::Group& g_;
  const PipelineOptions& o_;
  const ModelConfig& c_;
  const int P_;
  std::unique_ptr<Workload> workload_;
  std::unique_ptr<AttentionCompute> attention_;
  std::unique_ptr<ExpertCompute> experts_;
  std::vector<int> held_;
  std::vector<std::byte> report_buffer_;
  std::optional<m2n::MemoryRegion> region_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* send_dev_ = nullptr;
  void* recv_dev_ = nullptr;
  void* sizes_dev_ = nullptr;
  size_t slot_ = 0;
  // The GPU backend's rows stay in the NCCL buffers; only headers and routing cross to the host,
  // at most these many bytes of a message in (its part before the rows), else whole messages.
  bool device_rows_ = false;
  size_t dispatch_head_ = SIZE_MAX, combine_head_ = SIZE_MAX;
  std::vector<std::byte> send_host_, recv_host_, answer_host_, back_host_;
  std::vector<std::vector<int32_t> > sent_rows_;
  std::vector<float> logits_;
  Clock::time_point start_;
  int64_t iteration_ = 0;
  bool all_finished_ = false;
  ProcessTimes times_;  // wait_s: the all-to-all exchanges
  std::vector<double> tbt_ms_, ttft_ms_;
};

}  // namespace

bool CollocatedAvailable() { return true; }

m2n::Status RunCollocatedRank(m2n::Group& group, const PipelineOptions& options, Json* summary) {
  return CollocatedRank(group, options).Run(summary);
}

#endif

}  // namespace moe

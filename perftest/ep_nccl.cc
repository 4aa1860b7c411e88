// The NCCL baseline of m2n_ep_gpu_perf (ep_nccl.h): the exchanges as grouped ncclSend / ncclRecv,
// the device work in ep_nccl_kernels.cu.
#include "ep_nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "m2n/deadline.h"
#include "ep_nccl_kernels.h"
#include "nccl_baseline.h"

namespace m2n::perf::ep {
namespace {

Status Nccl(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return OkStatus();
  return InternalError(std::string("NCCL: ") + what + ": " + ncclGetErrorString(r) + " (" +
                       ncclGetLastError(nullptr) + ")");
}

Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return OkStatus();
  return InternalError(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}

}  // namespace

struct NcclExpertParallel::State {
  ncclComm_t comm = nullptr;
  Dims d{};
  int rank = 0;
  bool attention = false;
  std::vector<void*> allocations;  // device, freed at the end
  int* counts = nullptr;  // attention: [2n] rows, pairs; expert: [m] received rows
  int* host_counts = nullptr;  // pinned copy of `counts` (attention) / of `out` (expert)
  int* scratch_a = nullptr;  // attention: dest [n * tokens]; expert: grouped_src [m*tokens*top_k]
  int* scratch_b = nullptr;  // attention: pair_pos [tokens * top_k]; expert: slot_of
  int* answer_src = nullptr;  // expert: [m * tokens * top_k]
  int* out = nullptr;  // expert: [1 + m]
  std::byte* send = nullptr;  // attention: records; expert: answers
  std::byte* recv = nullptr;  // attention: answers; expert: records
  std::byte* grouped = nullptr;  // expert: [m * tokens * top_k] rows
  const int32_t* ids = nullptr;  // attention: of the last Dispatch
  const float* weights = nullptr;

  ~State() {
    for (void* p : allocations) cudaFree(p);
    if (host_counts != nullptr) cudaFreeHost(host_counts);
  }
  template <typename T>
  Status Allocate(T** p, size_t count) {
    void* raw = nullptr;
    M2N_RETURN_IF_ERROR(Cuda(cudaMalloc(&raw, std::max<size_t>(count, 1) * sizeof(T)),
                             "cudaMalloc (NCCL baseline scratch)"));
    allocations.push_back(raw);
    *p = static_cast<T*>(raw);
    return OkStatus();
  }
  Status DispatchAttention(const void* x, cudaStream_t s);
  Status DispatchExpert(cudaStream_t s);
};

NcclExpertParallel::NcclExpertParallel(std::unique_ptr<State> state) : state_(std::move(state)) {}
NcclExpertParallel::~NcclExpertParallel() = default;

StatusOr<std::unique_ptr<NcclExpertParallel>> NcclExpertParallel::Create(NcclComm& comm,
                                                                         const EpPerfConfig& c,
                                                                         const Shape& s, int rank) {
  auto st = std::make_unique<State>();
  st->comm = static_cast<ncclComm_t>(comm.get());
  st->rank = rank;
  st->attention = rank < c.m;
  Dims& d = st->d;
  d = Dims{c.m,      c.n,     rank - c.m, s.tokens,
           s.hidden, s.top_k, s.experts,  c.dtype == DataType::kBFloat16,
           0,        0};
  d.row = static_cast<size_t>(s.hidden) * DataTypeBytes(c.dtype);
  d.record = Align16(d.row) + Align16(static_cast<size_t>(s.top_k) * 8);
  const size_t tokens = static_cast<size_t>(s.tokens), pairs = tokens * s.top_k;
  M2N_RETURN_IF_ERROR(Cuda(cudaMallocHost(reinterpret_cast<void**>(&st->host_counts),
                                          sizeof(int) * static_cast<size_t>(2 * c.n + c.m + 1)),
                           "cudaMallocHost (counts)"));
  if (st->attention) {
    M2N_RETURN_IF_ERROR(st->Allocate(&st->counts, 2 * static_cast<size_t>(c.n)));
    M2N_RETURN_IF_ERROR(st->Allocate(&st->scratch_a, static_cast<size_t>(c.n) * tokens));
    M2N_RETURN_IF_ERROR(st->Allocate(&st->scratch_b, pairs));
    M2N_RETURN_IF_ERROR(st->Allocate(&st->send, static_cast<size_t>(c.n) * tokens * d.record));
    M2N_RETURN_IF_ERROR(st->Allocate(&st->recv, static_cast<size_t>(c.n) * pairs * d.row));
  } else {
    const size_t all_pairs = static_cast<size_t>(c.m) * pairs;
    M2N_RETURN_IF_ERROR(st->Allocate(&st->counts, static_cast<size_t>(c.m)));
    M2N_RETURN_IF_ERROR(st->Allocate(&st->scratch_a, all_pairs));
    M2N_RETURN_IF_ERROR(st->Allocate(&st->scratch_b, all_pairs));
    M2N_RETURN_IF_ERROR(st->Allocate(&st->answer_src, all_pairs));
    M2N_RETURN_IF_ERROR(st->Allocate(&st->out, 1 + static_cast<size_t>(c.m)));
    M2N_RETURN_IF_ERROR(st->Allocate(&st->recv, static_cast<size_t>(c.m) * tokens * d.record));
    M2N_RETURN_IF_ERROR(st->Allocate(&st->send, all_pairs * d.row));
    M2N_RETURN_IF_ERROR(st->Allocate(&st->grouped, all_pairs * d.row));
  }
  return std::unique_ptr<NcclExpertParallel>(new NcclExpertParallel(std::move(st)));
}

Status NcclExpertParallel::State::DispatchAttention(const void* x, cudaStream_t s) {
  LaunchRoute(d, ids, scratch_a, counts, scratch_b, static_cast<const std::byte*>(x), weights, send,
              s);
  M2N_RETURN_IF_ERROR(Cuda(cudaGetLastError(), "routing kernels"));
  M2N_RETURN_IF_ERROR(Nccl(ncclGroupStart(), "ncclGroupStart"));
  for (int r = 0; r < d.n; ++r)
    M2N_RETURN_IF_ERROR(Nccl(ncclSend(counts + r, 1, ncclInt32, d.m + r, comm, s), "ncclSend"));
  M2N_RETURN_IF_ERROR(Nccl(ncclGroupEnd(), "ncclGroupEnd (counts)"));
  M2N_RETURN_IF_ERROR(
      Cuda(cudaMemcpyAsync(host_counts, counts, sizeof(int) * 2 * d.n, cudaMemcpyDeviceToHost, s),
           "counts to the host"));
  M2N_RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(s), "waiting for the counts"));
  M2N_RETURN_IF_ERROR(Nccl(ncclGroupStart(), "ncclGroupStart"));
  for (int r = 0; r < d.n; ++r) {
    if (host_counts[r] == 0) continue;
    M2N_RETURN_IF_ERROR(
        Nccl(ncclSend(send + static_cast<size_t>(r) * d.tokens * d.record,
                      static_cast<size_t>(host_counts[r]) * d.record, ncclUint8, d.m + r, comm, s),
             "ncclSend (rows)"));
  }
  return Nccl(ncclGroupEnd(), "ncclGroupEnd (rows)");
}

Status NcclExpertParallel::State::DispatchExpert(cudaStream_t s) {
  M2N_RETURN_IF_ERROR(Nccl(ncclGroupStart(), "ncclGroupStart"));
  for (int a = 0; a < d.m; ++a)
    M2N_RETURN_IF_ERROR(Nccl(ncclRecv(counts + a, 1, ncclInt32, a, comm, s), "ncclRecv"));
  M2N_RETURN_IF_ERROR(Nccl(ncclGroupEnd(), "ncclGroupEnd (counts)"));
  M2N_RETURN_IF_ERROR(
      Cuda(cudaMemcpyAsync(host_counts, counts, sizeof(int) * d.m, cudaMemcpyDeviceToHost, s),
           "counts to the host"));
  M2N_RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(s), "waiting for the counts"));
  M2N_RETURN_IF_ERROR(Nccl(ncclGroupStart(), "ncclGroupStart"));
  for (int a = 0; a < d.m; ++a) {
    if (host_counts[a] == 0) continue;
    M2N_RETURN_IF_ERROR(
        Nccl(ncclRecv(recv + static_cast<size_t>(a) * d.tokens * d.record,
                      static_cast<size_t>(host_counts[a]) * d.record, ncclUint8, a, comm, s),
             "ncclRecv (rows)"));
  }
  M2N_RETURN_IF_ERROR(Nccl(ncclGroupEnd(), "ncclGroupEnd (rows)"));
  LaunchGroup(d, recv, counts, scratch_a, scratch_b, answer_src, out, grouped, s);
  return Cuda(cudaGetLastError(), "grouping kernels");
}

Status NcclExpertParallel::Dispatch(const void* x, const int32_t* ids, const float* weights,
                                    void* stream) {
  State& st = *state_;
  const auto s = static_cast<cudaStream_t>(stream);
  if (!st.attention) return st.DispatchExpert(s);
  st.ids = ids;
  st.weights = weights;
  return st.DispatchAttention(x, s);
}

Status NcclExpertParallel::Combine(void* out, void* stream) {
  State& st = *state_;
  const Dims& d = st.d;
  const auto s = static_cast<cudaStream_t>(stream);
  const size_t block = static_cast<size_t>(d.tokens) * d.top_k;
  if (st.attention) {
    M2N_RETURN_IF_ERROR(Nccl(ncclGroupStart(), "ncclGroupStart"));
    for (int r = 0; r < d.n; ++r) {
      const int pairs = st.host_counts[d.n + r];
      if (pairs == 0) continue;
      M2N_RETURN_IF_ERROR(
          Nccl(ncclRecv(st.recv + r * block * d.row, pairs * d.row, ncclUint8, d.m + r, st.comm, s),
               "ncclRecv (answers)"));
    }
    M2N_RETURN_IF_ERROR(Nccl(ncclGroupEnd(), "ncclGroupEnd (answers)"));
    LaunchWeightedSum(d, st.ids, st.weights, st.scratch_b, st.recv, static_cast<std::byte*>(out),
                      s);
    return Cuda(cudaGetLastError(), "the weighted sum");
  }
  // The answers' sizes: one more wait for the host.
  M2N_RETURN_IF_ERROR(Cuda(
      cudaMemcpyAsync(st.host_counts, st.out, sizeof(int) * (1 + d.m), cudaMemcpyDeviceToHost, s),
      "answer counts to the host"));
  M2N_RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(s), "waiting for the answer counts"));
  LaunchAnswers(d, st.grouped, st.answer_src, st.out, st.send, s);
  M2N_RETURN_IF_ERROR(Cuda(cudaGetLastError(), "the answer kernel"));
  M2N_RETURN_IF_ERROR(Nccl(ncclGroupStart(), "ncclGroupStart"));
  for (int a = 0; a < d.m; ++a) {
    const int pairs = st.host_counts[1 + a];
    if (pairs == 0) continue;
    M2N_RETURN_IF_ERROR(
        Nccl(ncclSend(st.send + a * block * d.row, pairs * d.row, ncclUint8, a, st.comm, s),
             "ncclSend (answers)"));
  }
  return Nccl(ncclGroupEnd(), "ncclGroupEnd (answers)");
}

StatusOr<std::unique_ptr<NcclComm>> NcclComm::Create(HostSegment& segment, int rank, int world,
                                                     int64_t timeout_ms) {
  auto comm = std::unique_ptr<NcclComm>(new NcclComm());
  M2N_ASSIGN_OR_RETURN(ncclComm_t raw, ConnectNccl(segment, rank, world, timeout_ms));
  comm->comm_ = raw;
  return comm;
}

NcclComm::~NcclComm() {
  if (comm_ != nullptr) ncclCommDestroy(static_cast<ncclComm_t>(comm_));
}

}  // namespace m2n::perf::ep

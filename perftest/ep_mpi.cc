// The MPI baseline of m2n_ep_perf (ep_mpi.h).
#include "ep_mpi.h"

// The C API only: Open MPI's C++ bindings are deprecated and warn under -Wextra.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "m2n/deadline.h"

namespace m2n::perf::ep {
namespace {

Status Check(int code, const char* what) {
  if (code == MPI_SUCCESS) return OkStatus();
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  return InternalError(std::string("MPI: ") + what + ": " + std::string(text, size_t(length)));
}

// Polls until `request` completes, yielding the core between polls; bounded.
Status Wait(MPI_Request* request, int64_t timeout_ms, const char* what) {
  const Deadline deadline = Deadline::AfterMs(timeout_ms);
  for (uint64_t polls = 0;; ++polls) {
    int done = 0;
    M2N_RETURN_IF_ERROR(Check(MPI_Test(request, &done, MPI_STATUS_IGNORE), what));
    if (done) return OkStatus();
    sched_yield();
    if ((polls & 63) == 63 && deadline.Expired()) {
      return DeadlineExceededError(std::string("MPI: ") + what + ": not complete after " +
                                   std::to_string(timeout_ms) + " ms");
    }
  }
}

}  // namespace

MpiExpertParallel::MpiExpertParallel(const EpPerfConfig& config, const Shape& shape, int rank)
    : config_(config), shape_(shape), rank_(rank), world_(config.m + config.n) {
  row_bytes_ = size_t(shape.hidden) * DataTypeBytes(config.dtype);
  record_bytes_ = 4 + size_t(shape.top_k) * 8 + row_bytes_;  // token, ids, weights, x
  for (auto* v :
       {&send_rows_, &recv_rows_, &send_bytes_, &recv_bytes_, &send_at_, &recv_at_, &pair_count_}) {
    v->assign(size_t(world_), 0);
  }
}

// Attention rank: one record per (token, expert rank with any of its experts) into send_.
void MpiExpertParallel::Pack(const RankRouting& r) {
  const int k = shape_.top_k;
  std::fill(send_rows_.begin(), send_rows_.end(), 0);
  std::fill(pair_count_.begin(), pair_count_.end(), 0);
  pair_index_.resize(r.ids.size());
  std::vector<int> last(size_t(world_), -1);
  for (int t = 0; t < shape_.tokens; ++t) {
    for (int j = 0; j < k; ++j) {
      const int d = OwnerRank(config_, shape_, r.ids[size_t(t * k + j)]);
      pair_index_[size_t(t * k + j)] = pair_count_[size_t(d)]++;
      if (last[size_t(d)] != t) ++send_rows_[size_t(d)], last[size_t(d)] = t;
    }
  }
  size_t at = 0;
  for (int d = 0; d < world_; ++d) {
    send_at_[size_t(d)] = int(at);
    send_bytes_[size_t(d)] = int(size_t(send_rows_[size_t(d)]) * record_bytes_);
    at += size_t(send_bytes_[size_t(d)]);
  }
  send_.resize(at);
  std::vector<size_t> cursor(send_at_.begin(), send_at_.end());
  for (int t = 0; t < shape_.tokens; ++t) {
    std::fill(last.begin(), last.end(), -1);
    for (int j = 0; j < k; ++j) {
      const int d = OwnerRank(config_, shape_, r.ids[size_t(t * k + j)]);
      if (last[size_t(d)] == t) continue;
      last[size_t(d)] = t;
      std::byte* rec = send_.data() + cursor[size_t(d)];
      cursor[size_t(d)] += record_bytes_;
      std::memcpy(rec, &t, 4);
      for (int i = 0; i < k; ++i) {
        const int32_t e = r.ids[size_t(t * k + i)];
        const bool here = OwnerRank(config_, shape_, e) == d;
        const int32_t id = here ? e : -1;
        const float w = here ? r.weights[size_t(t * k + i)] : 0.0f;
        std::memcpy(rec + 4 + size_t(i) * 4, &id, 4);
        std::memcpy(rec + 4 + size_t(k + i) * 4, &w, 4);
      }
      std::memcpy(rec + 4 + size_t(k) * 8, r.x.data() + size_t(t) * row_bytes_, row_bytes_);
    }
  }
}

// Expert rank: the received records' pairs in grouped order (local expert, source, record, j), and
// where each pair's answer goes in the combine's send buffer (per source: records in order, j
// ascending). Sets send_rows_ / send_bytes_ / send_at_ for the combine.
void MpiExpertParallel::Group() {
  const int k = shape_.top_k;
  int first = -1, local = 0;
  for (int e = 0; e < shape_.experts; ++e) {
    if (OwnerRank(config_, shape_, e) != rank_) continue;
    if (first < 0) first = e;
    ++local;
  }
  std::vector<int> offsets(size_t(local) + 1, 0);
  std::fill(send_rows_.begin(), send_rows_.end(), 0);
  auto id_at = [&](const std::byte* rec, int j) {
    int32_t id;
    std::memcpy(&id, rec + 4 + size_t(j) * 4, 4);
    return id;
  };
  for (int s = 0; s < world_; ++s) {
    for (int r = 0; r < recv_rows_[size_t(s)]; ++r) {
      const std::byte* rec = recv_.data() + size_t(recv_at_[size_t(s)]) + size_t(r) * record_bytes_;
      for (int j = 0; j < k; ++j) {
        if (const int32_t id = id_at(rec, j); id >= 0)
          ++offsets[size_t(id - first) + 1], ++send_rows_[size_t(s)];
      }
    }
  }
  for (int l = 0; l < local; ++l) offsets[size_t(l) + 1] += offsets[size_t(l)];
  size_t at = 0;
  for (int s = 0; s < world_; ++s) {
    send_at_[size_t(s)] = int(at);
    send_bytes_[size_t(s)] = int(size_t(send_rows_[size_t(s)]) * row_bytes_);
    at += size_t(send_bytes_[size_t(s)]);
  }
  send_.resize(at);
  grouped_.resize(size_t(offsets[size_t(local)]) * row_bytes_);
  answer_at_.resize(size_t(offsets[size_t(local)]));
  for (int s = 0; s < world_; ++s) {
    size_t pair = 0;
    for (int r = 0; r < recv_rows_[size_t(s)]; ++r) {
      const std::byte* rec = recv_.data() + size_t(recv_at_[size_t(s)]) + size_t(r) * record_bytes_;
      for (int j = 0; j < k; ++j) {
        const int32_t id = id_at(rec, j);
        if (id < 0) continue;
        const size_t row = size_t(offsets[size_t(id - first)]++);
        std::memcpy(grouped_.data() + row * row_bytes_, rec + 4 + size_t(k) * 8, row_bytes_);
        answer_at_[row] = size_t(send_at_[size_t(s)]) + pair++ * row_bytes_;
      }
    }
  }
}

Status MpiExpertParallel::Dispatch(const RankRouting* routing) {
  routing_ = routing;
  if (routing != nullptr)
    Pack(*routing);
  else
    std::fill(send_rows_.begin(), send_rows_.end(), 0),
        std::fill(send_bytes_.begin(), send_bytes_.end(), 0);
  MPI_Request request;
  M2N_RETURN_IF_ERROR(Check(MPI_Ialltoall(send_rows_.data(), 1, MPI_INT, recv_rows_.data(), 1,
                                          MPI_INT, MPI_COMM_WORLD, &request),
                            "MPI_Ialltoall"));
  M2N_RETURN_IF_ERROR(Wait(&request, config_.timeout_ms, "the count exchange (MPI_Ialltoall)"));
  size_t at = 0;
  for (int s = 0; s < world_; ++s) {
    recv_at_[size_t(s)] = int(at);
    recv_bytes_[size_t(s)] = int(size_t(recv_rows_[size_t(s)]) * record_bytes_);
    at += size_t(recv_bytes_[size_t(s)]);
  }
  recv_.resize(std::max<size_t>(at, 1));
  send_.resize(std::max<size_t>(send_.size(), 1));
  M2N_RETURN_IF_ERROR(Check(
      MPI_Ialltoallv(send_.data(), send_bytes_.data(), send_at_.data(), MPI_BYTE, recv_.data(),
                     recv_bytes_.data(), recv_at_.data(), MPI_BYTE, MPI_COMM_WORLD, &request),
      "MPI_Ialltoallv"));
  M2N_RETURN_IF_ERROR(Wait(&request, config_.timeout_ms, "the dispatch (MPI_Ialltoallv)"));
  if (routing == nullptr) Group();
  return OkStatus();
}

Status MpiExpertParallel::Combine(std::byte* out) {
  if (routing_ == nullptr) {  // expert rank: identity experts, y = the grouped rows
    for (size_t row = 0; row < answer_at_.size(); ++row) {
      std::memcpy(send_.data() + answer_at_[row], grouped_.data() + row * row_bytes_, row_bytes_);
    }
    std::fill(recv_bytes_.begin(), recv_bytes_.end(), 0);
  } else {
    std::fill(send_bytes_.begin(), send_bytes_.end(), 0);
    size_t at = 0;
    for (int d = 0; d < world_; ++d) {
      recv_at_[size_t(d)] = int(at);
      recv_bytes_[size_t(d)] = int(size_t(pair_count_[size_t(d)]) * row_bytes_);
      at += size_t(recv_bytes_[size_t(d)]);
    }
    recv_.resize(std::max<size_t>(at, 1));
  }
  MPI_Request request;
  M2N_RETURN_IF_ERROR(Check(
      MPI_Ialltoallv(send_.data(), send_bytes_.data(), send_at_.data(), MPI_BYTE, recv_.data(),
                     recv_bytes_.data(), recv_at_.data(), MPI_BYTE, MPI_COMM_WORLD, &request),
      "MPI_Ialltoallv"));
  M2N_RETURN_IF_ERROR(Wait(&request, config_.timeout_ms, "the combine (MPI_Ialltoallv)"));
  if (routing_ != nullptr) WeightedSum(out);
  return OkStatus();
}

void MpiExpertParallel::WeightedSum(std::byte* out) const {
  const int k = shape_.top_k, hidden = shape_.hidden;
  std::vector<float> sum(static_cast<size_t>(hidden));
  for (int t = 0; t < shape_.tokens; ++t) {
    std::fill(sum.begin(), sum.end(), 0.0f);
    for (int j = 0; j < k; ++j) {
      const size_t at = size_t(t * k + j);
      const int d = OwnerRank(config_, shape_, routing_->ids[at]);
      const std::byte* y =
          recv_.data() + size_t(recv_at_[size_t(d)]) + size_t(pair_index_[at]) * row_bytes_;
      const float w = routing_->weights[at];
      for (int i = 0; i < hidden; ++i) sum[size_t(i)] += w * LoadElement(y, i, config_.dtype);
    }
    for (int i = 0; i < hidden; ++i)
      StoreElement(sum[size_t(i)], i, config_.dtype, out + size_t(t) * row_bytes_);
  }
}

Status MpiStart(int* argc, char*** argv, int* rank, int* world) {
  M2N_RETURN_IF_ERROR(Check(MPI_Init(argc, argv), "MPI_Init"));
  MPI_Comm_rank(MPI_COMM_WORLD, rank);
  MPI_Comm_size(MPI_COMM_WORLD, world);
  return OkStatus();
}
void MpiStop() { MPI_Finalize(); }
void MpiAbort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::abort();  // MPI_Abort does not return; this tells the compiler so
}
Status MpiBarrier() { return Check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
Status MpiBroadcastInt(int* value) {
  return Check(MPI_Bcast(value, 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Bcast");
}

Status MpiReduceOnRankZero(std::vector<double>& values, bool max) {
  std::vector<double> reduced(values.size());
  M2N_RETURN_IF_ERROR(Check(MPI_Reduce(values.data(), reduced.data(), int(values.size()),
                                       MPI_DOUBLE, max ? MPI_MAX : MPI_MIN, 0, MPI_COMM_WORLD),
                            "MPI_Reduce"));
  values = std::move(reduced);
  return OkStatus();
}

Status MpiSum(int64_t* value) {
  return Check(MPI_Allreduce(MPI_IN_PLACE, value, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD),
               "MPI_Allreduce");
}

std::string MpiVersion() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  MPI_Get_library_version(text, &length);
  std::string v(text, size_t(length));
  return v.substr(0, v.find_first_of(",\n"));
}

}  // namespace m2n::perf::ep

#include "mpi_baseline.h"

// The C API only: Open MPI's C++ bindings are deprecated and warn under -Wextra.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "m2n/deadline.h"

namespace m2n::perf {
namespace {

constexpr int kTagLatency = 1;
constexpr int kTagStream = 2;

std::string MpiErrorText(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  return std::string(text, static_cast<size_t>(length));
}

Status Check(int code, const char* what) {
  if (code == MPI_SUCCESS) return OkStatus();
  return InternalError(std::string("MPI: ") + what + ": " + MpiErrorText(code));
}

// Polls until every request completes: spins for spin_us, then yields the core between polls;
// bounded by `timeout_ms`.
Status WaitAll(std::span<MPI_Request> requests, int64_t timeout_ms, int spin_us, const char* what) {
  const Deadline deadline = Deadline::AfterMs(timeout_ms);
  const auto spin_until = Clock::now() + std::chrono::microseconds(spin_us);
  bool spinning = spin_us > 0;
  for (uint64_t polls = 0;; ++polls) {
    int done = 0;
    M2N_RETURN_IF_ERROR(Check(
        MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE),
        what));
    if (done) return OkStatus();
    if (spinning && (polls & 15) == 15) spinning = Clock::now() < spin_until;
    if (!spinning) sched_yield();
    if ((polls & 63) == 63 && deadline.Expired()) {
      return DeadlineExceededError(std::string("MPI: ") + what + ": not complete after " +
                                   std::to_string(timeout_ms) + " ms (--timeout_ms)");
    }
  }
}

}  // namespace

struct MpiExchange::Requests {
  std::vector<MPI_Request> all;  // [peer_index * depth + slot]
};

Status MpiInit(int* argc, char*** argv) { return Check(MPI_Init(argc, argv), "MPI_Init"); }
void MpiFinalize() { MPI_Finalize(); }
void MpiAbort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}
int MpiRank() {
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}
int MpiWorldSize() {
  int size = -1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

Status MpiBroadcast(std::string& value) {
  int length = static_cast<int>(value.size());
  M2N_RETURN_IF_ERROR(Check(MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Bcast"));
  value.resize(static_cast<size_t>(length));
  return Check(MPI_Bcast(value.data(), length, MPI_CHAR, 0, MPI_COMM_WORLD), "MPI_Bcast");
}

std::string MpiLibraryVersion() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  MPI_Get_library_version(text, &length);
  std::string version(text, static_cast<size_t>(length));
  if (size_t end = version.find_first_of(",\n"); end != std::string::npos) version.resize(end);
  return version;
}

MpiExchange::MpiExchange(std::span<const int> peers, int depth, size_t max_bytes,
                         int64_t timeout_ms, int spin_us)
    : peers_(peers.begin(), peers.end()),
      depth_(depth),
      max_bytes_(max_bytes),
      timeout_ms_(timeout_ms),
      spin_us_(spin_us),
      requests_(new Requests) {
  const size_t bytes = peers_.size() * static_cast<size_t>(depth_) * max_bytes_;
  receive_memory_ = static_cast<std::byte*>(std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096));
  std::memset(receive_memory_, 0, bytes);  // fault the pages in now, not in a timed loop
  requests_->all.assign(peers_.size() * static_cast<size_t>(depth_), MPI_REQUEST_NULL);
}

MpiExchange::~MpiExchange() {
  std::free(receive_memory_);
  delete requests_;
}

std::byte* MpiExchange::ReceiveBuffer(size_t peer_index, int slot) {
  return receive_memory_ +
         (peer_index * static_cast<size_t>(depth_) + static_cast<size_t>(slot)) * max_bytes_;
}

Status MpiExchange::SendToPeers(std::span<const std::byte* const> data, size_t bytes) {
  std::span<MPI_Request> requests(requests_->all.data(), peers_.size());
  for (size_t i = 0; i < peers_.size(); ++i) {
    M2N_RETURN_IF_ERROR(Check(MPI_Isend(data[i], static_cast<int>(bytes), MPI_BYTE, peers_[i],
                                        kTagLatency, MPI_COMM_WORLD, &requests[i]),
                              "MPI_Isend"));
  }
  return WaitAll(requests, timeout_ms_, spin_us_, "MPI_Isend to every peer");
}

Status MpiExchange::ReceiveFromPeers(size_t bytes, std::span<std::span<std::byte>> views) {
  std::span<MPI_Request> requests(requests_->all.data(), peers_.size());
  for (size_t i = 0; i < peers_.size(); ++i) {
    M2N_RETURN_IF_ERROR(Check(MPI_Irecv(ReceiveBuffer(i, 0), static_cast<int>(bytes), MPI_BYTE,
                                        peers_[i], kTagLatency, MPI_COMM_WORLD, &requests[i]),
                              "MPI_Irecv"));
  }
  M2N_RETURN_IF_ERROR(WaitAll(requests, timeout_ms_, spin_us_, "MPI_Irecv from every peer"));
  for (size_t i = 0; i < peers_.size(); ++i) views[i] = {ReceiveBuffer(i, 0), bytes};
  return OkStatus();
}

// Window of depth_ outstanding sends per peer: message msg to peer i reuses request slot msg %
// depth once the message depth_ before it has completed.
Status MpiExchange::StreamSend(size_t bytes, int count, const Source& source) {
  auto& all = requests_->all;
  for (int msg = 0; msg < count; ++msg) {
    const int slot = msg % depth_;
    for (size_t i = 0; i < peers_.size(); ++i) {
      MPI_Request& request = all[i * static_cast<size_t>(depth_) + static_cast<size_t>(slot)];
      M2N_RETURN_IF_ERROR(WaitAll({&request, 1}, timeout_ms_, spin_us_, "MPI_Isend window"));
      M2N_RETURN_IF_ERROR(
          Check(MPI_Isend(source(msg, static_cast<int>(i)), static_cast<int>(bytes), MPI_BYTE,
                          peers_[i], kTagStream, MPI_COMM_WORLD, &request),
                "MPI_Isend"));
    }
  }
  return WaitAll(all, timeout_ms_, spin_us_, "MPI_Isend stream");
}

// depth_ receives pre-posted per peer; MPI's non-overtaking rule matches them in posting order.
Status MpiExchange::StreamReceive(size_t bytes, int count, const Sink& sink) {
  auto& all = requests_->all;
  auto post = [&](int msg, size_t i) {
    const int slot = msg % depth_;
    return Check(
        MPI_Irecv(ReceiveBuffer(i, slot), static_cast<int>(bytes), MPI_BYTE, peers_[i], kTagStream,
                  MPI_COMM_WORLD, &all[i * static_cast<size_t>(depth_) + slot]),
        "MPI_Irecv");
  };
  for (int msg = 0; msg < std::min(count, depth_); ++msg) {
    for (size_t i = 0; i < peers_.size(); ++i) M2N_RETURN_IF_ERROR(post(msg, i));
  }
  for (int msg = 0; msg < count; ++msg) {
    const int slot = msg % depth_;
    for (size_t i = 0; i < peers_.size(); ++i) {
      MPI_Request& request = all[i * static_cast<size_t>(depth_) + static_cast<size_t>(slot)];
      M2N_RETURN_IF_ERROR(WaitAll({&request, 1}, timeout_ms_, spin_us_, "MPI_Irecv stream"));
      sink(msg, static_cast<int>(i), {ReceiveBuffer(i, slot), bytes});
      if (msg + depth_ < count) M2N_RETURN_IF_ERROR(post(msg + depth_, i));
    }
  }
  return OkStatus();
}

}  // namespace m2n::perf

#include "nccl_baseline.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <vector>

namespace m2n::perf {
namespace {

Status Nccl(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return OkStatus();
  return InternalError(std::string("NCCL: ") + what + ": " + ncclGetErrorString(r) + " (" +
                       ncclGetLastError(nullptr) + ")");
}

class NcclExchange final : public GpuExchange {
 public:
  NcclExchange(ncclComm_t comm, std::span<const int> peers, int depth, size_t max_bytes,
               std::byte* buffers)
      : comm_(comm),
        peers_(peers.begin(), peers.end()),
        depth_(depth),
        max_bytes_(max_bytes),
        buffers_(buffers),
        next_(peers_.size(), 0) {}
  ~NcclExchange() override {
    ncclCommDestroy(comm_);
    cudaFree(buffers_);
  }
  std::string_view name() const override { return "NCCL"; }

  Status Send(std::span<const std::byte* const> data, size_t bytes, void* stream) override {
    M2N_RETURN_IF_ERROR(Nccl(ncclGroupStart(), "ncclGroupStart"));
    for (size_t i = 0; i < peers_.size(); ++i) {
      ncclResult_t r =
          ncclSend(data[i], bytes, ncclUint8, peers_[i], comm_, static_cast<cudaStream_t>(stream));
      if (r != ncclSuccess) {
        (void)ncclGroupEnd();
        return Nccl(r, "ncclSend");
      }
    }
    return Nccl(ncclGroupEnd(), "ncclGroupEnd (sends)");
  }

  Status Receive(size_t bytes, std::span<std::byte*> views, void* stream) override {
    M2N_RETURN_IF_ERROR(Nccl(ncclGroupStart(), "ncclGroupStart"));
    for (size_t i = 0; i < peers_.size(); ++i) {
      views[i] =
          buffers_ +
          (i * static_cast<size_t>(depth_) + next_[i]++ % static_cast<size_t>(depth_)) * max_bytes_;
      ncclResult_t r =
          ncclRecv(views[i], bytes, ncclUint8, peers_[i], comm_, static_cast<cudaStream_t>(stream));
      if (r != ncclSuccess) {
        (void)ncclGroupEnd();
        return Nccl(r, "ncclRecv");
      }
    }
    return Nccl(ncclGroupEnd(), "ncclGroupEnd (receives)");
  }

  Status Release(void*) override { return OkStatus(); }

 private:
  ncclComm_t comm_;
  std::vector<int> peers_;
  int depth_;
  size_t max_bytes_;
  std::byte* buffers_;
  std::vector<size_t> next_;
};

}  // namespace

StatusOr<ncclComm*> ConnectNccl(HostSegment& segment, int rank, int world, int64_t timeout_ms) {
  ncclUniqueId id;
  static_assert(sizeof(id) <= 256);
  if (rank == 0) {
    M2N_RETURN_IF_ERROR(Nccl(ncclGetUniqueId(&id), "ncclGetUniqueId"));
    std::memcpy(segment.blob().data(), &id, sizeof id);
  }
  M2N_RETURN_IF_ERROR(segment.Barrier(Deadline::AfterMs(timeout_ms)));
  std::memcpy(&id, segment.blob().data(), sizeof id);
  ncclComm_t comm = nullptr;
  M2N_RETURN_IF_ERROR(Nccl(ncclCommInitRank(&comm, world, id, rank), "ncclCommInitRank"));
  // Everyone has read the id before rank 0 may reuse the blob.
  Status read = segment.Barrier(Deadline::AfterMs(timeout_ms));
  if (!read.ok()) {
    ncclCommDestroy(comm);
    return read;
  }
  return comm;
}

StatusOr<std::unique_ptr<GpuExchange>> MakeNcclExchange(HostSegment& segment, int rank, int world,
                                                        std::span<const int> peers, int depth,
                                                        size_t max_bytes, int64_t timeout_ms) {
  M2N_ASSIGN_OR_RETURN(ncclComm_t comm, ConnectNccl(segment, rank, world, timeout_ms));
  void* buffers = nullptr;
  const size_t bytes = peers.size() * static_cast<size_t>(depth) * max_bytes;
  cudaError_t e = cudaMalloc(&buffers, bytes);
  if (e != cudaSuccess) {
    ncclCommDestroy(comm);
    return InternalError(std::string("CUDA: cudaMalloc (NCCL receive buffers): ") +
                         cudaGetErrorString(e));
  }
  cudaMemset(buffers, 0, bytes);
  return std::unique_ptr<GpuExchange>(
      new NcclExchange(comm, peers, depth, max_bytes, static_cast<std::byte*>(buffers)));
}

std::string NcclVersion() {
  int v = 0;
  ncclGetVersion(&v);
  return "NCCL " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
         std::to_string(v % 100);
}

}  // namespace m2n::perf

#include "transports/verbs/memory.h"

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "transports/wire.h"

#if M2N_VERBS_WITH_CUDA
#include "transports/verbs/cuda_driver.h"
#endif

namespace m2n::transport::verbs {
namespace {

constexpr uint32_t kKeyMagic = 0x4B4E324D;  // "M2NK"
constexpr uint16_t kKeyVersion = 1;
// A region's own MR: local access only. Keys get MRs of their own with remote write (RemoteMr).
constexpr int kLocalAccess = IBV_ACCESS_LOCAL_WRITE;
constexpr int kRemoteAccess = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;

std::string PeerText(int peer, std::string_view what) {
  return "verbs: peer rank " + std::to_string(peer) + ": " + std::string(what);
}

#if M2N_VERBS_WITH_CUDA
StatusOr<ibv_mr*> RegisterCuda(ibv_pd* pd, void* data, size_t size, int access) {
  M2N_ASSIGN_OR_RETURN(const CudaDriver* cuda, CudaDriver::Get());
  std::string why;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t start = reinterpret_cast<uintptr_t>(data) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + size + page - 1) & ~(page - 1);
  int fd = -1;
  CUresult r = cuda->get_handle_for_address_range(&fd, static_cast<CUdeviceptr>(start), end - start,
                                                  CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0);
  if (r == CUDA_SUCCESS) {
    ibv_mr* mr = ibv_reg_dmabuf_mr(pd, reinterpret_cast<uintptr_t>(data) - start, size,
                                   reinterpret_cast<uintptr_t>(data), fd, access);
    const int err = errno;
    close(fd);
    if (mr != nullptr) return mr;
    why = VerbError("ibv_reg_dmabuf_mr", err);
  } else {
    why = cuda->Error("cuMemGetHandleForAddressRange(DMA_BUF_FD)", r);
  }
  ibv_mr* mr = ibv_reg_mr(pd, data, size, access);
  if (mr != nullptr) return mr;
  return UnavailableError("verbs: registering " + std::to_string(size) + " bytes of CUDA memory: " +
                          why + "; then " + VerbError("ibv_reg_mr (needs nvidia-peermem)", errno));
}
#endif

StatusOr<ibv_mr*> RegisterRange(ibv_pd* pd, void* data, size_t size, MemoryKind kind, int access) {
  if (kind == MemoryKind::kCuda) {
#if M2N_VERBS_WITH_CUDA
    return RegisterCuda(pd, data, size, access);
#else
    return UnimplementedError(
        "verbs transport: CUDA memory needs a build with the CUDA toolkit found");
#endif
  }
  ibv_mr* mr = ibv_reg_mr(pd, data, size, access);
  if (mr == nullptr) {
    return UnavailableError(VerbError(
        "ibv_reg_mr of " + std::to_string(size) + " bytes (is `ulimit -l` large enough?)", errno));
  }
  return mr;
}

}  // namespace

bool CudaRegistrationBuilt() { return M2N_VERBS_WITH_CUDA != 0; }

StatusOr<std::unique_ptr<VerbsRegion>> VerbsRegion::Register(std::shared_ptr<Context> ctx,
                                                             void* data, size_t size,
                                                             MemoryKind kind, bool source) {
  if (data == nullptr || size == 0) {
    return InvalidArgumentError("verbs: Register needs a non-null buffer and size > 0");
  }
  if (kind != MemoryKind::kHost && kind != MemoryKind::kCuda) {
    return InvalidArgumentError("verbs: unknown memory kind " +
                                std::to_string(static_cast<int>(kind)));
  }
  M2N_ASSIGN_OR_RETURN(ibv_mr * mr, RegisterRange(ctx->pd(), data, size, kind, kLocalAccess));
  std::unique_ptr<VerbsRegion> region(new VerbsRegion(
      std::move(ctx), mr, static_cast<std::byte*>(data), size, kind, /*owned=*/false));
  region->source_ = source;
  return region;
}

StatusOr<std::unique_ptr<VerbsRegion>> VerbsRegion::Allocate(std::shared_ptr<Context> ctx,
                                                             size_t size, MemoryKind kind) {
  if (size == 0) return InvalidArgumentError("verbs: Allocate needs size > 0");
  if (kind == MemoryKind::kCuda) {
#if M2N_VERBS_WITH_CUDA
    // Device memory of the current CUDA context, zeroed, registered for GPUDirect RDMA.
    M2N_ASSIGN_OR_RETURN(const CudaDriver* cuda, CudaDriver::Get());
    CUdeviceptr device = 0;
    if (CUresult r = cuda->mem_alloc(&device, size); r != CUDA_SUCCESS) {
      return UnavailableError(cuda->Error(
          "cuMemAlloc of " + std::to_string(size) + " bytes (is a CUDA device current?)", r));
    }
    if (CUresult r = cuda->memset_d8(device, 0, size); r != CUDA_SUCCESS) {
      cuda->mem_free(device);
      return UnavailableError(cuda->Error("cuMemsetD8", r));
    }
    auto mr = RegisterCuda(ctx->pd(), reinterpret_cast<void*>(device), size, kLocalAccess);
    if (!mr.ok()) {
      cuda->mem_free(device);
      return mr.status();
    }
    return std::unique_ptr<VerbsRegion>(new VerbsRegion(std::move(ctx), *mr,
                                                        reinterpret_cast<std::byte*>(device), size,
                                                        MemoryKind::kCuda, /*owned=*/true));
#else
    return UnimplementedError(
        "verbs transport: CUDA memory needs a build with the CUDA toolkit found");
#endif
  }
  if (kind != MemoryKind::kHost) {
    return InvalidArgumentError("verbs: unknown memory kind " +
                                std::to_string(static_cast<int>(kind)));
  }
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t rounded = (size + page - 1) / page * page;
  void* data = std::aligned_alloc(page, rounded);
  if (data == nullptr)
    return UnavailableError("verbs: allocating " + std::to_string(size) + " bytes failed");
  std::memset(data, 0, rounded);
  ibv_mr* mr = ibv_reg_mr(ctx->pd(), data, size, kLocalAccess);
  if (mr == nullptr) {
    const int err = errno;
    std::free(data);
    return UnavailableError(VerbError(
        "ibv_reg_mr of " + std::to_string(size) + " bytes (is `ulimit -l` large enough?)", err));
  }
  return std::unique_ptr<VerbsRegion>(new VerbsRegion(
      std::move(ctx), mr, static_cast<std::byte*>(data), size, MemoryKind::kHost, /*owned=*/true));
}

VerbsRegion::~VerbsRegion() {
  for (ibv_mr* mr : remote_mrs_) ibv_dereg_mr(mr);
  if (mr_ != nullptr) ibv_dereg_mr(mr_);
  if (!owned_) return;
  if (kind_ == MemoryKind::kHost) {
    std::free(data_);
    return;
  }
#if M2N_VERBS_WITH_CUDA
  if (auto cuda = CudaDriver::Get(); cuda.ok())
    (*cuda)->mem_free(reinterpret_cast<CUdeviceptr>(data_));
#endif
}

StatusOr<const ibv_mr*> VerbsRegion::RemoteMr(size_t offset, size_t length) const {
  if (source_)
    return FailedPreconditionError(
        "verbs: a region registered as a local source has no remote key");
  std::byte* start = data_ + offset;
  for (const ibv_mr* mr : remote_mrs_) {
    if (mr->addr == start && mr->length == length) return mr;
  }
  M2N_ASSIGN_OR_RETURN(ibv_mr * mr, RegisterRange(ctx_->pd(), start, length, kind_, kRemoteAccess));
  remote_mrs_.push_back(mr);
  return mr;
}

namespace {

Bytes PackKey(const std::byte* address, size_t size, uint32_t rkey) {
  Bytes out;
  WireWriter w(out);
  w.Put<uint32_t>(kKeyMagic);
  w.Put<uint16_t>(kKeyVersion);
  w.Put<uint16_t>(0);
  w.Put<uint64_t>(reinterpret_cast<uintptr_t>(address));
  w.Put<uint64_t>(size);
  w.Put<uint32_t>(rkey);
  return out;
}

}  // namespace

StatusOr<Bytes> VerbsRegion::PackRemoteKey() const {
  M2N_ASSIGN_OR_RETURN(const ibv_mr* mr, RemoteMr(0, size_));
  return PackKey(data_, size_, mr->rkey);
}

StatusOr<BlockKey> VerbsRegion::PackRemoteKeyFor(int peer, size_t offset, size_t length) {
  if (peer < 0 || length == 0 || offset > size_ || length > size_ - offset) {
    return InvalidArgumentError("verbs: a key for rank " + std::to_string(peer) + " to [" +
                                std::to_string(offset) + ", +" + std::to_string(length) +
                                ") of a " + std::to_string(size_) + "-byte region");
  }
  M2N_ASSIGN_OR_RETURN(const ibv_mr* mr, RemoteMr(offset, length));
  return BlockKey{PackKey(data_ + offset, length, mr->rkey), 0};
}

StatusOr<std::unique_ptr<VerbsRemoteRegion>> VerbsRemoteRegion::Unpack(
    const Context* owner, int peer, std::span<const std::byte> packed) {
  WireReader r(packed);
  const auto magic = r.Get<uint32_t>();
  const auto version = r.Get<uint16_t>();
  (void)r.Get<uint16_t>();
  const auto address = r.Get<uint64_t>();
  const auto size = r.Get<uint64_t>();
  const auto rkey = r.Get<uint32_t>();
  if (!r.ok() || r.consumed() != r.size()) {
    return DataLossError(PeerText(peer, "remote key of " + std::to_string(packed.size()) +
                                            " bytes is not a verbs key (expected 28)"));
  }
  if (magic != kKeyMagic || version != kKeyVersion) {
    return DataLossError(PeerText(peer, "remote key has magic " + std::to_string(magic) +
                                            " version " + std::to_string(version) +
                                            ", expected version " + std::to_string(kKeyVersion) +
                                            " of this build"));
  }
  return std::unique_ptr<VerbsRemoteRegion>(
      new VerbsRemoteRegion(owner, peer, address, size, rkey));
}

}  // namespace m2n::transport::verbs

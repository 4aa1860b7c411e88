#include "transports/cuda_ipc/memory.h"

#include <cuda.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>

#include "transports/cuda_ipc/cuda_status.h"

namespace m2n::transport::cuda_ipc {
namespace {

constexpr uint32_t kKeyMagic = 0x6d32'6e4b;  // "m2nK"

// The packed remote key: fixed layout, copied in host order (peers are on this host).
struct PackedKey {
  uint32_t magic = kKeyMagic;
  uint32_t kind = 0;  // MemoryKind
  uint64_t size = 0;
  char segment[64] = {};
  cudaIpcMemHandle_t handle = {};
};

std::string SystemError(const std::string& what, int error) {
  return what + ": " + std::strerror(error);
}

// Memory a peer named that is smaller than the size it declared (or the layout needs): mapping it
// would succeed, and the first copy past its real end would die (SIGBUS for a segment).
Status TooSmall(const std::string& what, size_t real, size_t expected) {
  return DataLossError("cuda_ipc: " + what + " has " + std::to_string(real) +
                       " bytes, fewer than the " + std::to_string(expected) +
                       " expected (a forged or stale key or address)");
}

// The bytes of the device allocation that `p` lies in, from cuMemGetAddressRange. The driver entry
// point comes through the runtime, so the library does not link libcuda (hosts without a driver
// still load it).
StatusOr<size_t> AllocationBytes(const void* p) {
  using GetAddressRange = CUresult (*)(CUdeviceptr * base, size_t * size, CUdeviceptr ptr);
  void* entry = nullptr;
  cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
  cudaError_t e = cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &entry, 12000,
                                                   cudaEnableDefault, &found);
#else
  cudaError_t e =
      cudaGetDriverEntryPoint("cuMemGetAddressRange", &entry, cudaEnableDefault, &found);
#endif
  if (e != cudaSuccess || found != cudaDriverEntryPointSuccess || entry == nullptr) {
    return CudaStatus(e != cudaSuccess ? e : cudaErrorSymbolNotFound,
                      "looking up cuMemGetAddressRange");
  }
  CUdeviceptr base = 0;
  size_t size = 0;
  const CUresult r =
      reinterpret_cast<GetAddressRange>(entry)(&base, &size, reinterpret_cast<CUdeviceptr>(p));
  if (r != CUDA_SUCCESS) {
    return InternalError("cuda_ipc: cuMemGetAddressRange of a peer's mapping failed (CUresult " +
                         std::to_string(r) + ")");
  }
  // The mapping starts at the allocation's base (cudaIpcOpenMemHandle maps it whole).
  return size - (reinterpret_cast<CUdeviceptr>(p) - base);
}

}  // namespace

// A new segment's name: the pid and a count say whose it is, a random part keeps it unguessable and
// apart from a segment that a dead process of the same pid left behind (a rank killed before Close
// cannot unlink its segments; pids are reused).
static std::string NewSegmentName() {
  static std::atomic<int> counter{0};
  static thread_local std::mt19937_64 random{std::random_device{}()};
  char suffix[17];
  std::snprintf(suffix, sizeof suffix, "%016llx", static_cast<unsigned long long>(random()));
  return "/m2n-cuda_ipc-" + std::to_string(getpid()) + "-" + std::to_string(counter++) + "-" +
         suffix;
}

StatusOr<std::unique_ptr<SharedSegment>> SharedSegment::Create(size_t size) {
  std::string name;
  int fd = -1;
  for (int attempt = 0; attempt < 8 && fd < 0; ++attempt) {  // EEXIST: a name in use; take another
    name = NewSegmentName();
    fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) return UnavailableError(SystemError("cuda_ipc: shm_open(" + name + ")", errno));
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    int e = errno;
    close(fd);
    shm_unlink(name.c_str());
    return UnavailableError(
        SystemError("cuda_ipc: ftruncate(" + name + ", " + std::to_string(size) + ")", e));
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) {
    shm_unlink(name.c_str());
    return UnavailableError(SystemError("cuda_ipc: mmap(" + name + ")", e));
  }
  return std::unique_ptr<SharedSegment>(
      new SharedSegment(name, static_cast<std::byte*>(p), size, true));
}

StatusOr<std::unique_ptr<SharedSegment>> SharedSegment::Open(const std::string& name, size_t size) {
  if (size == 0)
    return DataLossError("cuda_ipc: a peer declared its shared-memory segment " + name + " empty");
  int fd = shm_open(name.c_str(), O_RDWR, 0);
  if (fd < 0) {
    return UnavailableError(
        SystemError("cuda_ipc: shm_open(" + name + ") of a peer (is it on this host?)", errno));
  }
  // The size comes from the peer; the segment's own is the one the kernel will honour.
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return UnavailableError(SystemError("cuda_ipc: fstat(" + name + ")", e));
  }
  if (static_cast<uint64_t>(st.st_size) < size) {
    close(fd);
    return TooSmall("shared-memory segment " + name, static_cast<size_t>(st.st_size), size);
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) return UnavailableError(SystemError("cuda_ipc: mmap(" + name + ")", e));
  return std::unique_ptr<SharedSegment>(
      new SharedSegment(name, static_cast<std::byte*>(p), size, false));
}

SharedSegment::~SharedSegment() {
  munmap(data_, size_);
  if (owner_) shm_unlink(name_.c_str());
}

StatusOr<std::unique_ptr<DeviceAllocation>> DeviceAllocation::Create(size_t size) {
  void* p = nullptr;
  M2N_CUDA_RETURN_IF_ERROR(cudaMalloc(&p, size), "cudaMalloc(" + std::to_string(size) + " bytes)");
  Status s = CudaStatus(cudaMemset(p, 0, size), "cudaMemset");
  cudaIpcMemHandle_t handle{};
  if (s.ok()) s = CudaStatus(cudaIpcGetMemHandle(&handle, p), "cudaIpcGetMemHandle");
  if (!s.ok()) {
    cudaFree(p);
    return s;
  }
  return std::unique_ptr<DeviceAllocation>(
      new DeviceAllocation(static_cast<std::byte*>(p), size, handle));
}

DeviceAllocation::~DeviceAllocation() { cudaFree(data_); }

StatusOr<std::unique_ptr<DeviceMapping>> DeviceMapping::Open(const cudaIpcMemHandle_t& handle,
                                                             size_t size) {
  void* p = nullptr;
  M2N_CUDA_RETURN_IF_ERROR(cudaIpcOpenMemHandle(&p, handle, cudaIpcMemLazyEnablePeerAccess),
                           "cudaIpcOpenMemHandle of a peer's " + std::to_string(size) + " bytes");
  // The size comes from the peer; the allocation's own is the one the GPU will honour.
  StatusOr<size_t> real = AllocationBytes(p);
  Status checked =
      real.ok() && *real < size ? TooSmall("device allocation", *real, size) : real.status();
  if (!checked.ok()) {
    cudaIpcCloseMemHandle(p);
    return checked;
  }
  return std::unique_ptr<DeviceMapping>(new DeviceMapping(static_cast<std::byte*>(p)));
}

DeviceMapping::~DeviceMapping() { cudaIpcCloseMemHandle(data_); }

StatusOr<std::unique_ptr<IpcRegion>> IpcRegion::Allocate(size_t size, MemoryKind kind) {
  std::unique_ptr<IpcRegion> r(new IpcRegion);
  r->size_ = size;
  r->kind_ = kind;
  if (kind == MemoryKind::kCuda) {
    M2N_ASSIGN_OR_RETURN(r->device_, DeviceAllocation::Create(size));
    r->data_ = r->device_->data();
  } else {
    M2N_ASSIGN_OR_RETURN(r->segment_, SharedSegment::Create(size));
    r->data_ = r->segment_->data();
  }
  return r;
}

StatusOr<std::unique_ptr<IpcRegion>> IpcRegion::Register(void* data, size_t size, MemoryKind kind) {
  if (kind == MemoryKind::kCuda) {
    cudaPointerAttributes attributes{};
    cudaError_t e = cudaPointerGetAttributes(&attributes, data);
    if (e != cudaSuccess || attributes.type != cudaMemoryTypeDevice) {
      if (e != cudaSuccess) (void)cudaGetLastError();
      char text[32];
      snprintf(text, sizeof text, "%p", data);
      return InvalidArgumentError(
          std::string("cuda_ipc: ") + text +
          " was registered as MemoryKind::kCuda but is not device memory (" +
          (e != cudaSuccess ? cudaGetErrorString(e)
                            : "cudaPointerGetAttributes says host or managed memory") +
          ")");
    }
    int current = -1;
    M2N_CUDA_RETURN_IF_ERROR(cudaGetDevice(&current), "cudaGetDevice");
    if (attributes.device != current) {
      return InvalidArgumentError("cuda_ipc: device memory of GPU " +
                                  std::to_string(attributes.device) +
                                  " registered by a group on GPU " + std::to_string(current) +
                                  " (call cudaSetDevice before Group::Create)");
    }
  }
  std::unique_ptr<IpcRegion> r(new IpcRegion);
  r->data_ = static_cast<std::byte*>(data);
  r->size_ = size;
  r->kind_ = kind;
  return r;
}

StatusOr<Bytes> IpcRegion::PackRemoteKey() const {
  if (!segment_ && !device_) {
    return UnimplementedError(
        "cuda_ipc: only memory the transport allocated can be written by peers");
  }
  PackedKey key;
  key.kind = static_cast<uint32_t>(kind_);
  key.size = size_;
  if (segment_) std::snprintf(key.segment, sizeof key.segment, "%s", segment_->name().c_str());
  if (device_) key.handle = device_->handle();
  Bytes out(sizeof key);
  std::memcpy(out.data(), &key, sizeof key);
  return out;
}

StatusOr<std::unique_ptr<IpcRemoteRegion>> IpcRemoteRegion::Unpack(
    std::span<const std::byte> packed) {
  PackedKey key;
  if (packed.size() != sizeof key) {
    return DataLossError("cuda_ipc: a remote key of " + std::to_string(packed.size()) +
                         " bytes, expected " + std::to_string(sizeof key) +
                         " (another transport or build?)");
  }
  std::memcpy(&key, packed.data(), sizeof key);
  if (key.magic != kKeyMagic)
    return DataLossError("cuda_ipc: a remote key with a bad magic number");
  if (key.kind != static_cast<uint32_t>(MemoryKind::kHost) &&
      key.kind != static_cast<uint32_t>(MemoryKind::kCuda)) {
    return DataLossError("cuda_ipc: a remote key of unknown memory kind " +
                         std::to_string(key.kind));
  }
  std::unique_ptr<IpcRemoteRegion> r(new IpcRemoteRegion);
  r->size_ = key.size;
  r->kind_ = static_cast<MemoryKind>(key.kind);
  if (r->kind_ == MemoryKind::kCuda) {
    M2N_ASSIGN_OR_RETURN(r->device_, DeviceMapping::Open(key.handle, key.size));
    r->data_ = r->device_->data();
  } else {
    key.segment[sizeof key.segment - 1] = '\0';
    M2N_ASSIGN_OR_RETURN(r->segment_, SharedSegment::Open(key.segment, key.size));
    r->data_ = r->segment_->data();
  }
  return r;
}

}  // namespace m2n::transport::cuda_ipc

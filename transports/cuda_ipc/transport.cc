// CudaIpcTransport's host-driven side: creation (CUDA started only where a GPU is there or device
// slots need one), memory, connecting peers, Post / Poll through the shared-memory rings, Close;
// and cuda_ipcTransportInfo(). The stream-ordered operations are in stream_ops.cc.
#include "transports/cuda_ipc/transport.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <typeinfo>

#include "src/base/env.h"
#include "transports/cuda_ipc/cuda_status.h"
#include "transports/validate.h"

namespace m2n::transport::cuda_ipc {
namespace {

constexpr int kMaxUnpolledLimit = 1 << 20;  // immediates in flight to one peer and lane
constexpr uint32_t kAddressMagic = 0x6d32'6e41;  // "m2nA"
// Bumped whenever Address changes; at byte 4, where the other transports keep theirs.
constexpr uint32_t kAddressVersion = 2;

// Host name and boot id: two ranks with equal ones share a kernel, hence shared memory and IPC.
std::string HostIdentity() {
  char name[64] = {};
  gethostname(name, sizeof name - 1);
  std::string boot;
  std::ifstream("/proc/sys/kernel/random/boot_id") >> boot;
  return std::string(name) + "/" + boot;
}

// A cuda_ipc variable through the one environment reader: a bad value is an error, never the
// default.
StatusOr<int> EnvInt(const char* name, int fallback, int low, int high) {
  auto value = env::Int(name, low, high, fallback);
  if (!value.ok()) return value.status().WithContext("cuda_ipc");
  return static_cast<int>(*value);
}

}  // namespace

// What a peer needs to reach us: the host (IPC works only on one), our mailbox and signal block.
// device -1 and signal_bytes 0: a rank of a host-slot group without a CUDA device.
struct Address {
  uint32_t magic = kAddressMagic;
  uint32_t version = kAddressVersion;
  int32_t rank = -1;
  int32_t for_rank = -1;  // the peer it was made for
  int32_t max_unpolled = 0;
  int32_t device = -1;
  uint32_t capacity = 0;
  char host[128] = {};
  char mailbox[64] = {};
  cudaIpcMemHandle_t signals = {};
  uint64_t signal_bytes = 0;
};

// Whether a CUDA device is there and the runtime sees it.
Status FindCudaDevice() {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    return UnavailableError(std::string("no CUDA device usable: cudaGetDeviceCount: ") +
                            cudaGetErrorString(e));
  }
  if (count == 0) return UnavailableError("no CUDA device");
  return OkStatus();
}

// Host slots need only POSIX shared memory; device slots need a GPU.
Status Probe(MemoryKind slot_memory) {
  if (slot_memory == MemoryKind::kHost) return OkStatus();
  return FindCudaDevice();
}

StatusOr<std::unique_ptr<Transport>> CudaIpcTransport::Create(const Config& config) {
  std::unique_ptr<CudaIpcTransport> t(new CudaIpcTransport(config));
  M2N_RETURN_IF_ERROR(t->Init());
  return std::unique_ptr<Transport>(std::move(t));
}

Status CudaIpcTransport::Init() {
  // Its rings hold 2 max_unpolled + 2 entries each, rounded up to a power of two.
  M2N_RETURN_IF_ERROR(CheckConfig(config_, "cuda_ipc", kMaxUnpolledLimit).status());
  if (config_.slot_depth <= 0) config_.slot_depth = std::max(1, config_.max_unpolled);
  uint32_t capacity = 16;
  while (capacity < static_cast<uint32_t>(2 * config_.max_unpolled + 2)) capacity *= 2;
  layout_ = MailboxLayout{config_.world_size, capacity};
  M2N_ASSIGN_OR_RETURN(mailbox_, Mailbox::Create(layout_));
  outboxes_.resize(static_cast<size_t>(config_.world_size));
  remote_signals_.resize(static_cast<size_t>(config_.world_size));
  outbox_device_.assign(static_cast<size_t>(config_.world_size), nullptr);
  // A host-slot group runs on shared memory alone; without a GPU it never touches CUDA again, and
  // Allocate / Register of device memory say why (no_cuda_).
  if (config_.slot_memory == MemoryKind::kHost) {
    no_cuda_ = FindCudaDevice();
    if (!no_cuda_.ok()) return OkStatus();
  }
  return InitCuda();
}

Status CudaIpcTransport::InitCuda() {
  M2N_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device_), "cudaGetDevice");
  M2N_CUDA_RETURN_IF_ERROR(cudaFree(nullptr),
                           "starting the CUDA runtime on GPU " + std::to_string(device_));
  // A blocking stream: host-driven copies wait for work on the legacy default stream, e.g. the
  // cudaMemcpy that filled the buffer (which may return before its DMA lands).
  M2N_CUDA_RETURN_IF_ERROR(cudaStreamCreate(&copy_stream_), "cudaStreamCreate");
  M2N_ASSIGN_OR_RETURN(max_blocks_, EnvInt("M2N_CUDA_IPC_MAX_BLOCKS", max_blocks_, 1, 1024));
  M2N_ASSIGN_OR_RETURN(
      const int block_bytes,
      EnvInt("M2N_CUDA_IPC_BLOCK_BYTES", static_cast<int>(block_bytes_), 1024, 1 << 30));
  block_bytes_ = static_cast<size_t>(block_bytes);
  const size_t signal_words = static_cast<size_t>(config_.world_size) * kNumSignalKinds *
                              static_cast<size_t>(config_.slot_depth);
  M2N_ASSIGN_OR_RETURN(signals_,
                       DeviceAllocation::Create(signal_words * sizeof(unsigned long long)));
  void* error = nullptr;
  M2N_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&error, 64, cudaHostAllocMapped),
                           "cudaHostAlloc (error word)");
  error_host_ = static_cast<unsigned long long*>(error);
  *error_host_ = 0;
  void* error_device = nullptr;
  M2N_CUDA_RETURN_IF_ERROR(cudaHostGetDevicePointer(&error_device, error, 0),
                           "cudaHostGetDevicePointer");
  error_device_ = static_cast<unsigned long long*>(error_device);
  M2N_ASSIGN_OR_RETURN(const int use_proxy, EnvInt("M2N_CUDA_IPC_PROXY", 0, 0, 1));
  if (use_proxy == 1) {
    CopyProxy::Options options;
    M2N_ASSIGN_OR_RETURN(options.max_blocks,
                         EnvInt("M2N_CUDA_IPC_PROXY_BLOCKS", options.max_blocks, 1, 128));
    M2N_ASSIGN_OR_RETURN(const int proxy_block_bytes,
                         EnvInt("M2N_CUDA_IPC_PROXY_BLOCK_BYTES",
                                static_cast<int>(options.block_bytes), 1024, 1 << 30));
    options.block_bytes = static_cast<size_t>(proxy_block_bytes);
    M2N_ASSIGN_OR_RETURN(
        const int idle_ms,
        EnvInt("M2N_CUDA_IPC_PROXY_IDLE_MS", static_cast<int>(options.idle.count()), 1, 60000));
    options.idle = std::chrono::milliseconds(idle_ms);
    M2N_ASSIGN_OR_RETURN(const int doorbell, EnvInt("M2N_CUDA_IPC_PROXY_DOORBELL", 0, 0, 1));
    options.doorbell = doorbell == 1;
    // Writes in flight are bounded by the credits (peers x slot_depth); the ring holds them all.
    while (options.capacity < static_cast<uint32_t>(config_.world_size * config_.slot_depth))
      options.capacity *= 2;
    M2N_ASSIGN_OR_RETURN(proxy_, CopyProxy::Create(options));
  }
  return OkStatus();
}

void CudaIpcTransport::UnregisterOutboxes() {
  for (size_t peer = 0; peer < outbox_device_.size(); ++peer) {
    if (outbox_device_[peer] != nullptr && outboxes_[peer])
      cudaHostUnregister(outboxes_[peer]->data());
    outbox_device_[peer] = nullptr;
  }
}

CudaIpcTransport::~CudaIpcTransport() {
  if (proxy_) {
    (void)proxy_->Stop(Deadline::AfterMs(5000));
    if (proxy_->stuck()) {
      // The kernel may still write into the peers' rings: leave them mapped and registered.
      (void)proxy_.release();
      for (auto& box : outboxes_) (void)box.release();
    } else {
      proxy_.reset();
      UnregisterOutboxes();
    }
  }
  remote_signals_.clear();
  signals_.reset();
  if (error_host_ != nullptr) cudaFreeHost(error_host_);
  if (copy_stream_ != nullptr) cudaStreamDestroy(copy_stream_);
}

Capabilities CudaIpcTransport::capabilities() const {
  Capabilities c;
  c.host_memory = true;
  c.cuda_memory = true;
  c.native_write_with_imm = false;
  c.stream_ordered = no_cuda_.ok();
  return c;
}

std::string CudaIpcTransport::PeerName(int peer) const {
  return "peer rank " + std::to_string(peer);
}

Status CudaIpcTransport::CheckPeer(int peer, std::string_view what) const {
  if (peer < 0 || peer >= config_.world_size || !outboxes_[static_cast<size_t>(peer)]) {
    return InvalidArgumentError("cuda_ipc: " + std::string(what) + " to rank " +
                                std::to_string(peer) + ", which is not connected");
  }
  return OkStatus();
}

StatusOr<std::unique_ptr<Region>> CudaIpcTransport::Register(void* data, size_t size,
                                                             MemoryKind kind) {
  if (kind == MemoryKind::kCuda && !no_cuda_.ok()) {
    return UnavailableError("cuda_ipc: device memory registered where " + no_cuda_.message());
  }
  M2N_ASSIGN_OR_RETURN(auto region, IpcRegion::Register(data, size, kind));
  return std::unique_ptr<Region>(std::move(region));
}

StatusOr<std::unique_ptr<Region>> CudaIpcTransport::Allocate(size_t size, MemoryKind kind) {
  if (kind == MemoryKind::kCuda && !no_cuda_.ok()) {
    return UnavailableError("cuda_ipc: device memory allocated where " + no_cuda_.message());
  }
  M2N_ASSIGN_OR_RETURN(auto region, IpcRegion::Allocate(size, kind));
  return std::unique_ptr<Region>(std::move(region));
}

StatusOr<Bytes> CudaIpcTransport::LocalAddress(int peer) {
  if (peer < 0 || peer >= config_.world_size || peer == config_.rank) {
    return InvalidArgumentError("cuda_ipc: rank " + std::to_string(config_.rank) +
                                ": connection address for rank " + std::to_string(peer) +
                                ", outside a world of " + std::to_string(config_.world_size));
  }
  Address a;
  a.rank = config_.rank;
  a.for_rank = peer;
  a.max_unpolled = config_.max_unpolled;
  a.device = device_;
  a.capacity = layout_.capacity;
  std::snprintf(a.host, sizeof a.host, "%s", HostIdentity().c_str());
  std::snprintf(a.mailbox, sizeof a.mailbox, "%s", mailbox_->name().c_str());
  if (signals_) {
    a.signals = signals_->handle();
    a.signal_bytes = signals_->size();
  }
  Bytes out(sizeof a);
  std::memcpy(out.data(), &a, sizeof a);
  return out;
}

// The checks of a peer's connection address before anything of it is used.
Status CudaIpcTransport::CheckAddress(int peer, const Address& a) const {
  if (a.magic != kAddressMagic) {
    return DataLossError("cuda_ipc: " + PeerName(peer) +
                         ": connection address is not an m2n cuda_ipc address");
  }
  if (a.version != kAddressVersion) {
    return DataLossError("cuda_ipc: " + PeerName(peer) + ": connection address version " +
                         std::to_string(a.version) + ", this build has version " +
                         std::to_string(kAddressVersion));
  }
  if (a.rank != peer || a.for_rank != config_.rank) {
    return InvalidArgumentError("cuda_ipc: " + PeerName(peer) +
                                ": connection address made by rank " + std::to_string(a.rank) +
                                " for rank " + std::to_string(a.for_rank) + ", not by rank " +
                                std::to_string(peer) + " for rank " + std::to_string(config_.rank));
  }
  if (a.max_unpolled != config_.max_unpolled || a.capacity != layout_.capacity) {
    return FailedPreconditionError(
        "cuda_ipc: " + PeerName(peer) + " has max_unpolled " + std::to_string(a.max_unpolled) +
        ", this rank " + std::to_string(config_.max_unpolled) + " (the rings must match)");
  }
  // RemoteSignal indexes our words in the peer's block: the block the peer declares must hold them
  // (DeviceMapping::Open then checks the declaration against the real allocation).
  const uint64_t needed = static_cast<uint64_t>(config_.world_size) * kNumSignalKinds *
                          static_cast<uint64_t>(config_.slot_depth) * sizeof(unsigned long long);
  if (a.signal_bytes != 0 && a.signal_bytes < needed) {
    return DataLossError("cuda_ipc: " + PeerName(peer) + " declares a signal block of " +
                         std::to_string(a.signal_bytes) + " bytes, fewer than the " +
                         std::to_string(needed) + " its slots need");
  }
  if (HostIdentity() != a.host) {
    return UnavailableError("cuda_ipc: " + PeerName(peer) + " runs on another host (" + a.host +
                            "); CUDA IPC needs every rank of the group on one host");
  }
  // Both GPUs present and distinct: they must reach each other. One GPU shared by several processes
  // is allowed (as in tests), but slower than one GPU per process.
  if (a.device >= 0 && device_ >= 0 && a.device != device_) {
    int can = 0;
    M2N_CUDA_RETURN_IF_ERROR(cudaDeviceCanAccessPeer(&can, device_, a.device),
                             "cudaDeviceCanAccessPeer");
    if (!can) {
      return UnavailableError("cuda_ipc: GPU " + std::to_string(device_) + " cannot access GPU " +
                              std::to_string(a.device) + " of " + PeerName(peer) +
                              " (no NVLink or PCIe peer access)");
    }
  }
  return OkStatus();
}

Status CudaIpcTransport::Connect(int peer, std::span<const std::byte> remote_address) {
  if (peer < 0 || peer >= config_.world_size ||
      std::find(config_.peers.begin(), config_.peers.end(), peer) == config_.peers.end()) {
    return InvalidArgumentError("cuda_ipc: rank " + std::to_string(config_.rank) +
                                ": connect to rank " + std::to_string(peer) +
                                ", which is not in Config::peers");
  }
  if (outboxes_[static_cast<size_t>(peer)]) {
    return FailedPreconditionError("cuda_ipc: " + PeerName(peer) + ": already connected");
  }
  Address a;
  if (remote_address.size() != sizeof a) {
    return DataLossError("cuda_ipc: " + PeerName(peer) + ": connection address of " +
                         std::to_string(remote_address.size()) + " bytes, expected " +
                         std::to_string(sizeof a));
  }
  std::memcpy(&a, remote_address.data(), sizeof a);
  a.host[sizeof a.host - 1] = '\0';
  a.mailbox[sizeof a.mailbox - 1] = '\0';
  M2N_RETURN_IF_ERROR(CheckAddress(peer, a));
  auto outbox = Outbox::Open(a.mailbox, layout_, config_.rank);
  if (!outbox.ok())
    return outbox.status().WithContext("cuda_ipc: immediate rings of " + PeerName(peer));
  outboxes_[static_cast<size_t>(peer)] = std::move(outbox).value();
  if (proxy_) M2N_RETURN_IF_ERROR(MapRingForProxy(peer));
  // A peer without a GPU has no signal block (a host-slot group): nothing stream-ordered goes
  // there.
  if (a.signal_bytes == 0 || !no_cuda_.ok()) return OkStatus();
  auto mapped = DeviceMapping::Open(a.signals, a.signal_bytes);
  if (!mapped.ok())
    return mapped.status().WithContext("cuda_ipc: signal words of " + PeerName(peer));
  remote_signals_[static_cast<size_t>(peer)] = std::move(mapped).value();
  return OkStatus();
}

// The proxy kernel publishes immediates in the peer's ring: map it for the GPU.
Status CudaIpcTransport::MapRingForProxy(int peer) {
  Outbox& box = *outboxes_[static_cast<size_t>(peer)];
  M2N_CUDA_RETURN_IF_ERROR(
      cudaHostRegister(box.data(), box.size(), cudaHostRegisterMapped | cudaHostRegisterPortable),
      "cudaHostRegister (the immediate ring of " + PeerName(peer) + ")");
  void* device = nullptr;
  cudaError_t e = cudaHostGetDevicePointer(&device, box.data(), 0);
  if (e != cudaSuccess) {
    cudaHostUnregister(box.data());
    return CudaStatus(e, "cudaHostGetDevicePointer (the immediate ring of " + PeerName(peer) + ")");
  }
  outbox_device_[static_cast<size_t>(peer)] = static_cast<std::byte*>(device);
  return OkStatus();
}

StatusOr<std::unique_ptr<RemoteRegion>> CudaIpcTransport::UnpackRemoteKey(
    int peer, std::span<const std::byte> packed) {
  M2N_RETURN_IF_ERROR(CheckPeer(peer, "unpacking a key"));
  auto remote = IpcRemoteRegion::Unpack(packed);
  if (!remote.ok()) return remote.status().WithContext("cuda_ipc: memory of " + PeerName(peer));
  return std::unique_ptr<RemoteRegion>(std::move(remote).value());
}

Status CudaIpcTransport::Validate(const Write& w) const {
  M2N_RETURN_IF_ERROR(CheckPeer(w.peer, "a write"));
  if (w.lane != Lane::kData && w.lane != Lane::kAck) {
    return InvalidArgumentError(
        WriteText(w, "cuda_ipc", " on lane " + std::to_string(static_cast<int>(w.lane))));
  }
  if (w.length == 0) return OkStatus();
  return ValidateWriteRegions(w, "cuda_ipc", typeid(IpcRegion), typeid(IpcRemoteRegion));
}

Status CudaIpcTransport::Post(std::span<const Write> writes) {
  if (closed_)
    return FailedPreconditionError("cuda_ipc: rank " + std::to_string(config_.rank) +
                                   ": Post after Close");
  // All or nothing for bad arguments: nothing is posted unless every write is valid.
  for (const Write& w : writes) M2N_RETURN_IF_ERROR(Validate(w));
  for (const Write& w : writes) M2N_RETURN_IF_ERROR(PostOne(w));
  // The batch's writes through the copy proxy go to the kernel together.
  if (proxy_) M2N_RETURN_IF_ERROR(proxy_->Publish());
  return OkStatus();
}

Status CudaIpcTransport::PostOne(const Write& w) {
  if (w.length > 0) {
    const auto* remote = static_cast<const IpcRemoteRegion*>(w.remote);
    const std::byte* src = w.local->data() + w.local_offset;
    std::byte* dst = remote->data() + w.remote_offset;
    if (proxy_ && w.local->kind() == MemoryKind::kCuda && remote->kind() == MemoryKind::kCuda) {
      return PostThroughProxy(w, src, dst);
    }
    if (w.local->kind() == MemoryKind::kHost && remote->kind() == MemoryKind::kHost) {
      std::memcpy(dst, src, w.length);
    } else {
      // Host-driven writes of device memory: a convenience, not the fast path (that is
      // SendOnStream). A device-to-device cudaMemcpy may return before the bytes land, so the
      // copy goes on our own stream and is waited for before the immediate is pushed.
      M2N_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(dst, src, w.length, cudaMemcpyDefault, copy_stream_),
          "cudaMemcpyAsync of " + std::to_string(w.length) + " bytes to " + PeerName(w.peer));
      M2N_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(copy_stream_),
                               "cudaStreamSynchronize (a write to " + PeerName(w.peer) + ")");
    }
  }
  // The immediate is pushed only after the payload is in place (release order in Push).
  M2N_RETURN_IF_ERROR(outboxes_[static_cast<size_t>(w.peer)]->Push(w.lane, w.imm, w.length));
  Completion c;
  c.type = Completion::Type::kWriteDone;
  c.peer = w.peer;
  c.lane = w.lane;
  c.cookie = w.cookie;
  done_.push_back(std::move(c));
  return OkStatus();
}

// A device-to-device write through the copy proxy: waits for room in its ring (the kernel serves
// it), bounded by Config::timeout and ended early by the owner's Abort (Config::aborted).
Status CudaIpcTransport::PostThroughProxy(const Write& w, const std::byte* src, std::byte* dst) {
  const Deadline deadline = Deadline::After(config_.timeout);
  if (!proxy_->HasRoom()) M2N_RETURN_IF_ERROR(proxy_->Publish());
  while (!proxy_->HasRoom()) {
    M2N_RETURN_IF_ERROR(proxy_->Completed().status());
    if (config_.aborted && config_.aborted()) {
      return AbortedError("cuda_ipc: aborted while a write to " + PeerName(w.peer) +
                          " waited for room in the copy proxy's ring");
    }
    if (deadline.Expired()) {
      return DeadlineExceededError("cuda_ipc: the copy proxy served no write for " +
                                   std::to_string(config_.timeout.count()) + " ms (a write to " +
                                   PeerName(w.peer) + " waits for room in its ring)");
    }
  }
  Outbox& box = *outboxes_[static_cast<size_t>(w.peer)];
  M2N_ASSIGN_OR_RETURN(Outbox::Reserved entry, box.Reserve(w.lane, w.imm, w.length));
  auto* sequence = reinterpret_cast<unsigned long long*>(
      outbox_device_[static_cast<size_t>(w.peer)] +
      (reinterpret_cast<std::byte*>(entry.sequence) - box.data()));
  auto index = proxy_->Stage(src, dst, w.length, sequence, entry.value);
  if (!index.ok()) return index.status().WithContext("cuda_ipc: a write to " + PeerName(w.peer));
  Completion c;
  c.type = Completion::Type::kWriteDone;
  c.peer = w.peer;
  c.lane = w.lane;
  c.cookie = w.cookie;
  proxied_.push_back({*index, std::move(c)});
  return OkStatus();
}

StatusOr<size_t> CudaIpcTransport::Poll(std::span<Completion> out) {
  size_t n = 0;
  while (n < out.size() && !done_.empty()) {
    out[n++] = std::move(done_.front());
    done_.pop_front();
  }
  if (!proxied_.empty()) {
    auto completed = proxy_->Completed();
    if (!completed.ok())
      return completed.status().WithContext("cuda_ipc: writes through the copy proxy");
    while (n < out.size() && !proxied_.empty() && proxied_.front().index < *completed) {
      out[n++] = std::move(proxied_.front().done);
      proxied_.pop_front();
    }
  }
  // ACKs first: a credit return must never wait behind data.
  for (Lane lane : {Lane::kAck, Lane::kData}) {
    for (int peer : config_.peers) {
      if (!outboxes_[static_cast<size_t>(peer)]) continue;
      while (n < out.size()) {
        auto imm = mailbox_->Take(peer, lane);
        if (!imm) break;
        Completion& c = out[n++];
        c = Completion{};
        c.type = Completion::Type::kImmediate;
        c.peer = peer;
        c.lane = lane;
        c.imm = imm->imm;
        c.length = imm->length;
      }
    }
  }
  return n;
}

Status CudaIpcTransport::Close(Deadline deadline) {
  closed_ = true;
  if (proxy_) {
    Status stopped = proxy_->Stop(deadline);
    if (!stopped.ok()) return stopped;  // the destructor leaves the rings mapped
    UnregisterOutboxes();
  }
  for (auto& box : outboxes_) box.reset();
  for (auto& mapping : remote_signals_) mapping.reset();
  return OkStatus();
}

}  // namespace m2n::transport::cuda_ipc

namespace m2n::transport {

const TransportInfo& cuda_ipcTransportInfo() {
  // Preference 40: below UCX for "auto" with host slots (UCX spans hosts); with device slots
  // (Options::slot_memory = kCuda) "auto" skips transports without cuda_memory.
  static const TransportInfo info{"cuda_ipc", 40, &cuda_ipc::Probe,
                                  &cuda_ipc::CudaIpcTransport::Create,
                                  /*cuda_memory=*/true};
  return info;
}

}  // namespace m2n::transport

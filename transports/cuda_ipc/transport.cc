#include "transports/cuda_ipc/transport.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "src/base/env.h"
#include "transports/cuda_ipc/cuda_status.h"

namespace m2n::transport::cuda_ipc {
namespace {

constexpr uint32_t kAddressMagic = 0x6d32'6e41;  // "m2nA"

// What a peer needs to reach us: the host (IPC works only on one), our mailbox and signal block.
struct Address {
  uint32_t magic = kAddressMagic;
  int32_t rank = -1;
  int32_t device = -1;
  uint32_t capacity = 0;
  char host[128] = {};
  char mailbox[64] = {};
  cudaIpcMemHandle_t signals = {};
  uint64_t signal_bytes = 0;
};

// Host name and boot id: two ranks with equal ones share a kernel, hence shared memory and IPC.
std::string HostIdentity() {
  char name[64] = {};
  gethostname(name, sizeof name - 1);
  std::string boot;
  std::ifstream("/proc/sys/kernel/random/boot_id") >> boot;
  return std::string(name) + "/" + boot;
}

// A cuda_ipc variable through the one environment reader: a bad value is an error, never the default.
StatusOr<int> EnvInt(const char* name, int fallback, int low, int high) {
  auto value = env::Int(name, low, high, fallback);
  if (!value.ok()) return value.status().WithContext("cuda_ipc");
  return static_cast<int>(*value);
}

}  // namespace

Status Probe() {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    return UnavailableError(std::string("no CUDA device usable: cudaGetDeviceCount: ") + cudaGetErrorString(e));
  }
  if (count == 0) return UnavailableError("no CUDA device");
  return OkStatus();
}

StatusOr<std::unique_ptr<Transport>> CudaIpcTransport::Create(const Config& config) {
  std::unique_ptr<CudaIpcTransport> t(new CudaIpcTransport(config));
  M2N_RETURN_IF_ERROR(t->Init());
  return std::unique_ptr<Transport>(std::move(t));
}

Status CudaIpcTransport::Init() {
  if (config_.slot_depth <= 0) config_.slot_depth = std::max(1, config_.max_unpolled);
  M2N_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device_), "cudaGetDevice");
  M2N_CUDA_RETURN_IF_ERROR(cudaFree(nullptr), "starting the CUDA runtime on GPU " + std::to_string(device_));
  // A blocking stream: host-driven copies wait for work on the legacy default stream, e.g. the
  // cudaMemcpy that filled the buffer (which may return before its DMA lands).
  M2N_CUDA_RETURN_IF_ERROR(cudaStreamCreate(&copy_stream_), "cudaStreamCreate");
  M2N_ASSIGN_OR_RETURN(max_blocks_, EnvInt("M2N_CUDA_IPC_MAX_BLOCKS", max_blocks_, 1, 1024));
  M2N_ASSIGN_OR_RETURN(const int block_bytes,
                       EnvInt("M2N_CUDA_IPC_BLOCK_BYTES", static_cast<int>(block_bytes_), 1024, 1 << 30));
  block_bytes_ = static_cast<size_t>(block_bytes);
  uint32_t capacity = 16;
  while (capacity < static_cast<uint32_t>(2 * config_.max_unpolled + 2)) capacity *= 2;
  layout_ = MailboxLayout{config_.world_size, capacity};
  M2N_ASSIGN_OR_RETURN(mailbox_, Mailbox::Create(layout_));
  outboxes_.resize(static_cast<size_t>(config_.world_size));
  remote_signals_.resize(static_cast<size_t>(config_.world_size));
  const size_t signal_words = static_cast<size_t>(config_.world_size) * kNumSignalKinds *
                              static_cast<size_t>(config_.slot_depth);
  M2N_ASSIGN_OR_RETURN(signals_, DeviceAllocation::Create(signal_words * sizeof(unsigned long long)));
  void* error = nullptr;
  M2N_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&error, 64, cudaHostAllocMapped), "cudaHostAlloc (error word)");
  error_host_ = static_cast<unsigned long long*>(error);
  *error_host_ = 0;
  void* error_device = nullptr;
  M2N_CUDA_RETURN_IF_ERROR(cudaHostGetDevicePointer(&error_device, error, 0), "cudaHostGetDevicePointer");
  error_device_ = static_cast<unsigned long long*>(error_device);
  outbox_device_.assign(static_cast<size_t>(config_.world_size), nullptr);
  M2N_ASSIGN_OR_RETURN(const int use_proxy, EnvInt("M2N_CUDA_IPC_PROXY", 0, 0, 1));
  if (use_proxy == 1) {
    CopyProxy::Options options;
    M2N_ASSIGN_OR_RETURN(options.max_blocks, EnvInt("M2N_CUDA_IPC_PROXY_BLOCKS", options.max_blocks, 1, 128));
    M2N_ASSIGN_OR_RETURN(const int proxy_block_bytes,
                         EnvInt("M2N_CUDA_IPC_PROXY_BLOCK_BYTES", static_cast<int>(options.block_bytes), 1024, 1 << 30));
    options.block_bytes = static_cast<size_t>(proxy_block_bytes);
    M2N_ASSIGN_OR_RETURN(const int idle_ms,
                         EnvInt("M2N_CUDA_IPC_PROXY_IDLE_MS", static_cast<int>(options.idle.count()), 1, 60000));
    options.idle = std::chrono::milliseconds(idle_ms);
    M2N_ASSIGN_OR_RETURN(const int doorbell, EnvInt("M2N_CUDA_IPC_PROXY_DOORBELL", 0, 0, 1));
    options.doorbell = doorbell == 1;
    // Writes in flight are bounded by the credits (peers x slot_depth); the ring holds them all.
    while (options.capacity < static_cast<uint32_t>(config_.world_size * config_.slot_depth)) options.capacity *= 2;
    M2N_ASSIGN_OR_RETURN(proxy_, CopyProxy::Create(options));
  }
  return OkStatus();
}

void CudaIpcTransport::UnregisterOutboxes() {
  for (size_t peer = 0; peer < outbox_device_.size(); ++peer) {
    if (outbox_device_[peer] != nullptr && outboxes_[peer]) cudaHostUnregister(outboxes_[peer]->data());
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
  c.stream_ordered = true;
  return c;
}

std::string CudaIpcTransport::PeerName(int peer) const { return "rank " + std::to_string(peer); }

Status CudaIpcTransport::CheckPeer(int peer, std::string_view what) const {
  if (peer < 0 || peer >= config_.world_size || !outboxes_[static_cast<size_t>(peer)]) {
    return InvalidArgumentError("cuda_ipc: " + std::string(what) + " to rank " + std::to_string(peer) +
                                ", which is not connected");
  }
  return OkStatus();
}

StatusOr<std::unique_ptr<Region>> CudaIpcTransport::Register(void* data, size_t size, MemoryKind kind) {
  M2N_ASSIGN_OR_RETURN(auto region, IpcRegion::Register(data, size, kind));
  return std::unique_ptr<Region>(std::move(region));
}

StatusOr<std::unique_ptr<Region>> CudaIpcTransport::Allocate(size_t size, MemoryKind kind) {
  M2N_ASSIGN_OR_RETURN(auto region, IpcRegion::Allocate(size, kind));
  return std::unique_ptr<Region>(std::move(region));
}

StatusOr<Bytes> CudaIpcTransport::LocalAddress(int peer) {
  Address a;
  a.rank = config_.rank;
  a.device = device_;
  a.capacity = layout_.capacity;
  std::snprintf(a.host, sizeof a.host, "%s", HostIdentity().c_str());
  std::snprintf(a.mailbox, sizeof a.mailbox, "%s", mailbox_->name().c_str());
  a.signals = signals_->handle();
  a.signal_bytes = signals_->size();
  Bytes out(sizeof a);
  std::memcpy(out.data(), &a, sizeof a);
  return out;
}

Status CudaIpcTransport::Connect(int peer, std::span<const std::byte> remote_address) {
  Address a;
  if (remote_address.size() != sizeof a) {
    return DataLossError("cuda_ipc: " + PeerName(peer) + " sent a connection address of " +
                         std::to_string(remote_address.size()) + " bytes, expected " + std::to_string(sizeof a));
  }
  std::memcpy(&a, remote_address.data(), sizeof a);
  a.host[sizeof a.host - 1] = '\0';
  a.mailbox[sizeof a.mailbox - 1] = '\0';
  if (a.magic != kAddressMagic || a.rank != peer || a.capacity != layout_.capacity) {
    return DataLossError("cuda_ipc: the connection address of " + PeerName(peer) + " does not match this build");
  }
  if (HostIdentity() != a.host) {
    return UnavailableError("cuda_ipc: " + PeerName(peer) + " runs on another host (" + a.host +
                            "); CUDA IPC needs every rank of the group on one host");
  }
  if (a.device == device_) {
    // Allowed (several processes on one GPU, as in tests), but slower than one GPU per process.
  } else {
    int can = 0;
    M2N_CUDA_RETURN_IF_ERROR(cudaDeviceCanAccessPeer(&can, device_, a.device), "cudaDeviceCanAccessPeer");
    if (!can) {
      return UnavailableError("cuda_ipc: GPU " + std::to_string(device_) + " cannot access GPU " +
                              std::to_string(a.device) + " of " + PeerName(peer) + " (no NVLink or PCIe peer access)");
    }
  }
  M2N_ASSIGN_OR_RETURN(outboxes_[static_cast<size_t>(peer)], Outbox::Open(a.mailbox, layout_, config_.rank));
  if (proxy_) {
    // The proxy kernel publishes immediates in this ring: map it for the GPU.
    Outbox& box = *outboxes_[static_cast<size_t>(peer)];
    M2N_CUDA_RETURN_IF_ERROR(cudaHostRegister(box.data(), box.size(), cudaHostRegisterMapped | cudaHostRegisterPortable),
                             "cudaHostRegister (the immediate ring of " + PeerName(peer) + ")");
    void* device = nullptr;
    cudaError_t e = cudaHostGetDevicePointer(&device, box.data(), 0);
    if (e != cudaSuccess) {
      cudaHostUnregister(box.data());
      return CudaStatus(e, "cudaHostGetDevicePointer (the immediate ring of " + PeerName(peer) + ")");
    }
    outbox_device_[static_cast<size_t>(peer)] = static_cast<std::byte*>(device);
  }
  auto mapped = DeviceMapping::Open(a.signals, a.signal_bytes);
  if (!mapped.ok()) return mapped.status().WithContext("cuda_ipc: signal words of " + PeerName(peer));
  remote_signals_[static_cast<size_t>(peer)] = std::move(mapped).value();
  return OkStatus();
}

StatusOr<std::unique_ptr<RemoteRegion>> CudaIpcTransport::UnpackRemoteKey(int peer, std::span<const std::byte> packed) {
  M2N_RETURN_IF_ERROR(CheckPeer(peer, "unpacking a key"));
  auto remote = IpcRemoteRegion::Unpack(packed);
  if (!remote.ok()) return remote.status().WithContext("cuda_ipc: memory of " + PeerName(peer));
  return std::unique_ptr<RemoteRegion>(std::move(remote).value());
}

Status CudaIpcTransport::Post(std::span<const Write> writes) {
  for (const Write& w : writes) {
    M2N_RETURN_IF_ERROR(CheckPeer(w.peer, "a write"));
    if (w.length > 0) {
      if (w.local == nullptr || w.remote == nullptr) {
        return InvalidArgumentError("cuda_ipc: a write of " + std::to_string(w.length) + " bytes without regions");
      }
      const auto* remote = static_cast<const IpcRemoteRegion*>(w.remote);
      if (w.local_offset + w.length > w.local->size() || w.remote_offset + w.length > remote->size()) {
        return InvalidArgumentError("cuda_ipc: a write of " + std::to_string(w.length) + " bytes to " +
                                    PeerName(w.peer) + " runs past a region");
      }
      const std::byte* src = w.local->data() + w.local_offset;
      std::byte* dst = remote->data() + w.remote_offset;
      if (proxy_ && w.local->kind() == MemoryKind::kCuda && remote->kind() == MemoryKind::kCuda) {
        M2N_RETURN_IF_ERROR(PostThroughProxy(w, src, dst));
        continue;
      }
      if (w.local->kind() == MemoryKind::kHost && remote->kind() == MemoryKind::kHost) {
        std::memcpy(dst, src, w.length);
      } else {
        // Host-driven writes of device memory: a convenience, not the fast path (that is
        // SendOnStream). A device-to-device cudaMemcpy may return before the bytes land, so the
        // copy goes on our own stream and is waited for before the immediate is pushed.
        M2N_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, w.length, cudaMemcpyDefault, copy_stream_),
                                 "cudaMemcpyAsync of " + std::to_string(w.length) + " bytes to " + PeerName(w.peer));
        M2N_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(copy_stream_), "cudaStreamSynchronize (a write to " +
                                                                          PeerName(w.peer) + ")");
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
  }
  // The batch's writes through the copy proxy go to the kernel together.
  if (proxy_) M2N_RETURN_IF_ERROR(proxy_->Publish());
  return OkStatus();
}

Status CudaIpcTransport::PostThroughProxy(const Write& w, const std::byte* src, std::byte* dst) {
  const Deadline deadline = Deadline::After(config_.timeout);
  if (!proxy_->HasRoom()) M2N_RETURN_IF_ERROR(proxy_->Publish());
  while (!proxy_->HasRoom()) {
    M2N_RETURN_IF_ERROR(proxy_->Completed().status());
    if (deadline.Expired()) {
      return DeadlineExceededError("cuda_ipc: the copy proxy served no write for " +
                                   std::to_string(config_.timeout.count()) + " ms (a write to " +
                                   PeerName(w.peer) + " waits for room in its ring)");
    }
  }
  Outbox& box = *outboxes_[static_cast<size_t>(w.peer)];
  M2N_ASSIGN_OR_RETURN(Outbox::Reserved entry, box.Reserve(w.lane, w.imm, w.length));
  auto* sequence = reinterpret_cast<unsigned long long*>(
      outbox_device_[static_cast<size_t>(w.peer)] + (reinterpret_cast<std::byte*>(entry.sequence) - box.data()));
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
    if (!completed.ok()) return completed.status().WithContext("cuda_ipc: writes through the copy proxy");
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

// ---------------------------------------------------------------------------------------------
// Stream-ordered path.

unsigned long long* CudaIpcTransport::LocalSignal(int peer, SignalKind kind, int slot) const {
  auto* base = reinterpret_cast<unsigned long long*>(signals_->data());
  return base + (static_cast<size_t>(peer) * kNumSignalKinds + kind) * static_cast<size_t>(config_.slot_depth) +
         static_cast<size_t>(slot);
}

unsigned long long* CudaIpcTransport::RemoteSignal(int peer, SignalKind kind, int slot) const {
  auto* base = reinterpret_cast<unsigned long long*>(remote_signals_[static_cast<size_t>(peer)]->data());
  return base +
         (static_cast<size_t>(config_.rank) * kNumSignalKinds + kind) * static_cast<size_t>(config_.slot_depth) +
         static_cast<size_t>(slot);
}

const uint32_t* CudaIpcTransport::ArrivedLength(int peer, int slot) const {
  // The low half of the little-endian arrival word.
  return reinterpret_cast<const uint32_t*>(LocalSignal(peer, kArrival, slot));
}

Status CudaIpcTransport::SendOnStream(std::span<const StreamWrite> writes, void* stream) {
  DeviceDeadline deadline{error_device_, static_cast<unsigned long long>(
                                             std::chrono::nanoseconds(config_.timeout).count())};
  SendBatch batch{};
  auto launch = [&]() -> Status {
    if (batch.count == 0) return OkStatus();
    M2N_CUDA_RETURN_IF_ERROR(LaunchSend(batch, deadline, static_cast<cudaStream_t>(stream)),
                             "launching the send kernel");
    batch.count = 0;
    batch.total_blocks = 0;
    return OkStatus();
  };
  for (const StreamWrite& w : writes) {
    M2N_RETURN_IF_ERROR(CheckPeer(w.peer, "SendOnStream"));
    if (w.slot < 0 || w.slot >= config_.slot_depth) {
      return InvalidArgumentError("cuda_ipc: slot " + std::to_string(w.slot) + " outside [0, " +
                                  std::to_string(config_.slot_depth) + ")");
    }
    const auto* remote = static_cast<const IpcRemoteRegion*>(w.remote);
    if (remote == nullptr || remote->kind() != MemoryKind::kCuda) {
      return FailedPreconditionError("cuda_ipc: the receive slots of " + PeerName(w.peer) +
                                     " are not in device memory; stream-ordered sends need them there");
    }
    if (w.length > 0 && (w.local == nullptr || w.local->kind() != MemoryKind::kCuda)) {
      return InvalidArgumentError("cuda_ipc: SendOnStream needs a device-memory source");
    }
    if (w.length > 0xffffffffull || w.remote_offset + w.length > remote->size() ||
        (w.length > 0 && w.local_offset + w.length > w.local->size())) {
      return InvalidArgumentError("cuda_ipc: a stream write of " + std::to_string(w.length) + " bytes to " +
                                  PeerName(w.peer) + " runs past a region");
    }
    if (batch.count == kMaxStreamBatch) M2N_RETURN_IF_ERROR(launch());
    SendTask& t = batch.tasks[batch.count++];
    t.src = w.length > 0 ? w.local->data() + w.local_offset : nullptr;
    t.dst = remote->data() + w.remote_offset;
    t.length = w.length;
    t.remote_arrival = RemoteSignal(w.peer, kArrival, w.slot);
    t.released = LocalSignal(w.peer, kReleased, w.slot);
    t.generation = LocalSignal(w.peer, kGenSent, w.slot);
    t.arrived_blocks = LocalSignal(w.peer, kArriveCount, w.slot);
    const size_t blocks = std::clamp<size_t>((w.length + block_bytes_ - 1) / block_bytes_, 1,
                                             static_cast<size_t>(max_blocks_));
    t.first_block = batch.total_blocks;
    t.num_blocks = static_cast<int>(blocks);
    t.peer = w.peer;
    t.slot = w.slot;
    batch.total_blocks += t.num_blocks;
  }
  return launch();
}

Status CudaIpcTransport::WaitOnStream(std::span<const StreamSlot> slots, void* stream) {
  DeviceDeadline deadline{error_device_, static_cast<unsigned long long>(
                                             std::chrono::nanoseconds(config_.timeout).count())};
  WaitBatch batch{};
  for (size_t i = 0; i < slots.size(); ++i) {
    const StreamSlot& s = slots[i];
    M2N_RETURN_IF_ERROR(CheckPeer(s.peer, "WaitOnStream"));
    batch.tasks[batch.count++] = WaitTask{LocalSignal(s.peer, kArrival, s.slot),
                                          LocalSignal(s.peer, kGenReceived, s.slot), s.peer, s.slot};
    if (batch.count == kMaxStreamBatch || i + 1 == slots.size()) {
      M2N_CUDA_RETURN_IF_ERROR(LaunchWait(batch, deadline, static_cast<cudaStream_t>(stream)),
                               "launching the wait kernel");
      batch.count = 0;
    }
  }
  return OkStatus();
}

Status CudaIpcTransport::ReleaseOnStream(std::span<const StreamSlot> slots, void* stream) {
  ReleaseBatch batch{};
  for (size_t i = 0; i < slots.size(); ++i) {
    const StreamSlot& s = slots[i];
    M2N_RETURN_IF_ERROR(CheckPeer(s.peer, "ReleaseOnStream"));
    batch.tasks[batch.count++] = ReleaseTask{LocalSignal(s.peer, kGenReceived, s.slot),
                                             RemoteSignal(s.peer, kReleased, s.slot)};
    if (batch.count == kMaxStreamBatch || i + 1 == slots.size()) {
      M2N_CUDA_RETURN_IF_ERROR(LaunchRelease(batch, static_cast<cudaStream_t>(stream)),
                               "launching the release kernel");
      batch.count = 0;
    }
  }
  return OkStatus();
}

Status CudaIpcTransport::StreamError() {
  if (!stream_error_.ok()) return stream_error_;
  const unsigned long long code = *reinterpret_cast<volatile unsigned long long*>(error_host_);
  if (code == 0) return OkStatus();
  const int reason = static_cast<int>(code >> 56);
  const int peer = static_cast<int>((code >> 24) & 0xffffffff);
  const int slot = static_cast<int>(code & 0xffffff);
  const std::string limit = std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(config_.timeout).count());
  stream_error_ = DeadlineExceededError(
      "cuda_ipc: a stream-ordered " +
      std::string(reason == kCreditWait ? "send waited for " + PeerName(peer) + " to release slot "
                                        : "receive waited for a message from " + PeerName(peer) + " in slot ") +
      std::to_string(slot) + " longer than " + limit +
      " ms on the GPU and gave up; work after it on the stream saw no valid data");
  return stream_error_;
}

}  // namespace m2n::transport::cuda_ipc

namespace m2n::transport {

const TransportInfo& cuda_ipcTransportInfo() {
  // Preference 40: below UCX for "auto" with host slots (UCX spans hosts); with device slots
  // (Options::slot_memory = kCuda) "auto" skips transports without cuda_memory.
  static const TransportInfo info{"cuda_ipc", 40, &cuda_ipc::Probe, &cuda_ipc::CudaIpcTransport::Create,
                                  /*cuda_memory=*/true};
  return info;
}

}  // namespace m2n::transport

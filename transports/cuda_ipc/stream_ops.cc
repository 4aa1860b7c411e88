// CudaIpcTransport's stream-ordered operations (StreamOps, device slots): the signal words of each
// (peer, slot) in our block and the peer's, the send / wait / release kernels launched in batches
// on the caller's stream, and the device's give-up word read back as a Status; and the same words
// handed to the device-side API (m2n/device.h), whose kernels are the user's.
#include <algorithm>
#include <chrono>
#include <string>
#include <typeinfo>

#include "transports/cuda_ipc/cuda_status.h"
#include "transports/cuda_ipc/transport.h"
#include "transports/validate.h"

namespace m2n::transport::cuda_ipc {

unsigned long long* CudaIpcTransport::LocalSignal(int peer, SignalKind kind, int slot) const {
  auto* base = reinterpret_cast<unsigned long long*>(signals_->data());
  return base +
         (static_cast<size_t>(peer) * kNumSignalKinds + kind) *
             static_cast<size_t>(config_.slot_depth) +
         static_cast<size_t>(slot);
}

unsigned long long* CudaIpcTransport::RemoteSignal(int peer, SignalKind kind, int slot) const {
  auto* base =
      reinterpret_cast<unsigned long long*>(remote_signals_[static_cast<size_t>(peer)]->data());
  return base +
         (static_cast<size_t>(config_.rank) * kNumSignalKinds + kind) *
             static_cast<size_t>(config_.slot_depth) +
         static_cast<size_t>(slot);
}

const uint32_t* CudaIpcTransport::ArrivedLength(int peer, int slot) const {
  // The low half of the little-endian arrival word.
  return reinterpret_cast<const uint32_t*>(LocalSignal(peer, kArrival, slot));
}

Status CudaIpcTransport::CheckStreamSlot(int peer, int slot, std::string_view what) const {
  M2N_RETURN_IF_ERROR(CheckPeer(peer, what));
  if (slot < 0 || slot >= config_.slot_depth) {
    return InvalidArgumentError("cuda_ipc: slot " + std::to_string(slot) + " outside [0, " +
                                std::to_string(config_.slot_depth) + ") in " + std::string(what) +
                                " with " + PeerName(peer));
  }
  return OkStatus();
}

Status CudaIpcTransport::CheckRemoteSignals(int peer, std::string_view what) const {
  if (remote_signals_[static_cast<size_t>(peer)]) return OkStatus();
  return FailedPreconditionError(
      "cuda_ipc: " + std::string(what) + ": " + PeerName(peer) +
      " has no signal words (no GPU there); stream-ordered operations need them");
}

Status CudaIpcTransport::ValidateStreamWrite(const StreamWrite& w) const {
  M2N_RETURN_IF_ERROR(CheckStreamSlot(w.peer, w.slot, "SendOnStream"));
  // typeid first: a region of another transport must not be static_cast to ours.
  if (w.remote == nullptr || typeid(*w.remote) != typeid(IpcRemoteRegion) ||
      static_cast<const IpcRemoteRegion*>(w.remote)->kind() != MemoryKind::kCuda) {
    return FailedPreconditionError(
        "cuda_ipc: the receive slots of " + PeerName(w.peer) +
        " are not in device memory; stream-ordered sends need them there");
  }
  M2N_RETURN_IF_ERROR(CheckRemoteSignals(w.peer, "SendOnStream"));
  if (w.length == 0) {
    if (RangeInside(w.remote_offset, 0, w.remote->size())) return OkStatus();
    return InvalidArgumentError("cuda_ipc: a stream write to " + PeerName(w.peer) +
                                " at remote offset " + std::to_string(w.remote_offset) +
                                " outside the remote region of " +
                                std::to_string(w.remote->size()) + " bytes");
  }
  if (w.local == nullptr || typeid(*w.local) != typeid(IpcRegion) ||
      w.local->kind() != MemoryKind::kCuda) {
    return InvalidArgumentError(
        "cuda_ipc: SendOnStream needs a device-memory source registered here");
  }
  // The same rule as host-driven writes (validate.h), plus the 32-bit length of the arrival word.
  const Write as_write = AsWrite(w);
  M2N_RETURN_IF_ERROR(
      ValidateWriteRegions(as_write, "cuda_ipc", typeid(IpcRegion), typeid(IpcRemoteRegion)));
  if (w.length > 0xffffffffull) {
    return InvalidArgumentError(
        WriteText(as_write, "cuda_ipc", " on a stream: more than 2^32-1 bytes"));
  }
  return OkStatus();
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
    M2N_RETURN_IF_ERROR(ValidateStreamWrite(w));
    const auto* remote = static_cast<const IpcRemoteRegion*>(w.remote);
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
    M2N_RETURN_IF_ERROR(CheckStreamSlot(s.peer, s.slot, "WaitOnStream"));
    batch.tasks[batch.count++] =
        WaitTask{LocalSignal(s.peer, kArrival, s.slot), LocalSignal(s.peer, kGenReceived, s.slot),
                 s.peer, s.slot};
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
    M2N_RETURN_IF_ERROR(CheckStreamSlot(s.peer, s.slot, "ReleaseOnStream"));
    M2N_RETURN_IF_ERROR(CheckRemoteSignals(s.peer, "ReleaseOnStream"));
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
  const std::string limit = std::to_string(
      std::chrono::duration_cast<std::chrono::milliseconds>(config_.timeout).count());
  stream_error_ = DeadlineExceededError(
      std::string(device_api_ ? "cuda_ipc: a device-side (m2n/device.cuh) "
                              : "cuda_ipc: a stream-ordered ") +
      std::string(reason == kCreditWait
                      ? "send waited for " + PeerName(peer) + " to release slot "
                      : "receive waited for a message from " + PeerName(peer) + " in slot ") +
      std::to_string(slot) + " longer than " + limit +
      " ms on the GPU and gave up; work after it on the stream saw no valid data");
  return stream_error_;
}

// ---- The device-side API ----

StatusOr<DevicePeerWords> CudaIpcTransport::DeviceWords(int peer) {
  M2N_RETURN_IF_ERROR(CheckStreamSlot(peer, 0, "the device-side API"));
  M2N_RETURN_IF_ERROR(CheckRemoteSignals(peer, "the device-side API"));
  device_api_ = true;
  DevicePeerWords w;
  w.arrival = LocalSignal(peer, kArrival, 0);
  w.released = LocalSignal(peer, kReleased, 0);
  w.generation_sent = LocalSignal(peer, kGenSent, 0);
  w.generation_received = LocalSignal(peer, kGenReceived, 0);
  w.arrived_blocks = LocalSignal(peer, kArriveCount, 0);
  w.remote_arrival = RemoteSignal(peer, kArrival, 0);
  w.remote_released = RemoteSignal(peer, kReleased, 0);
  return w;
}

StatusOr<DeviceWaitLimit> CudaIpcTransport::DeviceWaits() {
  if (!no_cuda_.ok()) return no_cuda_;
  return DeviceWaitLimit{error_device_, static_cast<unsigned long long>(
                                            std::chrono::nanoseconds(config_.timeout).count())};
}

StatusOr<std::byte*> CudaIpcTransport::MappedAddress(const RemoteRegion& remote, size_t offset) {
  // typeid first: a region of another transport must not be static_cast to ours.
  if (typeid(remote) != typeid(IpcRemoteRegion) ||
      static_cast<const IpcRemoteRegion&>(remote).kind() != MemoryKind::kCuda) {
    return FailedPreconditionError(
        "cuda_ipc: the device-side API needs the peer's receive slots in device memory");
  }
  if (!RangeInside(offset, 0, remote.size())) {
    return InvalidArgumentError("cuda_ipc: offset " + std::to_string(offset) +
                                " outside a remote region of " + std::to_string(remote.size()) +
                                " bytes");
  }
  return static_cast<const IpcRemoteRegion&>(remote).data() + offset;
}

StatusOr<std::unique_ptr<Region>> CudaIpcTransport::AllocateDeviceCopy(
    std::span<const std::byte> contents) {
  if (!no_cuda_.ok()) return no_cuda_;
  M2N_ASSIGN_OR_RETURN(auto region, IpcRegion::Allocate(contents.size(), MemoryKind::kCuda));
  M2N_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(region->data(), contents.data(), contents.size(), cudaMemcpyHostToDevice),
      "cudaMemcpy (device-side API words)");
  // From pageable memory cudaMemcpy may return before its DMA lands (and the allocation's zeroing
  // is on the legacy stream too), while the user's kernels run on streams that do not wait for the
  // legacy one: the words are in place before this returns.
  M2N_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(cudaStreamLegacy),
                           "cudaStreamSynchronize (device-side API words)");
  return std::unique_ptr<Region>(std::move(region));
}

}  // namespace m2n::transport::cuda_ipc

// VerbsTransport's stream-ordered operations (StreamOps, with GPU slots): the device words and the
// proxy thread (stream.h) set up at creation, slots checked, and SendOnStream / WaitOnStream /
// ReleaseOnStream handed to the proxy.
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <utility>

#include "transports/validate.h"
#include "transports/verbs/transport.h"

#if M2N_VERBS_WITH_CUDA
#include "transports/verbs/cuda_driver.h"
#endif

namespace m2n::transport::verbs {

// Longer than a screen on purpose: the stream path's set-up steps in their one valid order (CUDA
// context and flush mode, the proxy's CQ, the flag words registered for the GPU, then what uses
// them), each undone by the destructor.
Status VerbsTransport::InitStreamPath() {
#if M2N_VERBS_WITH_CUDA
  auto driver = CudaDriver::Get();
  if (!driver.ok()) return driver.status().WithContext(Who() + ": GPU slots");
  const CudaDriver* cuda = *driver;
  CUcontext context = nullptr;
  if (cuda->ctx_get_current(&context) != CUDA_SUCCESS || context == nullptr) {
    return FailedPreconditionError(Who() +
                                   ": GPU slots: no CUDA context is current on this thread "
                                   "(cudaSetDevice before Group::Create)");
  }
  cuda_context_ = context;
  CUdevice device = 0;
  if (CUresult r = cuda->ctx_get_device(&device); r != CUDA_SUCCESS) {
    return UnavailableError(cuda->Error("cuCtxGetDevice", r));
  }
  // Making the NIC's writes visible to the GPU: at the stream's wait where the GPU can flush remote
  // writes itself, else from the proxy (cuFlushGPUDirectRDMAWrites), else not needed or not
  // possible (the platform orders them; README.md says which).
  int can_flush = 0;
  int flush_options = 0;
  (void)cuda->device_get_attribute(&can_flush, CU_DEVICE_ATTRIBUTE_CAN_FLUSH_REMOTE_WRITES, device);
  (void)cuda->device_get_attribute(
      &flush_options, CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_FLUSH_WRITES_OPTIONS, device);
  can_host_flush_ = (flush_options & CU_FLUSH_GPU_DIRECT_RDMA_WRITES_OPTION_HOST) != 0 &&
                    cuda->flush_gpudirect_rdma_writes != nullptr;
  if (can_flush != 0) {
    stream_wait_flags_ = CU_STREAM_WAIT_VALUE_FLUSH;
  } else if (can_host_flush_) {
    host_flush_ = true;
  }
  if (config_.slot_depth <= 0) config_.slot_depth = config_.max_unpolled;
  const uint64_t cqes =
      std::max<uint64_t>(1, config_.peers.size()) * kNumLanes * (sq_depth_ + rq_depth_) + 16;
  stream_cq_ = ibv_create_cq(ctx_->device(), static_cast<int>(cqes), nullptr, nullptr, 0);
  if (stream_cq_ == nullptr) {
    return UnavailableError(
        Who() + ": " +
        VerbError("ibv_create_cq(stream path, " + std::to_string(cqes) + " entries)", errno));
  }
  stream_word_count_ = StreamProxy::WordCount(config_.peers.size(), config_.slot_depth);
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t bytes = (stream_word_count_ * sizeof(uint32_t) + page - 1) / page * page;
  stream_words_ = static_cast<uint32_t*>(std::aligned_alloc(page, bytes));
  if (stream_words_ == nullptr)
    return UnavailableError(Who() + ": allocating the stream path's words failed");
  std::memset(stream_words_, 0, bytes);
  if (CUresult r = cuda->mem_host_register(
          stream_words_, bytes, CU_MEMHOSTREGISTER_DEVICEMAP | CU_MEMHOSTREGISTER_PORTABLE);
      r != CUDA_SUCCESS) {
    std::free(stream_words_);
    stream_words_ = nullptr;
    return UnavailableError(cuda->Error("cuMemHostRegister of the stream path's words", r));
  }
  CUdeviceptr device_words = 0;
  if (CUresult r = cuda->mem_host_get_device_pointer(&device_words, stream_words_, 0);
      r != CUDA_SUCCESS) {
    return UnavailableError(cuda->Error("cuMemHostGetDevicePointer of the stream path's words", r));
  }
  stream_words_device_ = device_words;
  return OkStatus();
#else
  return UnimplementedError(Who() + ": GPU slots need a build with the CUDA toolkit found");
#endif
}

// `device`: the device-side API's ring and words (ProxyDevicePeers), else off.
Status VerbsTransport::StartProxy(DeviceLink device) {
  if (proxy_ != nullptr) return OkStatus();
#if M2N_VERBS_WITH_CUDA
  M2N_ASSIGN_OR_RETURN(const CudaDriver* cuda, CudaDriver::Get());
  std::vector<StreamProxy::Peer> peers;
  for (size_t i = 0; i < config_.peers.size(); ++i)
    peers.push_back({config_.peers[i], endpoints_[i].get()});
  StreamProxy::Settings settings;
  settings.slot_depth = config_.slot_depth;
  settings.timeout = config_.timeout;
  settings.proxy_core = config_.proxy_core;
  CUcontext context = static_cast<CUcontext>(cuda_context_);
  settings.on_start = [cuda, context] { (void)cuda->ctx_set_current(context); };
  settings.device = std::move(device);
  // The device-side API's kernels poll a word, with no stream wait that could flush: the proxy
  // flushes wherever it can.
  if (host_flush_ || (device.ring != nullptr && can_host_flush_)) {
    settings.flush = [cuda] {
      (void)cuda->flush_gpudirect_rdma_writes(CU_FLUSH_GPU_DIRECT_RDMA_WRITES_TARGET_CURRENT_CTX,
                                              CU_FLUSH_GPU_DIRECT_RDMA_WRITES_TO_OWNER);
    };
  }
  auto proxy = StreamProxy::Start(stream_cq_, std::move(peers), stream_words_, std::move(settings));
  if (!proxy.ok()) return proxy.status().WithContext(Who());
  proxy_ = std::move(proxy).value();
  return OkStatus();
#else
  (void)device;
  return UnimplementedError(Who() + ": the stream path needs a build with the CUDA toolkit found");
#endif
}

Status VerbsTransport::CheckStreamSlot(int peer, int slot, std::string_view call) const {
  if (closed_) return FailedPreconditionError(Who() + ": " + std::string(call) + " after Close");
  if (stream_cq_ == nullptr) {
    return FailedPreconditionError(Who() + ": " + std::string(call) +
                                   " needs GPU slots (Config::slot_memory)");
  }
  Endpoint* e = FindEndpoint(peer);
  if (e == nullptr || !e->connected()) {
    return InvalidArgumentError(Who() + ": " + std::string(call) + " to rank " +
                                std::to_string(peer) + ", which is not connected");
  }
  if (slot < 0 || slot >= config_.slot_depth) {
    return InvalidArgumentError(PeerText(peer, std::string(call) + ": slot " +
                                                   std::to_string(slot) + " outside [0, " +
                                                   std::to_string(config_.slot_depth) + ")"));
  }
  return OkStatus();
}

uint64_t VerbsTransport::DeviceWord(StreamWord kind, int peer, int slot) const {
  return stream_words_device_ +
         sizeof(uint32_t) * StreamProxy::WordIndex(kind, config_.peers.size(), config_.slot_depth,
                                                   peer_index_[peer], slot);
}

Status VerbsTransport::SendOnStream(std::span<const StreamWrite> writes, void* stream) {
  for (const StreamWrite& w : writes) {
    M2N_RETURN_IF_ERROR(CheckStreamSlot(w.peer, w.slot, "SendOnStream"));
    // The same checks as a host-driven write of the same bytes.
    M2N_RETURN_IF_ERROR(Validate(AsWrite(w)));
    if (w.remote == nullptr)
      return InvalidArgumentError(PeerText(w.peer, "SendOnStream without the peer's slots"));
  }
#if M2N_VERBS_WITH_CUDA
  M2N_RETURN_IF_ERROR(StartProxy());
  M2N_ASSIGN_OR_RETURN(const CudaDriver* cuda, CudaDriver::Get());
  CUstream s = static_cast<CUstream>(stream);
  // All the ready marks first, then the waits: the proxy posts every write of the batch at once.
  std::vector<uint32_t> generations(writes.size());
  for (size_t i = 0; i < writes.size(); ++i) {
    const StreamWrite& w = writes[i];
    const auto* remote = static_cast<const VerbsRemoteRegion*>(w.remote);
    StreamDescriptor d;
    if (w.length > 0) {
      const auto* local = static_cast<const VerbsRegion*>(w.local);
      d.local_address = reinterpret_cast<uintptr_t>(local->data()) + w.local_offset;
      d.lkey = local->lkey();
    }
    d.remote_address = remote->address() + w.remote_offset;
    d.rkey = remote->rkey();
    d.length = static_cast<uint32_t>(w.length);
    generations[i] = proxy_->QueueSend(peer_index_[w.peer], w.slot, d);
    if (CUresult r =
            cuda->stream_write_value32(s, DeviceWord(kReady, w.peer, w.slot), generations[i], 0);
        r != CUDA_SUCCESS) {
      return InternalError(cuda->Error(
          "cuStreamWriteValue32 (SendOnStream to rank " + std::to_string(w.peer) + ")", r));
    }
  }
  for (size_t i = 0; i < writes.size(); ++i) {
    const StreamWrite& w = writes[i];
    if (CUresult r = cuda->stream_wait_value32(s, DeviceWord(kSent, w.peer, w.slot), generations[i],
                                               CU_STREAM_WAIT_VALUE_GEQ);
        r != CUDA_SUCCESS) {
      return InternalError(cuda->Error(
          "cuStreamWaitValue32 (SendOnStream to rank " + std::to_string(w.peer) + ")", r));
    }
  }
  return OkStatus();
#else
  return UnimplementedError(Who() + ": SendOnStream needs a build with the CUDA toolkit found");
#endif
}

Status VerbsTransport::WaitOnStream(std::span<const StreamSlot> slots, void* stream) {
  for (const StreamSlot& slot : slots)
    M2N_RETURN_IF_ERROR(CheckStreamSlot(slot.peer, slot.slot, "WaitOnStream"));
#if M2N_VERBS_WITH_CUDA
  M2N_RETURN_IF_ERROR(StartProxy());
  M2N_ASSIGN_OR_RETURN(const CudaDriver* cuda, CudaDriver::Get());
  CUstream s = static_cast<CUstream>(stream);
  for (const StreamSlot& slot : slots) {
    const uint32_t generation = proxy_->NextWait(peer_index_[slot.peer], slot.slot);
    // kWaiting tells the proxy since when the stream waits (its bound); then the wait itself.
    CUresult r = cuda->stream_write_value32(s, DeviceWord(kWaiting, slot.peer, slot.slot),
                                            generation, CU_STREAM_WRITE_VALUE_NO_MEMORY_BARRIER);
    if (r == CUDA_SUCCESS) {
      r = cuda->stream_wait_value32(s, DeviceWord(kArrived, slot.peer, slot.slot), generation,
                                    CU_STREAM_WAIT_VALUE_GEQ | stream_wait_flags_);
    }
    if (r != CUDA_SUCCESS) {
      return InternalError(
          cuda->Error("stream wait (WaitOnStream from rank " + std::to_string(slot.peer) + ")", r));
    }
  }
  return OkStatus();
#else
  return UnimplementedError(Who() + ": WaitOnStream needs a build with the CUDA toolkit found");
#endif
}

Status VerbsTransport::ReleaseOnStream(std::span<const StreamSlot> slots, void* stream) {
  for (const StreamSlot& slot : slots)
    M2N_RETURN_IF_ERROR(CheckStreamSlot(slot.peer, slot.slot, "ReleaseOnStream"));
#if M2N_VERBS_WITH_CUDA
  M2N_RETURN_IF_ERROR(StartProxy());
  M2N_ASSIGN_OR_RETURN(const CudaDriver* cuda, CudaDriver::Get());
  CUstream s = static_cast<CUstream>(stream);
  for (const StreamSlot& slot : slots) {
    const uint32_t generation = proxy_->NextRelease(peer_index_[slot.peer], slot.slot);
    // With a memory barrier (the default): the consumer's reads of the slot are done first.
    if (CUresult r =
            cuda->stream_write_value32(s, DeviceWord(kFreed, slot.peer, slot.slot), generation, 0);
        r != CUDA_SUCCESS) {
      return InternalError(cuda->Error(
          "cuStreamWriteValue32 (ReleaseOnStream to rank " + std::to_string(slot.peer) + ")", r));
    }
  }
  return OkStatus();
#else
  return UnimplementedError(Who() + ": ReleaseOnStream needs a build with the CUDA toolkit found");
#endif
}

const uint32_t* VerbsTransport::ArrivedLength(int peer, int slot) const {
  if (stream_cq_ == nullptr || FindEndpoint(peer) == nullptr || slot < 0 ||
      slot >= config_.slot_depth)
    return nullptr;
  return reinterpret_cast<const uint32_t*>(DeviceWord(kLength, peer, slot));
}

Status VerbsTransport::StreamError() {
  if (proxy_ != nullptr) M2N_RETURN_IF_ERROR(proxy_->error());
  if (device_api_.host == nullptr) return OkStatus();
  // A device-side wait that gave up (m2n/device.cuh wrote the code).
  const unsigned long long code =
      std::atomic_ref<unsigned long long>(device_api_.host[0]).load(std::memory_order_acquire);
  if (code == 0) return OkStatus();
  return DeviceWaitGaveUp(code,
                          std::chrono::duration_cast<std::chrono::milliseconds>(config_.timeout));
}

}  // namespace m2n::transport::verbs

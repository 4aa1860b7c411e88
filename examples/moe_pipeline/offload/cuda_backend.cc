// The GPU load backend (cuda_backend.h): pinned host copy, device slots, a copy stream, an event
// per slot.
#include "offload/cuda_backend.h"

#include <cuda_runtime.h>

#include <string>

namespace moe::offload {
namespace {

m2n::Status Check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return m2n::OkStatus();
  return m2n::InternalError(std::string("expert cache (cuda): ") + what + ": " +
                            cudaGetErrorString(e));
}

}  // namespace

m2n::StatusOr<std::unique_ptr<CudaCopyBackend>> CudaCopyBackend::Create(const OffloadShape& shape,
                                                                        int slots) {
  std::unique_ptr<CudaCopyBackend> b(new CudaCopyBackend(shape, slots));
  if (auto s = b->Init(); !s.ok()) return s;
  return b;
}

m2n::Status CudaCopyBackend::Init() {
  const size_t bytes = static_cast<size_t>(shape_.expert_bytes);
  void* host = nullptr;
  void* device = nullptr;
  if (auto s = Check(
          cudaHostAlloc(&host, bytes * static_cast<size_t>(shape_.total()), cudaHostAllocDefault),
          "cudaHostAlloc");
      !s.ok())
    return s;
  host_ = static_cast<std::byte*>(host);
  if (auto s = Check(cudaMalloc(&device, bytes * static_cast<size_t>(slots_)), "cudaMalloc");
      !s.ok())
    return s;
  device_ = static_cast<std::byte*>(device);
  cudaStream_t stream = nullptr;
  if (auto s = Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
      !s.ok())
    return s;
  copy_stream_ = stream;
  events_ = std::make_unique<void*[]>(static_cast<size_t>(slots_));
  read_events_ = std::make_unique<void*[]>(static_cast<size_t>(slots_));
  for (int i = 0; i < 2 * slots_; ++i) {
    cudaEvent_t e = nullptr;
    if (auto s = Check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
        !s.ok())
      return s;
    (i < slots_ ? events_ : read_events_)[static_cast<size_t>(i % slots_)] = e;
  }
  return m2n::OkStatus();
}

CudaCopyBackend::~CudaCopyBackend() {
  if (copy_stream_ != nullptr) cudaStreamSynchronize(static_cast<cudaStream_t>(copy_stream_));
  for (void** events : {events_.get(), read_events_.get()}) {
    for (int i = 0; events != nullptr && i < slots_; ++i) {
      if (events[i] != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(events[i]));
    }
  }
  if (copy_stream_ != nullptr) cudaStreamDestroy(static_cast<cudaStream_t>(copy_stream_));
  if (device_ != nullptr) cudaFree(device_);
  if (host_ != nullptr) cudaFreeHost(host_);
}

std::span<std::byte> CudaCopyBackend::Host(ExpertId id) {
  const size_t b = static_cast<size_t>(shape_.expert_bytes);
  return {host_ + static_cast<size_t>(shape_.Index(id)) * b, b};
}

void* CudaCopyBackend::Slot(int slot) const {
  return device_ + static_cast<size_t>(slot) * static_cast<size_t>(shape_.expert_bytes);
}

m2n::Status CudaCopyBackend::Load(ExpertId id, int slot) {
  if (slot < 0 || slot >= slots_)
    return m2n::InternalError("expert cache (cuda): slot " + std::to_string(slot) +
                              " out of range");
  auto stream = static_cast<cudaStream_t>(copy_stream_);
  // The slot's previous occupant may still be read by a step enqueued earlier (the cache unpins
  // an expert once its kernels are enqueued, not done): the copy waits for those reads.
  M2N_RETURN_IF_ERROR(
      Check(cudaStreamWaitEvent(
                stream, static_cast<cudaEvent_t>(read_events_[static_cast<size_t>(slot)]), 0),
            "cudaStreamWaitEvent"));
  M2N_RETURN_IF_ERROR(
      Check(cudaMemcpyAsync(Slot(slot), Host(id).data(), static_cast<size_t>(shape_.expert_bytes),
                            cudaMemcpyHostToDevice, stream),
            "cudaMemcpyAsync"));
  return Check(
      cudaEventRecord(static_cast<cudaEvent_t>(events_[static_cast<size_t>(slot)]), stream),
      "cudaEventRecord");
}

m2n::Status CudaCopyBackend::WaitOn(int slot, void* stream) {
  return Check(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream),
                                   static_cast<cudaEvent_t>(events_[static_cast<size_t>(slot)]), 0),
               "cudaStreamWaitEvent");
}

m2n::Status CudaCopyBackend::MarkRead(int slot, void* stream) {
  return Check(cudaEventRecord(static_cast<cudaEvent_t>(read_events_[static_cast<size_t>(slot)]),
                               static_cast<cudaStream_t>(stream)),
               "cudaEventRecord");
}

}  // namespace moe::offload

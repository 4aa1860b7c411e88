#include "transports/cuda_ipc/proxy.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "transports/cuda_ipc/cuda_status.h"

namespace m2n::transport::cuda_ipc {
namespace {

// The host's side of a word the GPU reads or writes: 8-byte atomic accesses (x86 and the PCIe
// reads of the GPU see an aligned 8-byte store whole).
void StoreWord(unsigned long long* word, unsigned long long value) {
  __atomic_store_n(word, value, __ATOMIC_RELEASE);
}
unsigned long long LoadWord(const unsigned long long* word) {
  return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

}  // namespace

StatusOr<std::unique_ptr<CopyProxy>> CopyProxy::Create(const Options& options) {
  if (options.capacity == 0 || (options.capacity & (options.capacity - 1)) != 0 ||
      options.max_blocks < 1) {
    return InvalidArgumentError("cuda_ipc: copy proxy ring of " + std::to_string(options.capacity) +
                                " descriptors and " + std::to_string(options.max_blocks) +
                                " blocks");
  }
  std::unique_ptr<CopyProxy> p(new CopyProxy(options));
  const size_t cap = options.capacity;
  // Host words: descriptors, done words, then stop, ended and posted on their own cache lines.
  const size_t host_words = cap * kProxyWords + cap + 24;
  void* host = nullptr;
  M2N_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&host, host_words * sizeof(unsigned long long),
                                         cudaHostAllocMapped | cudaHostAllocPortable),
                           "cudaHostAlloc (copy proxy ring)");
  p->host_ = static_cast<unsigned long long*>(host);
  std::memset(host, 0, host_words * sizeof(unsigned long long));
  p->descriptors_ = p->host_;
  p->done_ = p->descriptors_ + cap * kProxyWords;
  p->stop_ = p->done_ + cap;
  p->ended_ = p->stop_ + 8;
  p->posted_ = p->ended_ + 8;
  void* host_device = nullptr;
  M2N_CUDA_RETURN_IF_ERROR(cudaHostGetDevicePointer(&host_device, host, 0),
                           "cudaHostGetDevicePointer (copy proxy)");
  auto* base = static_cast<unsigned long long*>(host_device);
  p->device_bytes_ = (cap * kProxyWords + cap + 1) * sizeof(unsigned long long);
  void* device = nullptr;
  M2N_CUDA_RETURN_IF_ERROR(cudaMalloc(&device, p->device_bytes_), "cudaMalloc (copy proxy mirror)");
  p->device_ = static_cast<unsigned long long*>(device);
  // Non-blocking: the legacy default stream (cudaMemcpy, cudaMemset) must not wait for the proxy.
  M2N_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&p->stream_, cudaStreamNonBlocking),
                           "cudaStreamCreate (copy proxy)");
  p->ring_.descriptors = base;
  p->ring_.done = base + (p->done_ - p->host_);
  p->ring_.stop = base + (p->stop_ - p->host_);
  p->ring_.ended = base + (p->ended_ - p->host_);
  p->ring_.posted = options.doorbell ? base + (p->posted_ - p->host_) : nullptr;
  p->ring_.mirror = p->device_;
  p->ring_.counts = p->device_ + cap * kProxyWords;
  p->ring_.capacity = options.capacity;
  p->ring_.idle_ns =
      static_cast<unsigned long long>(std::chrono::nanoseconds(options.idle).count());
  return p;
}

CopyProxy::~CopyProxy() {
  if (running_) (void)Stop(Deadline::AfterMs(5000));
  if (stuck_) return;  // the kernel may still read this memory: leak it rather than pull it away
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  if (device_ != nullptr) cudaFree(device_);
  if (host_ != nullptr) cudaFreeHost(host_);
}

bool CopyProxy::Ended() const { return LoadWord(ended_) != 0; }

Status CopyProxy::Launch() {
  // The last launch (if any) has ended, or ends before this one starts (same stream): the mirror
  // and the counters it leaves are cleared in stream order.
  StoreWord(ended_, 0);
  M2N_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(device_, 0, device_bytes_, stream_),
                           "cudaMemsetAsync (copy proxy)");
  ProxyRing ring = ring_;
  ring.first = completed_;
  M2N_CUDA_RETURN_IF_ERROR(LaunchProxy(ring, options_.max_blocks, stream_),
                           "launching the copy proxy kernel");
  running_ = true;
  return OkStatus();
}

StatusOr<uint64_t> CopyProxy::Stage(const std::byte* src, std::byte* dst, uint64_t length,
                                    unsigned long long* entry, uint64_t value) {
  if (!HasRoom()) return InternalError("cuda_ipc: copy proxy ring full");
  if (length > 0xffffffffull)
    return InvalidArgumentError("cuda_ipc: a proxied write of more than 4 GiB");
  const uint64_t index = enqueued_;
  const uint64_t blocks =
      std::clamp<uint64_t>((length + options_.block_bytes - 1) / options_.block_bytes, 1,
                           static_cast<uint64_t>(options_.max_blocks));
  const auto address = [](const void* p) {
    return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p));
  };
  Staged& d = staged_.emplace_back();
  d.index = index;
  d.fields[kProxySrcLo] = address(src) & 0xffffffffull;
  d.fields[kProxySrcHi] = address(src) >> 32;
  d.fields[kProxyDstLo] = address(dst) & 0xffffffffull;
  d.fields[kProxyDstHi] = address(dst) >> 32;
  d.fields[kProxyLength] = length;
  d.fields[kProxyBlocks] = blocks;
  // Consecutive descriptors (one per peer in a batch) go to different copy blocks.
  d.fields[kProxyFirstBlock] = next_block_;
  next_block_ = (next_block_ + blocks) % static_cast<uint64_t>(options_.max_blocks);
  d.fields[kProxyEntryLo] = address(entry) & 0xffffffffull;
  d.fields[kProxyEntryHi] = address(entry) >> 32;
  d.fields[kProxyValueLo] = value & 0xffffffffull;
  d.fields[kProxyValueHi] = value >> 32;
  ++enqueued_;
  return index;
}

Status CopyProxy::Publish() {
  if (staged_.empty()) return OkStatus();
  // Last first: once the kernel sees the first descriptor of a batch valid, the others are too (x86
  // stores become visible in order), and it takes two per read.
  for (auto it = staged_.rbegin(); it != staged_.rend(); ++it) {
    const unsigned long long sequence = static_cast<uint32_t>(it->index + 1);
    unsigned long long* d = descriptors_ + (it->index & (options_.capacity - 1)) * kProxyWords;
    for (int f = 0; f < kNumProxyFields; ++f) StoreWord(d + f, (sequence << 32) | it->fields[f]);
  }
  staged_.clear();
  StoreWord(posted_, enqueued_);
  // A kernel that ended (idle) before it saw these descriptors is launched again; one that is about
  // to end without seeing them is caught by Completed().
  if (!running_ || Ended()) {
    M2N_ASSIGN_OR_RETURN(uint64_t done, Completed());
    (void)done;
    if (!running_) M2N_RETURN_IF_ERROR(Launch());
  }
  return OkStatus();
}

StatusOr<uint64_t> CopyProxy::Completed() {
  // Read `ended` before the done words: every done word of the ended launch is visible then.
  const bool ended = running_ && Ended();
  while (completed_ < enqueued_ &&
         LoadWord(done_ + (completed_ & (options_.capacity - 1))) == completed_ + 1) {
    ++completed_;
  }
  if (running_ && !ended && (++polls_ & 1023) == 0) {
    // A kernel that faulted never ends; its error shows on the stream.
    cudaError_t e = cudaStreamQuery(stream_);
    if (e != cudaSuccess && e != cudaErrorNotReady) return CudaStatus(e, "the copy proxy kernel");
  }
  if (ended) {
    running_ = false;
    cudaError_t e = cudaStreamQuery(stream_);
    if (e != cudaSuccess && e != cudaErrorNotReady) return CudaStatus(e, "the copy proxy kernel");
    if (completed_ < enqueued_) M2N_RETURN_IF_ERROR(Launch());
  }
  return completed_;
}

Status CopyProxy::Stop(Deadline deadline) {
  if (!running_) return OkStatus();
  StoreWord(stop_, 1);
  while (!Ended()) {
    if (deadline.Expired()) {
      stuck_ = true;
      return DeadlineExceededError("cuda_ipc: the copy proxy kernel did not end when asked");
    }
    std::this_thread::yield();
  }
  running_ = false;
  StoreWord(stop_, 0);
  M2N_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_), "the copy proxy kernel");
  (void)Completed();
  return OkStatus();
}

}  // namespace m2n::transport::cuda_ipc

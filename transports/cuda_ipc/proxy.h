// The copy proxy of the cuda_ipc transport (opt-in: M2N_CUDA_IPC_PROXY=1).
//
// Host-driven writes of device memory (Transport::Post with device source and device slot) are
// otherwise a cudaMemcpyAsync and a stream synchronize each. With the proxy, a kernel stays
// resident on the GPU (ProxyKernel, kernels.h) and polls a ring of descriptors in pinned host
// memory; Post stages a descriptor per write and publishes the batch (8-byte stores, no CUDA call),
// and the kernel copies the payload into the peer's slot over NVLink, then raises the immediate in
// the peer's ring itself.
// No launch, no stream and no host wake-up lie between the sender's Post and the receiver's Poll
// seeing the message (docs/PERFORMANCE.md, "GPU path", measures what that saves).
//
// The price: while it runs, the kernel holds up to `max_blocks` SMs' worth of threads spinning, and
// a device-wide synchronization (cudaDeviceSynchronize, and cudaFree, which synchronizes) waits for
// it. So it ends by itself after `idle` without a descriptor (and at Stop); the next Publish
// launches it again, starting at the first descriptor that is not done. The source must be complete
// when a write is posted (the kernel reads it at once; nothing orders it after stream work).
#pragma once

#include <cuda_runtime.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "m2n/deadline.h"
#include "m2n/status.h"
#include "transports/cuda_ipc/kernels.h"

namespace m2n::transport::cuda_ipc {

class CopyProxy {
 public:
  struct Options {
    int max_blocks = 32;  // M2N_CUDA_IPC_PROXY_BLOCKS: copy blocks (plus one dispatcher)
    size_t block_bytes =
        16 << 10;  // M2N_CUDA_IPC_PROXY_BLOCK_BYTES: bytes per block before another
    uint32_t capacity = 256;  // descriptors in the ring, a power of two
    std::chrono::milliseconds idle{20};  // M2N_CUDA_IPC_PROXY_IDLE_MS
    // M2N_CUDA_IPC_PROXY_DOORBELL=1: the kernel polls one word (descriptors written) and reads
    // descriptors once it moved, instead of polling the descriptors themselves (11 words each).
    bool doorbell = false;
  };
  // Allocates the ring on the current device; launches nothing yet.
  static StatusOr<std::unique_ptr<CopyProxy>> Create(const Options& options);
  ~CopyProxy();
  CopyProxy(const CopyProxy&) = delete;
  CopyProxy& operator=(const CopyProxy&) = delete;

  // Whether the ring has room for another descriptor (call Completed() to make room).
  bool HasRoom() const { return enqueued_ - completed_ < options_.capacity; }
  // Stages a copy of `length` bytes from `src` to `dst` (device addresses); once the payload is
  // there the kernel stores `value` into `*entry` (a device address; the peer's ring in host
  // memory). Returns the descriptor's index. Needs HasRoom(). Publish() hands the staged copies to
  // the kernel.
  StatusOr<uint64_t> Stage(const std::byte* src, std::byte* dst, uint64_t length,
                           unsigned long long* entry, uint64_t value);
  Status Publish();
  // How many descriptors are complete, in order (those below the answer). Launches the kernel again
  // if it ended with descriptors pending.
  StatusOr<uint64_t> Completed();
  // Ends the kernel and waits for it, bounded by `deadline`.
  Status Stop(Deadline deadline);
  // Stop gave up: the kernel may still write what the descriptors name, so keep it mapped.
  bool stuck() const { return stuck_; }

 private:
  explicit CopyProxy(const Options& options) : options_(options) {}
  Status Launch();
  bool Ended() const;

  Options options_;
  cudaStream_t stream_ = nullptr;
  unsigned long long* host_ = nullptr;  // pinned: descriptors, done words, stop, ended
  unsigned long long* device_ = nullptr;  // mirror and counters
  size_t device_bytes_ = 0;
  ProxyRing ring_{};  // device addresses
  unsigned long long* descriptors_ = nullptr;  // host addresses of the same words
  unsigned long long* done_ = nullptr;
  unsigned long long* stop_ = nullptr;
  unsigned long long* ended_ = nullptr;
  unsigned long long* posted_ = nullptr;
  uint64_t enqueued_ = 0;
  uint64_t completed_ = 0;
  struct Staged {
    uint64_t index;
    uint64_t fields[kNumProxyFields];
  };
  std::vector<Staged> staged_;
  uint64_t polls_ = 0;
  uint64_t next_block_ = 0;  // the copy block the next descriptor starts at
  bool running_ = false;
  bool stuck_ = false;  // Stop gave up: the kernel may still run, so its memory is not freed
};

}  // namespace m2n::transport::cuda_ipc

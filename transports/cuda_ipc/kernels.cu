// Stream-ordered send, wait and release kernels (see kernels.h and README.md).
//
// Memory order: a send's blocks store the payload into the peer's slot (NVLink / PCIe peer
// stores), each block meets at a barrier, its thread 0 fences at system scope and counts the block
// done; the last block raises the peer's arrival word with a system-scope release store. The
// receiver's wait loads that word with acquire order, so the payload is visible to every kernel
// after the wait on its stream.
#include "transports/cuda_ipc/kernels.h"

namespace m2n::transport::cuda_ipc {
namespace {

__device__ __forceinline__ unsigned long long LoadAcquire(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void StoreRelease(unsigned long long* p, unsigned long long v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ unsigned long long GlobalTimerNs() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Spins until pred(*word) holds; false if the deadline passed first (the error word says why).
template <typename Pred>
__device__ bool WaitFor(const unsigned long long* word, Pred pred, DeviceDeadline deadline,
                        unsigned long long reason, int peer, int slot) {
  if (pred(LoadAcquire(word))) return true;
  const unsigned long long start = GlobalTimerNs();
  for (unsigned spins = 1;; ++spins) {
    if (pred(LoadAcquire(word))) return true;
    if ((spins & 1023) == 0) {
      if (*reinterpret_cast<volatile unsigned long long*>(deadline.error_word) != 0) return false;
      if (GlobalTimerNs() - start > deadline.timeout_ns) {
        unsigned long long code = (reason << 56) | (static_cast<unsigned long long>(peer) << 24) |
                                  static_cast<unsigned long long>(slot);
        atomicCAS(deadline.error_word, 0ull, code);
        __threadfence_system();
        return false;
      }
    }
  }
}

// Copies [src, src + n) to dst with the block's threads: 16-byte accesses, four loads in flight
// before their stores, when both ends are 16-byte aligned.
__device__ __forceinline__ void CopyBlock(const std::byte* src, std::byte* dst, unsigned long long n) {
  const unsigned long long t = threadIdx.x;
  const unsigned long long step = blockDim.x;
  unsigned long long done = 0;
  if (((reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst)) & 15) == 0) {
    const uint4* s = reinterpret_cast<const uint4*>(src);
    uint4* d = reinterpret_cast<uint4*>(dst);
    const unsigned long long vectors = n / 16;
    unsigned long long i = t;
    for (; i + 3 * step < vectors; i += 4 * step) {
      uint4 a = s[i];
      uint4 b = s[i + step];
      uint4 c = s[i + 2 * step];
      uint4 e = s[i + 3 * step];
      d[i] = a;
      d[i + step] = b;
      d[i + 2 * step] = c;
      d[i + 3 * step] = e;
    }
    for (; i < vectors; i += step) d[i] = s[i];
    done = vectors * 16;
  }
  for (unsigned long long i = done + t; i < n; i += step) dst[i] = src[i];
}

// Kernels take a batch sized to the call (N entries), not kMaxStreamBatch: kernel parameters are
// copied at every launch, and 2 KB of them cost launch time on the latency path.
template <int N>
struct Tasks {
  SendTask send[N];
};

template <int N>
__global__ void SendKernel(Tasks<N> tasks, int count, DeviceDeadline deadline) {
  __shared__ unsigned long long generation;
  __shared__ bool go;
  int k = 0;
  while (k + 1 < count && static_cast<int>(blockIdx.x) >= tasks.send[k + 1].first_block) ++k;
  const SendTask& task = tasks.send[k];
  const int block = static_cast<int>(blockIdx.x) - task.first_block;
  if (threadIdx.x == 0) {
    generation = *reinterpret_cast<volatile unsigned long long*>(task.generation) + 1;
    const unsigned long long want = generation - 1;
    // The credit: the peer released this slot's previous message.
    go = WaitFor(task.released, [want](unsigned long long v) { return v >= want; }, deadline, kCreditWait,
                 task.peer, task.slot);
  }
  __syncthreads();
  if (!go) return;
  // This block's share, in 16-byte multiples.
  unsigned long long share = (task.length + task.num_blocks - 1) / task.num_blocks;
  share = (share + 15) / 16 * 16;
  const unsigned long long begin = share * static_cast<unsigned long long>(block);
  if (begin < task.length) {
    const unsigned long long n = task.length - begin < share ? task.length - begin : share;
    CopyBlock(task.src + begin, task.dst + begin, n);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence_system();
    const bool last = task.num_blocks == 1 ||
                      atomicAdd(task.arrived_blocks, 1ull) == static_cast<unsigned long long>(task.num_blocks - 1);
    if (last) {
      if (task.num_blocks > 1) {
        __threadfence_system();
        *task.arrived_blocks = 0;
      }
      *task.generation = generation;
      StoreRelease(task.remote_arrival, (generation << 32) | (task.length & 0xffffffffull));
    }
  }
}

template <int N>
struct Waits {
  WaitTask wait[N];
};

template <int N>
__global__ void WaitKernel(Waits<N> waits, int count, DeviceDeadline deadline) {
  const int k = static_cast<int>(threadIdx.x);
  if (k >= count) return;
  const WaitTask& task = waits.wait[k];
  const unsigned long long want = *task.generation + 1;
  if (WaitFor(task.arrival, [want](unsigned long long v) { return (v >> 32) >= want; }, deadline,
              kArrivalWait, task.peer, task.slot)) {
    *task.generation = want;
  }
}

__global__ void ReleaseKernel(ReleaseBatch batch) {
  const int k = static_cast<int>(threadIdx.x);
  if (k >= batch.count) return;
  StoreRelease(batch.tasks[k].remote_released, *batch.tasks[k].generation);
}

}  // namespace

template <int N>
cudaError_t LaunchSendN(const SendBatch& batch, DeviceDeadline deadline, cudaStream_t stream) {
  Tasks<N> tasks;
  for (int i = 0; i < batch.count; ++i) tasks.send[i] = batch.tasks[i];
  SendKernel<N><<<batch.total_blocks, kSendThreads, 0, stream>>>(tasks, batch.count, deadline);
  return cudaGetLastError();
}

cudaError_t LaunchSend(const SendBatch& batch, DeviceDeadline deadline, cudaStream_t stream) {
  if (batch.count <= 1) return LaunchSendN<1>(batch, deadline, stream);
  if (batch.count <= 4) return LaunchSendN<4>(batch, deadline, stream);
  if (batch.count <= 8) return LaunchSendN<8>(batch, deadline, stream);
  return LaunchSendN<kMaxStreamBatch>(batch, deadline, stream);
}

template <int N>
cudaError_t LaunchWaitN(const WaitBatch& batch, DeviceDeadline deadline, cudaStream_t stream) {
  Waits<N> waits;
  for (int i = 0; i < batch.count; ++i) waits.wait[i] = batch.tasks[i];
  WaitKernel<N><<<1, 32, 0, stream>>>(waits, batch.count, deadline);
  return cudaGetLastError();
}

cudaError_t LaunchWait(const WaitBatch& batch, DeviceDeadline deadline, cudaStream_t stream) {
  if (batch.count <= 1) return LaunchWaitN<1>(batch, deadline, stream);
  if (batch.count <= 4) return LaunchWaitN<4>(batch, deadline, stream);
  if (batch.count <= 8) return LaunchWaitN<8>(batch, deadline, stream);
  return LaunchWaitN<kMaxStreamBatch>(batch, deadline, stream);
}

cudaError_t LaunchRelease(const ReleaseBatch& batch, cudaStream_t stream) {
  ReleaseKernel<<<1, 32, 0, stream>>>(batch);
  return cudaGetLastError();
}

}  // namespace m2n::transport::cuda_ipc

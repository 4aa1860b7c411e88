// Stream-ordered send, wait and release kernels (see kernels.h and README.md).
//
// Memory order: a send's blocks store the payload into the peer's slot (NVLink / PCIe peer
// stores), each block meets at a barrier, its thread 0 fences at system scope and counts the block
// done; the last block raises the peer's arrival word with a system-scope release store. The
// receiver's wait loads that word with acquire order, so the payload is visible to every kernel
// after the wait on its stream.
#include "transports/cuda_ipc/kernels.h"

#include "m2n/device.cuh"

namespace m2n::transport::cuda_ipc {
namespace {

// The system-scope acquire / release and the GPU clock: the device-side API's (m2n/device.cuh).
using ::m2n::device::detail::GlobalTimerNs;
using ::m2n::device::detail::LoadAcquire;
using ::m2n::device::detail::StoreRelease;

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
__device__ __forceinline__ void CopyBlock(const std::byte* src, std::byte* dst,
                                          unsigned long long n) {
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
    go = WaitFor(
        task.released, [want](unsigned long long v) { return v >= want; }, deadline, kCreditWait,
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
    const bool last =
        task.num_blocks == 1 || atomicAdd(task.arrived_blocks, 1ull) ==
                                    static_cast<unsigned long long>(task.num_blocks - 1);
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
  if (WaitFor(
          task.arrival, [want](unsigned long long v) { return (v >> 32) >= want; }, deadline,
          kArrivalWait, task.peer, task.slot)) {
    *task.generation = want;
  }
}

// Block 0 is the dispatcher: its first warp reads descriptors from the host ring, two per round
// of PCIe reads (lanes 0-10 descriptor i, lanes 16-26 descriptor i + 1, lane 31 the stop word), and
// copies their words as they are into the device mirror, where the copy blocks poll them (L2, not
// PCIe). A word carries its descriptor's sequence number, so the mirror needs no flag and no order
// among its stores. An end (stop word, or idle_ns without a descriptor) goes into the end word of
// the next index's mirror slot, so every block ends at the same index and no descriptor is half
// served. With `posted` (M2N_CUDA_IPC_PROXY_DOORBELL=1) the warp first polls that one word (the
// count of descriptors the host wrote) and reads descriptors only once it moved. The copy blocks
// (1 .. grid - 1) a descriptor names copy their shares; the last to finish raises the peer's
// immediate and marks the descriptor done, as SendKernel does. Copy blocks wait for the mirror
// without a clock: the dispatcher always writes the next index, a descriptor or the end, within
// idle_ns.
inline constexpr int kProxyEndWord = kProxyWords - 1;  // a mirror slot's word for the end mark

__device__ __forceinline__ void StoreRelaxedGpu(unsigned long long* p, unsigned long long v) {
  asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ unsigned long long LoadRelaxedGpu(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

// Longer than a screen on purpose, as ProxyCopy below: one resident loop whose register-held state
// (ring positions, the descriptor being served) would be spilled across calls if it were split.
__device__ void ProxyDispatch(const ProxyRing& ring) {
  static_assert(kNumProxyFields < 16 && kNumProxyFields < kProxyEndWord,
                "two descriptors per warp read");
  const int lane = static_cast<int>(threadIdx.x);
  const unsigned long long mask = ring.capacity - 1;
  const int field = lane < 16 ? lane : lane - 16;
  const bool reads = field < kNumProxyFields;
  unsigned long long i = ring.first;
  for (;;) {
    const unsigned long long start = GlobalTimerNs();
    bool end = false;
    if (ring.posted != nullptr) {
      for (;;) {
        unsigned long long w = 0;
        if (lane == 0) {
          w = LoadAcquire(ring.posted);
        } else if (lane == 31) {
          w = *reinterpret_cast<const volatile unsigned long long*>(ring.stop);
        }
        const unsigned long long posted = __shfl_sync(0xffffffffu, w, 0);
        const unsigned long long stop = __shfl_sync(0xffffffffu, w, 31);
        if (posted > i) break;
        const int idle = lane == 0 && GlobalTimerNs() - start > ring.idle_ns;
        if (stop != 0 || __any_sync(0xffffffffu, idle)) {
          end = true;
          break;
        }
      }
    }
    const unsigned long long index = lane < 16 ? i : i + 1;
    const unsigned long long slot = index & mask;
    const unsigned want = static_cast<unsigned>(index + 1);
    int count = 0;
    unsigned long long w = 0;
    while (!end) {
      w = 0;
      if (reads) {
        w = LoadAcquire(ring.descriptors + slot * kProxyWords + field);
      } else if (lane == 31) {
        w = *reinterpret_cast<const volatile unsigned long long*>(ring.stop);
      }
      const unsigned invalid =
          __ballot_sync(0xffffffffu, reads && static_cast<unsigned>(w >> 32) != want);
      if ((invalid & 0xffffu) == 0) {
        count = (invalid >> 16) == 0 ? 2 : 1;
        break;
      }
      bool quit = lane == 31 && w != 0;
      if (lane == 0) quit = GlobalTimerNs() - start > ring.idle_ns;
      if (__any_sync(0xffffffffu, quit)) end = true;
    }
    if (end) {
      if (lane == 0)
        StoreRelaxedGpu(ring.mirror + (i & mask) * kProxyWords + kProxyEndWord,
                        kProxyEndMark | (i + 1));
      return;
    }
    if (reads && (lane < 16 || count == 2))
      StoreRelaxedGpu(ring.mirror + slot * kProxyWords + field, w);
    i += static_cast<unsigned long long>(count);
  }
}

// About 60 lines in one function on purpose: its three phases (warp 0 reads the descriptor, every
// block copies its share, the last block publishes) meet at __syncthreads points and pass the
// shared `fields` and `state` between them, which reads best in one place.
__device__ void ProxyCopy(const ProxyRing& ring) {
  __shared__ unsigned long long fields[kNumProxyFields];
  __shared__ int state;  // 0: copy (if named), 1: skip (a lap behind), 2: end
  const unsigned long long mask = ring.capacity - 1;
  const int workers = static_cast<int>(gridDim.x) - 1;
  const int worker = static_cast<int>(blockIdx.x) - 1;
  for (unsigned long long i = ring.first;; ++i) {
    const unsigned long long slot = i & mask;
    const unsigned long long* mirror = ring.mirror + slot * kProxyWords;
    if (threadIdx.x < 32) {
      // Lanes 0-10 poll the descriptor's words, lane 15 the end word. A word of a later lap (the
      // slot was reused) means descriptor i completed without this block: it had no share of it.
      const int lane = static_cast<int>(threadIdx.x);
      const unsigned want = static_cast<unsigned>(i + 1);
      for (;;) {
        unsigned long long w = 0;
        if (lane < kNumProxyFields || lane == kProxyEndWord) w = LoadRelaxedGpu(mirror + lane);
        const bool field_lane = lane < kNumProxyFields;
        const int ahead = static_cast<int>(static_cast<unsigned>(w >> 32) - want);
        const unsigned waiting = __ballot_sync(0xffffffffu, field_lane && ahead < 0);
        const unsigned later = __ballot_sync(0xffffffffu, field_lane && ahead > 0);
        const bool ended = __shfl_sync(0xffffffffu, w, kProxyEndWord) == (kProxyEndMark | (i + 1));
        if (ended || later != 0 || waiting == 0) {
          if (field_lane) fields[lane] = w & 0xffffffffull;
          if (lane == 0) state = ended ? 2 : later != 0 ? 1 : 0;
          break;
        }
      }
    }
    __syncthreads();
    if (state == 2) return;
    const auto field = [&](int lo) { return fields[lo] | (fields[lo + 1] << 32); };
    const int blocks = state == 0 ? static_cast<int>(fields[kProxyBlocks]) : 0;
    const int first =
        static_cast<int>(fields[kProxyFirstBlock] % static_cast<unsigned long long>(workers));
    const int share_index = (worker - first + workers) % workers;
    if (blocks > 0 && share_index < blocks) {
      const unsigned long long length = fields[kProxyLength];
      unsigned long long share = (length + blocks - 1) / blocks;
      share = (share + 15) / 16 * 16;
      const unsigned long long begin = share * static_cast<unsigned long long>(share_index);
      if (begin < length) {
        const unsigned long long n = length - begin < share ? length - begin : share;
        CopyBlock(reinterpret_cast<const std::byte*>(field(kProxySrcLo)) + begin,
                  reinterpret_cast<std::byte*>(field(kProxyDstLo)) + begin, n);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        __threadfence_system();
        const bool last = blocks == 1 || atomicAdd(ring.counts + slot, 1ull) ==
                                             static_cast<unsigned long long>(blocks - 1);
        if (last) {
          if (blocks > 1) {
            ring.counts[slot] = 0;
            __threadfence_system();
          }
          StoreRelease(reinterpret_cast<unsigned long long*>(field(kProxyEntryLo)),
                       field(kProxyValueLo));
          StoreRelease(ring.done + slot, i + 1);
        }
      }
    }
    __syncthreads();  // `fields` and `state` are rewritten for the next descriptor
  }
}

__global__ void __launch_bounds__(kProxyThreads) ProxyKernel(ProxyRing ring) {
  if (blockIdx.x == 0) {
    if (threadIdx.x >= 32) return;
    ProxyDispatch(ring);
  } else {
    ProxyCopy(ring);
  }
  if (threadIdx.x == 0) {
    __threadfence_system();
    unsigned long long* ended_blocks = ring.counts + ring.capacity;
    if (atomicAdd(ended_blocks, 1ull) == gridDim.x - 1) StoreRelease(ring.ended, 1);
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

cudaError_t LaunchProxy(const ProxyRing& ring, int copy_blocks, cudaStream_t stream) {
  ProxyKernel<<<copy_blocks + 1, kProxyThreads, 0, stream>>>(ring);
  return cudaGetLastError();
}

cudaError_t LaunchRelease(const ReleaseBatch& batch, cudaStream_t stream) {
  ReleaseKernel<<<1, 32, 0, stream>>>(batch);
  return cudaGetLastError();
}

}  // namespace m2n::transport::cuda_ipc

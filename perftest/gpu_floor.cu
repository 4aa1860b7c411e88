// m2n_gpu_floor: what the pieces of a GPU-to-GPU message cost on this machine, with nothing of m2n
// in the way (docs/PERFORMANCE.md, "GPU path"). One process, GPU 0 sends to GPU 1, two host threads
// (one per GPU) that meet at a spin barrier before every iteration, as m2n_perf's ranks do. Every
// cross-GPU row is timed as m2n_perf times a message: from the sending host's start to the
// receiving host knowing that the payload is in GPU 1's memory.
//   launch+sync        one GPU: host launches an empty kernel and synchronizes its stream
//   launch call        the cudaLaunchKernel call alone
//   flag               A's host launches a kernel that stores a flag into GPU 1 (release store);
//   B's
//                      kernel, launched after the barrier, spins on it; B's host synchronizes its
//                      stream: the floor of SendOnStream + ReceiveOnStream for an empty message
//   flag+4KB           the same with 4 KB copied before the flag (512 threads, 16-byte stores)
//   put->host          A's launched kernel copies 4 KB and then stores the flag into host memory
//   that
//                      B's host polls (no receiving kernel, no stream synchronize)
//   put->wait->host    A's launched kernel as in flag+4KB; B's waiting kernel, once it sees the
//   flag,
//                      stores a word in host memory that B's host polls instead of synchronizing
//   proxy->host        a persistent kernel on GPU 0 polls a doorbell in host memory; A's host rings
//                      it (one store); the kernel copies 4 KB and stores the flag into host memory
//                      that B's host polls: no launch and no stream on the critical path
//   ... wide poll      the polling warp reads 22 8-byte words per round (as m2n's proxy does)
//   ... x2             two blocks: block 0 polls and hands the message to block 1 through device
//                      memory; each copies half, the last to finish raises the flag (the hand-over
//                      and the count that m2n's proxy makes)
//   proxy->wait        the same proxy, but the flag goes to GPU 1 where B's waiting kernel spins
//   and
//                      B's host synchronizes (stream-ordered receive, launch-free send)
//   memop->proxy       A's host enqueues cuStreamWriteValue32 of the doorbell on a stream (a
//                      stream-ordered trigger: it runs after the producer's kernels) instead of
//                      storing it; otherwise proxy->host
//   memop call         the cuStreamWriteValue32 call alone
//   *256KB x16         the same rows with 256 KB copied by 16 blocks
// Prints p50 / p99 / max in microseconds. Usage: m2n_gpu_floor [iterations] (default 5000).
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "m2n/device.cuh"

namespace {

#define CHECK(call)                                                                              \
  do {                                                                                           \
    cudaError_t e_ = (call);                                                                     \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

int64_t Now() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The system-scope acquire / release and the GPU clock, as the device-side API uses them.
using ::m2n::device::detail::GlobalTimerNs;
using ::m2n::device::detail::LoadAcquire;
using ::m2n::device::detail::StoreRelease;

__global__ void Empty() {}

// This block's share of `vectors` 16-byte vectors.
__device__ __forceinline__ void CopyShare(const uint4* src, uint4* dst, int vectors) {
  const int share = (vectors + gridDim.x - 1) / gridDim.x;
  const int begin = share * blockIdx.x;
  const int end = min(vectors, begin + share);
  for (int i = begin + threadIdx.x; i < end; i += blockDim.x) dst[i] = src[i];
}

// Copies, then raises `flag` once every block is done (the last block to count itself).
__device__ __forceinline__ void CopyThenFlag(const uint4* src, uint4* dst, int vectors,
                                             unsigned long long* count, unsigned long long* flag,
                                             unsigned long long value) {
  CopyShare(src, dst, vectors);
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence_system();
    if (gridDim.x == 1 || atomicAdd(count, 1ull) == gridDim.x - 1) {
      if (gridDim.x > 1) *count = 0;
      StoreRelease(flag, value);
    }
  }
}

__global__ void Put(const uint4* src, uint4* dst, int vectors, unsigned long long* count,
                    unsigned long long* flag, unsigned long long value) {
  CopyThenFlag(src, dst, vectors, count, flag, value);
}

// Spins until *flag >= value (bounded: 2 s), then stores `value` into *host (if not null).
__global__ void WaitFlag(const unsigned long long* flag, unsigned long long value,
                         unsigned long long* host) {
  const unsigned long long start = GlobalTimerNs();
  while (LoadAcquire(flag) < value) {
    if (GlobalTimerNs() - start > 2'000'000'000ull) break;
  }
  if (host != nullptr) StoreRelease(host, value);
}

// A persistent sender: block 0 polls the doorbell (host memory); doorbell value k means "send
// message k": every block copies its share, then the last raises *flag = base + k. Block 0 hands
// the value to the other blocks through `relay` (device memory), so one warp reads over PCIe, as in
// m2n's copy proxy. `wide`: that warp reads 22 8-byte words per round (two descriptors' worth, as
// m2n's proxy polls) instead of one. Stops at kStop or after 5 s without a message.
constexpr unsigned kStop = 0xffffffffu;
__global__ void Proxy(const unsigned* doorbell, const uint4* src, uint4* dst, int vectors,
                      unsigned long long* count, unsigned long long* flag, unsigned long long base,
                      unsigned* relay, int wide) {
  __shared__ unsigned seen;
  unsigned done = 0;
  for (;;) {
    if (blockIdx.x == 0) {
      if (threadIdx.x < 32) {
        const int lane = static_cast<int>(threadIdx.x);
        const auto* words = reinterpret_cast<const unsigned long long*>(doorbell);
        const unsigned long long start = GlobalTimerNs();
        unsigned v;
        for (;;) {
          unsigned long long w = 0;
          if (lane == 0 || (wide && lane < 22)) w = LoadAcquire(words + lane);
          v = static_cast<unsigned>(
              __shfl_sync(0xffffffffu, w, 0));  // the doorbell: low half of word 0
          if (v != done) break;
          const int idle = lane == 0 && GlobalTimerNs() - start > 5'000'000'000ull;
          if (__any_sync(0xffffffffu, idle)) {
            v = kStop;
            break;
          }
        }
        if (lane == 0) {
          seen = v;
          asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(relay), "r"(v) : "memory");
        }
      }
    } else if (threadIdx.x == 0) {
      unsigned v;
      do {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(relay) : "memory");
      } while (v == done);
      seen = v;
    }
    __syncthreads();
    const unsigned v = seen;
    __syncthreads();
    if (v == kStop) return;
    done = v;
    CopyThenFlag(src, dst, vectors, count, flag, base + v);
  }
}

struct Stats {
  double p50, p99, max;
};
Stats Summarize(std::vector<double> us) {
  std::sort(us.begin(), us.end());
  auto at = [&](double p) {
    return us[std::min(us.size() - 1, static_cast<size_t>(p * us.size()))];
  };
  return {at(0.5), at(0.99), us.back()};
}
void Report(const char* what, std::vector<double> us) {
  Stats s = Summarize(std::move(us));
  std::printf("%-22s p50 %7.2f us   p99 %7.2f us   max %8.2f us\n", what, s.p50, s.p99, s.max);
  std::fflush(stdout);
}

// A spin barrier for two threads.
struct Barrier {
  std::atomic<int> arrived{0};
  std::atomic<int> generation{0};
  void Wait() {
    int g = generation.load();
    if (arrived.fetch_add(1) == 1) {
      arrived.store(0);
      generation.fetch_add(1);
    } else {
      while (generation.load() == g) {
      }
    }
  }
};

uint64_t LoadHost(const unsigned long long* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

// Spins until the host word reaches `value`; false after 2 s.
bool SpinHost(const unsigned long long* word, unsigned long long value) {
  const int64_t start = Now();
  while (LoadHost(word) < value) {
    if (Now() - start > 2'000'000'000) return false;
  }
  return true;
}

using StreamWriteValue32 = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);

}  // namespace

int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::atoi(argv[1]) : 5000;
  const int warm = 100;
  int devices = 0;
  CHECK(cudaGetDeviceCount(&devices));
  {
    CHECK(cudaSetDevice(0));
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    std::vector<double> us;
    for (int i = 0; i < iters + warm; ++i) {
      int64_t t0 = Now();
      Empty<<<1, 1, 0, s>>>();
      CHECK(cudaStreamSynchronize(s));
      if (i >= warm) us.push_back((Now() - t0) / 1e3);
    }
    Report("launch+sync", us);
    std::vector<double> api;
    for (int i = 0; i < iters; ++i) {
      int64_t t0 = Now();
      Empty<<<1, 1, 0, s>>>();
      api.push_back((Now() - t0) / 1e3);
      CHECK(cudaStreamSynchronize(s));
    }
    Report("launch call", api);
    CHECK(cudaStreamDestroy(s));
  }
  if (devices < 2) {
    std::printf("one GPU: no cross-GPU figures\n");
    return 0;
  }
  constexpr int kMaxBytes = 256 << 10;
  // GPU 1 owns the landing buffer and the flag; GPU 0 writes them through peer access. Host words:
  // pinned, mapped, portable (both GPUs write them at the same address).
  unsigned long long* flag = nullptr;
  uint4* landing = nullptr;
  uint4* source = nullptr;
  unsigned long long* count = nullptr;
  CHECK(cudaSetDevice(1));
  CHECK(cudaMalloc(&flag, sizeof *flag));
  CHECK(cudaMemset(flag, 0, sizeof *flag));
  CHECK(cudaMalloc(&landing, kMaxBytes));
  CHECK(cudaDeviceSynchronize());
  CHECK(cudaSetDevice(0));
  CHECK(cudaDeviceEnablePeerAccess(1, 0));
  CHECK(cudaMalloc(&source, kMaxBytes));
  CHECK(cudaMemset(source, 1, kMaxBytes));
  CHECK(cudaMalloc(&count, sizeof *count));
  CHECK(cudaMemset(count, 0, sizeof *count));
  unsigned* relay = nullptr;
  CHECK(cudaMalloc(&relay, sizeof *relay));
  CHECK(cudaDeviceSynchronize());
  void* host_words = nullptr;
  CHECK(cudaHostAlloc(&host_words, 4096, cudaHostAllocPortable | cudaHostAllocMapped));
  std::memset(host_words, 0, 4096);
  auto* host_flag = static_cast<unsigned long long*>(host_words);  // written by a GPU
  auto* doorbell =
      reinterpret_cast<unsigned*>(static_cast<char*>(host_words) + 256);  // read by GPU 0
  StreamWriteValue32 write_value = nullptr;
  {
    cudaDriverEntryPointQueryResult found{};
    void* fn = nullptr;
    if (cudaGetDriverEntryPointByVersion("cuStreamWriteValue32", &fn, 12000, cudaEnableDefault,
                                         &found) == cudaSuccess &&
        found == cudaDriverEntryPointSuccess) {
      write_value = reinterpret_cast<StreamWriteValue32>(fn);
      // One trial on host memory: stream memory operations may be unsupported or turned off.
      CHECK(cudaSetDevice(0));
      cudaStream_t s;
      CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
      const CUresult r = write_value(s, reinterpret_cast<CUdeviceptr>(host_flag + 16), 1, 0);
      if (r != CUDA_SUCCESS || cudaStreamSynchronize(s) != cudaSuccess) {
        std::printf("cuStreamWriteValue32 on host memory failed (CUresult %d): no memop rows\n",
                    static_cast<int>(r));
        write_value = nullptr;
      }
      CHECK(cudaStreamDestroy(s));
    }
  }
  // Every experiment's flag values are above every earlier one's: base grows by 10^7 per run.
  unsigned long long base = 0;

  enum class Send { kLaunch, kProxyStore, kProxyMemop };
  enum class Receive { kKernelSync, kHostPoll, kKernelHostPoll };
  auto run = [&](const char* name, Send send, Receive receive, int bytes, int blocks,
                 bool wide = false) {
    base += 10'000'000;
    const int vectors = bytes / 16;
    // The flag goes to host memory when B's host polls it directly, else to GPU 1.
    unsigned long long* target = receive == Receive::kHostPoll ? host_flag : flag;
    Barrier barrier;
    std::vector<int64_t> start(iters + warm), done(iters + warm);
    bool failed = false;
    std::thread a([&] {
      CHECK(cudaSetDevice(0));
      cudaStream_t s, proxy_stream;
      CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
      CHECK(cudaStreamCreateWithFlags(&proxy_stream, cudaStreamNonBlocking));
      const bool proxy = send != Send::kLaunch;
      if (proxy) {
        __atomic_store_n(doorbell, 0, __ATOMIC_RELEASE);
        CHECK(cudaMemsetAsync(relay, 0, sizeof *relay, proxy_stream));
        Proxy<<<blocks, 512, 0, proxy_stream>>>(doorbell, source, landing, vectors, count, target,
                                                base, relay, wide ? 1 : 0);
        CHECK(cudaGetLastError());
      }
      for (int i = 0; i < iters + warm; ++i) {
        barrier.Wait();
        start[i] = Now();
        if (send == Send::kLaunch) {
          Put<<<blocks, 512, 0, s>>>(source, landing, vectors, count, target, base + i + 1);
        } else if (send == Send::kProxyStore) {
          __atomic_store_n(doorbell, static_cast<unsigned>(i + 1), __ATOMIC_RELEASE);
        } else {
          if (write_value(s, reinterpret_cast<CUdeviceptr>(doorbell),
                          static_cast<cuuint32_t>(i + 1), 0) != CUDA_SUCCESS) {
            std::fprintf(stderr, "cuStreamWriteValue32 failed\n");
            std::exit(1);
          }
        }
        if (!proxy) CHECK(cudaStreamSynchronize(s));
      }
      if (proxy) {
        CHECK(cudaStreamSynchronize(s));
        __atomic_store_n(doorbell, kStop, __ATOMIC_RELEASE);
        CHECK(cudaStreamSynchronize(proxy_stream));
      }
      CHECK(cudaStreamDestroy(s));
      CHECK(cudaStreamDestroy(proxy_stream));
    });
    std::thread b([&] {
      CHECK(cudaSetDevice(1));
      cudaStream_t s;
      CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
      for (int i = 0; i < iters + warm; ++i) {
        barrier.Wait();
        const unsigned long long value = base + i + 1;
        if (receive == Receive::kKernelSync) {
          WaitFlag<<<1, 1, 0, s>>>(flag, value, nullptr);
          CHECK(cudaStreamSynchronize(s));
        } else if (receive == Receive::kKernelHostPoll) {
          WaitFlag<<<1, 1, 0, s>>>(flag, value, host_flag);
          if (!SpinHost(host_flag, value)) failed = true;
        } else {
          if (!SpinHost(host_flag, value)) failed = true;
        }
        done[i] = Now();
        if (receive == Receive::kKernelHostPoll) CHECK(cudaStreamSynchronize(s));
      }
      CHECK(cudaStreamDestroy(s));
    });
    a.join();
    b.join();
    if (failed) {
      std::printf("%-22s FAILED: a wait passed 2 s\n", name);
      return;
    }
    std::vector<double> us;
    for (int i = warm; i < iters + warm; ++i) us.push_back((done[i] - start[i]) / 1e3);
    Report(name, us);
  };

  run("flag", Send::kLaunch, Receive::kKernelSync, 0, 1);
  run("flag+4KB", Send::kLaunch, Receive::kKernelSync, 4096, 1);
  run("put->host", Send::kLaunch, Receive::kHostPoll, 4096, 1);
  run("put->wait->host", Send::kLaunch, Receive::kKernelHostPoll, 4096, 1);
  run("proxy->host", Send::kProxyStore, Receive::kHostPoll, 4096, 1);
  run("proxy->host wide poll", Send::kProxyStore, Receive::kHostPoll, 4096, 1, true);
  run("proxy->host x2", Send::kProxyStore, Receive::kHostPoll, 4096, 2);
  run("proxy->wait", Send::kProxyStore, Receive::kKernelSync, 4096, 1);
  if (write_value != nullptr) {
    run("memop->proxy->host", Send::kProxyMemop, Receive::kHostPoll, 4096, 1);
    CHECK(cudaSetDevice(0));
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    std::vector<double> api;
    for (int i = 0; i < iters; ++i) {
      int64_t t0 = Now();
      if (write_value(s, reinterpret_cast<CUdeviceptr>(host_flag + 8), static_cast<cuuint32_t>(i),
                      0) != CUDA_SUCCESS) {
        std::fprintf(stderr, "cuStreamWriteValue32 failed\n");
        return 1;
      }
      api.push_back((Now() - t0) / 1e3);
      CHECK(cudaStreamSynchronize(s));
    }
    Report("memop call", api);
    CHECK(cudaStreamDestroy(s));
  }
  run("flag+256KB x16", Send::kLaunch, Receive::kKernelSync, kMaxBytes, 16);
  run("put->host 256KB x16", Send::kLaunch, Receive::kHostPoll, kMaxBytes, 16);
  run("proxy->host 256KB x16", Send::kProxyStore, Receive::kHostPoll, kMaxBytes, 16);
  run("proxy->host 256KB x32", Send::kProxyStore, Receive::kHostPoll, kMaxBytes, 32);
  return 0;
}

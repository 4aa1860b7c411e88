// m2n_gpu_floor: what the pieces of a stream-ordered GPU-to-GPU message cost on this machine, with
// nothing of m2n in the way (docs/PERFORMANCE.md, "GPU path"). One process, two GPUs, two host
// threads that meet at a spin barrier before every iteration, as m2n_perf's ranks do:
//   launch+sync     one GPU: host launches an empty kernel and synchronizes its stream
//   flag            GPU A's kernel stores a flag into GPU B (peer access, release store); GPU B's
//                   kernel, launched at the same time, spins on it; B's host synchronizes. Timed from
//                   A's launch to B's host seeing its stream done: the floor of SendOnStream +
//                   ReceiveOnStream for an empty message.
//   flag+4KB        the same with A copying 4 KB into B before the flag (512 threads, 16-byte stores)
// Prints p50 / p99 / max in microseconds. Usage: m2n_gpu_floor [iterations] (default 5000).
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

#define CHECK(call)                                                                     \
  do {                                                                                  \
    cudaError_t e_ = (call);                                                            \
    if (e_ != cudaSuccess) {                                                            \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

int64_t Now() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

__global__ void Empty() {}

__global__ void Put(const uint4* src, uint4* dst, int vectors, unsigned long long* flag, unsigned long long value) {
  for (int i = threadIdx.x; i < vectors; i += blockDim.x) dst[i] = src[i];
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence_system();
    asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(flag), "l"(value) : "memory");
  }
}

__global__ void WaitFlag(const unsigned long long* flag, unsigned long long value) {
  unsigned long long v;
  do {
    asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(flag) : "memory");
  } while (v < value);
}

void Report(const char* what, std::vector<double> us) {
  std::sort(us.begin(), us.end());
  auto at = [&](double p) { return us[std::min(us.size() - 1, static_cast<size_t>(p * us.size()))]; };
  std::printf("%-14s p50 %7.2f us   p99 %7.2f us   max %8.2f us\n", what, at(0.5), at(0.99), us.back());
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

}  // namespace

int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::atoi(argv[1]) : 5000;
  int devices = 0;
  CHECK(cudaGetDeviceCount(&devices));
  {
    CHECK(cudaSetDevice(0));
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    std::vector<double> us;
    for (int i = 0; i < iters + 100; ++i) {
      int64_t t0 = Now();
      Empty<<<1, 1, 0, s>>>();
      CHECK(cudaStreamSynchronize(s));
      if (i >= 100) us.push_back((Now() - t0) / 1e3);
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
  }
  if (devices < 2) {
    std::printf("one GPU: no cross-GPU figures\n");
    return 0;
  }
  // GPU 1 owns the flag and the landing buffer; GPU 0 writes them through peer access.
  unsigned long long* flag = nullptr;
  uint4* landing = nullptr;
  uint4* source = nullptr;
  CHECK(cudaSetDevice(1));
  CHECK(cudaMalloc(&flag, sizeof *flag));
  CHECK(cudaMemset(flag, 0, sizeof *flag));
  CHECK(cudaMalloc(&landing, 4096));
  CHECK(cudaSetDevice(0));
  CHECK(cudaDeviceEnablePeerAccess(1, 0));
  CHECK(cudaMalloc(&source, 4096));
  for (int vectors : {0, 256}) {
    Barrier barrier;
    std::vector<int64_t> start(iters + 100), done(iters + 100);
    const unsigned long long base = vectors == 0 ? 0 : 1'000'000;
    std::thread a([&] {
      CHECK(cudaSetDevice(0));
      cudaStream_t s;
      CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
      for (int i = 0; i < iters + 100; ++i) {
        barrier.Wait();
        start[i] = Now();
        Put<<<1, 512, 0, s>>>(source, landing, vectors, flag, base + i + 1);
        CHECK(cudaStreamSynchronize(s));
      }
    });
    std::thread b([&] {
      CHECK(cudaSetDevice(1));
      cudaStream_t s;
      CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
      for (int i = 0; i < iters + 100; ++i) {
        barrier.Wait();
        WaitFlag<<<1, 1, 0, s>>>(flag, base + i + 1);
        CHECK(cudaStreamSynchronize(s));
        done[i] = Now();
      }
    });
    a.join();
    b.join();
    std::vector<double> us;
    for (int i = 100; i < iters + 100; ++i) us.push_back((done[i] - start[i]) / 1e3);
    Report(vectors == 0 ? "flag" : "flag+4KB", us);
  }
  return 0;
}

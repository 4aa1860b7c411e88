// m2n_gpu_latency's kernels (gpu_latency_kernels.h). The device-API pair uses m2n/device.cuh as a
// user's kernel would; the buffer pair is the same work around a stream-ordered send or NCCL.
#include "gpu_latency_kernels.h"
#include "m2n/device.cuh"

namespace m2n::perf {
namespace {

constexpr int kThreads = 512;

__device__ __forceinline__ long long Now() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return static_cast<long long>(t);
}

__device__ __forceinline__ uint32_t Word(uint64_t iteration, size_t index) {
  uint64_t x = (iteration + 1) * 0x9E3779B97F4A7C15ull ^ (index * 0xBF58476D1CE4E5B9ull);
  x ^= x >> 31;
  return static_cast<uint32_t>(x);
}

// Block `block` of m.blocks writes its share of the payload (4-byte words) into `data`, then its
// stamp; thread 0 holds the stamp's slot.
__device__ void WriteMessage(std::byte* data, const LatencyMessage& m, int block) {
  const size_t words = (m.length - 8 * static_cast<size_t>(m.blocks)) / 4;
  const size_t share = (words + m.blocks - 1) / m.blocks;
  const size_t begin = share * static_cast<size_t>(block);
  const size_t end = begin + share < words ? begin + share : words;
  auto* out = reinterpret_cast<uint32_t*>(data);
  for (size_t i = begin + threadIdx.x; i < end; i += blockDim.x) out[i] = Word(m.iteration, i);
  __syncthreads();
  if (threadIdx.x == 0) {
    auto* stamps =
        reinterpret_cast<long long*>(data + m.length - 8 * static_cast<size_t>(m.blocks));
    stamps[block] = Now();
  }
}

// One block: the latency from the latest stamp to `start`, and the wrong payload words.
__device__ void CheckMessage(const std::byte* data, const LatencyMessage& m, long long start) {
  __shared__ unsigned long long wrong;
  if (threadIdx.x == 0) {
    const auto* stamps =
        reinterpret_cast<const long long*>(data + m.length - 8 * static_cast<size_t>(m.blocks));
    long long latest = stamps[0];
    for (int b = 1; b < m.blocks; ++b) latest = stamps[b] > latest ? stamps[b] : latest;
    m.latency[m.iteration] = start - latest;
    wrong = 0;
  }
  __syncthreads();
  const size_t words = (m.length - 8 * static_cast<size_t>(m.blocks)) / 4;
  const auto* in = reinterpret_cast<const uint32_t*>(data);
  unsigned long long bad = 0;
  for (size_t i = threadIdx.x; i < words; i += blockDim.x) bad += in[i] != Word(m.iteration, i);
  if (bad != 0) atomicAdd(&wrong, bad);
  __syncthreads();
  if (threadIdx.x == 0 && wrong != 0) atomicAdd(m.wrong, wrong);
}

__global__ void DeviceProducer(DeviceGroup g, LatencyMessage m) {
  device::SendSlot s = device::BeginSendBlock(g, 0);
  if (!s.ok) return;  // the group's next host call says why
  WriteMessage(s.data, m, static_cast<int>(blockIdx.x));
  device::EndSendBlock(g, s, static_cast<unsigned>(m.length), m.blocks);
}

__global__ void DeviceConsumer(DeviceGroup g, LatencyMessage m) {
  device::ReceivedMessage r = device::WaitReceiveBlock(g, 0);
  const long long start = Now();
  if (!r.ok) return;
  if (threadIdx.x == 0 && r.length != m.length) atomicAdd(m.wrong, 1ull << 40);
  CheckMessage(r.data, m, start);
  __syncthreads();
  if (threadIdx.x == 0) device::Release(g, r);
}

__global__ void BufferProducer(std::byte* data, LatencyMessage m) {
  WriteMessage(data, m, static_cast<int>(blockIdx.x));
}

__global__ void BufferConsumer(const std::byte* data, LatencyMessage m) {
  const long long start = Now();
  CheckMessage(data, m, start);
}

}  // namespace

int LatencyBlocks(size_t bytes) {
  const size_t blocks = (bytes + (64 << 10) - 1) / (64 << 10);
  return static_cast<int>(blocks < 1 ? 1 : blocks > 16 ? 16 : blocks);
}

cudaError_t LaunchDeviceProducer(const DeviceGroup& g, const LatencyMessage& m, cudaStream_t s) {
  DeviceProducer<<<m.blocks, kThreads, 0, s>>>(g, m);
  return cudaGetLastError();
}

cudaError_t LaunchDeviceConsumer(const DeviceGroup& g, const LatencyMessage& m, cudaStream_t s) {
  DeviceConsumer<<<1, kThreads, 0, s>>>(g, m);
  return cudaGetLastError();
}

cudaError_t LaunchBufferProducer(void* data, const LatencyMessage& m, cudaStream_t s) {
  BufferProducer<<<m.blocks, kThreads, 0, s>>>(static_cast<std::byte*>(data), m);
  return cudaGetLastError();
}

cudaError_t LaunchBufferConsumer(const void* data, const LatencyMessage& m, cudaStream_t s) {
  BufferConsumer<<<1, kThreads, 0, s>>>(static_cast<const std::byte*>(data), m);
  return cudaGetLastError();
}

}  // namespace m2n::perf

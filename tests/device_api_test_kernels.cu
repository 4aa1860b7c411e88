// The device-side API tests' user kernels (device_api_test_kernels.h): include m2n/device.cuh and
// nothing else of m2n, as a user's kernel file would.
#include "cuda_test_kernels.h"
#include "device_api_test_kernels.h"
#include "m2n/device.cuh"

namespace m2n::testing {
namespace {

constexpr int kThreads = 256;

__device__ unsigned long long MessageNumber(const DeviceTrial& t, int k) {
  const unsigned long long base =
      t.first_number +
      (t.replay != nullptr ? *t.replay * static_cast<unsigned long long>(t.count) : 0ull);
  return base + static_cast<unsigned long long>(k);
}

__device__ unsigned long long MessageLength(const DeviceTrial& t, unsigned long long n) {
  return t.sizes[n % static_cast<unsigned long long>(t.num_sizes)];
}

// Threads [lane, step) of the writers store message n's bytes [begin, end) into `data`.
__device__ void WritePattern(std::byte* data, unsigned long long begin, unsigned long long end,
                             int source, int destination, unsigned long long n, unsigned lane,
                             unsigned step) {
  for (unsigned long long i = begin + lane; i < end; i += step)
    data[i] = static_cast<std::byte>(
        GpuPatternByte(static_cast<uint32_t>(source), static_cast<uint32_t>(destination), n, i));
}

__device__ unsigned long long CountWrongBytes(const std::byte* data, unsigned long long length,
                                              int source, int destination, unsigned long long n,
                                              unsigned lane, unsigned step) {
  unsigned long long wrong = 0;
  for (unsigned long long i = lane; i < length; i += step) {
    wrong +=
        data[i] != static_cast<std::byte>(GpuPatternByte(static_cast<uint32_t>(source),
                                                         static_cast<uint32_t>(destination), n, i));
  }
  return wrong;
}

// Block scope: blockIdx.x / blocks_per_message is the peer, the rest the block's share.
__global__ void SendBlocks(DeviceTrial t) {
  const int peer = static_cast<int>(blockIdx.x) / t.blocks_per_message;
  const int part = static_cast<int>(blockIdx.x) % t.blocks_per_message;
  const int destination = t.group.peers[peer].rank;
  for (int k = 0; k < t.count; ++k) {
    const unsigned long long n = MessageNumber(t, k);
    const unsigned long long length = MessageLength(t, n);
    device::SendSlot s = device::BeginSendBlock(t.group, peer);
    if (!s.ok) {
      if (threadIdx.x == 0) atomicAdd(t.gave_up, 1ull);
      return;
    }
    const unsigned long long share = (length + t.blocks_per_message - 1) / t.blocks_per_message;
    const unsigned long long begin = share * static_cast<unsigned long long>(part);
    const unsigned long long end = begin + share < length ? begin + share : length;
    WritePattern(s.data, begin, end, t.rank, destination, n, threadIdx.x, blockDim.x);
    device::EndSendBlock(t.group, s, static_cast<unsigned>(length), t.blocks_per_message);
  }
}

// Warp scope: warp w sends to peers[w].
__global__ void SendWarps(DeviceTrial t) {
  const int peer = static_cast<int>(threadIdx.x / 32);
  const int destination = t.group.peers[peer].rank;
  for (int k = 0; k < t.count; ++k) {
    const unsigned long long n = MessageNumber(t, k);
    const unsigned long long length = MessageLength(t, n);
    device::SendSlot s = device::BeginSendWarp(t.group, peer);
    if (!s.ok) {
      if ((threadIdx.x & 31) == 0) atomicAdd(t.gave_up, 1ull);
      return;
    }
    WritePattern(s.data, 0, length, t.rank, destination, n, threadIdx.x & 31, 32);
    device::EndSendWarp(t.group, s, static_cast<unsigned>(length));
  }
}

// Block p receives from peers[p].
__global__ void ReceiveBlocks(DeviceTrial t) {
  __shared__ unsigned long long wrong;
  const int peer = static_cast<int>(blockIdx.x);
  const int source = t.group.peers[peer].rank;
  for (int k = 0; k < t.count; ++k) {
    const unsigned long long n = MessageNumber(t, k);
    device::ReceivedMessage m = device::WaitReceiveBlock(t.group, peer);
    if (!m.ok) {
      if (threadIdx.x == 0) atomicAdd(t.gave_up, 1ull);
      return;
    }
    if (threadIdx.x == 0) wrong = m.length == MessageLength(t, n) ? 0 : 1ull << 40;
    __syncthreads();
    atomicAdd(&wrong,
              CountWrongBytes(m.data, m.length, source, t.rank, n, threadIdx.x, blockDim.x));
    __syncthreads();  // every read of the slot is done before it goes back
    if (threadIdx.x == 0) {
      if (wrong != 0) atomicAdd(t.wrong, wrong);
      device::Release(t.group, m);
    }
  }
}

// Warp w receives from peers[w].
__global__ void ReceiveWarps(DeviceTrial t) {
  const int peer = static_cast<int>(threadIdx.x / 32);
  const unsigned lane = threadIdx.x & 31;
  const int source = t.group.peers[peer].rank;
  for (int k = 0; k < t.count; ++k) {
    const unsigned long long n = MessageNumber(t, k);
    device::ReceivedMessage m = device::WaitReceiveWarp(t.group, peer);
    if (!m.ok) {
      if (lane == 0) atomicAdd(t.gave_up, 1ull);
      return;
    }
    unsigned long long wrong = CountWrongBytes(m.data, m.length, source, t.rank, n, lane, 32);
    for (int offset = 16; offset > 0; offset /= 2)
      wrong += __shfl_down_sync(0xffffffffu, wrong, offset);
    __syncwarp();  // every lane's reads of the slot are done before it goes back
    if (lane == 0) {
      if (m.length != MessageLength(t, n)) wrong += 1ull << 40;
      if (wrong != 0) atomicAdd(t.wrong, wrong);
      device::Release(t.group, m);
    }
  }
}

__global__ void AddOne(unsigned long long* word) { *word += 1; }

}  // namespace

cudaError_t LaunchDeviceSends(const DeviceTrial& trial, cudaStream_t stream) {
  if (trial.warp) {
    SendWarps<<<1, 32 * trial.group.num_peers, 0, stream>>>(trial);
  } else {
    SendBlocks<<<trial.group.num_peers * trial.blocks_per_message, kThreads, 0, stream>>>(trial);
  }
  return cudaGetLastError();
}

cudaError_t LaunchDeviceReceives(const DeviceTrial& trial, cudaStream_t stream) {
  if (trial.warp) {
    ReceiveWarps<<<1, 32 * trial.group.num_peers, 0, stream>>>(trial);
  } else {
    ReceiveBlocks<<<trial.group.num_peers, kThreads, 0, stream>>>(trial);
  }
  return cudaGetLastError();
}

cudaError_t LaunchAddOne(unsigned long long* word, cudaStream_t stream) {
  AddOne<<<1, 1, 0, stream>>>(word);
  return cudaGetLastError();
}

}  // namespace m2n::testing

// m2n_perf --use_cuda: the measurement on GPUs, one process per GPU, every rank on one host.
//
// The same timing rule as bench.h's one-way mode: per iteration, every rank passes the host
// barrier; each sender stamps its start and enqueues its sends on its stream; each receiver
// enqueues its receives, synchronizes its stream (the data is usable by then; a host-driven receive
// returns only then and needs no synchronize) and stamps. Latency =
// max(receiver stamp) - min(sender start). The payload is written by a producer kernel before the
// barrier and checked by a consumer kernel after the stamp, both untimed in the latency phase.
// Bandwidth: senders enqueue `iters` sends to every peer back to back; receivers enqueue, per
// message, the receive, the check kernel and the release; GB/s = M*N*bytes*iters / (last receiver
// done - first sender start). m2n and the NCCL baseline (nccl_baseline.h) run through this same
// code. The first size of each implementation runs one extra, untimed pass first (one-time costs).
// M2N_PERF_GPU_PATH=host: m2n's host-driven Send / Receive instead of the stream-ordered calls
// (with M2N_CUDA_IPC_PROXY=1, the cuda_ipc copy proxy moves the payload). M2N_PERF_TRACE_MAX=1: the
// three slowest iterations of each size go to stderr.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "m2n/group.h"
#include "m2n/status.h"
#include "bench.h"

namespace m2n::perf {

// One implementation of the exchange on GPU streams.
class GpuExchange {
 public:
  virtual ~GpuExchange() = default;
  virtual std::string_view name() const = 0;
  // Enqueues one message to every peer: data[i] (device memory, `bytes` long) to peer i.
  virtual Status Send(std::span<const std::byte* const> data, size_t bytes, void* stream) = 0;
  // Enqueues the receive of one message from every peer; views[i] (device memory) holds peer i's
  // message in stream order after it, until Release.
  virtual Status Receive(size_t bytes, std::span<std::byte*> views, void* stream) = 0;
  virtual Status Release(void* stream) = 0;
  // Whether Receive returns only once the data is in place (a host-driven receive): the receiver's
  // host then knows it without synchronizing its stream, which holds nothing of the receive.
  virtual bool ReceiveCompletesOnHost() const { return false; }
};

// The CUDA device of `rank`: rank mod the number of devices. Sets it current.
StatusOr<int> UseDeviceOfRank(int rank);

// m2n: Group::SendOnStream / ReceiveOnStream / ReleaseOnStream.
std::unique_ptr<GpuExchange> MakeM2nGpuExchange(Group& group);

class GpuBench {
 public:
  // `setup.segment` must be shared (one host).
  static StatusOr<std::unique_ptr<GpuBench>> Create(BenchSetup setup);
  ~GpuBench();

  bool is_sender() const { return setup_.rank < setup_.num_senders; }
  // Device memory every send reads from: register it with the Group as MemoryKind::kCuda.
  std::span<std::byte> send_memory() const { return {memory_, memory_bytes_}; }

  StatusOr<SizeResult> RunSize(GpuExchange& exchange, size_t bytes, uint32_t size_index);

 private:
  explicit GpuBench(BenchSetup setup) : setup_(std::move(setup)) {}
  std::byte* Buffer(size_t peer_index, int variant) const;
  Status Run(GpuExchange& exchange, size_t bytes, uint32_t size_index, SizeResult& result);

  BenchSetup setup_;
  int variants_ = 2;
  std::vector<const GpuExchange*> warmed_;  // implementations whose first size ran an untimed pass
  std::byte* memory_ = nullptr;  // device
  size_t memory_bytes_ = 0;
  unsigned long long* wrong_device_ = nullptr;
  void* stream_ = nullptr;  // cudaStream_t
  std::vector<const std::byte*> sources_;
  std::vector<std::byte*> views_;
};

}  // namespace m2n::perf

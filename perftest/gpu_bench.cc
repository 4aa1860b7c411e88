#include "gpu_bench.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string_view>
#include <utility>

#include "gpu_pattern.h"
#include "host_barrier.h"
#include "pattern.h"

namespace m2n::perf {
namespace {

constexpr uint32_t kPhaseLatency = 1;  // as bench.cc
constexpr uint32_t kPhaseStream = 3;

Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return OkStatus();
  return InternalError(std::string("CUDA: ") + what + ": " + cudaGetErrorName(e) + " (" +
                       cudaGetErrorString(e) + ")");
}

cudaStream_t AsStream(void* s) { return static_cast<cudaStream_t>(s); }

class M2nGpuExchange final : public GpuExchange {
 public:
  explicit M2nGpuExchange(Group& group)
      : group_(group),
        peers_(group.peers().begin(), group.peers().end()),
        requests_(peers_.size()),
        received_(peers_.size()) {
    for (size_t i = 0; i < peers_.size(); ++i) requests_[i].peer = peers_[i];
  }
  std::string_view name() const override { return "m2n"; }
  Status Send(std::span<const std::byte* const> data, size_t bytes, void* stream) override {
    for (size_t i = 0; i < requests_.size(); ++i) {
      requests_[i].data = data[i];
      requests_[i].length = bytes;
    }
    return group_.SendOnStream(requests_, stream);
  }
  Status Receive(size_t bytes, std::span<std::byte*> views, void* stream) override {
    M2N_RETURN_IF_ERROR(group_.ReceiveOnStream(peers_, received_, stream));
    for (size_t i = 0; i < views.size(); ++i) views[i] = received_[i].data;
    return OkStatus();
  }
  Status Release(void* stream) override { return group_.ReleaseOnStream(received_, stream); }

 private:
  Group& group_;
  std::vector<int> peers_;
  std::vector<SendRequest> requests_;
  std::vector<Message> received_;
};

// m2n's host-driven calls on device memory (M2N_PERF_GPU_PATH=host): Send / Receive / Release.
// With M2N_CUDA_IPC_PROXY=1 the cuda_ipc transport moves the payload with its copy proxy kernel and
// the receiver's host sees the immediate in its ring: no launch, no stream, no host wake-up by the
// driver in the timed part. The sender's data must be ready when Send is called (the producer
// kernel is synchronized before the timed part here, for both rows); a Release waits for the work
// on the stream that reads the slots (the consumer kernel) before handing the slots back.
class M2nHostGpuExchange final : public GpuExchange {
 public:
  explicit M2nHostGpuExchange(Group& group)
      : group_(group),
        peers_(group.peers().begin(), group.peers().end()),
        requests_(peers_.size()),
        received_(peers_.size()) {
    for (size_t i = 0; i < peers_.size(); ++i) requests_[i].peer = peers_[i];
  }
  std::string_view name() const override { return "m2n"; }
  Status Send(std::span<const std::byte* const> data, size_t bytes, void*) override {
    for (size_t i = 0; i < requests_.size(); ++i) {
      requests_[i].data = data[i];
      requests_[i].length = bytes;
    }
    return group_.Send(requests_, Deadline::AfterMs(kTimeoutMs));
  }
  Status Receive(size_t, std::span<std::byte*> views, void*) override {
    M2N_RETURN_IF_ERROR(group_.Receive(peers_, received_, Deadline::AfterMs(kTimeoutMs)));
    for (size_t i = 0; i < views.size(); ++i) views[i] = received_[i].data;
    return OkStatus();
  }
  Status Release(void* stream) override {
    M2N_RETURN_IF_ERROR(
        Cuda(cudaStreamSynchronize(AsStream(stream)), "cudaStreamSynchronize (before Release)"));
    return group_.Release(received_);
  }
  bool ReceiveCompletesOnHost() const override { return true; }

 private:
  static constexpr int64_t kTimeoutMs = 60000;
  Group& group_;
  std::vector<int> peers_;
  std::vector<SendRequest> requests_;
  std::vector<Message> received_;
};

// M2N_PERF_TRACE_MAX=1: rank 0 prints the three slowest timed iterations of each size (index and
// microseconds) to stderr, to tell a one-time cost (early index) from a random stall.
void TraceSlowest(HostSegment& segment, int senders, int world, int warmup, int iters, size_t bytes,
                  std::string_view impl) {
  const char* trace = std::getenv("M2N_PERF_TRACE_MAX");
  if (trace == nullptr || *trace == '\0' || *trace == '0') return;
  std::vector<std::pair<double, int>> all;
  for (int it = warmup; it < warmup + iters; ++it) {
    int64_t first = std::numeric_limits<int64_t>::max();
    int64_t last = std::numeric_limits<int64_t>::min();
    for (int r = 0; r < senders; ++r) first = std::min(first, segment.stamp(it, r));
    for (int r = senders; r < world; ++r) last = std::max(last, segment.stamp(it, r));
    all.push_back({static_cast<double>(last - first) / 1e3, it - warmup});
  }
  std::partial_sort(all.begin(), all.begin() + std::min<size_t>(3, all.size()), all.end(),
                    [](const auto& a, const auto& b) { return a.first > b.first; });
  std::fprintf(stderr, "m2n_perf: slowest %.*s %zu B:", static_cast<int>(impl.size()), impl.data(),
               bytes);
  for (size_t i = 0; i < std::min<size_t>(3, all.size()); ++i) {
    std::fprintf(stderr, " #%d %.1f us", all[i].second, all[i].first);
  }
  std::fprintf(stderr, "\n");
}

}  // namespace

StatusOr<int> UseDeviceOfRank(int rank) {
  int count = 0;
  M2N_RETURN_IF_ERROR(Cuda(cudaGetDeviceCount(&count), "cudaGetDeviceCount"));
  if (count == 0) return UnavailableError("--use_cuda: no CUDA device");
  const int device = rank % count;
  M2N_RETURN_IF_ERROR(Cuda(cudaSetDevice(device), "cudaSetDevice"));
  return device;
}

std::unique_ptr<GpuExchange> MakeM2nGpuExchange(Group& group) {
  const char* path = std::getenv("M2N_PERF_GPU_PATH");
  if (path != nullptr && std::string_view(path) == "host")
    return std::make_unique<M2nHostGpuExchange>(group);
  return std::make_unique<M2nGpuExchange>(group);
}

StatusOr<std::unique_ptr<GpuBench>> GpuBench::Create(BenchSetup setup) {
  if (setup.segment == nullptr) {
    return InvalidArgumentError(
        "--use_cuda needs every rank on one host (one-way latency, CUDA IPC)");
  }
  std::unique_ptr<GpuBench> b(new GpuBench(std::move(setup)));
  b->variants_ = StreamVariants(b->setup_.config.slot_depth);
  const size_t peers = b->setup_.peers.size();
  b->memory_bytes_ = peers * static_cast<size_t>(b->variants_) * b->setup_.config.max_bytes;
  void* p = nullptr;
  M2N_RETURN_IF_ERROR(Cuda(cudaMalloc(&p, b->memory_bytes_), "cudaMalloc (send buffers)"));
  b->memory_ = static_cast<std::byte*>(p);
  M2N_RETURN_IF_ERROR(Cuda(cudaMalloc(&p, sizeof(unsigned long long)), "cudaMalloc (counter)"));
  b->wrong_device_ = static_cast<unsigned long long*>(p);
  cudaStream_t stream = nullptr;
  M2N_RETURN_IF_ERROR(
      Cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate"));
  b->stream_ = stream;
  b->sources_.resize(peers);
  b->views_.resize(peers);
  return b;
}

GpuBench::~GpuBench() {
  if (stream_ != nullptr) {
    cudaStreamSynchronize(AsStream(stream_));
    cudaStreamDestroy(AsStream(stream_));
  }
  cudaFree(memory_);
  cudaFree(wrong_device_);
}

std::byte* GpuBench::Buffer(size_t peer_index, int variant) const {
  return memory_ + (peer_index * static_cast<size_t>(variants_) + static_cast<size_t>(variant)) *
                       setup_.config.max_bytes;
}

StatusOr<SizeResult> GpuBench::RunSize(GpuExchange& exchange, size_t bytes, uint32_t size_index) {
  SizeResult result;
  result.bytes = bytes;
  Status status;
  if (std::find(warmed_.begin(), warmed_.end(), &exchange) == warmed_.end()) {
    // The first size of each implementation runs twice and the first pass is dropped (its wrong
    // bytes still count): one-time costs (lazy loading, first touches, the other implementation's
    // set-up finishing in the background) stay out of the first row, for m2n and NCCL alike.
    warmed_.push_back(&exchange);
    SizeResult warm;
    status = Run(exchange, bytes, size_index, warm);
    result.wrong += warm.wrong;
    result.local_wrong += warm.local_wrong;
  }
  const int64_t start = NowNs();
  if (status.ok()) {
    SizeResult timed;
    status = Run(exchange, bytes, size_index, timed);
    timed.wrong += result.wrong;
    timed.local_wrong += result.local_wrong;
    timed.bytes = bytes;
    result = timed;
  }
  if (!status.ok()) {
    return status.WithContext(std::string(exchange.name()) + ", " + std::to_string(bytes) +
                              " B, rank " + std::to_string(setup_.rank));
  }
  result.seconds = static_cast<double>(NowNs() - start) / 1e9;
  return result;
}

Status GpuBench::Run(GpuExchange& exchange, size_t bytes, uint32_t size_index, SizeResult& result) {
  HostSegment& segment = *setup_.segment;
  const PerfConfig& config = setup_.config;
  const int rank = setup_.rank;
  const int senders = setup_.num_senders;
  const int world = setup_.num_senders + setup_.num_receivers;
  const int total = config.warmup_iters + config.iters;
  cudaStream_t stream = AsStream(stream_);
  auto barrier = [&] { return segment.Barrier(Deadline::AfterMs(config.timeout_ms)); };
  auto sync = [&] { return Cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize"); };
  M2N_RETURN_IF_ERROR(Cuda(cudaMemsetAsync(wrong_device_, 0, sizeof(unsigned long long), stream),
                           "cudaMemsetAsync"));
  M2N_RETURN_IF_ERROR(sync());

  // Latency.
  for (int it = 0; it < total; ++it) {
    const uint64_t tag = PatternTag(size_index, kPhaseLatency, static_cast<uint32_t>(it));
    if (is_sender()) {
      for (size_t i = 0; i < setup_.peers.size(); ++i) {
        sources_[i] = Buffer(i, 0);
        if (config.check) {
          M2N_RETURN_IF_ERROR(
              Cuda(FillPatternAsync(Buffer(i, 0), bytes, PatternSeed(rank, setup_.peers[i], tag),
                                    stream),
                   "fill kernel"));
        }
      }
      M2N_RETURN_IF_ERROR(sync());
    }
    M2N_RETURN_IF_ERROR(barrier());
    if (is_sender()) {
      const int64_t t_start = NowNs();
      M2N_RETURN_IF_ERROR(exchange.Send(sources_, bytes, stream));
      segment.stamp(it, rank) = t_start;
      M2N_RETURN_IF_ERROR(sync());  // before the buffers are filled again; untimed
    } else {
      M2N_RETURN_IF_ERROR(exchange.Receive(bytes, views_, stream));
      // Done when this host knows the data is in place: after the stream (NCCL, stream-ordered
      // m2n) or when Receive returns (host-driven m2n: the stream holds nothing of it).
      if (!exchange.ReceiveCompletesOnHost()) M2N_RETURN_IF_ERROR(sync());
      segment.stamp(it, rank) = NowNs();
      if (config.check) {
        for (size_t i = 0; i < views_.size(); ++i) {
          M2N_RETURN_IF_ERROR(
              Cuda(CountWrongAsync(views_[i], bytes, PatternSeed(setup_.peers[i], rank, tag),
                                   wrong_device_, stream),
                   "check kernel"));
        }
      }
      M2N_RETURN_IF_ERROR(exchange.Release(stream));
      M2N_RETURN_IF_ERROR(sync());
    }
  }

  // Bandwidth.
  if (is_sender()) {
    for (size_t i = 0; i < setup_.peers.size() && config.check; ++i) {
      for (int v = 0; v < variants_; ++v) {
        const uint64_t tag = PatternTag(size_index, kPhaseStream, static_cast<uint32_t>(v));
        M2N_RETURN_IF_ERROR(Cuda(
            FillPatternAsync(Buffer(i, v), bytes, PatternSeed(rank, setup_.peers[i], tag), stream),
            "fill kernel"));
      }
    }
    M2N_RETURN_IF_ERROR(sync());
  }
  M2N_RETURN_IF_ERROR(barrier());
  if (is_sender()) {
    segment.stream_start(rank) = NowNs();
    for (int msg = 0; msg < config.iters; ++msg) {
      for (size_t i = 0; i < setup_.peers.size(); ++i) sources_[i] = Buffer(i, msg % variants_);
      M2N_RETURN_IF_ERROR(exchange.Send(sources_, bytes, stream));
    }
    M2N_RETURN_IF_ERROR(sync());
  } else {
    for (int msg = 0; msg < config.iters; ++msg) {
      M2N_RETURN_IF_ERROR(exchange.Receive(bytes, views_, stream));
      if (config.check) {
        const uint64_t tag =
            PatternTag(size_index, kPhaseStream, static_cast<uint32_t>(msg % variants_));
        for (size_t i = 0; i < views_.size(); ++i) {
          M2N_RETURN_IF_ERROR(
              Cuda(CountWrongAsync(views_[i], bytes, PatternSeed(setup_.peers[i], rank, tag),
                                   wrong_device_, stream),
                   "check kernel"));
        }
      }
      M2N_RETURN_IF_ERROR(exchange.Release(stream));
    }
    M2N_RETURN_IF_ERROR(sync());
    segment.stream_done(rank) = NowNs();
  }
  unsigned long long wrong = 0;
  M2N_RETURN_IF_ERROR(
      Cuda(cudaMemcpy(&wrong, wrong_device_, sizeof wrong, cudaMemcpyDeviceToHost), "cudaMemcpy"));
  result.local_wrong = wrong;
  segment.wrong(rank) = wrong;
  M2N_RETURN_IF_ERROR(barrier());

  for (int r = 0; r < world; ++r) result.wrong += segment.wrong(r);
  if (rank == 0) {
    SummarizeOneWay(segment, senders, setup_.num_receivers, config.warmup_iters, config.iters,
                    bytes, result);
    TraceSlowest(segment, senders, world, config.warmup_iters, config.iters, bytes,
                 exchange.name());
  }
  // Rank 0 reads the segment before anyone writes the next size's stamps.
  return barrier();
}

}  // namespace m2n::perf

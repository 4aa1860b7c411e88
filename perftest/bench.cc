#include "bench.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "pattern.h"

namespace m2n::perf {
namespace {

// Pattern phases: each kind of message has its own data.
constexpr uint32_t kPhaseLatency = 1;
constexpr uint32_t kPhaseReply = 2;
constexpr uint32_t kPhaseStream = 3;

}  // namespace

int StreamVariants(int slot_depth) {
  int k = 2;
  while (slot_depth % k == 0) ++k;
  return k;
}

Bench::Bench(BenchSetup setup) : setup_(std::move(setup)) {
  variants_ = StreamVariants(setup_.config.slot_depth);
  const size_t peers = setup_.peers.size();
  memory_bytes_ = peers * static_cast<size_t>(variants_) * setup_.config.max_bytes + 4096;
  memory_bytes_ = (memory_bytes_ + 4095) / 4096 * 4096;
  memory_ = static_cast<std::byte*>(std::aligned_alloc(4096, memory_bytes_));
  std::memset(memory_, 0, memory_bytes_);  // fault the pages in now, not in a timed loop
  views_.resize(peers);
  sources_.resize(peers);
}

Bench::~Bench() { std::free(memory_); }

std::byte* Bench::Buffer(size_t peer_index, int variant) const {
  return memory_ + (peer_index * static_cast<size_t>(variants_) + static_cast<size_t>(variant)) *
                       setup_.config.max_bytes;
}

std::byte* Bench::Control() const { return memory_ + memory_bytes_ - 4096; }

void Bench::Inspect(std::span<std::span<std::byte>> views, bool first_measured, uint64_t tag) {
  if (first_measured && setup_.config.inject_corruption && setup_.rank == setup_.num_senders &&
      !views.empty() && !views[0].empty()) {
    views[0][views[0].size() / 2] ^= std::byte{0xFF};
  }
  if (!setup_.config.check) return;
  for (size_t i = 0; i < views.size(); ++i) {
    wrong_ += CountWrongBytes(views[i], PatternSeed(setup_.peers[i], setup_.rank, tag));
  }
}

Status Bench::FillStreamBuffers(size_t bytes, uint32_t size_index) {
  if (!setup_.config.check) return OkStatus();
  for (size_t i = 0; i < setup_.peers.size(); ++i) {
    for (int v = 0; v < variants_; ++v) {
      const uint64_t tag = PatternTag(size_index, kPhaseStream, static_cast<uint32_t>(v));
      FillPattern({Buffer(i, v), bytes}, PatternSeed(setup_.rank, setup_.peers[i], tag));
    }
  }
  return OkStatus();
}

Exchange::Source Bench::StreamSource() const {
  return [this](int msg, int peer_index) {
    return static_cast<const std::byte*>(Buffer(static_cast<size_t>(peer_index), msg % variants_));
  };
}

Exchange::Sink Bench::StreamSink(uint32_t size_index) {
  return [this, size_index](int msg, int peer_index, std::span<std::byte> data) {
    if (!setup_.config.check) return;
    const uint64_t tag =
        PatternTag(size_index, kPhaseStream, static_cast<uint32_t>(msg % variants_));
    wrong_ += CountWrongBytes(
        data, PatternSeed(setup_.peers[static_cast<size_t>(peer_index)], setup_.rank, tag));
  };
}

StatusOr<SizeResult> Bench::RunSize(Exchange& exchange, size_t bytes, uint32_t size_index) {
  SizeResult result;
  result.bytes = bytes;
  wrong_ = 0;
  const int64_t start = NowNs();
  Status status = one_way() ? RunOneWay(exchange, bytes, size_index, result)
                            : RunRoundTrip(exchange, bytes, size_index, result);
  if (!status.ok()) {
    return status.WithContext(std::string(exchange.name()) + ", " + std::to_string(bytes) +
                              " B, rank " + std::to_string(setup_.rank));
  }
  result.local_wrong = wrong_;
  result.seconds = static_cast<double>(NowNs() - start) / 1e9;
  return result;
}

Status Bench::RunOneWay(Exchange& exchange, size_t bytes, uint32_t size_index, SizeResult& result) {
  HostSegment& segment = *setup_.segment;
  const PerfConfig& config = setup_.config;
  const int rank = setup_.rank;
  const int senders = setup_.num_senders;
  const int world = setup_.num_senders + setup_.num_receivers;
  const int total = config.warmup_iters + config.iters;
  auto progress = [&exchange] { exchange.Progress(); };
  auto barrier = [&] { return segment.Barrier(Deadline::AfterMs(config.timeout_ms), progress); };

  // Latency.
  for (int it = 0; it < total; ++it) {
    const uint64_t tag = PatternTag(size_index, kPhaseLatency, static_cast<uint32_t>(it));
    if (is_sender()) {
      for (size_t i = 0; i < setup_.peers.size(); ++i) {
        sources_[i] = Buffer(i, 0);
        if (config.check)
          FillPattern({Buffer(i, 0), bytes}, PatternSeed(rank, setup_.peers[i], tag));
      }
    }
    M2N_RETURN_IF_ERROR(barrier());
    if (is_sender()) {
      const int64_t t_start = NowNs();
      M2N_RETURN_IF_ERROR(exchange.SendToPeers(sources_, bytes));
      segment.stamp(it, rank) = t_start;
    } else {
      M2N_RETURN_IF_ERROR(exchange.ReceiveFromPeers(bytes, views_));
      segment.stamp(it, rank) = NowNs();
      Inspect(views_, it == config.warmup_iters, tag);
      M2N_RETURN_IF_ERROR(exchange.ReleaseReceived());
    }
  }

  // Bandwidth. The barrier also orders every latency stamp before rank 0 reads it.
  if (is_sender()) M2N_RETURN_IF_ERROR(FillStreamBuffers(bytes, size_index));
  M2N_RETURN_IF_ERROR(barrier());
  if (is_sender()) {
    segment.stream_start(rank) = NowNs();
    M2N_RETURN_IF_ERROR(exchange.StreamSend(bytes, config.iters, StreamSource()));
  } else {
    M2N_RETURN_IF_ERROR(exchange.StreamReceive(bytes, config.iters, StreamSink(size_index)));
    segment.stream_done(rank) = NowNs();
  }
  segment.wrong(rank) = wrong_;
  M2N_RETURN_IF_ERROR(barrier());

  // Nobody writes the segment again until every rank, rank 0 included, reaches the next barrier.
  for (int r = 0; r < world; ++r) result.wrong += segment.wrong(r);
  if (rank != 0) return OkStatus();
  SummarizeOneWay(segment, senders, setup_.num_receivers, config.warmup_iters, config.iters, bytes,
                  result);
  return OkStatus();
}

void SummarizeOneWay(HostSegment& segment, int senders, int receivers, int warmup_iters, int iters,
                     size_t bytes, SizeResult& result) {
  const int world = senders + receivers;
  std::vector<double> samples;
  samples.reserve(static_cast<size_t>(iters));
  for (int it = warmup_iters; it < warmup_iters + iters; ++it) {
    int64_t first_start = std::numeric_limits<int64_t>::max();
    int64_t last_done = std::numeric_limits<int64_t>::min();
    for (int r = 0; r < senders; ++r) first_start = std::min(first_start, segment.stamp(it, r));
    for (int r = senders; r < world; ++r) last_done = std::max(last_done, segment.stamp(it, r));
    samples.push_back(static_cast<double>(last_done - first_start) / 1e3);
  }
  result.latency = Summarize(std::move(samples));
  int64_t first_start = std::numeric_limits<int64_t>::max();
  int64_t last_done = std::numeric_limits<int64_t>::min();
  for (int r = 0; r < senders; ++r) first_start = std::min(first_start, segment.stream_start(r));
  for (int r = senders; r < world; ++r) last_done = std::max(last_done, segment.stream_done(r));
  const double elapsed_ns = static_cast<double>(std::max<int64_t>(last_done - first_start, 1));
  const double messages = static_cast<double>(senders) * receivers * iters;
  result.gbps = messages * static_cast<double>(bytes) / elapsed_ns;
  result.mmsg_per_s = messages / elapsed_ns * 1e3;
}

Status Bench::RunRoundTrip(Exchange& exchange, size_t bytes, uint32_t size_index,
                           SizeResult& result) {
  const PerfConfig& config = setup_.config;
  const int rank = setup_.rank;
  const int total = config.warmup_iters + config.iters;
  M2N_RETURN_IF_ERROR(setup_.group_barrier());

  // Latency: ping-pong, timed by each sender on its own clock.
  std::vector<double> samples;
  samples.reserve(static_cast<size_t>(config.iters));
  for (int it = 0; it < total; ++it) {
    const uint64_t tag = PatternTag(size_index, kPhaseLatency, static_cast<uint32_t>(it));
    const uint64_t reply_tag = PatternTag(size_index, kPhaseReply, static_cast<uint32_t>(it));
    // A sender fills its message, a receiver its reply, before the timed part starts.
    for (size_t i = 0; i < setup_.peers.size(); ++i) {
      sources_[i] = Buffer(i, 0);
      if (config.check) {
        FillPattern({Buffer(i, 0), bytes},
                    PatternSeed(rank, setup_.peers[i], is_sender() ? tag : reply_tag));
      }
    }
    if (is_sender()) {
      const int64_t t_start = NowNs();
      M2N_RETURN_IF_ERROR(exchange.SendToPeers(sources_, bytes));
      M2N_RETURN_IF_ERROR(exchange.ReceiveFromPeers(bytes, views_));
      const int64_t t_done = NowNs();
      if (it >= config.warmup_iters) samples.push_back(static_cast<double>(t_done - t_start) / 2e3);
      Inspect(views_, false, reply_tag);
      M2N_RETURN_IF_ERROR(exchange.ReleaseReceived());
    } else {
      M2N_RETURN_IF_ERROR(exchange.ReceiveFromPeers(bytes, views_));
      M2N_RETURN_IF_ERROR(exchange.SendToPeers(sources_, bytes));
      Inspect(views_, it == config.warmup_iters, tag);
      M2N_RETURN_IF_ERROR(exchange.ReleaseReceived());
    }
  }

  // Bandwidth: stream, then an 8-byte "done" from every receiver carrying its #wrong.
  constexpr size_t kDoneBytes = sizeof(uint64_t);
  if (is_sender()) {
    M2N_RETURN_IF_ERROR(FillStreamBuffers(bytes, size_index));
    const int64_t t_start = NowNs();
    M2N_RETURN_IF_ERROR(exchange.StreamSend(bytes, config.iters, StreamSource()));
    M2N_RETURN_IF_ERROR(exchange.ReceiveFromPeers(kDoneBytes, views_));
    const int64_t t_done = NowNs();
    uint64_t reported = 0;
    for (const auto& view : views_) {
      uint64_t w = 0;
      std::memcpy(&w, view.data(), kDoneBytes);
      reported += w;
    }
    M2N_RETURN_IF_ERROR(exchange.ReleaseReceived());
    result.wrong = wrong_ + reported;
    const double elapsed_ns = static_cast<double>(std::max<int64_t>(t_done - t_start, 1));
    const double messages =
        static_cast<double>(setup_.num_senders) * setup_.num_receivers * config.iters;
    result.gbps = messages * static_cast<double>(bytes) / elapsed_ns;
    result.mmsg_per_s = messages / elapsed_ns * 1e3;
    result.latency = Summarize(std::move(samples));
  } else {
    M2N_RETURN_IF_ERROR(exchange.StreamReceive(bytes, config.iters, StreamSink(size_index)));
    std::memcpy(Control(), &wrong_, kDoneBytes);
    std::fill(sources_.begin(), sources_.end(), Control());
    M2N_RETURN_IF_ERROR(exchange.SendToPeers(sources_, kDoneBytes));
    result.wrong = wrong_;
  }
  return OkStatus();
}

}  // namespace m2n::perf

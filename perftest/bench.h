// The measurement itself, shared by every Exchange (m2n and the MPI baseline): one size at a time,
// a latency phase and then a bandwidth phase, the same clock, barrier and data check for both.
//
// One-way mode (every rank on one host):
//   per iteration: senders fill their buffers; every rank passes the host barrier; each sender
//   stamps its start and sends one message to every receiver in one batch; each receiver receives
//   one from every sender and stamps its finish; then, untimed, checks and releases. Latency of the
//   iteration = max(receiver finish) - min(sender start), computed by rank 0 from the host segment.
//   bandwidth: host barrier; senders stream `iters` messages to every receiver back to back;
//   receivers receive, check and release each. GB/s = M*N*bytes*iters / (last receiver done - first
//   sender start).
// Round-trip mode (ranks on several hosts, no common clock):
//   Group::Barrier once per size; per iteration each sender times, on its own clock, sending to
//   every receiver and receiving one same-size reply from each (a receiver replies once it has the
//   messages of all senders); latency = round trip / 2. Bandwidth: each sender streams, then waits
//   for an 8-byte "done" from every receiver, which also carries that receiver's #wrong; rank 0's
//   own elapsed time gives GB/s. Rank 0 reports its own figures.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "m2n/status.h"
#include "cli.h"
#include "exchange.h"
#include "host_barrier.h"
#include "stats.h"

namespace m2n::perf {

struct BenchSetup {
  PerfConfig config;
  int rank = 0;
  int num_senders = 0;
  int num_receivers = 0;
  std::vector<int> peers;  // the other side, ascending
  HostSegment* segment = nullptr;  // one-way mode: shared by all ranks; null: round-trip mode
  std::function<Status()> group_barrier;  // round-trip mode: once per size
};

struct SizeResult {
  size_t bytes = 0;
  LatencySummary latency;  // rank 0's view (one-way: whole job; round-trip: its own)
  double gbps = 0;  // GB/s, GB = 1e9 bytes, aggregate over all M*N pairs
  double mmsg_per_s = 0;  // millions of messages per second, aggregate
  uint64_t wrong = 0;  // wrong bytes rank 0 knows of (one-way: every rank's)
  uint64_t local_wrong = 0;  // wrong bytes this rank found
  double seconds = 0;  // wall time of the size on this rank
};

class Bench {
 public:
  explicit Bench(BenchSetup setup);
  ~Bench();
  Bench(const Bench&) = delete;
  Bench& operator=(const Bench&) = delete;

  bool is_sender() const { return setup_.rank < setup_.num_senders; }
  bool one_way() const { return setup_.segment != nullptr; }
  // Everything this rank sends from: register it with the Group before RunSize.
  std::span<std::byte> send_memory() const { return {memory_, memory_bytes_}; }

  // Runs the latency and the bandwidth phase for `bytes` on `exchange`; every rank calls it with
  // the same arguments. `size_index` keeps the data of different sizes apart.
  StatusOr<SizeResult> RunSize(Exchange& exchange, size_t bytes, uint32_t size_index);

 private:
  std::byte* Buffer(size_t peer_index, int variant) const;
  std::byte* Control() const;  // 8 bytes for the round-trip "done" message
  // Untimed work on received messages: inject the test corruption, count wrong bytes.
  void Inspect(std::span<std::span<std::byte>> views, bool first_measured, uint64_t tag);
  Status FillStreamBuffers(size_t bytes, uint32_t size_index);
  Exchange::Source StreamSource() const;
  Exchange::Sink StreamSink(uint32_t size_index);

  Status RunOneWay(Exchange& exchange, size_t bytes, uint32_t size_index, SizeResult& result);
  Status RunRoundTrip(Exchange& exchange, size_t bytes, uint32_t size_index, SizeResult& result);

  BenchSetup setup_;
  int variants_ = 2;  // distinct stream buffers per peer, see bench.cc
  std::byte* memory_ = nullptr;
  size_t memory_bytes_ = 0;
  std::vector<std::span<std::byte>> views_;
  std::vector<const std::byte*> sources_;
  uint64_t wrong_ = 0;  // of the current size and exchange
};

// The number of distinct buffers per peer in the bandwidth phase: the smallest k >= 2 that does not
// divide slot_depth, so a slot never sees the same data twice in a row and a stale slot is caught.
int StreamVariants(int slot_depth);

// Rank 0, one-way mode: the latency of each measured iteration (max receiver stamp - min sender
// stamp in `segment`) and the streaming bandwidth from the stream start / done stamps, into
// `result`. Shared by the host-driven and the GPU benchmarks.
void SummarizeOneWay(HostSegment& segment, int senders, int receivers, int warmup_iters, int iters,
                     size_t bytes, SizeResult& result);

}  // namespace m2n::perf

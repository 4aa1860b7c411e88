// Micro-benchmark of the UCX transport's emulated immediate (transports/ucx/endpoint.h): the writer
// publishes a 16-byte RingEntry (seq stored last, release) and the reader polls it (acquire,
// check). Both sides run on one thread here: the figure is the instructions and the cache-hot
// memory traffic, not the cross-core transfer (m2n_perf measures that).
#include <benchmark/benchmark.h>

#include <array>
#include <cstdint>
#include <vector>

#include "transports/ucx/endpoint.h"

namespace m2n::transport::ucx {
namespace {

void BM_RingPublishPoll(benchmark::State& state) {
  constexpr uint32_t kEntries = 64;
  std::vector<RingEntry> data_ring(kEntries), ack_ring(kEntries);
  Inbox inbox(3, {data_ring.data(), ack_ring.data()}, kEntries);
  uint32_t seq = 1;
  for (auto _ : state) {
    const uint32_t imm = 0x00123400u | (seq & 0xff);
    StoreEntry(&data_ring[(seq - 1) % kEntries],
               RingEntry{imm, 1024, seq, RingCheck(imm, 1024, seq)});
    RingEntry got;
    benchmark::DoNotOptimize(inbox.TakeEntry(Lane::kData, &got));
    ++seq;
  }
}
BENCHMARK(BM_RingPublishPoll);

// A poll that finds nothing: what each idle scan of a peer's ring costs.
void BM_RingPollEmpty(benchmark::State& state) {
  constexpr uint32_t kEntries = 64;
  std::vector<RingEntry> data_ring(kEntries), ack_ring(kEntries);
  Inbox inbox(3, {data_ring.data(), ack_ring.data()}, kEntries);
  for (auto _ : state) {
    RingEntry got;
    benchmark::DoNotOptimize(inbox.TakeEntry(Lane::kData, &got));
  }
}
BENCHMARK(BM_RingPollEmpty);

}  // namespace
}  // namespace m2n::transport::ucx

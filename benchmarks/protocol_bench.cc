// Micro-benchmarks of the protocol pieces every message passes through (src/protocol): the
// immediate's encode and its checked decode, slot and credit accounting, CRC-32C per KB, and a
// Status made on the error path. Each is pure CPU work, timed without a transport.
#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "m2n/status.h"
#include "protocol/checksum.h"
#include "protocol/immediate.h"
#include "protocol/slots.h"

namespace m2n::protocol {
namespace {

// Writer 3 to reader 7, slot and sequence varying as on the data path.
void BM_ImmediateEncode(benchmark::State& state) {
  const uint8_t seed = ImmediateSeed(3, 7);
  uint32_t sequence = 0;
  for (auto _ : state) {
    Immediate imm{ImmKind::kData, static_cast<int>(sequence & 15), sequence};
    benchmark::DoNotOptimize(EncodeImmediate(imm, seed));
    ++sequence;
  }
}
BENCHMARK(BM_ImmediateEncode);

// Decode with its CRC-8 check passing: what every arrival costs.
void BM_ImmediateDecode(benchmark::State& state) {
  const uint8_t seed = ImmediateSeed(3, 7);
  std::vector<uint32_t> bits;
  for (uint32_t s = 0; s < 256; ++s)
    bits.push_back(EncodeImmediate({ImmKind::kData, int(s & 15), s}, seed));
  size_t i = 0;
  for (auto _ : state) {
    auto imm = DecodeImmediate(bits[i++ & 255], 3, 7, seed);
    benchmark::DoNotOptimize(imm.ok());
  }
}
BENCHMARK(BM_ImmediateDecode);

// Decode of a corrupted immediate: the check fails and a kDataLoss Status with its message is made.
void BM_ImmediateDecodeCorrupt(benchmark::State& state) {
  const uint8_t seed = ImmediateSeed(3, 7);
  const uint32_t bad = EncodeImmediate({ImmKind::kData, 5, 42}, seed) ^ 0x100;
  for (auto _ : state) {
    auto imm = DecodeImmediate(bad, 3, 7, seed);
    benchmark::DoNotOptimize(imm.ok());
  }
}
BENCHMARK(BM_ImmediateDecodeCorrupt);

// The per-peer part of the check, computed once per peer at connect.
void BM_ImmediateSeed(benchmark::State& state) {
  int writer = 0;
  for (auto _ : state) benchmark::DoNotOptimize(ImmediateSeed(writer++ & 1023, 7));
}
BENCHMARK(BM_ImmediateSeed);

// Sender side: take a credit (a slot at the peer), then the peer's ACK gives it back.
void BM_CreditTakeAck(benchmark::State& state) {
  Credits credits(7, 4);
  for (auto _ : state) {
    int slot = credits.Take();
    benchmark::DoNotOptimize(credits.OnAck(slot).ok());
  }
}
BENCHMARK(BM_CreditTakeAck);

// Receiver side: a message lands, is delivered, and released.
void BM_SlotArriveDeliverRelease(benchmark::State& state) {
  ReceiveSlots slots(3, 4, 4096);
  int slot = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(slots.OnArrival(slot, 1024).ok());
    ReceiveSlots::Arrival a = slots.Deliver();
    benchmark::DoNotOptimize(slots.Release(a.slot, a.sequence).ok());
    slot = (slot + 1) & 3;
  }
}
BENCHMARK(BM_SlotArriveDeliverRelease);

// CRC-32C of a payload (Options::checksum); bytes_per_second / 1024 gives KB per second.
void BM_Crc32c(benchmark::State& state) {
  std::vector<std::byte> data(static_cast<size_t>(state.range(0)));
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>(i * 131);
  for (auto _ : state) benchmark::DoNotOptimize(Crc32c(data.data(), data.size()));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Crc32c)->Arg(1 << 10)->Arg(64 << 10);

// A Status on the error path: code, a message built from numbers, and a context prefix.
void BM_StatusError(benchmark::State& state) {
  int rank = 3;
  for (auto _ : state) {
    Status s =
        DeadlineExceededError("no message from rank " + std::to_string(rank) + " within 5000 ms");
    Status wrapped = s.WithContext("receive");
    benchmark::DoNotOptimize(wrapped.code());
  }
}
BENCHMARK(BM_StatusError);

// The OK path for comparison: what every successful call returns.
void BM_StatusOk(benchmark::State& state) {
  for (auto _ : state) {
    Status s = OkStatus();
    benchmark::DoNotOptimize(s.ok());
  }
}
BENCHMARK(BM_StatusOk);

}  // namespace
}  // namespace m2n::protocol

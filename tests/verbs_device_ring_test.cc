// The verbs transport's proxy side of the device-side API (m2n/device.h, proxied peers) over real
// RC queue pairs, with the kernels played by host threads: they do what m2n/device.cuh does (wait
// for the released word, fill the staging slot, put a send descriptor into the ring; wait for the
// arrival word, read the slot, put a release descriptor), on host memory standing for the GPU's.
// The proxy cannot tell the two apart, so this runs where there is an RDMA device and no GPU: in
// the Soft-RoCE VM (scripts/test-verbs-vm.sh). Skipped, with the reason, elsewhere.
//   Messages: 60 messages through 2 slots and a ring of 3 entries (it wraps, and kernels wait for
//     room), sizes 0 B to 64 KB, every byte and length checked, the credits all back at the end.
//   RingFull: kernels that claimed entries and never filled them leave no room; the next wait for
//     room gives up, naming the peer and slot, and goes on once the entries are filled.
//   BadDescriptor: an unknown kind, a peer or slot out of range, a send longer than a slot, out of
//     order or without credit, a release of what never arrived: each a clear error.
//   CreditTimeout: a receiver that never releases makes the sender's wait give up, naming the peer
//     and slot, as the group reports it.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <iterator>
#include <thread>
#include <vector>

#include "m2n/device.h"
#include "transports/verbs/memory.h"
#include "transports/verbs/stream.h"
#include "verbs_pair.h"

namespace m2n::transport::verbs {
namespace {

using testing::PairEnd;
using testing::Pattern;
using testing::SizeOf;
using Clock = std::chrono::steady_clock;
constexpr uint64_t kSlotBytes = 65536;
constexpr auto kWaitLimit = std::chrono::milliseconds(300);  // the "GPU's" bounded waits

// device.h's word type: std::atomic_ref must bind to the word itself, not a converted copy.
using Word = unsigned long long;

Word Load(const Word& w) { return std::atomic_ref<const Word>(w).load(std::memory_order_acquire); }

// One side of an in-process pair, talking to one peer (index 0): what the transport shares with
// the kernels (ring, consumed, released, arrival), the kernels' own counters (device memory on a
// GPU), and the slots.
struct Side : PairEnd {
  int rank = 0;
  std::vector<uint32_t> stream_words;
  std::vector<DeviceDescriptor> ring;
  Word consumed = 0;
  std::vector<Word> released, arrival, generation_sent, generation_received;
  std::atomic<uint64_t> claimed{0};
  uint64_t send_cursor = 0, receive_cursor = 0;
  std::vector<std::byte> staging, slots;
  std::unique_ptr<VerbsRegion> staging_region, slot_region;
  uint64_t error_word = 0;  // (reason << 56) | (peer << 24) | slot, as device.cuh writes it
  std::unique_ptr<StreamProxy> proxy;  // declared last: stopped first

  // device.cuh's WaitAtLeast: bounded, and the give-up recorded.
  bool WaitAtLeast(const Word& word, uint64_t want, bool high, uint64_t reason, int slot) {
    const auto deadline = Clock::now() + kWaitLimit;
    while (((high ? Load(word) >> 32 : Load(word))) < want) {
      if (Clock::now() > deadline) {
        if (error_word == 0)
          error_word = (reason << 56) | (static_cast<uint64_t>(1 - rank) << 24) |
                       static_cast<uint64_t>(slot);
        return false;
      }
      std::this_thread::yield();
    }
    return true;
  }
  // Claims a ticket and waits for its entry to be free (reason 3 when it gives up).
  bool Claim(int slot, uint64_t* ticket) {
    *ticket = claimed.fetch_add(1);
    return *ticket < ring.size() ||
           WaitAtLeast(consumed, *ticket + 1 - ring.size(), false, 3, slot);
  }
  void Fill(uint64_t ticket, uint64_t kind, int slot, uint64_t message, uint64_t peer_index = 0) {
    DeviceDescriptor& e = ring[ticket % ring.size()];
    e.target = (kind << 56) | (peer_index << 24) | static_cast<uint64_t>(slot);
    e.message = message;
    std::atomic_ref<Word>(e.sequence).store(ticket + 1, std::memory_order_release);
  }
  bool Put(uint64_t kind, int slot, uint64_t message) {
    uint64_t ticket = 0;
    if (!Claim(slot, &ticket)) return false;
    Fill(ticket, kind, slot, message);
    return true;
  }
  // BeginSend + the payload + EndSend; false when the credit or the ring's room never came.
  bool Send(size_t length, std::byte (*pattern)(uint64_t, size_t)) {
    const int depth = static_cast<int>(released.size());
    const int slot = static_cast<int>(send_cursor % static_cast<uint64_t>(depth));
    const uint64_t generation = generation_sent[static_cast<size_t>(slot)] + 1;
    if (!WaitAtLeast(released[static_cast<size_t>(slot)], generation - 1, false, 1, slot))
      return false;
    for (size_t i = 0; i < length; ++i)
      staging[static_cast<size_t>(slot) * kSlotBytes + i] = pattern(send_cursor, i);
    generation_sent[static_cast<size_t>(slot)] = generation;
    ++send_cursor;
    return Put(kDeviceSend, slot, (generation << 32) | length);
  }
};

class DeviceRingTest : public testing::VerbsPairTest {
 protected:
  void MakeSide(int i, int depth, size_t ring_entries) {
    Side& s = side_[i];
    s.rank = i;
    MakeEnd(s, i);
    if (HasFatalFailure()) return;
    s.stream_words.assign(StreamProxy::WordCount(1, depth), 0);
    s.ring.assign(ring_entries, DeviceDescriptor{});
    for (auto* v : {&s.released, &s.arrival, &s.generation_sent, &s.generation_received})
      v->assign(static_cast<size_t>(depth), 0);
    s.staging.assign(static_cast<size_t>(depth) * kSlotBytes, std::byte{0});
    s.slots.assign(static_cast<size_t>(depth) * kSlotBytes, std::byte{0});
    auto staging =
        VerbsRegion::Register(ctx_, s.staging.data(), s.staging.size(), MemoryKind::kHost);
    auto slots = VerbsRegion::Register(ctx_, s.slots.data(), s.slots.size(), MemoryKind::kHost);
    ASSERT_TRUE(staging.ok() && slots.ok());
    s.staging_region = std::move(staging).value();
    s.slot_region = std::move(slots).value();
  }

  // Two sides with `depth` slots and rings of `ring_entries`, connected, proxies started.
  void Connect(int depth, size_t ring_entries) {
    for (int i = 0; i < 2; ++i) {
      MakeSide(i, depth, ring_entries);
      if (HasFatalFailure()) return;
    }
    ConnectEnds(side_[0], side_[1], depth);
    if (HasFatalFailure()) return;
    for (int i = 0; i < 2; ++i) {
      Side& s = side_[i];
      auto packed = side_[1 - i].slot_region->PackRemoteKey();
      ASSERT_TRUE(packed.ok());
      auto remote = VerbsRemoteRegion::Unpack(ctx_.get(), 1 - i, *packed);
      ASSERT_TRUE(remote.ok());
      StreamProxy::Settings settings;
      settings.slot_depth = depth;
      settings.device = DeviceLink{
          s.ring.data(),
          s.ring.size(),
          &s.consumed,
          s.released.data(),
          s.arrival.data(),
          kSlotBytes,
          {DeviceRoute{reinterpret_cast<uintptr_t>(s.staging.data()), s.staging_region->lkey(),
                       (*remote)->address(), (*remote)->rkey()}}};
      auto proxy = StreamProxy::Start(s.stream_cq, {{1 - i, s.endpoint.get()}},
                                      s.stream_words.data(), settings);
      ASSERT_TRUE(proxy.ok()) << proxy.status().ToString();
      s.proxy = std::move(proxy).value();
    }
  }

  // Until the proxy of side i reports an error, bounded.
  Status ErrorOf(int i) {
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (side_[i].proxy->error().ok() && Clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return side_[i].proxy->error();
  }

  Side side_[2];
};

TEST_P(DeviceRingTest, Messages) {
  constexpr int kDepth = 2;
  constexpr uint64_t kMessages = 60;
  Connect(kDepth, /*ring_entries=*/3);
  if (::testing::Test::IsSkipped() || HasFatalFailure()) return;
  std::atomic<int> wrong{0};
  std::thread receiver([&] {
    Side& r = side_[1];
    for (uint64_t n = 0; n < kMessages; ++n) {
      const size_t slot = n % kDepth;
      const uint64_t generation = r.generation_received[slot] + 1;
      // Generous: the sender may be far behind on an emulated CPU.
      bool arrived = false;
      for (int tries = 0; tries < 60 && !arrived; ++tries) {
        r.error_word = 0;
        arrived = r.WaitAtLeast(r.arrival[slot], generation, true, 2, static_cast<int>(slot));
      }
      if (!arrived) {
        wrong += 1000;
        return;
      }
      const size_t length = Load(r.arrival[slot]) & 0xffffffff;
      if (length != SizeOf(n)) ++wrong;
      for (size_t i = 0; i < length; ++i) {
        if (r.slots[slot * kSlotBytes + i] != Pattern(n, i)) {
          ++wrong;
          break;
        }
      }
      r.generation_received[slot] = generation;
      ++r.receive_cursor;
      if (!r.Put(kDeviceRelease, static_cast<int>(slot), generation << 32)) wrong += 1000;
    }
  });
  Side& s = side_[0];
  for (uint64_t n = 0; n < kMessages; ++n) {
    bool sent = false;
    for (int tries = 0; tries < 60 && !sent; ++tries) {
      s.error_word = 0;
      // A retry after a give-up repeats only the wait: Send() changes nothing before it.
      sent = s.Send(SizeOf(n), Pattern);
    }
    ASSERT_TRUE(sent) << "message " << n << " never got its credit or room in the ring";
  }
  receiver.join();
  EXPECT_EQ(wrong.load(), 0);
  // Every release came back as a credit.
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while ((Load(s.released[0]) != kMessages / 2 || Load(s.released[1]) != kMessages / 2) &&
         Clock::now() < deadline)
    std::this_thread::yield();
  EXPECT_EQ(Load(s.released[0]), kMessages / 2);
  EXPECT_EQ(Load(s.released[1]), kMessages / 2);
  EXPECT_EQ(Load(s.consumed), kMessages);
  EXPECT_TRUE(side_[0].proxy->error().ok()) << side_[0].proxy->error().ToString();
  EXPECT_TRUE(side_[1].proxy->error().ok()) << side_[1].proxy->error().ToString();
}

TEST_P(DeviceRingTest, RingFull) {
  Connect(/*depth=*/2, /*ring_entries=*/2);
  if (::testing::Test::IsSkipped() || HasFatalFailure()) return;
  Side& s = side_[0];
  // Two kernels claimed the ring's two entries and have not filled them yet.
  uint64_t first = 0, second = 0, third = 0;
  ASSERT_TRUE(s.Claim(0, &first));
  ASSERT_TRUE(s.Claim(1, &second));
  EXPECT_FALSE(s.Claim(1, &third));
  EXPECT_EQ(s.error_word, (uint64_t{3} << 56) | (uint64_t{1} << 24) | 1);
  const Status e = DeviceWaitGaveUp(s.error_word, std::chrono::milliseconds(300));
  EXPECT_EQ(e.code(), StatusCode::kDeadlineExceeded) << e.ToString();
  EXPECT_NE(e.message().find("rank 1"), std::string::npos) << e.ToString();
  EXPECT_NE(e.message().find("slot 1"), std::string::npos) << e.ToString();
  EXPECT_NE(e.message().find("ring"), std::string::npos) << e.ToString();
  // Once they fill them (two zero-length sends), the proxy takes both and the third has room.
  s.Fill(first, kDeviceSend, 0, uint64_t{1} << 32);
  s.Fill(second, kDeviceSend, 1, uint64_t{1} << 32);
  s.error_word = 0;
  EXPECT_TRUE(s.WaitAtLeast(s.consumed, third + 1 - s.ring.size(), false, 3, 1));
  EXPECT_TRUE(s.proxy->error().ok()) << s.proxy->error().ToString();
}

// One bad descriptor per run (the proxy keeps its first error), after `valid` good zero-length
// sends to slot 0.
struct BadCase {
  uint64_t kind;
  uint64_t peer_index;
  int slot;
  uint64_t message;
  int valid;
  StatusCode code;
  const char* says;
};
const BadCase kBadCases[] = {
    {7, 0, 0, 0, 0, StatusCode::kInvalidArgument, "kind 7 is neither a send"},
    {kDeviceSend, 3, 0, uint64_t{1} << 32, 0, StatusCode::kInvalidArgument,
     "peer index 3 outside [0, 1)"},
    {kDeviceSend, 0, 2, uint64_t{1} << 32, 0, StatusCode::kInvalidArgument,
     "slot 2 outside [0, 2)"},
    {kDeviceSend, 0, 1, (uint64_t{1} << 32) | (kSlotBytes + 1), 0, StatusCode::kInvalidArgument,
     "65537 bytes into a slot of 65536"},
    {kDeviceSend, 0, 0, uint64_t{2} << 32, 0, StatusCode::kInvalidArgument,
     "generation 2 where the next is 1"},
    {kDeviceSend, 0, 0, uint64_t{2} << 32, 1, StatusCode::kFailedPrecondition, "(no credit)"},
    {kDeviceRelease, 0, 1, uint64_t{1} << 32, 0, StatusCode::kInvalidArgument,
     "release of generation 1 where the next is 1 and 0 arrived"},
};

using DeviceRingBadTest = DeviceRingTest;

TEST_P(DeviceRingBadTest, BadDescriptor) {
  Connect(/*depth=*/2, /*ring_entries=*/4);
  if (::testing::Test::IsSkipped() || HasFatalFailure()) return;
  Side& s = side_[0];
  const BadCase& c = kBadCases[GetParam()];
  for (int n = 0; n < c.valid; ++n) ASSERT_TRUE(s.Put(kDeviceSend, 0, uint64_t(n + 1) << 32));
  uint64_t ticket = 0;
  ASSERT_TRUE(s.Claim(c.slot, &ticket));
  s.Fill(ticket, c.kind, c.slot, c.message, c.peer_index);
  const Status e = ErrorOf(0);
  EXPECT_EQ(e.code(), c.code) << e.ToString();
  EXPECT_NE(e.message().find(c.says), std::string::npos) << e.ToString();
  EXPECT_NE(e.message().find("bad descriptor"), std::string::npos) << e.ToString();
  if (c.peer_index == 0 && c.slot < 2) {
    EXPECT_NE(e.message().find("peer rank 1"), std::string::npos) << e.ToString();
  }
}

TEST_P(DeviceRingTest, CreditTimeout) {
  Connect(/*depth=*/1, /*ring_entries=*/4);
  if (::testing::Test::IsSkipped() || HasFatalFailure()) return;
  Side& s = side_[0];
  // The first use of the slot needs no credit; the second waits for a release that never comes.
  ASSERT_TRUE(s.Send(64, Pattern));
  EXPECT_FALSE(s.Send(64, Pattern));
  const Status e = DeviceWaitGaveUp(s.error_word, std::chrono::milliseconds(300));
  EXPECT_EQ(e.code(), StatusCode::kDeadlineExceeded) << e.ToString();
  EXPECT_NE(e.message().find("peer rank 1 to release slot 0"), std::string::npos) << e.ToString();
  // The message did arrive, and nothing is wrong on the proxies' side.
  EXPECT_TRUE(side_[1].WaitAtLeast(side_[1].arrival[0], 1, true, 2, 0));
  EXPECT_TRUE(side_[0].proxy->error().ok()) << side_[0].proxy->error().ToString();
  EXPECT_TRUE(side_[1].proxy->error().ok()) << side_[1].proxy->error().ToString();
}

// "verbs/..." so that scripts/test-verbs-vm.sh picks it up.
INSTANTIATE_TEST_SUITE_P(verbs, DeviceRingTest, ::testing::Values(0));
INSTANTIATE_TEST_SUITE_P(verbs, DeviceRingBadTest,
                         ::testing::Range(0, static_cast<int>(std::size(kBadCases))));

}  // namespace
}  // namespace m2n::transport::verbs

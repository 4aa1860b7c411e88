// The verbs stream path's proxy thread (transports/verbs/stream.h) over real RC queue pairs, with
// the GPU's part played by test threads: they write the ready / waiting / freed words and wait on
// the sent / arrived words exactly as cuStreamWriteValue32 / cuStreamWaitValue32 would. The proxy
// cannot tell host memory from device memory, so this runs where there is an RDMA device and no
// GPU: in the Soft-RoCE VM (scripts/test-verbs-vm.sh). Skipped, with the reason, elsewhere.
//   Messages: 60 messages through 2 slots, the sender as far ahead as the credits let it, sizes
//     0 B to 64 KB, every byte and length checked, one flush per arrival.
//   CreditTimeout / ArrivalTimeout: a send with no credit and a wait with no message give up after
//     the timeout, let the "stream" go on and report DEADLINE_EXCEEDED naming the peer and slot.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "transports/verbs/memory.h"
#include "transports/verbs/stream.h"
#include "verbs_pair.h"

namespace m2n::transport::verbs {
namespace {

using testing::PairEnd;
using testing::Pattern;
using testing::SizeOf;
using Clock = std::chrono::steady_clock;

// One side of an in-process pair: its end of the connection, its words, its proxy.
struct Side : PairEnd {
  std::vector<uint32_t> words;
  std::unique_ptr<StreamProxy> proxy;
  uint32_t Load(StreamWord kind, int slot, int depth) {
    return std::atomic_ref<uint32_t>(words[StreamProxy::WordIndex(kind, 1, depth, 0, slot)])
        .load(std::memory_order_acquire);
  }
  void Store(StreamWord kind, int slot, int depth, uint32_t value) {
    std::atomic_ref<uint32_t>(words[StreamProxy::WordIndex(kind, 1, depth, 0, slot)])
        .store(value, std::memory_order_release);
  }
  // What cuStreamWaitValue32(GEQ) does, bounded for the test.
  bool WaitFor(StreamWord kind, int slot, int depth, uint32_t generation,
               std::chrono::milliseconds limit) {
    const auto deadline = Clock::now() + limit;
    while (static_cast<int32_t>(Load(kind, slot, depth) - generation) < 0) {
      if (Clock::now() > deadline) return false;
      std::this_thread::yield();
    }
    return true;
  }
};

class StreamProxyTest : public testing::VerbsPairTest {
 protected:
  // Sender side 0 (rank 0) and receiver side 1 (rank 1), connected, proxies started.
  void Connect(int depth, std::chrono::milliseconds timeout) {
    depth_ = depth;
    for (int i = 0; i < 2; ++i) {
      MakeEnd(side_[i], i);
      if (HasFatalFailure()) return;
      ASSERT_EQ(side_[i].endpoint->num_qps(), kMaxQps);
      side_[i].words.assign(StreamProxy::WordCount(1, depth), 0);
    }
    ConnectEnds(side_[0], side_[1], depth);
    if (HasFatalFailure()) return;
    for (int i = 0; i < 2; ++i) {
      StreamProxy::Settings settings;
      settings.slot_depth = depth;
      settings.timeout = timeout;
      if (i == 1) settings.flush = [this] { flushes_.fetch_add(1); };
      auto proxy = StreamProxy::Start(side_[i].stream_cq, {{1 - i, side_[i].endpoint.get()}},
                                      side_[i].words.data(), settings);
      ASSERT_TRUE(proxy.ok()) << proxy.status().ToString();
      side_[i].proxy = std::move(proxy).value();
    }
  }

  Side side_[2];
  int depth_ = 1;
  std::atomic<int> flushes_{0};
};

TEST_P(StreamProxyTest, Messages) {
  constexpr int kDepth = 2;
  constexpr int kMessages = 60;
  constexpr size_t kSlotBytes = 65536;
  Connect(kDepth, std::chrono::milliseconds(20000));
  if (::testing::Test::IsSkipped() || HasFatalFailure()) return;
  // The sender writes from one buffer per slot; the receiver's slots are one region.
  std::vector<std::byte> source(kDepth * kSlotBytes), slots(kDepth * kSlotBytes);
  auto src = VerbsRegion::Register(ctx_, source.data(), source.size(), MemoryKind::kHost);
  auto dst = VerbsRegion::Register(ctx_, slots.data(), slots.size(), MemoryKind::kHost);
  ASSERT_TRUE(src.ok() && dst.ok());
  auto packed = (*dst)->PackRemoteKey();
  ASSERT_TRUE(packed.ok());
  auto remote = VerbsRemoteRegion::Unpack(ctx_.get(), 1, *packed);
  ASSERT_TRUE(remote.ok());

  std::atomic<int> wrong{0};
  std::thread receiver([&] {
    Side& r = side_[1];
    for (int n = 0; n < kMessages; ++n) {
      const int slot = n % kDepth;
      const uint32_t generation = r.proxy->NextWait(0, slot);
      r.Store(kWaiting, slot, kDepth, generation);
      if (!r.WaitFor(kArrived, slot, kDepth, generation, std::chrono::seconds(20))) {
        wrong += 1000;
        return;
      }
      const size_t length = SizeOf(n);
      if (r.Load(kLength, slot, kDepth) != length) ++wrong;
      for (size_t i = 0; i < length; ++i) {
        if (slots[slot * kSlotBytes + i] != Pattern(n, i)) {
          ++wrong;
          break;
        }
      }
      r.Store(kFreed, slot, kDepth, r.proxy->NextRelease(0, slot));
    }
  });
  Side& s = side_[0];
  for (int n = 0; n < kMessages; ++n) {
    const int slot = n % kDepth;
    const size_t length = SizeOf(n);
    // The "producer": fills the source before marking it ready (stream order).
    for (size_t i = 0; i < length; ++i) source[slot * kSlotBytes + i] = Pattern(n, i);
    StreamDescriptor d;
    d.local_address = reinterpret_cast<uintptr_t>(source.data() + slot * kSlotBytes);
    d.lkey = (*src)->lkey();
    d.remote_address = (*remote)->address() + slot * kSlotBytes;
    d.rkey = (*remote)->rkey();
    d.length = static_cast<uint32_t>(length);
    const uint32_t generation = s.proxy->QueueSend(0, slot, d);
    s.Store(kReady, slot, kDepth, generation);
    // The stream is held until the write completed: only then may the source be reused.
    ASSERT_TRUE(s.WaitFor(kSent, slot, kDepth, generation, std::chrono::seconds(20)))
        << "message " << n;
  }
  receiver.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(flushes_.load(), kMessages);
  EXPECT_TRUE(side_[0].proxy->error().ok()) << side_[0].proxy->error().ToString();
  EXPECT_TRUE(side_[1].proxy->error().ok()) << side_[1].proxy->error().ToString();
}

TEST_P(StreamProxyTest, CreditTimeout) {
  Connect(/*depth=*/1, std::chrono::milliseconds(300));
  if (::testing::Test::IsSkipped() || HasFatalFailure()) return;
  std::vector<std::byte> slots(64);
  auto dst = VerbsRegion::Register(ctx_, slots.data(), slots.size(), MemoryKind::kHost);
  ASSERT_TRUE(dst.ok());
  auto remote = VerbsRemoteRegion::Unpack(ctx_.get(), 1, *(*dst)->PackRemoteKey());
  ASSERT_TRUE(remote.ok());
  StreamDescriptor d;  // zero-length writes: the immediate alone
  d.remote_address = (*remote)->address();
  d.rkey = (*remote)->rkey();
  Side& s = side_[0];
  // The first use of the slot needs no credit; the second waits for a release that never comes.
  for (int n = 0; n < 2; ++n) {
    const uint32_t generation = s.proxy->QueueSend(0, 0, d);
    s.Store(kReady, 0, 1, generation);
    ASSERT_TRUE(s.WaitFor(kSent, 0, 1, generation, std::chrono::seconds(10)))
        << "send " << n << " never let go";
  }
  const Status e = s.proxy->error();
  EXPECT_EQ(e.code(), StatusCode::kDeadlineExceeded) << e.ToString();
  EXPECT_NE(e.message().find("peer rank 1"), std::string::npos) << e.ToString();
  EXPECT_NE(e.message().find("release slot 0"), std::string::npos) << e.ToString();
}

TEST_P(StreamProxyTest, ArrivalTimeout) {
  Connect(/*depth=*/2, std::chrono::milliseconds(300));
  if (::testing::Test::IsSkipped() || HasFatalFailure()) return;
  Side& r = side_[1];
  const uint32_t generation = r.proxy->NextWait(0, 1);
  r.Store(kWaiting, 1, 2, generation);
  ASSERT_TRUE(r.WaitFor(kArrived, 1, 2, generation, std::chrono::seconds(10)))
      << "the wait never let go";
  const Status e = r.proxy->error();
  EXPECT_EQ(e.code(), StatusCode::kDeadlineExceeded) << e.ToString();
  EXPECT_NE(e.message().find("peer rank 0"), std::string::npos) << e.ToString();
  EXPECT_NE(e.message().find("slot 1"), std::string::npos) << e.ToString();
  EXPECT_TRUE(side_[0].proxy->error().ok());
}

// "verbs/..." so that scripts/test-verbs-vm.sh picks it up.
INSTANTIATE_TEST_SUITE_P(verbs, StreamProxyTest, ::testing::Values(0));

}  // namespace
}  // namespace m2n::transport::verbs

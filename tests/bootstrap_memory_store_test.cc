// InMemoryStoreTest: the in-memory bootstrap store that tests use: set/get/add/wait, bad keys,
// deadlines, and threads meeting at barriers.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bootstrap/store.h"
#include "bootstrap/tcp_store.h"
#include "bootstrap/wire.h"
#include "sanitized.h"
#include "bootstrap_test_util.h"

namespace m2n::bootstrap {
namespace {

using namespace std::chrono_literals;
using wire::Message;
using wire::MessageType;

TEST(InMemoryStoreTest, SetGetAddWait) {
  std::unique_ptr<Store> store = NewInMemoryStore();
  ASSERT_OK(store->SetString("a", "alpha"));
  StatusOr<std::string> a = store->GetString("a", Deadline::AfterMs(1000));
  ASSERT_OK(a.status());
  EXPECT_EQ(*a, "alpha");
  EXPECT_EQ(*store->Add("n", 5), 5);
  EXPECT_EQ(*store->Add("n", -7), -2);
  EXPECT_EQ(*store->GetString("n", Deadline::AfterMs(1000)), "-2");  // counters read as decimal
  const std::string keys[] = {"a", "n"};
  EXPECT_OK(store->Wait(keys, Deadline::AfterMs(1000)));
  EXPECT_TRUE(store->DeadRanks()->empty());
  EXPECT_OK(store->Goodbye());
}

TEST(InMemoryStoreTest, RejectsBadKeysAndNonCounters) {
  std::unique_ptr<Store> store = NewInMemoryStore();
  EXPECT_EQ(store->SetString("", "x").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store->SetString(std::string(1025, 'k'), "x").code(), StatusCode::kInvalidArgument);
  ASSERT_OK(store->SetString("text", "hello"));
  EXPECT_EQ(store->Add("text", 1).status().code(), StatusCode::kInvalidArgument);
  ASSERT_OK(store->Add("big", INT64_MAX).status());
  EXPECT_EQ(store->Add("big", 1).status().code(), StatusCode::kOutOfRange);
}

TEST(InMemoryStoreTest, GetAndWaitTimeOutWithinTheirDeadline) {
  std::unique_ptr<Store> store = NewInMemoryStore();
  auto start = Clock::now();
  StatusOr<Bytes> missing = store->Get("never", Deadline::AfterMs(150));
  EXPECT_EQ(missing.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_GE(MsSince(start), 140);
  EXPECT_LT(MsSince(start), 1500);
  ASSERT_OK(store->SetString("here", "1"));
  const std::string keys[] = {"here", "gone"};
  Status waited = store->Wait(keys, Deadline::AfterMs(100));
  EXPECT_EQ(waited.code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(Contains(waited.message(), "'gone'")) << waited.ToString();
  EXPECT_FALSE(Contains(waited.message(), "'here'")) << waited.ToString();
}

TEST(InMemoryStoreTest, ThreadsCountWaitAndMeetAtBarriers) {
  std::unique_ptr<Store> store = NewInMemoryStore();
  constexpr int kThreads = 8;
  constexpr int kAdds = 500;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kAdds; ++i) {
        if (!store->Add("count", 1).ok()) ++failures;
      }
      if (!store->SetString("done/" + std::to_string(t), "1").ok()) ++failures;
      for (int round = 0; round < 3; ++round) {
        if (!store->Barrier("round" + std::to_string(round), kThreads, Deadline::AfterMs(10000))
                 .ok())
          ++failures;
      }
    });
  }
  // The main thread waits for every thread's key, set from other threads while it waits.
  std::vector<std::string> keys;
  for (int t = 0; t < kThreads; ++t) keys.push_back("done/" + std::to_string(t));
  EXPECT_OK(store->Wait(keys, Deadline::AfterMs(10000)));
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(*store->Add("count", 0), kThreads * kAdds);
}

TEST(InMemoryStoreTest, BarrierTimesOutSayingHowManyArrived) {
  std::unique_ptr<Store> store = NewInMemoryStore();
  Status lonely = store->Barrier("b", 3, Deadline::AfterMs(100));
  EXPECT_EQ(lonely.code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(Contains(lonely.message(), "1 of 3 ranks arrived")) << lonely.ToString();
}

}  // namespace
}  // namespace m2n::bootstrap

// TcpStoreClientTest: the TCP store's client against a fake store that follows a script: a late
// answer, another protocol version, garbage or silence.
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

TEST(TcpStoreClientTest, AnAnswerThatComesTooLateIsSkippedByTheNextCall) {
  FakeStore fake([](int fd) {
    if (!FakeHandshake(fd)) return;
    SendAll(fd, ValidFrame(wire::HelloOk{}));
    if (!ReadOneFrame(fd, 2000ms)) return;  // GET: answered long after the client gave up
    std::this_thread::sleep_for(std::chrono::milliseconds(100 + kStoreReplyGraceMs + 200));
    SendAll(fd, ValidFrame(wire::ValueReply{ToBytes("stale")}));
    if (!ReadOneFrame(fd, 2000ms)) return;  // ADD
    SendAll(fd, ValidFrame(wire::IntReply{41}));
  });
  StatusOr<std::unique_ptr<Store>> client = ConnectRank(fake.port(), 1, 2);
  ASSERT_OK(client.status());
  auto start = Clock::now();
  StatusOr<Bytes> late = (*client)->Get("k", Deadline::AfterMs(100));
  EXPECT_EQ(late.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_LE(MsSince(start), 100 + kStoreReplyGraceMs + 150);
  StatusOr<int64_t> count = (*client)->Add("n", 1);
  ASSERT_OK(count.status());
  EXPECT_EQ(*count, 41) << "the stale VALUE must not be taken as the answer to ADD";
}

TEST(TcpStoreClientTest, AStoreSpeakingAnotherVersionIsFailedPrecondition) {
  FakeStore fake([](int fd) {
    if (!FakeHandshake(fd)) return;
    Bytes answer = ValidFrame(wire::HelloOk{});
    answer[4] = std::byte{3};
    SendAll(fd, answer);
  });
  StatusOr<std::unique_ptr<Store>> client = ConnectRank(fake.port(), 1, 2);
  EXPECT_EQ(client.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(
      Contains(client.status().message(), "peer speaks protocol version 3, this build speaks 2"))
      << client.status().ToString();
}

TEST(TcpStoreClientTest, AStoreThatSendsGarbageOrNothingIsBounded) {
  {
    FakeStore fake([](int fd) {
      if (!ReadOneFrame(fd, 2000ms)) return;
      SendAll(fd, ToBytes("HTTP/1.1 400 Bad Request\r\n\r\n"));
    });
    StatusOr<std::unique_ptr<Store>> client = ConnectRank(fake.port(), 1, 2);
    EXPECT_EQ(client.status().code(), StatusCode::kDataLoss) << client.status().ToString();
  }
  {
    // Accepts, reads HELLO, never answers: the connect deadline bounds the wait.
    FakeStore fake([](int fd) { ReadUntilClosed(fd, 2000ms); });
    auto start = Clock::now();
    StatusOr<std::unique_ptr<Store>> client = ConnectRank(fake.port(), 1, 2, /*timeout_ms=*/300);
    EXPECT_EQ(client.status().code(), StatusCode::kDeadlineExceeded) << client.status().ToString();
    EXPECT_LT(MsSince(start), 1000);
  }
}

}  // namespace
}  // namespace m2n::bootstrap

// TcpStoreHardeningTest: what a stranger or a misbehaving client can cost the store's server: a
// silent stranger, a large request before HELLO, many strangers, a client that never reads its
// answers, and a store announcing an oversize or truncated answer.
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

// A standalone server for `world_size` ranks of kJob whose strangers get `hello_timeout`.
std::unique_ptr<TcpStoreServer> StartServer(int world_size,
                                            std::chrono::milliseconds hello_timeout) {
  TcpStoreOptions options = RankOptions(0, 0, world_size);
  options.hello_timeout = hello_timeout;
  StatusOr<std::unique_ptr<TcpStoreServer>> server = StartTcpStoreServer(options);
  EXPECT_TRUE(server.ok()) << server.status().ToString();
  return server.ok() ? std::move(*server) : nullptr;
}

// The ERROR a refused connection got before it was closed (nullopt: none, or not closed in time).
std::optional<wire::ErrorReply> RefusalOf(int fd, std::chrono::milliseconds timeout) {
  Drained answer = ReadUntilClosed(fd, timeout);
  if (!answer.closed) return std::nullopt;
  StatusOr<Message> message = wire::DecodeFrame(answer.bytes);
  if (!message.ok() || !std::holds_alternative<wire::ErrorReply>(*message)) return std::nullopt;
  return std::get<wire::ErrorReply>(*message);
}

// Resident set of this process in bytes, from /proc/self/statm.
size_t ResidentBytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * static_cast<size_t>(sysconf(_SC_PAGESIZE)) : 0;
}

TEST(TcpStoreHardeningTest, AStrangerThatSaysNothingOrTooLittleIsClosedAfterTheHelloTimeout) {
  std::unique_ptr<TcpStoreServer> server = StartServer(2, 300ms);
  ASSERT_NE(server, nullptr);
  int silent = RawConnect(server->port());
  int truncated = RawConnect(server->port());
  ASSERT_GE(silent, 0);
  ASSERT_GE(truncated, 0);
  Bytes half_hello = ValidFrame(wire::Hello{kJob, 1, 2, TestNonce()});
  half_hello.resize(half_hello.size() - 3);
  ASSERT_TRUE(SendAll(truncated, half_hello));

  auto start = Clock::now();
  std::optional<wire::ErrorReply> silent_error = RefusalOf(silent, 3000ms);
  ASSERT_TRUE(silent_error.has_value()) << "the silent stranger is still connected after 3 s";
  EXPECT_EQ(silent_error->code, StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(
      Contains(silent_error->text, "no HELLO within 300 ms of connecting (0 bytes received)"))
      << silent_error->text;
  EXPECT_GE(MsSince(start), 250);
  std::optional<wire::ErrorReply> truncated_error = RefusalOf(truncated, 3000ms);
  ASSERT_TRUE(truncated_error.has_value());
  EXPECT_TRUE(Contains(truncated_error->text, "no HELLO within 300 ms")) << truncated_error->text;
  EXPECT_TRUE(
      Contains(truncated_error->text, std::to_string(half_hello.size()) + " bytes received"))
      << truncated_error->text;
  close(silent);
  close(truncated);

  // The ranks themselves, which say HELLO at once, are unaffected.
  StatusOr<std::unique_ptr<Store>> rank0 = ConnectRank(server->port(), 0, 2);
  StatusOr<std::unique_ptr<Store>> rank1 = ConnectRank(server->port(), 1, 2);
  ASSERT_OK(rank0.status());
  ASSERT_OK(rank1.status());
  std::this_thread::sleep_for(500ms);  // longer than the HELLO timeout: a rank is not a stranger
  EXPECT_OK((*rank0)->SetString("k", "v"));
  EXPECT_EQ(*(*rank1)->GetString("k", Deadline::AfterMs(2000)), "v");
  EXPECT_TRUE((*rank0)->DeadRanks()->empty());
}

TEST(TcpStoreHardeningTest, AStrangersLargeRequestIsRefusedFromItsHeaderAlone) {
  std::unique_ptr<TcpStoreServer> server = StartServer(2, 10000ms);
  ASSERT_NE(server, nullptr);
  // A SET announcing a 60 MiB body (within the SET limit): before, the server read the whole
  // body before it noticed there was no HELLO; now the header is enough.
  for (MessageType type : {MessageType::kSet, MessageType::kWait, MessageType::kGoodbye}) {
    int fd = RawConnect(server->port());
    ASSERT_GE(fd, 0);
    Bytes header = ValidFrame(wire::HelloOk{});
    header[6] = static_cast<std::byte>(static_cast<uint16_t>(type));
    PutU32At(header, 8,
             static_cast<uint32_t>(std::min<size_t>(size_t{60} << 20, wire::MaxBodyBytes(type))));
    ASSERT_TRUE(SendAll(fd, header));
    auto start = Clock::now();
    std::optional<wire::ErrorReply> error = RefusalOf(fd, 3000ms);
    ASSERT_TRUE(error.has_value()) << wire::MessageTypeName(type);
    EXPECT_EQ(error->code, StatusCode::kFailedPrecondition);
    EXPECT_TRUE(Contains(error->text, "expected HELLO first, got " + wire::MessageTypeName(type)))
        << error->text;
    EXPECT_LT(MsSince(start), 2000) << "refused at once, not after the HELLO timeout";
    close(fd);
  }
  // A HELLO that announces more than a HELLO may hold is refused from its header too.
  int fd = RawConnect(server->port());
  ASSERT_GE(fd, 0);
  Bytes hello = ValidFrame(wire::Hello{kJob, 1, 2, TestNonce()});
  PutU32At(hello, 8, static_cast<uint32_t>(wire::MaxBodyBytes(MessageType::kHello) + 1));
  ASSERT_TRUE(SendAll(fd, std::span<const std::byte>(hello).first(wire::kHeaderBytes)));
  std::optional<wire::ErrorReply> error = RefusalOf(fd, 3000ms);
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code, StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(error->text, "HELLO body of")) << error->text;
  close(fd);
}

TEST(TcpStoreHardeningTest, ManyStrangersDoNotStallTheRanks) {
  constexpr int kWorld = 4;
  std::unique_ptr<TcpStoreServer> server = StartServer(kWorld, 10000ms);
  ASSERT_NE(server, nullptr);
  const int port = server->port();
  // Strangers of every kind stay connected while the ranks work: silent, mid-frame, another
  // job's rank, another protocol version, and noise.
  std::vector<int> strangers;
  std::mt19937 rng(11);
  for (int i = 0; i < 60; ++i) {
    int fd = RawConnect(port);
    ASSERT_GE(fd, 0);
    strangers.push_back(fd);
    Bytes bytes;
    switch (i % 5) {
      case 0:
        break;  // silent
      case 1:
        bytes = ValidFrame(wire::Hello{kJob, 1, kWorld, TestNonce()});
        bytes.resize(bytes.size() / 2);
        break;
      case 2:
        bytes = ValidFrame(wire::Hello{"another-job", i % kWorld, kWorld, TestNonce()});
        break;
      case 3:
        bytes = ValidFrame(wire::Hello{kJob, 2, kWorld, TestNonce()});
        bytes[4] = std::byte{7};
        break;
      case 4:
        bytes.resize(4096);
        for (auto& b : bytes) b = static_cast<std::byte>(rng());
        break;
    }
    if (!bytes.empty()) SendAll(fd, bytes);  // the server may refuse before taking all of it
  }
  std::vector<int> results(kWorld, -1);
  std::vector<std::thread> ranks;
  auto start = Clock::now();
  for (int r = 0; r < kWorld; ++r) {
    ranks.emplace_back([&, r] {
      StatusOr<std::unique_ptr<Store>> store = ConnectRank(port, r, kWorld);
      if (!store.ok()) {
        ADD_FAILURE() << "rank " << r << ": " << store.status().ToString();
        return;
      }
      results[r] = RankWorkload(**store, r, kWorld);
      if (results[r] == 0 && !(*store)->Goodbye().ok()) results[r] = 100;
    });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < kWorld; ++r) EXPECT_EQ(results[r], 0) << "rank " << r;
  EXPECT_LT(MsSince(start), 8000);
  for (int fd : strangers) close(fd);
}

// Resident memory is not comparable under a sanitizer (ASan's quarantine, shadow memory): there
// the tests that bound it check everything else.
using ::m2n::testing::kSanitized;

TEST(TcpStoreHardeningTest, AClientThatNeverReadsItsAnswersCannotGrowTheServerWithoutBound) {
  std::unique_ptr<TcpStoreServer> server = StartServer(2, 10000ms);
  ASSERT_NE(server, nullptr);
  StatusOr<std::unique_ptr<Store>> rank0 = ConnectRank(server->port(), 0, 2);
  ASSERT_OK(rank0.status());
  // Under a sanitizer (no memory bound checked, every copy slow) 4 MiB answers: still far more
  // than the socket buffers hold, so the server must hold back; 16 MiB ones took over a minute
  // under TSan on a loaded 2-core machine and missed the per-answer wait.
  constexpr size_t kValue = kSanitized ? size_t{4} << 20 : size_t{16} << 20;
  ASSERT_OK((*rank0)->Set("big", Bytes(kValue, std::byte{0x5a})));

  // Rank 1 by hand: HELLO, then 40 GETs of the 16 MiB value (640 MiB of answers) without reading.
  int fd = RawJoin(server->port(), 1, 2);
  ASSERT_GE(fd, 0);
  const size_t before = ResidentBytes();
  constexpr int kGets = 40;
  Bytes gets;
  for (int i = 0; i < kGets; ++i) {
    Bytes get = ValidFrame(wire::GetRequest{"big", 0});
    gets.insert(gets.end(), get.begin(), get.end());
  }
  ASSERT_TRUE(SendAll(fd, gets));  // small: fits the socket buffers
  // The server keeps serving others meanwhile.
  for (int i = 0; i < 20; ++i) {
    ASSERT_OK((*rank0)->Add("n", 1).status());
    std::this_thread::sleep_for(10ms);
  }
  const size_t during = ResidentBytes();
  if (!kSanitized) {
    EXPECT_LT(during, before + (size_t{200} << 20))
        << "the server buffered " << ((during - before) >> 20) << " MiB of answers nobody reads";
  }

  // Once it reads, every answer comes, whole and in order.
  for (int i = 0; i < kGets; ++i) {
    std::optional<Message> value = ReadOneFrame(fd, kSanitized ? 60000ms : 10000ms);
    ASSERT_TRUE(value.has_value()) << "answer " << i;
    ASSERT_TRUE(std::holds_alternative<wire::ValueReply>(*value)) << "answer " << i;
    EXPECT_EQ(std::get<wire::ValueReply>(*value).value.size(), kValue);
  }
  close(fd);
}

TEST(TcpStoreHardeningTest, AStoreAnnouncingAnOversizeOrTruncatedAnswerIsRefused) {
  {
    // The header alone is refused: the client does not wait for (or allocate) the body.
    FakeStore fake([](int fd) {
      if (!FakeHandshake(fd)) return;
      Bytes answer = ValidFrame(wire::HelloOk{});
      PutU32At(answer, 8, 1u << 20);
      SendAll(fd, answer);
      ReadUntilClosed(fd, 3000ms);
    });
    auto start = Clock::now();
    StatusOr<std::unique_ptr<Store>> client = ConnectRank(fake.port(), 1, 2, /*timeout_ms=*/2000);
    EXPECT_EQ(client.status().code(), StatusCode::kDataLoss) << client.status().ToString();
    EXPECT_TRUE(Contains(client.status().message(),
                         "HELLO_OK body of 1048576 bytes exceeds the maximum of 0"))
        << client.status().ToString();
    EXPECT_LT(MsSince(start), 1500);
  }
  {
    // Half an answer, then the store goes: kUnavailable, not a hang or a partial value.
    FakeStore fake([](int fd) {
      if (!FakeHandshake(fd)) return;
      SendAll(fd, ValidFrame(wire::HelloOk{}));
      if (!ReadOneFrame(fd, 2000ms)) return;
      Bytes value = ValidFrame(wire::ValueReply{ToBytes("0123456789")});
      value.resize(value.size() - 4);
      SendAll(fd, value);
    });
    StatusOr<std::unique_ptr<Store>> client = ConnectRank(fake.port(), 1, 2);
    ASSERT_OK(client.status());
    StatusOr<Bytes> value = (*client)->Get("k", Deadline::AfterMs(2000));
    EXPECT_EQ(value.status().code(), StatusCode::kUnavailable) << value.status().ToString();
  }
}

}  // namespace
}  // namespace m2n::bootstrap

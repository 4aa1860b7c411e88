// TcpStoreTest: the TCP store with its clients in threads and in forked processes, killed, timed
// out, refused (another job, a wrong world size, a duplicate rank), next to strangers sending
// garbage, and its server gone. Every wait is bounded; a child that outlives its bound is killed.
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

// Rank 0: serves on a port the kernel picks.
std::unique_ptr<Store> ServeRank0(int world_size) {
  TcpStoreOptions options = RankOptions(0, 0, world_size);
  options.serve = true;
  StatusOr<std::unique_ptr<Store>> store = ConnectTcpStore(options, Deadline::AfterMs(5000));
  EXPECT_TRUE(store.ok()) << store.status().ToString();
  if (!store.ok()) return nullptr;
  EXPECT_GT(TcpStorePort(**store), 0);
  return std::move(*store);
}

// A port nobody listens on: bound, read, and closed again.
int UnusedPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// A fork()ed child running `body`, killed if it outlives its bound. Fork before any thread exists
// in the calling test: the child gets only the forking thread.
class Child {
 public:
  explicit Child(const std::function<int()>& body) {
    pid_ = fork();
    if (pid_ == 0) {
      alarm(60);  // a wedged child dies even if the parent forgets it
      int code = body();
      std::fflush(stderr);
      _exit(code);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  // The child's exit status (WEXITSTATUS), or -1 if it did not exit normally within `timeout`
  // (it is then killed).
  int Join(std::chrono::milliseconds timeout) {
    Deadline deadline = Deadline::After(timeout);
    int status = 0;
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (deadline.Expired()) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        reaped_ = true;
        return -1;
      }
      std::this_thread::sleep_for(5ms);
    }
    reaped_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
};

// A pipe carrying one int from parent to children (the port), or a byte back ("ready").
class Pipe {
 public:
  Pipe() {
    if (pipe(fds_) != 0) fds_[0] = fds_[1] = -1;
  }
  ~Pipe() {
    for (int fd : fds_) {
      if (fd >= 0) close(fd);
    }
  }
  bool WriteInt(int v) { return write(fds_[1], &v, sizeof(v)) == sizeof(v); }
  // -1 when nothing arrives within `timeout`.
  int ReadInt(std::chrono::milliseconds timeout) {
    pollfd p{fds_[0], POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(timeout.count())) != 1) return -1;
    int v = -1;
    return read(fds_[0], &v, sizeof(v)) == sizeof(v) ? v : -1;
  }

 private:
  int fds_[2];
};

// The child's side of a check: prints what failed and says so by exit code.
#define CHILD_CHECK(cond, code)                                                                  \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      std::fprintf(stderr, "child %d: check failed: %s (line %d)\n", static_cast<int>(getpid()), \
                   #cond, __LINE__);                                                             \
      return code;                                                                               \
    }                                                                                            \
  } while (0)

// ---------------------------------------------------------------------------------------------
// TCP store
// ---------------------------------------------------------------------------------------------

TEST(TcpStoreTest, ClientsInThreads) {
  constexpr int kWorld = 4;
  std::unique_ptr<Store> rank0 = ServeRank0(kWorld);
  ASSERT_NE(rank0, nullptr);
  const int port = TcpStorePort(*rank0);
  std::vector<int> results(kWorld, -1);
  std::vector<std::thread> threads;
  for (int rank = 1; rank < kWorld; ++rank) {
    threads.emplace_back([&, rank] {
      StatusOr<std::unique_ptr<Store>> store = ConnectRank(port, rank, kWorld);
      if (!store.ok()) {
        ADD_FAILURE() << store.status().ToString();
        return;
      }
      results[rank] = RankWorkload(**store, rank, kWorld);
      if (!(*store)->Goodbye().ok()) results[rank] = 100;
    });
  }
  results[0] = RankWorkload(*rank0, 0, kWorld);
  for (auto& t : threads) t.join();
  for (int rank = 0; rank < kWorld; ++rank) EXPECT_EQ(results[rank], 0) << "rank " << rank;
  StatusOr<std::vector<int>> dead = rank0->DeadRanks();
  ASSERT_OK(dead.status());
  EXPECT_TRUE(dead->empty());
}

TEST(TcpStoreTest, ClientsInForkedProcesses) {
  constexpr int kWorld = 4;
  // Children first, while this process has one thread; each waits for the port on its pipe.
  std::vector<std::unique_ptr<Pipe>> ports;
  std::vector<std::unique_ptr<Child>> children;
  for (int rank = 1; rank < kWorld; ++rank) {
    ports.push_back(std::make_unique<Pipe>());
    Pipe* port_pipe = ports.back().get();
    children.push_back(std::make_unique<Child>([port_pipe, rank] {
      int port = port_pipe->ReadInt(10000ms);
      CHILD_CHECK(port > 0, 10);
      StatusOr<std::unique_ptr<Store>> store = ConnectRank(port, rank, kWorld);
      if (!store.ok())
        std::fprintf(stderr, "child rank %d: %s\n", rank, store.status().ToString().c_str());
      CHILD_CHECK(store.ok(), 11);
      int step = RankWorkload(**store, rank, kWorld);
      CHILD_CHECK(step == 0, 20 + step);
      CHILD_CHECK((*store)->Goodbye().ok(), 12);
      return 0;
    }));
  }
  std::unique_ptr<Store> rank0 = ServeRank0(kWorld);
  ASSERT_NE(rank0, nullptr);
  for (auto& pipe : ports) ASSERT_TRUE(pipe->WriteInt(TcpStorePort(*rank0)));
  EXPECT_EQ(RankWorkload(*rank0, 0, kWorld), 0);
  for (size_t i = 0; i < children.size(); ++i)
    EXPECT_EQ(children[i]->Join(20000ms), 0) << "rank " << i + 1;
  StatusOr<std::vector<int>> dead = rank0->DeadRanks();
  ASSERT_OK(dead.status());
  EXPECT_TRUE(dead->empty()) << "ranks that said goodbye are not dead";
}

TEST(TcpStoreTest, KilledChildIsReportedDeadButAGoodbyeIsNot) {
  constexpr int kWorld = 3;
  Pipe port1, port2, ready;
  Child doomed([&] {
    int port = port1.ReadInt(10000ms);
    CHILD_CHECK(port > 0, 10);
    StatusOr<std::unique_ptr<Store>> store = ConnectRank(port, 1, kWorld);
    CHILD_CHECK(store.ok(), 11);
    CHILD_CHECK(ready.WriteInt(1), 12);
    pause();  // until SIGKILL (or the alarm)
    return 13;
  });
  Child polite([&] {
    int port = port2.ReadInt(10000ms);
    CHILD_CHECK(port > 0, 10);
    StatusOr<std::unique_ptr<Store>> store = ConnectRank(port, 2, kWorld);
    CHILD_CHECK(store.ok(), 11);
    CHILD_CHECK((*store)->Goodbye().ok(), 12);
    return 0;
  });
  std::unique_ptr<Store> rank0 = ServeRank0(kWorld);
  ASSERT_NE(rank0, nullptr);
  ASSERT_TRUE(port1.WriteInt(TcpStorePort(*rank0)));
  ASSERT_TRUE(port2.WriteInt(TcpStorePort(*rank0)));
  ASSERT_EQ(ready.ReadInt(10000ms), 1);
  EXPECT_EQ(polite.Join(10000ms), 0);
  EXPECT_TRUE(rank0->DeadRanks()->empty());

  ASSERT_EQ(kill(doomed.pid(), SIGKILL), 0);
  EXPECT_EQ(doomed.Join(10000ms), -1);  // killed, not exited
  std::vector<int> dead;
  Deadline deadline = Deadline::AfterMs(5000);
  while (dead.empty() && !deadline.Expired()) {
    StatusOr<std::vector<int>> now = rank0->DeadRanks();
    ASSERT_OK(now.status());
    dead = *now;
    if (dead.empty()) std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(dead, std::vector<int>{1});
}

TEST(TcpStoreTest, GetTimesOutWithinItsBoundNamingTheKey) {
  std::unique_ptr<Store> rank0 = ServeRank0(2);
  ASSERT_NE(rank0, nullptr);
  StatusOr<std::unique_ptr<Store>> rank1 = ConnectRank(TcpStorePort(*rank0), 1, 2);
  ASSERT_OK(rank1.status());
  auto start = Clock::now();
  StatusOr<Bytes> missing = (*rank1)->Get("never/set", Deadline::AfterMs(300));
  const int64_t elapsed = MsSince(start);
  EXPECT_EQ(missing.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(Contains(missing.status().message(), "still missing: 'never/set'"))
      << missing.status().ToString();
  EXPECT_GE(elapsed, 290);
  EXPECT_LE(elapsed, 300 + kStoreReplyGraceMs + 300);

  // The connection is still in step: later calls work.
  ASSERT_OK((*rank1)->SetString("k", "v"));
  EXPECT_EQ(*rank0->GetString("k", Deadline::AfterMs(1000)), "v");

  // WAIT names only the keys still missing.
  const std::string keys[] = {"k", "absent"};
  Status waited = (*rank1)->Wait(keys, Deadline::AfterMs(100));
  EXPECT_EQ(waited.code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(Contains(waited.message(), "still missing: 'absent'")) << waited.ToString();
}

TEST(TcpStoreTest, GetWaitsForAKeySetLater) {
  std::unique_ptr<Store> rank0 = ServeRank0(2);
  ASSERT_NE(rank0, nullptr);
  StatusOr<std::unique_ptr<Store>> rank1 = ConnectRank(TcpStorePort(*rank0), 1, 2);
  ASSERT_OK(rank1.status());
  std::thread setter([&] {
    std::this_thread::sleep_for(100ms);
    EXPECT_OK(rank0->SetString("late", "finally"));
  });
  StatusOr<std::string> late = (*rank1)->GetString("late", Deadline::AfterMs(5000));
  setter.join();
  ASSERT_OK(late.status());
  EXPECT_EQ(*late, "finally");
}

TEST(TcpStoreTest, CarriesLargeValuesAndReportsRequestErrors) {
  std::unique_ptr<Store> rank0 = ServeRank0(2);
  ASSERT_NE(rank0, nullptr);
  StatusOr<std::unique_ptr<Store>> rank1 = ConnectRank(TcpStorePort(*rank0), 1, 2);
  ASSERT_OK(rank1.status());
  Bytes big(8 << 20);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::byte>(i * 31 + 7);
  ASSERT_OK((*rank1)->Set("big", big));
  StatusOr<Bytes> back = rank0->Get("big", Deadline::AfterMs(5000));
  ASSERT_OK(back.status());
  EXPECT_TRUE(*back == big);

  // Errors of one request leave the connection usable.
  ASSERT_OK(rank0->SetString("text", "not a number"));
  EXPECT_EQ((*rank1)->Add("text", 1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*rank1)->SetString(std::string(1025, 'k'), "v").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(*(*rank1)->Add("n", 2), 2);
}

TEST(TcpStoreTest, UnreachableMasterIsDeadlineExceededNamingTheAddress) {
  const int port = UnusedPort();
  auto start = Clock::now();
  StatusOr<std::unique_ptr<Store>> store = ConnectRank(port, 1, 2, /*timeout_ms=*/500);
  const int64_t elapsed = MsSince(start);
  EXPECT_EQ(store.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(store.status().message(),
            "bootstrap: could not reach the store at 127.0.0.1:" + std::to_string(port) +
                " within 500 ms (last error: Connection refused)");
  EXPECT_GE(elapsed, 490);
  EXPECT_LT(elapsed, 1200);
}

TEST(TcpStoreTest, ClientRetriesUntilTheMasterComesUp) {
  const int port = UnusedPort();
  std::thread late_master([port] {
    std::this_thread::sleep_for(300ms);
    TcpStoreOptions options = RankOptions(port, 0, 2);
    options.serve = true;
    StatusOr<std::unique_ptr<Store>> rank0 = ConnectTcpStore(options, Deadline::AfterMs(5000));
    ASSERT_OK(rank0.status());
    EXPECT_EQ(TcpStorePort(**rank0), port);
    EXPECT_OK((*rank0)->Barrier("up", 2, Deadline::AfterMs(5000)));
    // Waits for rank 1's goodbye, so the store outlives rank 1's last Barrier.
    EXPECT_OK((*rank0)->Goodbye());
  });
  StatusOr<std::unique_ptr<Store>> rank1 = ConnectRank(port, 1, 2, 5000);
  EXPECT_OK(rank1.status());
  if (rank1.ok()) {
    EXPECT_OK((*rank1)->Barrier("up", 2, Deadline::AfterMs(5000)));
    EXPECT_OK((*rank1)->Goodbye());
  }
  late_master.join();
}

TEST(TcpStoreTest, TheServingRanksGoodbyeWaitsForTheOthers) {
  TcpStoreOptions options = RankOptions(0, 0, 3);
  options.serve = true;
  options.request_timeout = 2000ms;
  StatusOr<std::unique_ptr<Store>> rank0 = ConnectTcpStore(options, Deadline::AfterMs(5000));
  ASSERT_OK(rank0.status());
  const int port = TcpStorePort(**rank0);
  StatusOr<std::unique_ptr<Store>> rank1 = ConnectRank(port, 1, 3);
  StatusOr<std::unique_ptr<Store>> rank2 = ConnectRank(port, 2, 3);
  ASSERT_OK(rank1.status());
  ASSERT_OK(rank2.status());
  std::thread leaving([&] {
    std::this_thread::sleep_for(100ms);
    EXPECT_OK((*rank1)->Goodbye());
    std::this_thread::sleep_for(100ms);
    rank2->reset();  // gone without a goodbye: also gone
  });
  auto start = Clock::now();
  EXPECT_OK((*rank0)->Goodbye());
  EXPECT_GE(MsSince(start), 190);
  leaving.join();
  EXPECT_EQ(*(*rank0)->DeadRanks(), std::vector<int>{2});
}

TEST(TcpStoreTest, TheServingRanksGoodbyeIsBounded) {
  TcpStoreOptions options = RankOptions(0, 0, 2);
  options.serve = true;
  options.request_timeout = 300ms;
  StatusOr<std::unique_ptr<Store>> rank0 = ConnectTcpStore(options, Deadline::AfterMs(5000));
  ASSERT_OK(rank0.status());
  StatusOr<std::unique_ptr<Store>> rank1 = ConnectRank(TcpStorePort(**rank0), 1, 2);
  ASSERT_OK(rank1.status());
  auto start = Clock::now();
  Status bye = (*rank0)->Goodbye();
  EXPECT_EQ(bye.code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(Contains(bye.message(), "to say goodbye: 1")) << bye.ToString();
  EXPECT_LT(MsSince(start), 1000);
}

TEST(TcpStoreTest, RefusesAnotherJobAWrongWorldSizeAndADuplicateRank) {
  std::unique_ptr<Store> rank0 = ServeRank0(3);
  ASSERT_NE(rank0, nullptr);
  const int port = TcpStorePort(*rank0);

  StatusOr<std::unique_ptr<Store>> stranger =
      ConnectTcpStore(RankOptions(port, 1, 3, "other-job"), Deadline::AfterMs(2000));
  EXPECT_EQ(stranger.status().code(), StatusCode::kFailedPrecondition);
  // The refusal names what the client sent, never the store's own job id (docs/security.md).
  EXPECT_TRUE(Contains(stranger.status().message(), "refused rank 1 of job 'other-job'"))
      << stranger.status().ToString();
  EXPECT_TRUE(
      Contains(stranger.status().message(), "the job id, the world size or the job key differs"))
      << stranger.status().ToString();
  EXPECT_FALSE(Contains(stranger.status().message(), "test-job")) << stranger.status().ToString();

  StatusOr<std::unique_ptr<Store>> wrong_size = ConnectRank(port, 1, 4);
  EXPECT_EQ(wrong_size.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(wrong_size.status().message(), "world size is 4"))
      << wrong_size.status().ToString();

  StatusOr<std::unique_ptr<Store>> first = ConnectRank(port, 1, 3);
  ASSERT_OK(first.status());
  StatusOr<std::unique_ptr<Store>> second = ConnectRank(port, 1, 3);
  EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(second.status().message(), "already connected"))
      << second.status().ToString();

  // Closed (with a goodbye), the rank may connect again.
  ASSERT_OK((*first)->Goodbye());
  first->reset();
  StatusOr<std::unique_ptr<Store>> again = ConnectRank(port, 1, 3);
  EXPECT_OK(again.status());
  EXPECT_TRUE(rank0->DeadRanks()->empty());
}

TEST(TcpStoreTest, ServerRefusesARankOutsideTheWorld) {
  // The client checks its own rank, so speak HELLO by hand to reach the server's check.
  std::unique_ptr<Store> rank0 = ServeRank0(2);
  ASSERT_NE(rank0, nullptr);
  int fd = RawConnect(TcpStorePort(*rank0));
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, ValidFrame(wire::Hello{kJob, 7, 2, TestNonce()})));
  std::optional<Message> answer = ReadOneFrame(fd, 2000ms);
  ASSERT_TRUE(answer.has_value());
  ASSERT_TRUE(std::holds_alternative<wire::ErrorReply>(*answer));
  EXPECT_EQ(std::get<wire::ErrorReply>(*answer).code, StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::get<wire::ErrorReply>(*answer).text, "outside [0, 2)"));
  EXPECT_TRUE(ReadUntilClosed(fd, 2000ms).closed);
  close(fd);
}

TEST(TcpStoreTest, GarbageFromStrangersDoesNotDisturbARealClient) {
  std::unique_ptr<Store> rank0 = ServeRank0(2);
  ASSERT_NE(rank0, nullptr);
  const int port = TcpStorePort(*rank0);
  StatusOr<std::unique_ptr<Store>> rank1 = ConnectRank(port, 1, 2);
  ASSERT_OK(rank1.status());

  // A held GET on the real client spans all the garbage below.
  std::thread getter([&] {
    StatusOr<std::string> v = (*rank1)->GetString("after-garbage", Deadline::AfterMs(10000));
    ASSERT_OK(v.status());
    EXPECT_EQ(*v, "fine");
  });

  Bytes bad_magic = ToBytes("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  Bytes huge_length = ValidFrame(wire::SetRequest{"k", ToBytes("v")});
  PutU32At(huge_length, 8, 0xfffffff0u);
  Bytes other_version = ValidFrame(wire::Hello{kJob, 1, 2, TestNonce()});
  other_version[4] = std::byte{9};
  Bytes request_before_hello = ValidFrame(wire::SetRequest{"k", ToBytes("v")});
  Bytes bad_body = ValidFrame(wire::Hello{kJob, 1, 2, TestNonce()});
  PutU32At(bad_body, wire::kHeaderBytes, 5000);  // job id longer than its body and its limit
  std::mt19937 rng(7);
  Bytes noise(1 << 20);
  for (auto& b : noise) b = static_cast<std::byte>(rng());

  // Each is refused with an ERROR and closed.
  for (const Bytes* garbage :
       {&bad_magic, &huge_length, &other_version, &request_before_hello, &bad_body, &noise}) {
    int fd = RawConnect(port);
    ASSERT_GE(fd, 0);
    SendAll(fd, *garbage);  // the server may close before taking all of the noise
    Drained answer = ReadUntilClosed(fd, 3000ms);
    EXPECT_TRUE(answer.closed);
    if (garbage != &noise) {
      StatusOr<Message> error = wire::DecodeFrame(answer.bytes);
      ASSERT_OK(error.status());
      EXPECT_TRUE(std::holds_alternative<wire::ErrorReply>(*error));
    }
    close(fd);
  }
  // A truncated frame, then the stranger leaves; and one that connects and says nothing at all.
  int truncated = RawConnect(port);
  ASSERT_GE(truncated, 0);
  Bytes half = ValidFrame(wire::SetRequest{"k", Bytes(100)});
  half.resize(40);
  ASSERT_TRUE(SendAll(truncated, half));
  close(truncated);
  int silent = RawConnect(port);
  ASSERT_GE(silent, 0);

  // The real clients carry on, and no rank was hurt.
  ASSERT_OK(rank0->SetString("after-garbage", "fine"));
  getter.join();
  EXPECT_EQ(*(*rank1)->Add("still-works", 1), 1);
  EXPECT_TRUE(rank0->DeadRanks()->empty());
  EXPECT_EQ((*rank1)->GetString("k", Deadline::AfterMs(0)).status().code(),
            StatusCode::kDeadlineExceeded)
      << "no stranger's SET got through";
  close(silent);
}

TEST(TcpStoreTest, ServerGoneIsUnavailable) {
  std::unique_ptr<Store> rank0 = ServeRank0(2);
  ASSERT_NE(rank0, nullptr);
  const int port = TcpStorePort(*rank0);
  StatusOr<std::unique_ptr<Store>> rank1 = ConnectRank(port, 1, 2);
  ASSERT_OK(rank1.status());

  // rank 1 is held in a GET when rank 0 goes; the destructor must not wait for it.
  std::thread getter([&] {
    auto start = Clock::now();
    StatusOr<Bytes> v = (*rank1)->Get("never", Deadline::AfterMs(10000));
    EXPECT_EQ(v.status().code(), StatusCode::kUnavailable) << v.status().ToString();
    EXPECT_LT(MsSince(start), 5000);
  });
  std::this_thread::sleep_for(100ms);
  auto start = Clock::now();
  rank0.reset();
  EXPECT_LT(MsSince(start), 1000) << "the serving store's destructor is bounded";
  getter.join();

  const std::string expected = "bootstrap: the store at 127.0.0.1:" + std::to_string(port) +
                               " (rank 0) closed the connection";
  Status set = (*rank1)->SetString("k", "v");
  EXPECT_EQ(set.code(), StatusCode::kUnavailable);
  EXPECT_EQ(set.message().substr(0, expected.size()), expected) << set.ToString();
  EXPECT_EQ((*rank1)->DeadRanks().status().code(), StatusCode::kUnavailable);
}

TEST(TcpStoreTest, BarrierAcrossRanksAndItsTimeout) {
  std::unique_ptr<Store> rank0 = ServeRank0(2);
  ASSERT_NE(rank0, nullptr);
  StatusOr<std::unique_ptr<Store>> rank1 = ConnectRank(TcpStorePort(*rank0), 1, 2);
  ASSERT_OK(rank1.status());
  Status alone = rank0->Barrier("alone", 2, Deadline::AfterMs(200));
  EXPECT_EQ(alone.code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(Contains(alone.message(), "1 of 2 ranks arrived")) << alone.ToString();

  std::thread other([&] { EXPECT_OK((*rank1)->Barrier("together", 2, Deadline::AfterMs(5000))); });
  EXPECT_OK(rank0->Barrier("together", 2, Deadline::AfterMs(5000)));
  other.join();
}

TEST(TcpStoreTest, RejectsBadOptionsBeforeTouchingTheNetwork) {
  EXPECT_EQ(ConnectRank(1234, 2, 2).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ConnectRank(0, 1, 2).status().code(), StatusCode::kInvalidArgument);  // no port
  TcpStoreOptions serve_as_1 = RankOptions(0, 1, 2);
  serve_as_1.serve = true;
  EXPECT_EQ(ConnectTcpStore(serve_as_1, Deadline::AfterMs(100)).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(TcpStorePort(*NewInMemoryStore()), -1);
}

TEST(TcpStoreTest, StandaloneServerAndABusyPort) {
  TcpStoreOptions options = RankOptions(0, 0, 1);
  StatusOr<std::unique_ptr<TcpStoreServer>> server = StartTcpStoreServer(options);
  ASSERT_OK(server.status());
  const int port = (*server)->port();
  StatusOr<std::unique_ptr<Store>> only = ConnectRank(port, 0, 1);
  ASSERT_OK(only.status());
  EXPECT_OK((*only)->Barrier("solo", 1, Deadline::AfterMs(1000)));

  // A second server on the same port cannot bind.
  options.port = port;
  StatusOr<std::unique_ptr<TcpStoreServer>> twin = StartTcpStoreServer(options);
  EXPECT_EQ(twin.status().code(), StatusCode::kUnavailable);
  EXPECT_TRUE(Contains(twin.status().message(), "Address already in use"))
      << twin.status().ToString();
}

// A fake store that answers by a script, to check the client against answers a real store never
// gives: late, malformed, from another protocol version.

}  // namespace
}  // namespace m2n::bootstrap

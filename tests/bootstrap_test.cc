// Tests of the bootstrap store: the wire codec, the in-memory store, and the TCP store with
// clients in threads, in forked processes, killed, refused, and next to strangers sending garbage.
// Every wait here is bounded; a child process that outlives its bound is killed.
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

namespace m2n::bootstrap {
namespace {

using namespace std::chrono_literals;
using wire::Message;
using wire::MessageType;

#define ASSERT_OK(expr)                                    \
  do {                                                     \
    const ::m2n::Status assert_ok_ = (expr);               \
    ASSERT_TRUE(assert_ok_.ok()) << assert_ok_.ToString(); \
  } while (0)
#define EXPECT_OK(expr)                                    \
  do {                                                     \
    const ::m2n::Status expect_ok_ = (expr);               \
    EXPECT_TRUE(expect_ok_.ok()) << expect_ok_.ToString(); \
  } while (0)

Bytes ToBytes(std::string_view s) {
  auto b = std::as_bytes(std::span<const char>(s.data(), s.size()));
  return Bytes(b.begin(), b.end());
}

int64_t MsSince(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// ---------------------------------------------------------------------------------------------
// Wire codec
// ---------------------------------------------------------------------------------------------

std::vector<Message> OneOfEachType() {
  Bytes binary = {std::byte{0}, std::byte{0xff}, std::byte{0x80}, std::byte{0}, std::byte{7}};
  return {
      wire::Hello{"job-42", 3, 8},
      wire::HelloOk{},
      wire::ErrorReply{StatusCode::kDeadlineExceeded, "timed out; still missing: 'k'"},
      wire::OkReply{},
      wire::SetRequest{"addr/3", binary},
      wire::GetRequest{"addr/3", 1500},
      wire::ValueReply{binary},
      wire::AddRequest{"count", -9'000'000'000},
      wire::IntReply{-1},
      wire::WaitRequest{{"a", "bb", ""}, 0},
      wire::DeadRanksRequest{},
      wire::RanksReply{{0, 5, 2'000'000}},
      wire::Goodbye{},
  };
}

TEST(WireTest, EveryTypeRoundTrips) {
  std::vector<Message> messages = OneOfEachType();
  ASSERT_EQ(messages.size(), 13u);
  for (const Message& message : messages) {
    StatusOr<Bytes> frame = wire::EncodeFrame(message);
    ASSERT_OK(frame.status());
    StatusOr<Message> back = wire::DecodeFrame(*frame);
    ASSERT_OK(back.status());
    EXPECT_EQ(*back, message) << wire::MessageTypeName(wire::TypeOf(message));
  }
}

TEST(WireTest, HeaderIsLittleEndianAndPacked) {
  StatusOr<Bytes> frame = wire::EncodeFrame(wire::GetRequest{"k", 0x0102030405060708});
  ASSERT_OK(frame.status());
  // magic 'M2NS', version 1, type GET (6), body = u32 1 + "k" + i64.
  const std::vector<uint8_t> expected = {'M', '2', 'N', 'S', 1, 0, 6, 0, 13, 0, 0, 0, 1,
                                         0,   0,   0,   'k', 8, 7, 6, 5, 4,  3, 2, 1};
  ASSERT_EQ(frame->size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(std::to_integer<uint8_t>((*frame)[i]), expected[i]) << "byte " << i;
  }
}

Bytes ValidFrame(const Message& message) {
  StatusOr<Bytes> frame = wire::EncodeFrame(message);
  EXPECT_TRUE(frame.ok()) << frame.status().ToString();
  return frame.ok() ? *frame : Bytes{};
}

void PutU32At(Bytes& frame, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) frame[at + i] = static_cast<std::byte>(v >> (8 * i));
}

TEST(WireTest, RejectsBadMagic) {
  Bytes frame = ValidFrame(wire::OkReply{});
  frame[0] = std::byte{'X'};
  StatusOr<Message> decoded = wire::DecodeFrame(frame);
  EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(decoded.status().message(), "bad magic")) << decoded.status().ToString();
}

TEST(WireTest, RejectsOtherVersionWithAClearMessage) {
  Bytes frame = ValidFrame(wire::Hello{"j", 0, 1});
  frame[4] = std::byte{2};
  StatusOr<wire::FrameHeader> header = wire::DecodeHeader(frame);
  EXPECT_EQ(header.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(header.status().message(), "bootstrap: peer speaks protocol version 2, this build speaks 1");
}

TEST(WireTest, RejectsUnknownType) {
  for (uint16_t type : {uint16_t{0}, uint16_t{14}, uint16_t{0xffff}}) {
    Bytes frame = ValidFrame(wire::OkReply{});
    frame[6] = static_cast<std::byte>(type);
    frame[7] = static_cast<std::byte>(type >> 8);
    StatusOr<Message> decoded = wire::DecodeFrame(frame);
    EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
    EXPECT_TRUE(Contains(decoded.status().message(), "unknown message type " + std::to_string(type)))
        << decoded.status().ToString();
  }
}

TEST(WireTest, RejectsOversizedBodyFromTheHeaderAlone) {
  // A header announcing 4 GiB must be refused before anyone waits for (or allocates) the body.
  Bytes frame = ValidFrame(wire::SetRequest{"k", ToBytes("v")});
  PutU32At(frame, 8, 0xffffffffu);
  StatusOr<wire::FrameHeader> header = wire::DecodeHeader(std::span(frame).first(wire::kHeaderBytes));
  EXPECT_EQ(header.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(header.status().message(), "exceeds the maximum")) << header.status().ToString();

  // Each type has its own bound: an INT is 8 bytes, nothing more.
  Bytes integer = ValidFrame(wire::IntReply{1});
  PutU32At(integer, 8, 9);
  EXPECT_EQ(wire::DecodeHeader(integer).status().code(), StatusCode::kDataLoss);
}

TEST(WireTest, RejectsOversizedFieldsInsideTheBody) {
  // A key length of 2000 inside a body whose total length is within the GET bound.
  Bytes frame = ValidFrame(wire::GetRequest{"k", 0});
  PutU32At(frame, wire::kHeaderBytes, 2000);
  StatusOr<Message> decoded = wire::DecodeFrame(frame);
  EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(decoded.status().message(), "exceeds the maximum of 1024"))
      << decoded.status().ToString();

  // A WAIT claiming 4000 keys in a 20-byte body is refused before 4000 strings are allocated.
  Bytes wait = ValidFrame(wire::WaitRequest{{"a"}, 0});
  PutU32At(wait, wire::kHeaderBytes, 4000);
  decoded = wire::DecodeFrame(wait);
  EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(decoded.status().message(), "truncated WAIT body")) << decoded.status().ToString();
}

TEST(WireTest, EveryTruncationIsDataLossNamingWhatWasShort) {
  for (const Message& message : OneOfEachType()) {
    Bytes frame = ValidFrame(message);
    for (size_t cut = 0; cut < frame.size(); ++cut) {
      StatusOr<Message> decoded = wire::DecodeFrame(std::span(frame).first(cut));
      EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss)
          << wire::MessageTypeName(wire::TypeOf(message)) << " cut at " << cut;
    }
  }
  // A body (not a frame) that is cut names the field.
  Bytes frame = ValidFrame(wire::SetRequest{"key", ToBytes("0123456789")});
  std::span<const std::byte> body = std::span(frame).subspan(wire::kHeaderBytes);
  StatusOr<Message> decoded = wire::DecodeBody(MessageType::kSet, body.first(body.size() - 3));
  EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(decoded.status().message(),
            "bootstrap: truncated SET body: 'value' needs 10 bytes but only 7 remain");
}

TEST(WireTest, RejectsTrailingBytes) {
  Bytes frame = ValidFrame(wire::IntReply{5});
  frame.push_back(std::byte{0});
  EXPECT_EQ(wire::DecodeFrame(frame).status().code(), StatusCode::kDataLoss);
  // An extra byte inside a body: the body decoder finds it.
  Bytes get = ValidFrame(wire::GetRequest{"k", 1});
  get.push_back(std::byte{0});
  StatusOr<Message> decoded = wire::DecodeBody(MessageType::kGet, std::span(get).subspan(wire::kHeaderBytes));
  EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(decoded.status().message(), "1 unexpected bytes")) << decoded.status().ToString();
}

TEST(WireTest, ErrorCarriesOnlyKnownNonOkCodes) {
  Bytes frame = ValidFrame(wire::ErrorReply{StatusCode::kInternal, "x"});
  frame[wire::kHeaderBytes] = std::byte{99};
  EXPECT_EQ(wire::DecodeFrame(frame).status().code(), StatusCode::kDataLoss);
  frame[wire::kHeaderBytes] = std::byte{0};  // kOk
  EXPECT_EQ(wire::DecodeFrame(frame).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(wire::EncodeFrame(wire::ErrorReply{StatusCode::kOk, "x"}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(WireTest, EncoderRefusesWhatTheDecoderWouldReject) {
  EXPECT_EQ(wire::EncodeFrame(wire::GetRequest{std::string(1025, 'k'), 0}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_OK(wire::EncodeFrame(wire::GetRequest{std::string(1024, 'k'), 0}).status());
  EXPECT_EQ(wire::EncodeFrame(wire::Hello{std::string(1025, 'j'), 0, 1}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(wire::EncodeFrame(wire::WaitRequest{std::vector<std::string>(wire::kMaxWaitKeys + 1, "k"), 0})
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(wire::EncodeFrame(wire::SetRequest{"k", Bytes(wire::kMaxValueBytes + 1)}).status().code(),
            StatusCode::kInvalidArgument);
  // The largest legal frame round-trips.
  StatusOr<Bytes> largest =
      wire::EncodeFrame(wire::SetRequest{std::string(1024, 'k'), Bytes(wire::kMaxValueBytes)});
  ASSERT_OK(largest.status());
  EXPECT_EQ(largest->size(), wire::kMaxFrameBytes);
  EXPECT_OK(wire::DecodeFrame(*largest).status());
}

TEST(WireTest, RandomAndMutatedInputNeverCrashes) {
  std::mt19937 rng(12345);
  std::vector<Bytes> seeds;
  for (const Message& m : OneOfEachType()) seeds.push_back(ValidFrame(m));
  for (int i = 0; i < 20000; ++i) {
    Bytes input;
    if (i % 2 == 0) {
      input.resize(rng() % 64);
      for (auto& b : input) b = static_cast<std::byte>(rng());
    } else {
      input = seeds[rng() % seeds.size()];
      int flips = 1 + rng() % 4;
      for (int f = 0; f < flips && !input.empty(); ++f)
        input[rng() % input.size()] = static_cast<std::byte>(rng());
      if (rng() % 4 == 0) input.resize(rng() % (input.size() + 1));
    }
    StatusOr<Message> decoded = wire::DecodeFrame(input);
    if (decoded.ok()) {
      // Whatever decodes must encode back to the same bytes: the format has one spelling per message.
      StatusOr<Bytes> again = wire::EncodeFrame(*decoded);
      ASSERT_OK(again.status());
      EXPECT_EQ(*again, input);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// In-memory store
// ---------------------------------------------------------------------------------------------

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
        if (!store->Barrier("round" + std::to_string(round), kThreads, Deadline::AfterMs(10000)).ok())
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

// ---------------------------------------------------------------------------------------------
// TCP store helpers
// ---------------------------------------------------------------------------------------------

constexpr char kJob[] = "test-job";

TcpStoreOptions RankOptions(int port, int rank, int world_size, std::string job = kJob) {
  TcpStoreOptions options;
  options.host = "127.0.0.1";
  options.port = port;
  options.rank = rank;
  options.world_size = world_size;
  options.job_id = std::move(job);
  options.request_timeout = 5000ms;
  return options;
}

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

StatusOr<std::unique_ptr<Store>> ConnectRank(int port, int rank, int world_size, int64_t timeout_ms = 5000) {
  return ConnectTcpStore(RankOptions(port, rank, world_size), Deadline::AfterMs(timeout_ms));
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

// A plain blocking socket to 127.0.0.1:port, to play a stranger; -1 on failure.
int RawConnect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, std::span<const std::byte> bytes) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    ssize_t n = send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

// Reads from `fd` until the peer closes or `timeout` passes.
struct Drained {
  Bytes bytes;
  bool closed = false;
};
Drained ReadUntilClosed(int fd, std::chrono::milliseconds timeout) {
  Drained out;
  Deadline deadline = Deadline::After(timeout);
  while (!deadline.Expired()) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(std::max<int64_t>(1, deadline.RemainingMs()))) <= 0) continue;
    std::byte buf[4096];
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) {
      out.closed = true;
      return out;
    }
    out.bytes.insert(out.bytes.end(), buf, buf + n);
  }
  return out;
}

// Reads exactly one frame from a blocking socket within `timeout`; nullopt on close, timeout or a
// bad frame.
std::optional<Message> ReadOneFrame(int fd, std::chrono::milliseconds timeout) {
  Deadline deadline = Deadline::After(timeout);
  Bytes in;
  size_t need = wire::kHeaderBytes;
  while (in.size() < need) {
    pollfd p{fd, POLLIN, 0};
    if (deadline.Expired() ||
        poll(&p, 1, static_cast<int>(std::max<int64_t>(1, deadline.RemainingMs()))) <= 0) {
      if (deadline.Expired()) return std::nullopt;
      continue;
    }
    std::byte buf[4096];
    ssize_t n = recv(fd, buf, std::min(sizeof(buf), need - in.size()), 0);
    if (n <= 0) return std::nullopt;
    in.insert(in.end(), buf, buf + n);
    if (in.size() == wire::kHeaderBytes && need == wire::kHeaderBytes) {
      StatusOr<wire::FrameHeader> header = wire::DecodeHeader(in);
      if (!header.ok()) return std::nullopt;
      need += header->body_bytes;
    }
  }
  StatusOr<Message> message = wire::DecodeFrame(in);
  if (!message.ok()) return std::nullopt;
  return *message;
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
#define CHILD_CHECK(cond, code)                                                                         \
  do {                                                                                                  \
    if (!(cond)) {                                                                                      \
      std::fprintf(stderr, "child %d: check failed: %s (line %d)\n", static_cast<int>(getpid()), #cond, \
                   __LINE__);                                                                           \
      return code;                                                                                      \
    }                                                                                                   \
  } while (0)

// What every rank of the set/get/add/wait/barrier tests does, in a thread or a process.
// Returns 0 on success, else the number of the step that failed.
int RankWorkload(Store& store, int rank, int world_size) {
  const std::string me = std::to_string(rank);
  if (!store.SetString("addr/" + me, "address-of-" + me).ok()) return 1;
  StatusOr<int64_t> arrived = store.Add("arrivals", 1);
  if (!arrived.ok() || *arrived < 1 || *arrived > world_size) return 2;
  std::vector<std::string> keys;
  for (int r = 0; r < world_size; ++r) keys.push_back("addr/" + std::to_string(r));
  if (!store.Wait(keys, Deadline::AfterMs(10000)).ok()) return 3;
  for (int r = 0; r < world_size; ++r) {
    StatusOr<std::string> address = store.GetString("addr/" + std::to_string(r), Deadline::AfterMs(10000));
    if (!address.ok() || *address != "address-of-" + std::to_string(r)) return 4;
  }
  if (!store.Barrier("after-exchange", world_size, Deadline::AfterMs(10000)).ok()) return 5;
  // After the barrier every rank has added.
  StatusOr<int64_t> total = store.Add("arrivals", 0);
  if (!total.ok() || *total != world_size) return 6;
  if (!store.Barrier("before-goodbye", world_size, Deadline::AfterMs(10000)).ok()) return 7;
  return 0;
}

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
      if (!store.ok()) std::fprintf(stderr, "child rank %d: %s\n", rank, store.status().ToString().c_str());
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
  for (size_t i = 0; i < children.size(); ++i) EXPECT_EQ(children[i]->Join(20000ms), 0) << "rank " << i + 1;
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
  EXPECT_TRUE(
      Contains(stranger.status().message(), "rank 1 of job 'other-job' is not part of job 'test-job'"))
      << stranger.status().ToString();

  StatusOr<std::unique_ptr<Store>> wrong_size = ConnectRank(port, 1, 4);
  EXPECT_EQ(wrong_size.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(wrong_size.status().message(), "world size is 4")) << wrong_size.status().ToString();

  StatusOr<std::unique_ptr<Store>> first = ConnectRank(port, 1, 3);
  ASSERT_OK(first.status());
  StatusOr<std::unique_ptr<Store>> second = ConnectRank(port, 1, 3);
  EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(second.status().message(), "already connected")) << second.status().ToString();

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
  ASSERT_TRUE(SendAll(fd, ValidFrame(wire::Hello{kJob, 7, 2})));
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
  Bytes other_version = ValidFrame(wire::Hello{kJob, 1, 2});
  other_version[4] = std::byte{9};
  Bytes request_before_hello = ValidFrame(wire::SetRequest{"k", ToBytes("v")});
  Bytes bad_body = ValidFrame(wire::Hello{kJob, 1, 2});
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
  EXPECT_EQ((*rank1)->GetString("k", Deadline::AfterMs(0)).status().code(), StatusCode::kDeadlineExceeded)
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

  const std::string expected =
      "bootstrap: the store at 127.0.0.1:" + std::to_string(port) + " (rank 0) closed the connection";
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
  EXPECT_TRUE(Contains(twin.status().message(), "Address already in use")) << twin.status().ToString();
}

// A fake store that answers by a script, to check the client against answers a real store never
// gives: late, malformed, from another protocol version.
class FakeStore {
 public:
  explicit FakeStore(std::function<void(int fd)> script) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(listen_fd_, 4);
    socklen_t len = sizeof(addr);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this, script = std::move(script)] {
      pollfd p{listen_fd_, POLLIN, 0};
      if (poll(&p, 1, 5000) != 1) return;
      int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) return;
      script(fd);
      close(fd);
    });
  }
  ~FakeStore() {
    thread_.join();
    close(listen_fd_);
  }
  int port() const { return port_; }

 private:
  int listen_fd_ = -1;
  int port_ = 0;
  std::thread thread_;
};

TEST(TcpStoreClientTest, AnAnswerThatComesTooLateIsSkippedByTheNextCall) {
  FakeStore fake([](int fd) {
    if (!ReadOneFrame(fd, 2000ms)) return;  // HELLO
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
    if (!ReadOneFrame(fd, 2000ms)) return;
    Bytes answer = ValidFrame(wire::HelloOk{});
    answer[4] = std::byte{3};
    SendAll(fd, answer);
  });
  StatusOr<std::unique_ptr<Store>> client = ConnectRank(fake.port(), 1, 2);
  EXPECT_EQ(client.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(client.status().message(), "peer speaks protocol version 3, this build speaks 1"))
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

// ---------------------------------------------------------------------------------------------
// Hardening: what a stranger or a misbehaving client can cost the server
// ---------------------------------------------------------------------------------------------

// A standalone server for `world_size` ranks of kJob whose strangers get `hello_timeout`.
std::unique_ptr<TcpStoreServer> StartServer(int world_size, std::chrono::milliseconds hello_timeout) {
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
  Bytes half_hello = ValidFrame(wire::Hello{kJob, 1, 2});
  half_hello.resize(half_hello.size() - 3);
  ASSERT_TRUE(SendAll(truncated, half_hello));

  auto start = Clock::now();
  std::optional<wire::ErrorReply> silent_error = RefusalOf(silent, 3000ms);
  ASSERT_TRUE(silent_error.has_value()) << "the silent stranger is still connected after 3 s";
  EXPECT_EQ(silent_error->code, StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(Contains(silent_error->text, "no HELLO within 300 ms of connecting (0 bytes received)"))
      << silent_error->text;
  EXPECT_GE(MsSince(start), 250);
  std::optional<wire::ErrorReply> truncated_error = RefusalOf(truncated, 3000ms);
  ASSERT_TRUE(truncated_error.has_value());
  EXPECT_TRUE(Contains(truncated_error->text, "no HELLO within 300 ms")) << truncated_error->text;
  EXPECT_TRUE(Contains(truncated_error->text, std::to_string(half_hello.size()) + " bytes received"))
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
    PutU32At(header, 8, static_cast<uint32_t>(std::min<size_t>(size_t{60} << 20, wire::MaxBodyBytes(type))));
    ASSERT_TRUE(SendAll(fd, header));
    auto start = Clock::now();
    std::optional<wire::ErrorReply> error = RefusalOf(fd, 3000ms);
    ASSERT_TRUE(error.has_value()) << wire::MessageTypeName(type);
    EXPECT_EQ(error->code, StatusCode::kFailedPrecondition);
    EXPECT_TRUE(Contains(error->text, "expected HELLO first, got " + wire::MessageTypeName(type))) << error->text;
    EXPECT_LT(MsSince(start), 2000) << "refused at once, not after the HELLO timeout";
    close(fd);
  }
  // A HELLO that announces more than a HELLO may hold is refused from its header too.
  int fd = RawConnect(server->port());
  ASSERT_GE(fd, 0);
  Bytes hello = ValidFrame(wire::Hello{kJob, 1, 2});
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
        bytes = ValidFrame(wire::Hello{kJob, 1, kWorld});
        bytes.resize(bytes.size() / 2);
        break;
      case 2:
        bytes = ValidFrame(wire::Hello{"another-job", i % kWorld, kWorld});
        break;
      case 3:
        bytes = ValidFrame(wire::Hello{kJob, 2, kWorld});
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
  constexpr size_t kValue = size_t{16} << 20;
  ASSERT_OK((*rank0)->Set("big", Bytes(kValue, std::byte{0x5a})));

  // Rank 1 by hand: HELLO, then 40 GETs of the 16 MiB value (640 MiB of answers) without reading.
  int fd = RawConnect(server->port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, ValidFrame(wire::Hello{kJob, 1, 2})));
  std::optional<Message> ok = ReadOneFrame(fd, 2000ms);
  ASSERT_TRUE(ok.has_value() && std::holds_alternative<wire::HelloOk>(*ok));
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
    std::optional<Message> value = ReadOneFrame(fd, 10000ms);
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
      if (!ReadOneFrame(fd, 2000ms)) return;
      Bytes answer = ValidFrame(wire::HelloOk{});
      PutU32At(answer, 8, 1u << 20);
      SendAll(fd, answer);
      ReadUntilClosed(fd, 3000ms);
    });
    auto start = Clock::now();
    StatusOr<std::unique_ptr<Store>> client = ConnectRank(fake.port(), 1, 2, /*timeout_ms=*/2000);
    EXPECT_EQ(client.status().code(), StatusCode::kDataLoss) << client.status().ToString();
    EXPECT_TRUE(Contains(client.status().message(), "HELLO_OK body of 1048576 bytes exceeds the maximum of 0"))
        << client.status().ToString();
    EXPECT_LT(MsSince(start), 1500);
  }
  {
    // Half an answer, then the store goes: kUnavailable, not a hang or a partial value.
    FakeStore fake([](int fd) {
      if (!ReadOneFrame(fd, 2000ms)) return;
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

// The transport conformance suite (transport_suite.h): the harness that runs two ranks, and the
// tests every transport must pass. Instantiated per transport by ucx_transport_test.cc,
// verbs_transport_test.cc and cuda_ipc_transport_test.cc.
#include "transport_suite.h"

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

namespace m2n::testing {

using namespace transport;

std::string Where(const char* file, int line) {
  std::string_view path(file);
  return std::string(path.substr(path.find_last_of('/') + 1)) + ":" + std::to_string(line) + ": ";
}

bool Link::Send(const Bytes& bytes) {
  uint64_t size = bytes.size();
  return WriteAll(&size, sizeof size) && WriteAll(bytes.data(), bytes.size());
}

std::optional<Bytes> Link::Recv(Deadline deadline) {
  uint64_t size = 0;
  if (!ReadAll(&size, sizeof size, deadline)) return std::nullopt;
  Bytes bytes(size);
  if (!ReadAll(bytes.data(), size, deadline)) return std::nullopt;
  return bytes;
}

bool Link::Readable() {
  pollfd pfd{fd_, POLLIN, 0};
  return poll(&pfd, 1, 0) > 0;
}

bool Link::Sync() {
  Bytes token(1);
  return Send(token) && Recv().has_value();
}

bool Link::WriteAll(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = write(fd_, p, size);
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

bool Link::ReadAll(void* data, size_t size, Deadline deadline) {
  char* p = static_cast<char*>(data);
  while (size > 0) {
    pollfd pfd{fd_, POLLIN, 0};
    int ready = poll(&pfd, 1, static_cast<int>(std::min<int64_t>(deadline.RemainingMs(), 100)));
    if (ready == 0) {
      if (deadline.Expired()) return false;
      continue;
    }
    ssize_t n = read(fd_, p, size);
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

const TransportInfo* FindTransport(std::string_view name) {
  for (const TransportInfo& info : RegisteredTransports()) {
    if (info.name == name) return &info;
  }
  return nullptr;
}

std::string PeerText(const Rank& r, int peer) {
  return std::string(r.transport->name) + ": peer rank " + std::to_string(peer);
}

std::string Pump(Rank& r) {
  ASSIGN_OR_FAIL(size_t n, r.t->Poll(r.buffer));
  for (size_t i = 0; i < n; ++i) {
    const Completion& c = r.buffer[i];
    switch (c.type) {
      case Completion::Type::kWriteDone:
        r.done.push_back(c.cookie);
        break;
      case Completion::Type::kImmediate:
        r.imms[static_cast<int>(c.lane)].push_back(c);
        break;
      case Completion::Type::kError:
        r.errors.push_back(c);
        break;
    }
  }
  return "";
}

std::string RecvWhilePumping(Rank& r, Bytes* out, bool allow_errors) {
  const Deadline deadline = Deadline::After(kWait);
  while (!deadline.Expired()) {
    if (r.link->Readable()) {
      std::optional<Bytes> bytes = r.link->Recv();
      REQUIRE(bytes.has_value(), "the peer closed the link");
      *out = std::move(*bytes);
      return "";
    }
    REQUIRE_PASS(Pump(r));
    if (!allow_errors && !r.errors.empty())
      return "unexpected kError: " + r.errors.front().error.ToString();
  }
  return Where(__FILE__, __LINE__) + "no message from the peer within the wait";
}

std::string NoErrors(const Rank& r, const char* file, int line) {
  if (r.errors.empty()) return "";
  return Where(file, line) + "unexpected kError: " + r.errors.front().error.ToString();
}

std::string WaitImm(Rank& r, Lane lane, Completion* out, Deadline deadline) {
  auto& q = r.imms[static_cast<int>(lane)];
  while (q.empty()) {
    REQUIRE_PASS(Pump(r));
    REQUIRE_PASS(NoErrors(r, __FILE__, __LINE__));
    REQUIRE(!deadline.Expired(),
            "waiting for an immediate on lane " + std::to_string(static_cast<int>(lane)));
  }
  *out = q.front();
  q.pop_front();
  return "";
}

std::string WaitDone(Rank& r, size_t count, Deadline deadline) {
  while (r.done.size() < count) {
    REQUIRE_PASS(Pump(r));
    REQUIRE_PASS(NoErrors(r, __FILE__, __LINE__));
    REQUIRE(!deadline.Expired(), "waiting for " + std::to_string(count) + " kWriteDone, have " +
                                     std::to_string(r.done.size()));
  }
  return "";
}

Config PairConfig(const Rank& r, int max_unpolled) {
  Config config;
  config.rank = r.rank;
  config.world_size = 2;
  config.peers = {r.peer};
  config.max_unpolled = max_unpolled;
  return config;
}

std::string Connect(Rank& r, int max_unpolled) {
  REQUIRE(r.transport != nullptr);
  Config config = PairConfig(r, max_unpolled);
  config.timeout = 10s;
  ASSIGN_OR_FAIL(r.t, r.transport->create(config));
  ASSIGN_OR_FAIL(Bytes mine, r.t->LocalAddress(r.peer));
  REQUIRE(r.link->Send(mine));
  std::optional<Bytes> theirs = r.link->Recv();
  REQUIRE(theirs.has_value(), "no connection address from the peer");
  REQUIRE_OK(r.t->Connect(r.peer, *theirs));
  return "";
}

StatusOr<std::unique_ptr<Region>> WriteTarget(Rank& r, std::vector<std::byte>& memory) {
  if (r.registered_targets) return r.t->Register(memory.data(), memory.size(), MemoryKind::kHost);
  return r.t->Allocate(memory.size(), MemoryKind::kHost);
}

std::string SwapKeys(Rank& r, const Region* region, std::unique_ptr<RemoteRegion>* remote) {
  Bytes mine;
  if (region != nullptr) {
    ASSIGN_OR_FAIL(mine, region->PackRemoteKey());
  }
  REQUIRE(r.link->Send(mine));
  std::optional<Bytes> theirs = r.link->Recv();
  REQUIRE(theirs.has_value(), "no remote key from the peer");
  if (!theirs->empty()) {
    ASSIGN_OR_FAIL(*remote, r.t->UnpackRemoteKey(r.peer, *theirs));
  }
  return "";
}

std::string CloseAfterSync(Rank& r) {
  REQUIRE(r.link->Sync(), "peer did not reach the close barrier");
  const auto start = Clock::now();
  REQUIRE_OK(r.t->Close(Deadline::After(5s)));
  REQUIRE(Clock::now() - start < 7s, "Close overran its deadline");
  return "";
}

std::byte Pattern(uint64_t seed, size_t i) {
  return static_cast<std::byte>((seed * 131 + i * 7 + (i >> 8) + (seed >> 3)) & 0xFF);
}

void Fill(std::byte* p, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; ++i) p[i] = Pattern(seed, i);
}

int64_t FirstWrong(const std::byte* p, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != Pattern(seed, i)) return static_cast<int64_t>(i);
  }
  return -1;
}

Write MakeWrite(const Rank& r, Lane lane, const Region* local, size_t local_offset,
                const RemoteRegion* remote, size_t remote_offset, size_t length, uint32_t imm,
                uint64_t cookie) {
  Write w;
  w.peer = r.peer;
  w.lane = lane;
  w.local = local;
  w.local_offset = local_offset;
  w.remote = remote;
  w.remote_offset = remote_offset;
  w.length = length;
  w.imm = imm;
  w.cookie = cookie;
  return w;
}

std::string TransportCaseName(const ::testing::TestParamInfo<TransportCase>& info) {
  return info.param.setup.name;
}

std::string RunPair(const TransportCase& c, const Body& body, std::chrono::seconds limit,
                    const std::vector<std::pair<std::string, std::string>>& env,
                    std::string* info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return "socketpair failed";
  std::array<int, 2> result_fd{};
  std::array<pid_t, 2> pid{};
  for (int rank = 0; rank < 2; ++rank) {
    int pipe_fd[2];
    if (pipe(pipe_fd) != 0) return "pipe failed";
    fflush(nullptr);
    pid[rank] = fork();
    if (pid[rank] == 0) {
      close(pipe_fd[0]);
      close(sv[1 - rank]);
      ApplySetup(c.setup);
      for (const auto& [name, value] : env) setenv(name.c_str(), value.c_str(), 1);
      Link link(sv[rank]);
      Rank r;
      r.rank = rank;
      r.peer = 1 - rank;
      r.link = &link;
      r.transport = FindTransport(c.setup.transport);
      r.registered_targets = c.registered_targets;
      std::string failure = body(r);
      std::string message =
          failure.empty() ? r.info : "rank " + std::to_string(rank) + ": " + failure;
      if (!message.empty() && write(pipe_fd[1], message.data(), message.size()) < 0) failure += "!";
      // The transport is torn down by the destructor of r here if the body did not close it.
      r.t.reset();
      _exit(failure.empty() ? 0 : 1);
    }
    close(pipe_fd[1]);
    result_fd[rank] = pipe_fd[0];
  }
  close(sv[0]);
  close(sv[1]);

  std::array<int, 2> status{};
  std::array<bool, 2> reaped{};
  const Deadline deadline = Deadline::After(limit);
  bool killed = false;
  while (!(reaped[0] && reaped[1])) {
    for (int rank = 0; rank < 2; ++rank) {
      if (!reaped[rank] && waitpid(pid[rank], &status[rank], WNOHANG) == pid[rank])
        reaped[rank] = true;
    }
    const bool one_failed = (reaped[0] && status[0] != 0) || (reaped[1] && status[1] != 0);
    if (!killed && (deadline.Expired() || one_failed)) {
      // A failed rank leaves its partner waiting; give it a moment to report, then stop both.
      if (one_failed) usleep(200 * 1000);
      for (int rank = 0; rank < 2; ++rank) {
        if (!reaped[rank]) kill(pid[rank], SIGKILL);
      }
      killed = true;
    }
    // Coarse on purpose: the ranks spin, and a parent waking often steals their cores.
    usleep(20 * 1000);
  }

  std::string failures;
  for (int rank = 0; rank < 2; ++rank) {
    std::string message;
    char chunk[4096];
    ssize_t n;
    while ((n = read(result_fd[rank], chunk, sizeof chunk)) > 0) message.append(chunk, n);
    close(result_fd[rank]);
    const int s = status[rank];
    if (WIFEXITED(s) && WEXITSTATUS(s) == 0) {
      if (rank == 0 && info != nullptr) *info += message;
      continue;
    }
    failures += "[" + c.setup.name + "] ";
    if (!message.empty()) {
      failures += message;
    } else if (WIFSIGNALED(s)) {
      failures += "rank " + std::to_string(rank) + " killed by signal " +
                  std::to_string(WTERMSIG(s)) +
                  (deadline.Expired() ? " (run exceeded its time limit)" : "");
    } else {
      failures += "rank " + std::to_string(rank) + " exited " + std::to_string(WEXITSTATUS(s));
    }
    failures += "\n";
  }
  return failures;
}

void TransportTest::SetUp() {
  const std::string reason = SkipReason(GetParam().setup);
  if (!reason.empty()) GTEST_SKIP() << reason;
}

// ---- Tests ----

// Every size lands whole before its immediate, with the right length, into a receive region the
// transport allocated (UCX on shm: shared memory) and into one the caller registered.
TEST_P(TransportTest, WriteWithImmDeliversBytesThenImm) {
  static constexpr size_t kSizes[] = {0, 1, 8, 4096, 65536, 1 << 20, 4 << 20};
  static constexpr size_t kMax = 4 << 20;
  static constexpr size_t kOffset = 24;  // a write need not start at the region's base
  Body body = [](Rank& r) -> std::string {
    REQUIRE_PASS(Connect(r, /*max_unpolled=*/4));
    if (r.rank == 0) {
      std::vector<std::byte> source(kMax + kOffset);
      ASSIGN_OR_FAIL(auto local, r.t->Register(source.data(), source.size(), MemoryKind::kHost));
      std::unique_ptr<RemoteRegion> allocated, registered;
      REQUIRE_PASS(SwapKeys(r, nullptr, &allocated));
      REQUIRE_PASS(SwapKeys(r, nullptr, &registered));
      REQUIRE(allocated != nullptr && registered != nullptr);
      REQUIRE(allocated->size() == kMax + 2 * kOffset);
      uint64_t cookie = 0;
      for (const RemoteRegion* remote : {allocated.get(), registered.get()}) {
        for (size_t size : kSizes) {
          Fill(source.data() + kOffset, size, size + cookie);
          Write w = MakeWrite(r, Lane::kData, size ? local.get() : nullptr, kOffset,
                              size ? remote : nullptr, kOffset, size, 1000 + cookie, cookie);
          REQUIRE_OK(r.t->Post({&w, 1}));
          REQUIRE_PASS(WaitDone(r, cookie + 1));
          REQUIRE(r.done.back() == cookie, "kWriteDone carries the cookie");
          Completion ack;
          REQUIRE_PASS(WaitImm(r, Lane::kAck, &ack));
          REQUIRE(ack.imm == cookie && ack.length == 0, "ACK " + std::to_string(ack.imm));
          ++cookie;
        }
      }
    } else {
      ASSIGN_OR_FAIL(auto allocated, r.t->Allocate(kMax + 2 * kOffset, MemoryKind::kHost));
      std::vector<std::byte> memory(kMax + 2 * kOffset);
      ASSIGN_OR_FAIL(auto registered, WriteTarget(r, memory));
      std::unique_ptr<RemoteRegion> none;
      REQUIRE_PASS(SwapKeys(r, allocated.get(), &none));
      REQUIRE_PASS(SwapKeys(r, registered.get(), &none));
      uint64_t cookie = 0;
      for (const Region* target : {allocated.get(), registered.get()}) {
        for (size_t size : kSizes) {
          Completion c;
          REQUIRE_PASS(WaitImm(r, Lane::kData, &c));
          REQUIRE(c.peer == 0 && c.imm == 1000 + cookie && c.length == size,
                  "imm " + std::to_string(c.imm) + " length " + std::to_string(c.length) +
                      " for size " + std::to_string(size));
          const int64_t wrong = FirstWrong(target->data() + kOffset, size, size + cookie);
          REQUIRE(wrong < 0, "byte " + std::to_string(wrong) + " of a " + std::to_string(size) +
                                 "-byte write was not there when its immediate arrived");
          Write ack = MakeWrite(r, Lane::kAck, nullptr, 0, nullptr, 0, 0, cookie, 1u << 31);
          REQUIRE_OK(r.t->Post({&ack, 1}));
          ++cookie;
        }
      }
    }
    return CloseAfterSync(r);
  };
  EXPECT_EQ(RunPair(GetParam(), body), "");
}

// Batches of writes alternating between a mapped and an unmapped target (UCX on shm: the second
// takes a flush before its entry) keep their order on the lane.
TEST_P(TransportTest, ImmOrderPreservedOnLane) {
  static constexpr int kDepth = 32;
  static constexpr int kRounds = 50;
  static constexpr size_t kSlot = 256;
  Body body = [](Rank& r) -> std::string {
    REQUIRE_PASS(Connect(r, kDepth));
    if (r.rank == 0) {
      std::vector<std::byte> source(kDepth * kSlot);
      ASSIGN_OR_FAIL(auto local, r.t->Register(source.data(), source.size(), MemoryKind::kHost));
      std::unique_ptr<RemoteRegion> allocated, registered;
      REQUIRE_PASS(SwapKeys(r, nullptr, &allocated));
      REQUIRE_PASS(SwapKeys(r, nullptr, &registered));
      std::vector<Write> batch;
      uint32_t imm = 0;
      for (int round = 0; round < kRounds; ++round) {
        batch.clear();
        for (int i = 0; i < kDepth; ++i, ++imm) {
          const size_t length = (imm % 3 == 0) ? 0 : 1 + imm % kSlot;
          Fill(source.data() + i * kSlot, length, imm);
          const RemoteRegion* remote = (i % 2 == 0) ? allocated.get() : registered.get();
          batch.push_back(MakeWrite(r, Lane::kData, local.get(), i * kSlot, remote, i * kSlot,
                                    length, imm, imm));
        }
        REQUIRE_OK(r.t->Post(batch));
        // The receiver answers a whole round with one ACK; sources are reused only after
        // kWriteDone.
        Completion ack;
        REQUIRE_PASS(WaitImm(r, Lane::kAck, &ack));
        REQUIRE(ack.imm == static_cast<uint32_t>(round));
        REQUIRE_PASS(WaitDone(r, static_cast<size_t>(imm)));
      }
    } else {
      ASSIGN_OR_FAIL(auto allocated, r.t->Allocate(kDepth * kSlot, MemoryKind::kHost));
      std::vector<std::byte> memory(kDepth * kSlot);
      ASSIGN_OR_FAIL(auto registered, WriteTarget(r, memory));
      std::unique_ptr<RemoteRegion> none;
      REQUIRE_PASS(SwapKeys(r, allocated.get(), &none));
      REQUIRE_PASS(SwapKeys(r, registered.get(), &none));
      uint32_t expected = 0;
      for (int round = 0; round < kRounds; ++round) {
        for (int i = 0; i < kDepth; ++i, ++expected) {
          Completion c;
          REQUIRE_PASS(WaitImm(r, Lane::kData, &c));
          REQUIRE(c.imm == expected,
                  "got imm " + std::to_string(c.imm) + ", expected " + std::to_string(expected));
          const size_t length = (expected % 3 == 0) ? 0 : 1 + expected % kSlot;
          REQUIRE(c.length == length);
          const Region* target = (i % 2 == 0) ? allocated.get() : registered.get();
          REQUIRE(FirstWrong(target->data() + i * kSlot, length, expected) < 0,
                  "payload of imm " + std::to_string(expected));
        }
        Write ack = MakeWrite(r, Lane::kAck, nullptr, 0, nullptr, 0, 0, round, 0);
        REQUIRE_OK(r.t->Post({&ack, 1}));
      }
    }
    return CloseAfterSync(r);
  };
  EXPECT_EQ(RunPair(GetParam(), body), "");
}

// The ACK lane has its own ring and order: a full data ring (max_unpolled large writes, not yet
// polled) does not stop max_unpolled ACK-lane immediates, and each lane keeps its own order.
TEST_P(TransportTest, AckLaneIndependentOfDataLane) {
  static constexpr int kDepth = 4;
  static constexpr size_t kBig = 1 << 20;
  Body body = [](Rank& r) -> std::string {
    REQUIRE_PASS(Connect(r, kDepth));
    if (r.rank == 0) {
      std::vector<std::byte> source(kDepth * kBig);
      for (int i = 0; i < kDepth; ++i) Fill(source.data() + i * kBig, kBig, 77 + i);
      ASSIGN_OR_FAIL(auto local, r.t->Register(source.data(), source.size(), MemoryKind::kHost));
      std::unique_ptr<RemoteRegion> remote;
      REQUIRE_PASS(SwapKeys(r, nullptr, &remote));
      std::vector<Write> writes;
      for (int i = 0; i < kDepth; ++i) {
        writes.push_back(MakeWrite(r, Lane::kData, local.get(), i * kBig, remote.get(), i * kBig,
                                   kBig, 100 + i, i));
      }
      for (int i = 0; i < kDepth; ++i) {
        writes.push_back(MakeWrite(r, Lane::kAck, nullptr, 0, nullptr, 0, 0, 200 + i, 100 + i));
      }
      REQUIRE_OK(r.t->Post(writes));
      REQUIRE_PASS(WaitDone(r, 2 * kDepth));
      REQUIRE(r.link->Sync());  // the receiver has seen everything
    } else {
      // Registered (not allocated) on purpose: with UCX on shm only these payloads need the
      // receiver's progress and a flush before their entries, the slow case for the data lane.
      std::vector<std::byte> memory(kDepth * kBig);
      ASSIGN_OR_FAIL(auto region, WriteTarget(r, memory));
      std::unique_ptr<RemoteRegion> none;
      REQUIRE_PASS(SwapKeys(r, region.get(), &none));
      for (int i = 0; i < kDepth; ++i) {
        Completion c;
        REQUIRE_PASS(WaitImm(r, Lane::kAck, &c));
        REQUIRE(c.imm == 200u + i && c.length == 0 && c.lane == Lane::kAck);
      }
      for (int i = 0; i < kDepth; ++i) {
        Completion c;
        REQUIRE_PASS(WaitImm(r, Lane::kData, &c));
        REQUIRE(c.imm == 100u + i && c.length == kBig && c.lane == Lane::kData);
        REQUIRE(FirstWrong(region->data() + i * kBig, kBig, 77 + i) < 0);
      }
      REQUIRE(r.link->Sync());
    }
    return CloseAfterSync(r);
  };
  EXPECT_EQ(RunPair(GetParam(), body), "");
}

// 10,000 small writes through a 4-entry ring, paced by a credit per ACK, as the protocol does
// (on verbs: inlined, mostly unsignalled).
TEST_P(TransportTest, ManySmallWritesReuseTheRing) {
  static constexpr int kDepth = 4;
  static constexpr uint32_t kCount = 10000;
  static constexpr size_t kSlot = 64;
  Body body = [](Rank& r) -> std::string {
    REQUIRE_PASS(Connect(r, kDepth));
    if (r.rank == 0) {
      std::vector<std::byte> source(size_t{kCount} * kSlot);
      ASSIGN_OR_FAIL(auto local, r.t->Register(source.data(), source.size(), MemoryKind::kHost));
      std::unique_ptr<RemoteRegion> remote;
      REQUIRE_PASS(SwapKeys(r, nullptr, &remote));
      int credits = kDepth;
      uint32_t acked = 0;
      const Deadline deadline = Deadline::After(60s);
      for (uint32_t i = 0; i < kCount; ++i) {
        while (credits == 0) {
          REQUIRE_PASS(Pump(r));
          REQUIRE_PASS(NoErrors(r, __FILE__, __LINE__));
          auto& acks = r.imms[static_cast<int>(Lane::kAck)];
          while (!acks.empty()) {
            REQUIRE(acks.front().imm == acked, "ACK " + std::to_string(acks.front().imm) +
                                                   ", expected " + std::to_string(acked));
            acks.pop_front();
            ++acked;
            ++credits;
          }
          REQUIRE(!deadline.Expired(), "stuck at write " + std::to_string(i));
        }
        const size_t length = 8 + i % (kSlot - 7);
        Fill(source.data() + size_t{i} * kSlot, length, i);
        Write w = MakeWrite(r, Lane::kData, local.get(), size_t{i} * kSlot, remote.get(),
                            (i % kDepth) * kSlot, length, i, i);
        REQUIRE_OK(r.t->Post({&w, 1}));
        --credits;
      }
      REQUIRE_PASS(WaitDone(r, kCount));
      std::vector<uint64_t> cookies = r.done;
      std::sort(cookies.begin(), cookies.end());
      for (uint32_t i = 0; i < kCount; ++i) REQUIRE(cookies[i] == i, "one kWriteDone per write");
    } else {
      ASSIGN_OR_FAIL(auto slots, r.t->Allocate(kDepth * kSlot, MemoryKind::kHost));
      std::unique_ptr<RemoteRegion> none;
      REQUIRE_PASS(SwapKeys(r, slots.get(), &none));
      for (uint32_t i = 0; i < kCount; ++i) {
        Completion c;
        REQUIRE_PASS(WaitImm(r, Lane::kData, &c, Deadline::After(kWait)));
        const size_t length = 8 + i % (kSlot - 7);
        REQUIRE(c.imm == i && c.length == length,
                "imm " + std::to_string(c.imm) + " at " + std::to_string(i));
        REQUIRE(FirstWrong(slots->data() + (i % kDepth) * kSlot, length, i) < 0,
                "payload of write " + std::to_string(i));
        Write ack = MakeWrite(r, Lane::kAck, nullptr, 0, nullptr, 0, 0, i, i);
        REQUIRE_OK(r.t->Post({&ack, 1}));
      }
    }
    return CloseAfterSync(r);
  };
  EXPECT_EQ(RunPair(GetParam(), body, 120s), "");
}

// Bad writes are refused with InvalidArgument naming the numbers, and a batch with one bad write
// posts nothing; bad connection bytes and keys are refused too.
TEST_P(TransportTest, OutOfBoundsWriteIsInvalidArgument) {
  Body body = [expected = GetParam()](Rank& r) -> std::string {
    REQUIRE_PASS(Connect(r, 4));
    if (r.rank == 0) {
      std::vector<std::byte> source(4096);
      ASSIGN_OR_FAIL(auto local, r.t->Register(source.data(), source.size(), MemoryKind::kHost));
      std::unique_ptr<RemoteRegion> remote;
      REQUIRE_PASS(SwapKeys(r, nullptr, &remote));
      REQUIRE(remote->size() == 1024);

      struct Case {
        size_t local_offset, remote_offset, length;
        std::string mention;
      };
      const Case cases[] = {
          {0, 0, 1025, "remote region of 1024"},  // longer than the remote region
          {0, 1000, 25, "remote offset 1000"},  // runs off the remote end
          {4090, 0, 7, "local offset 4090"},  // runs off the local end
          {0, SIZE_MAX - 2, 8, "remote offset"},  // offset + length wraps around
          {SIZE_MAX, 0, 1, "local offset"},
          // A huge length: offset + length wraps for any offset past 7 (validate.h).
          {8, 0, SIZE_MAX - 7, "local region of 4096"},
          {0, 8, SIZE_MAX - 7, "local region of 4096"},
          {SIZE_MAX - 7, SIZE_MAX - 7, SIZE_MAX - 7,
           "local offset " + std::to_string(SIZE_MAX - 7)},
          {16, SIZE_MAX - 7, 16, "remote offset " + std::to_string(SIZE_MAX - 7)},
      };
      for (const Case& c : cases) {
        Write w = MakeWrite(r, Lane::kData, local.get(), c.local_offset, remote.get(),
                            c.remote_offset, c.length, 1, 1);
        Status s = r.t->Post({&w, 1});
        REQUIRE(s.code() == StatusCode::kInvalidArgument, s.ToString());
        REQUIRE(s.message().find(PeerText(r, 1)) != std::string::npos, s.message());
        REQUIRE(s.message().find(c.mention) != std::string::npos, s.message());
        REQUIRE(s.message().find("write of " + std::to_string(c.length) + " bytes") !=
                    std::string::npos,
                s.message());
      }
      Write no_region = MakeWrite(r, Lane::kData, nullptr, 0, remote.get(), 0, 8, 1, 1);
      REQUIRE(r.t->Post({&no_region, 1}).code() == StatusCode::kInvalidArgument);
      Write stranger = MakeWrite(r, Lane::kData, nullptr, 0, nullptr, 0, 0, 1, 1);
      stranger.peer = 7;
      REQUIRE(r.t->Post({&stranger, 1}).code() == StatusCode::kInvalidArgument);

      // One bad write in a batch: the good one before it must not go out either.
      std::vector<Write> batch = {
          MakeWrite(r, Lane::kData, nullptr, 0, nullptr, 0, 0, 666, 666),
          MakeWrite(r, Lane::kData, local.get(), 0, remote.get(), 0, 2048, 667, 667)};
      REQUIRE(r.t->Post(batch).code() == StatusCode::kInvalidArgument);
      Write marker = MakeWrite(r, Lane::kData, local.get(), 0, remote.get(), 0, 1024, 42, 42);
      REQUIRE_OK(r.t->Post({&marker, 1}));
      REQUIRE_PASS(WaitDone(r, 1));

      // Connection bytes and keys that are not what they claim.
      ASSIGN_OR_FAIL(Bytes address, r.t->LocalAddress(1));
      Status twice = r.t->Connect(1, address);
      REQUIRE(twice.code() == StatusCode::kFailedPrecondition, twice.ToString());
      // A key to corrupt: of the registered region, or of an allocated one where registered memory
      // cannot be a write target (and its PackRemoteKey says so).
      std::unique_ptr<Region> allocated;
      const Region* keyed = local.get();
      if (!r.registered_targets) {
        auto refused = local->PackRemoteKey();
        REQUIRE(refused.status().code() == StatusCode::kUnimplemented, refused.status().ToString());
        ASSIGN_OR_FAIL(allocated, r.t->Allocate(64, MemoryKind::kHost));
        keyed = allocated.get();
      }
      ASSIGN_OR_FAIL(Bytes key, keyed->PackRemoteKey());
      key.resize(key.size() - 1);
      auto truncated = r.t->UnpackRemoteKey(1, key);
      REQUIRE(truncated.status().code() == StatusCode::kDataLoss, truncated.status().ToString());
      REQUIRE(truncated.status().message().find("peer rank 1") != std::string::npos);
      auto unknown = r.t->UnpackRemoteKey(5, key);
      REQUIRE(!unknown.ok());
      // CUDA memory: allocated and registered only where the transport says it can; there, without
      // a GPU and its driver, UNAVAILABLE saying so (verbs allocates GPU receive slots itself).
      const Capabilities caps = r.t->capabilities();
      auto cuda = r.t->Allocate(4096, MemoryKind::kCuda);
      if (!caps.cuda_memory || !cuda.ok()) {
        const StatusCode want =
            caps.cuda_memory ? StatusCode::kUnavailable : StatusCode::kUnimplemented;
        REQUIRE(cuda.status().code() == want, cuda.status().ToString());
      }
      if (!caps.cuda_memory) {
        auto registered = r.t->Register(source.data(), source.size(), MemoryKind::kCuda);
        REQUIRE(registered.status().code() == StatusCode::kUnimplemented,
                registered.status().ToString());
      }
      REQUIRE(caps.native_write_with_imm == expected.native_write_with_imm);
      REQUIRE(!expected.cuda_memory || caps.cuda_memory == *expected.cuda_memory);
      REQUIRE(r.link->Sync());
    } else {
      ASSIGN_OR_FAIL(auto slots, r.t->Allocate(1024, MemoryKind::kHost));
      std::unique_ptr<RemoteRegion> none;
      REQUIRE_PASS(SwapKeys(r, slots.get(), &none));
      Completion c;
      REQUIRE_PASS(WaitImm(r, Lane::kData, &c));
      REQUIRE(c.imm == 42, "the first immediate must be the marker, got " + std::to_string(c.imm));
      REQUIRE(r.link->Sync());
    }
    return CloseAfterSync(r);
  };
  EXPECT_EQ(RunPair(GetParam(), body), "");
}

// Connection bytes are checked before the transport uses them: version, truncation, who made
// them for whom.
// A configuration that cannot work is refused at creation, naming what is wrong: this rank or a
// peer outside the world, a peer listed twice, max_unpolled of 0 or absurdly large.
TEST_P(TransportTest, BadConfigIsRefused) {
  Body body = [](Rank& r) -> std::string {
    struct Bad {
      void (*change)(Config&);
      const char* says;
    };
    const Bad cases[] = {
        {[](Config& c) { c.rank = 2; }, "rank outside a world of 2"},
        {[](Config& c) { c.rank = -1; }, "rank outside a world of 2"},
        {[](Config& c) { c.peers = {5}; }, "peer rank 5 outside a world of 2"},
        {[](Config& c) {
           c.peers = {c.peers[0], c.peers[0]};
         },
         "listed twice"},
        {[](Config& c) { c.max_unpolled = 0; }, "max_unpolled 0 outside [1, "},
        {[](Config& c) { c.max_unpolled = 1 << 30; }, "max_unpolled 1073741824 outside [1, "},
    };
    for (const Bad& bad : cases) {
      Config config = PairConfig(r, 4);
      bad.change(config);
      auto t = r.transport->create(config);
      REQUIRE(t.status().code() == StatusCode::kInvalidArgument, t.status().ToString());
      REQUIRE(t.status().message().find(bad.says) != std::string::npos, t.status().message());
    }
    return "";
  };
  EXPECT_EQ(RunPair(GetParam(), body), "");
}

TEST_P(TransportTest, BadConnectionAddressIsRefused) {
  Body body = [](Rank& r) -> std::string {
    Config config =
        PairConfig(r, 4 + r.rank);  // max_unpolled deliberately different on the two ranks
    config.world_size = 3;
    config.peers = {r.peer, 2};
    ASSIGN_OR_FAIL(r.t, r.transport->create(config));
    ASSIGN_OR_FAIL(Bytes mine, r.t->LocalAddress(r.peer));
    ASSIGN_OR_FAIL(Bytes for_two, r.t->LocalAddress(2));
    REQUIRE(r.link->Send(mine) && r.link->Send(for_two));
    std::optional<Bytes> theirs = r.link->Recv();
    std::optional<Bytes> theirs_for_two = r.link->Recv();
    REQUIRE(theirs && theirs_for_two);

    Bytes truncated(theirs->begin(), theirs->end() - 3);
    Status s = r.t->Connect(r.peer, truncated);
    REQUIRE(s.code() == StatusCode::kDataLoss, s.ToString());
    REQUIRE(s.message().find(PeerText(r, r.peer)) != std::string::npos, s.message());
    Bytes wrong_version = *theirs;
    wrong_version[4] = std::byte{99};
    s = r.t->Connect(r.peer, wrong_version);
    REQUIRE(s.code() == StatusCode::kDataLoss, s.ToString());
    REQUIRE(s.message().find("version") != std::string::npos, s.message());
    s = r.t->Connect(r.peer, Bytes{});
    REQUIRE(s.code() == StatusCode::kDataLoss, s.ToString());
    s = r.t->Connect(r.peer, *theirs_for_two);  // made for rank 2, not for us
    REQUIRE(s.code() == StatusCode::kInvalidArgument, s.ToString());
    s = r.t->Connect(r.peer, *theirs);  // right bytes, but max_unpolled differs
    REQUIRE(s.code() == StatusCode::kFailedPrecondition, s.ToString());
    REQUIRE(s.message().find("max_unpolled") != std::string::npos, s.message());
    REQUIRE(r.t->Connect(9, *theirs).code() == StatusCode::kInvalidArgument);
    REQUIRE(!r.t->LocalAddress(9).ok());
    REQUIRE(r.link->Sync());
    return "";
  };
  EXPECT_EQ(RunPair(GetParam(), body), "");
}

// A peer that dies without closing: the survivor gets a kError naming it, or at least Poll keeps
// returning promptly and Close stays within its deadline (each transport's README.md says what it
// detects).
TEST_P(TransportTest, PeerExitIsReportedOrNeverHangs) {
  Body body = [settle_for = GetParam().peer_exit_settle](Rank& r) -> std::string {
    REQUIRE_PASS(Connect(r, 4));
    if (r.rank == 1) {
      ASSIGN_OR_FAIL(auto slots, r.t->Allocate(4096, MemoryKind::kHost));
      std::unique_ptr<RemoteRegion> none;
      REQUIRE_PASS(SwapKeys(r, slots.get(), &none));
      Completion c;
      REQUIRE_PASS(WaitImm(r, Lane::kData, &c));
      // This test is about a peer that dies once connected (TransportCase::peer_exit_settle).
      if (settle_for > 0ms) {
        const Deadline settle = Deadline::After(settle_for);
        while (!settle.Expired()) REQUIRE_PASS(Pump(r));
      }
      REQUIRE(r.link->Send(Bytes(1)));
      _exit(0);  // no Close, no destructors: as if killed
    }
    std::vector<std::byte> source(4096);
    ASSIGN_OR_FAIL(auto local, r.t->Register(source.data(), source.size(), MemoryKind::kHost));
    std::unique_ptr<RemoteRegion> remote;
    REQUIRE_PASS(SwapKeys(r, nullptr, &remote));
    Write w = MakeWrite(r, Lane::kData, local.get(), 0, remote.get(), 0, 4096, 1, 1);
    REQUIRE_OK(r.t->Post({&w, 1}));
    Bytes confirmation;
    // The peer exits right after confirming; on a loaded machine its endpoint error can reach us
    // before the confirmation does. Errors are checked below, so they are allowed here.
    REQUIRE_PASS(RecvWhilePumping(r, &confirmation, /*allow_errors=*/true));
    usleep(50 * 1000);  // let it exit

    // Keep writing (within the credit window) and polling; every Poll must return promptly.
    const Deadline give_up = Deadline::After(8s);
    auto slowest = Clock::duration::zero();
    int posted = 1;
    bool error_seen = false;
    while (!give_up.Expired() && !error_seen) {
      if (posted < 4) {
        Write more = MakeWrite(r, Lane::kData, local.get(), 0, remote.get(), 0, 4096, 2, 2);
        Status s = r.t->Post({&more, 1});
        if (s.ok()) {
          ++posted;
        } else {
          REQUIRE(s.code() == StatusCode::kUnavailable, s.ToString());
          error_seen = true;
        }
      }
      const auto start = Clock::now();
      REQUIRE_PASS(Pump(r));
      slowest = std::max(slowest, Clock::now() - start);
      if (!r.errors.empty()) {
        const Completion& e = r.errors.front();
        REQUIRE(e.error.code() == StatusCode::kUnavailable, e.error.ToString());
        REQUIRE(e.error.message().find(PeerText(r, 1)) != std::string::npos, e.error.message());
        REQUIRE(e.peer == 1);
        error_seen = true;
      }
      usleep(1000);
    }
    REQUIRE(
        slowest < 1s,
        "a Poll took " +
            std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(slowest).count()) +
            " ms");
    const auto start = Clock::now();
    (void)r.t->Close(Deadline::After(2s));  // may report the dead peer; must not hang
    REQUIRE(Clock::now() - start < 4s, "Close overran its deadline with a dead peer");
    r.info = error_seen ? "peer exit detected" : "peer exit NOT detected within 8 s";
    return "";
  };
  std::string info;
  EXPECT_EQ(RunPair(GetParam(), body, 60s, GetParam().peer_exit_env, &info), "");
  std::printf("[%s] %s\n", GetParam().setup.name.c_str(), info.c_str());
  RecordProperty("peer_exit", info);
}

// Not a correctness test: the round trip (write-with-imm there, write-with-imm back) between
// transport-allocated regions, as each transport's README.md quotes it.
// M2N_<TRANSPORT>_PINGPONG_ITERS (M2N_UCX_PINGPONG_ITERS, M2N_VERBS_PINGPONG_ITERS) overrides the
// count.
TEST_P(TransportTest, PingPongLatency) {
  static constexpr size_t kSizes[] = {8, 4096, 65536};
  std::string iters_variable = "M2N_" + GetParam().setup.transport + "_PINGPONG_ITERS";
  for (char& ch : iters_variable)
    ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  Body body = [default_iters = GetParam().pingpong_iters, iters_variable](Rank& r) -> std::string {
    int iters = default_iters;
    if (const char* env = std::getenv(iters_variable.c_str())) iters = std::max(1, std::atoi(env));
    const int warmup = std::min(1000, iters);
    REQUIRE_PASS(Connect(r, 4));
    ASSIGN_OR_FAIL(auto slots, r.t->Allocate(65536, MemoryKind::kHost));
    ASSIGN_OR_FAIL(auto source, r.t->Allocate(65536, MemoryKind::kHost));
    std::unique_ptr<RemoteRegion> remote;
    REQUIRE_PASS(SwapKeys(r, slots.get(), &remote));
    std::vector<Completion> out(16);
    auto wait_imm = [&]() -> std::string {
      const Deadline deadline = Deadline::After(kWait);
      for (;;) {
        ASSIGN_OR_FAIL(size_t n, r.t->Poll(out));
        for (size_t i = 0; i < n; ++i) {
          if (out[i].type == Completion::Type::kError) return out[i].error.ToString();
          if (out[i].type == Completion::Type::kImmediate) return "";
        }
        REQUIRE(!deadline.Expired(), "ping-pong stalled");
      }
    };
    for (size_t size : kSizes) {
      Write w = MakeWrite(r, Lane::kData, source.get(), 0, remote.get(), 0, size, 0, 0);
      std::vector<double> rtt_us;
      rtt_us.reserve(iters);
      REQUIRE(r.link->Sync());
      for (int i = 0; i < warmup + iters; ++i) {
        const auto start = Clock::now();
        if (r.rank == 0) {
          REQUIRE_OK(r.t->Post({&w, 1}));
          REQUIRE_PASS(wait_imm());
        } else {
          REQUIRE_PASS(wait_imm());
          REQUIRE_OK(r.t->Post({&w, 1}));
        }
        if (i >= warmup) {
          rtt_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
        }
      }
      // Drain the last kWriteDone before the next size or Close.
      for (int i = 0; i < 100; ++i) (void)r.t->Poll(out);
      std::sort(rtt_us.begin(), rtt_us.end());
      char line[200];
      std::snprintf(line, sizeof line,
                    "%6zu B round trip: p50 %8.2f us  p99 %8.2f us  (%d iterations)\n", size,
                    rtt_us[rtt_us.size() / 2], rtt_us[rtt_us.size() * 99 / 100], iters);
      r.info += line;
    }
    return CloseAfterSync(r);
  };
  std::string info;
  EXPECT_EQ(RunPair(GetParam(), body, 120s, {}, &info), "");
  std::printf("[%s] write-with-imm ping-pong between allocated regions\n%s",
              GetParam().setup.name.c_str(), info.c_str());
  RecordProperty("pingpong", info);
}

}  // namespace m2n::testing

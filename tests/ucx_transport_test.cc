// The UCX transport below the Group: the conformance suite (transport_suite.h) on shared memory,
// on TCP and on what UCX picks by itself, and the tests only UCX has: its active-message path
// (eager and rendezvous writes, the receiver's check of write targets) and M2N_UCX_EAGER_MAX.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "transport_suite.h"

namespace m2n::testing {
namespace {

using namespace transport;

// Peer exit: a short keepalive lets UCX notice a dead shared-memory peer within the test's
// patience. The dying rank first lets UCX finish wiring up both endpoints: over TCP with several
// devices a write can arrive over one device while the endpoint's wireup still runs over another,
// and UCX 1.13 aborts the survivor on an assertion in its error handling ("got REQ message",
// ucp_request.c) when the peer dies in between (README.md, Limitations).
TransportCase Ucx(TransportSetup setup, int pingpong_iters) {
  return TransportCase{.setup = std::move(setup),
                       .native_write_with_imm = false,
                       .cuda_memory = false,
                       .peer_exit_env = {{"UCX_KEEPALIVE_INTERVAL", "100ms"}},
                       .peer_exit_settle = 100ms,
                       .pingpong_iters = pingpong_iters};
}

// shm: shared memory only, so registered (not UCX-allocated) targets take UCX's active-message RMA
// emulation and the flush-before-entry path. default: what a user gets (cma for registered targets
// here). TCP round trips are ~100x slower and noisy on a 2-core box; fewer of them say as much.
const TransportCase kShm = Ucx({.name = "shm", .transport = "ucx", .env = {{"UCX_TLS", "posix,sysv,self"}}}, 20000);
const TransportCase kTcp = Ucx({.name = "tcp", .transport = "ucx", .env = {{"UCX_TLS", "tcp,self"}}}, 2000);
const TransportCase kDefault = Ucx({.name = "default", .transport = "ucx", .unset = {"UCX_TLS"}}, 20000);

INSTANTIATE_TEST_SUITE_P(ucx, TransportTest, ::testing::Values(kShm, kTcp, kDefault), TransportCaseName);

class UcxTransportTest : public TransportTest {};

// Over the network path a write is one active message: small ones go eager, large ones by
// rendezvous straight into the target, so a later small write can land before an earlier large
// one. Immediates must still come in posting order, each after its own bytes. M2N_UCX_EAGER_MAX=0
// leaves the protocol to UCX, which goes rendezvous from 8-32 KiB on TCP; on shared memory the
// writes are stores and puts, and the same order must hold.
TEST_P(UcxTransportTest, MixedEagerAndRendezvousWritesKeepOrder) {
  static constexpr int kDepth = 8;
  static constexpr int kRounds = 12;
  static constexpr size_t kSlot = 2 << 20;
  static constexpr size_t kLengths[] = {kSlot, 8, 65536, 0, 100, 300000, 1, kSlot - 3};
  Body body = [](Rank& r) -> std::string {
    REQUIRE_PASS(Connect(r, kDepth));
    if (r.rank == 0) {
      std::vector<std::byte> source(kDepth * kSlot);
      ASSIGN_OR_FAIL(auto local, r.t->Register(source.data(), source.size(), MemoryKind::kHost));
      std::unique_ptr<RemoteRegion> remote;
      REQUIRE_PASS(SwapKeys(r, nullptr, &remote));
      std::vector<Write> batch;
      uint32_t imm = 0;
      for (int round = 0; round < kRounds; ++round) {
        batch.clear();
        for (int i = 0; i < kDepth; ++i, ++imm) {
          const size_t length = kLengths[(i + round) % kDepth];
          Fill(source.data() + i * kSlot, length, imm);
          batch.push_back(MakeWrite(r, Lane::kData, length ? local.get() : nullptr, i * kSlot,
                                    length ? remote.get() : nullptr, i * kSlot, length, imm, imm));
        }
        REQUIRE_OK(r.t->Post(batch));
        Completion ack;
        REQUIRE_PASS(WaitImm(r, Lane::kAck, &ack));
        REQUIRE(ack.imm == static_cast<uint32_t>(round));
        REQUIRE_PASS(WaitDone(r, static_cast<size_t>(imm)));
      }
    } else {
      ASSIGN_OR_FAIL(auto slots, r.t->Allocate(kDepth * kSlot, MemoryKind::kHost));
      std::unique_ptr<RemoteRegion> none;
      REQUIRE_PASS(SwapKeys(r, slots.get(), &none));
      uint32_t expected = 0;
      for (int round = 0; round < kRounds; ++round) {
        for (int i = 0; i < kDepth; ++i, ++expected) {
          Completion c;
          REQUIRE_PASS(WaitImm(r, Lane::kData, &c));
          const size_t length = kLengths[(i + round) % kDepth];
          REQUIRE(c.imm == expected && c.length == length,
                  "got imm " + std::to_string(c.imm) + " (" + std::to_string(c.length) +
                      " bytes), expected " + std::to_string(expected) + " (" +
                      std::to_string(length) + " bytes)");
          const int64_t wrong = FirstWrong(slots->data() + i * kSlot, length, expected);
          REQUIRE(wrong < 0, "byte " + std::to_string(wrong) + " of write " +
                                 std::to_string(expected) + " not there with its immediate");
        }
        Write ack = MakeWrite(r, Lane::kAck, nullptr, 0, nullptr, 0, 0, round, 0);
        REQUIRE_OK(r.t->Post({&ack, 1}));
      }
    }
    return CloseAfterSync(r);
  };
  EXPECT_EQ(RunPair(GetParam(), body, 120s, {{"M2N_UCX_EAGER_MAX", "0"}}), "");
  // And with every write up to 4 MiB forced eager (UCX reassembles the large ones).
  EXPECT_EQ(RunPair(GetParam(), body, 120s, {{"M2N_UCX_EAGER_MAX", "4M"}}), "");
}

// A key that claims more than the peer registered (a buggy or hostile writer) must not make the
// receiver write outside its memory. On the network path the receiver itself lands the payload,
// so it checks the target against the regions it handed out and refuses the write: DATA_LOSS
// naming the writer, nothing written, and later writes from that peer dropped. (A writer on shared
// memory stores through its own mapping; there the receiver cannot check, hence tcp only.)
TEST_P(UcxTransportTest, ActiveMessageOutsideRegisteredMemoryIsRefused) {
  if (GetParam().setup.name != "tcp") {
    GTEST_SKIP() << "the receiver checks write targets only on the active-message (network) path";
  }
  static constexpr size_t kRegion = 4096;
  // Eager (copied by the receiver's handler) and rendezvous (received by UCX into the target).
  for (size_t length : {size_t{100}, size_t{256} << 10}) {
    Body body = [length](Rank& r) -> std::string {
      REQUIRE_PASS(Connect(r, 4));
      if (r.rank == 0) {
        std::vector<std::byte> source(2 * length + kRegion);
        Fill(source.data(), source.size(), 5);
        ASSIGN_OR_FAIL(auto local, r.t->Register(source.data(), source.size(), MemoryKind::kHost));
        std::optional<Bytes> key = r.link->Recv();
        REQUIRE(key.has_value() && key->size() > 32);
        // The packed key: magic, version, padding, address, size, rkey length, rkey. Claim far
        // more than was registered.
        const uint64_t claimed = 2 * length + kRegion;
        std::memcpy(key->data() + 16, &claimed, sizeof(claimed));
        ASSIGN_OR_FAIL(auto forged, r.t->UnpackRemoteKey(1, *key));
        REQUIRE(forged->size() == claimed);
        // Starts inside, runs past the end: passes the sender's (forged) bounds check.
        Write bad =
            MakeWrite(r, Lane::kData, local.get(), 0, forged.get(), kRegion - 10, length, 7, 7);
        REQUIRE_OK(r.t->Post({&bad, 1}));
        REQUIRE_PASS(WaitDone(r, 1));
        // A good write after it: the receiver drops it, since the peer is no longer trusted.
        Write good = MakeWrite(r, Lane::kData, local.get(), 0, forged.get(), 0, 16, 8, 8);
        REQUIRE_OK(r.t->Post({&good, 1}));
        REQUIRE_PASS(WaitDone(r, 2));
        Bytes done;
        REQUIRE_PASS(RecvWhilePumping(r, &done));
      } else {
        // The region sits between two guard areas of the same allocation.
        std::vector<std::byte> memory(3 * kRegion + length);
        std::byte* base = memory.data() + kRegion;
        ASSIGN_OR_FAIL(auto region, r.t->Register(base, kRegion, MemoryKind::kHost));
        ASSIGN_OR_FAIL(Bytes key, region->PackRemoteKey());
        REQUIRE(r.link->Send(key));
        const Deadline deadline = Deadline::After(kWait);
        while (r.errors.empty()) {
          REQUIRE_PASS(Pump(r));
          REQUIRE(r.imms[0].empty(), "a refused write was delivered");
          REQUIRE(!deadline.Expired(), "no kError for a write outside registered memory");
        }
        const Completion& e = r.errors.front();
        REQUIRE(e.peer == 0 && e.error.code() == StatusCode::kDataLoss, e.error.ToString());
        REQUIRE(e.error.message().find("ucx: peer rank 0") != std::string::npos, e.error.message());
        REQUIRE(e.error.message().find("not inside memory registered here") != std::string::npos,
                e.error.message());
        // Give the second write time to arrive; it must be dropped too.
        const Deadline settle = Deadline::After(300ms);
        while (!settle.Expired()) REQUIRE_PASS(Pump(r));
        REQUIRE(r.imms[0].empty(), "a write from a refused peer was delivered");
        REQUIRE(r.errors.size() == 1, "the refusal is reported once");
        for (size_t i = 0; i < memory.size(); ++i) {
          REQUIRE(memory[i] == std::byte{0}, "byte " + std::to_string(i) + " was written");
        }
        REQUIRE(r.link->Send(Bytes(1)));
      }
      REQUIRE(r.link->Sync());
      (void)r.t->Close(Deadline::After(2s));
      return "";
    };
    EXPECT_EQ(RunPair(GetParam(), body, 60s, {{"M2N_UCX_EAGER_MAX", "1K"}}), "")
        << length << "-byte write";
  }
}

// A peer may write as soon as it has connected to us and has our key, before we connect back:
// the write lands and its immediate waits until our Connect adds the peer to the scan.
TEST_P(UcxTransportTest, WriteBeforeReceiverConnects) {
  static constexpr size_t kSizes[] = {64, 200000};
  Body body = [](Rank& r) -> std::string {
    Config config = PairConfig(r, 4);
    config.timeout = 10s;
    ASSIGN_OR_FAIL(r.t, r.transport->create(config));
    ASSIGN_OR_FAIL(Bytes mine, r.t->LocalAddress(r.peer));
    REQUIRE(r.link->Send(mine));
    std::optional<Bytes> theirs = r.link->Recv();
    REQUIRE(theirs.has_value());
    if (r.rank == 0) {
      REQUIRE_OK(r.t->Connect(1, *theirs));
      std::vector<std::byte> source(256 << 10);
      ASSIGN_OR_FAIL(auto local, r.t->Register(source.data(), source.size(), MemoryKind::kHost));
      std::unique_ptr<RemoteRegion> remote;
      REQUIRE_PASS(SwapKeys(r, nullptr, &remote));
      uint64_t cookie = 0;
      for (size_t size : kSizes) {
        Fill(source.data(), size, size);
        Write w = MakeWrite(r, Lane::kData, local.get(), 0, remote.get(), cookie * 4096, size,
                            static_cast<uint32_t>(size), cookie);
        REQUIRE_OK(r.t->Post({&w, 1}));
        REQUIRE_PASS(WaitDone(r, ++cookie));
      }
      REQUIRE(r.link->Send(Bytes(1)));  // both written; now rank 1 connects
      Bytes done;
      REQUIRE_PASS(RecvWhilePumping(r, &done));
    } else {
      ASSIGN_OR_FAIL(auto slots, r.t->Allocate(512 << 10, MemoryKind::kHost));
      std::unique_ptr<RemoteRegion> none;
      REQUIRE_PASS(SwapKeys(r, slots.get(), &none));
      Bytes written;
      REQUIRE_PASS(RecvWhilePumping(r, &written));
      REQUIRE(r.imms[0].empty(), "an immediate from a peer not connected yet");
      REQUIRE_OK(r.t->Connect(0, *theirs));
      uint64_t cookie = 0;
      for (size_t size : kSizes) {
        Completion c;
        REQUIRE_PASS(WaitImm(r, Lane::kData, &c));
        REQUIRE(c.imm == size && c.length == size, "imm " + std::to_string(c.imm));
        REQUIRE(FirstWrong(slots->data() + cookie * 4096, size, size) < 0);
        ++cookie;
      }
      REQUIRE(r.link->Send(Bytes(1)));
    }
    return CloseAfterSync(r);
  };
  // UCX's own protocol choice: the larger write goes by rendezvous on the network path.
  EXPECT_EQ(RunPair(GetParam(), body, 90s, {{"M2N_UCX_EAGER_MAX", "0"}}), "");
}

// M2N_UCX_EAGER_MAX takes a size or auto; anything else fails creation, naming the variable.
TEST_P(UcxTransportTest, EagerMaxSettingIsChecked) {
  Body body = [](Rank& r) -> std::string {
    const Config config = PairConfig(r, 4);
    for (const char* bad :
         {"lots", "12Q", "-1", "64KB", "K", "2000000000000000000000", "9999999G"}) {
      setenv("M2N_UCX_EAGER_MAX", bad, 1);
      auto created = r.transport->create(config);
      REQUIRE(created.status().code() == StatusCode::kInvalidArgument, bad);
      REQUIRE(created.status().message().find("M2N_UCX_EAGER_MAX") != std::string::npos,
              created.status().message());
    }
    for (const char* good : {"auto", "0", "65536", "64K", "1m", "2G"}) {
      setenv("M2N_UCX_EAGER_MAX", good, 1);
      REQUIRE_OK(r.transport->create(config));
    }
    return "";
  };
  EXPECT_EQ(RunPair(GetParam(), body), "");
}

INSTANTIATE_TEST_SUITE_P(ucx, UcxTransportTest, ::testing::Values(kShm, kTcp, kDefault), TransportCaseName);

}  // namespace
}  // namespace m2n::testing

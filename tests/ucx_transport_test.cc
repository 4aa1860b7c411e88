// The UCX transport below the Group: the conformance suite (transport_suite.h) on shared memory,
// on TCP and on what UCX picks by itself, and the tests only UCX has: its active-message path
// (eager and rendezvous writes, the receiver's check of write targets and of who sent a write,
// keys that reach one peer's block, send buffers no peer may write), M2N_UCX_EAGER_MAX, and the
// mode of UCX's shared memory.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "transport_suite.h"
#include "transports/ucx/endpoint.h"

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
const TransportCase kShm =
    Ucx({.name = "shm", .transport = "ucx", .env = {{"UCX_TLS", "posix,sysv,self"}}}, 20000);
const TransportCase kTcp =
    Ucx({.name = "tcp", .transport = "ucx", .env = {{"UCX_TLS", "tcp,self"}}}, 2000);
const TransportCase kDefault =
    Ucx({.name = "default", .transport = "ucx", .unset = {"UCX_TLS"}}, 20000);

INSTANTIATE_TEST_SUITE_P(ucx, TransportTest, ::testing::Values(kShm, kTcp, kDefault),
                         TransportCaseName);

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

// Rank `rank` of a world of three, talking to rank `peer` alone.
Config TrioConfig(int rank, int peer) {
  Config config;
  config.rank = rank;
  config.world_size = 3;
  config.peers = {peer};
  config.max_unpolled = 4;
  config.timeout = 10s;
  return config;
}

// A process that is no connected peer of rank 1 (its own UCP worker, made here with raw UCP calls)
// sends rank 1 two m2n writes whose header claims rank 2: one asking UCX for a reply endpoint, one
// not. Rank 2 (the transport in r) keeps polling meanwhile.
std::string SendAsStranger(Rank& r, std::span<const std::byte> receiver_address) {
  ASSIGN_OR_FAIL(ucx::PeerAddress a, ucx::DecodePeerAddress(1, receiver_address));
  ucp_config_t* config = nullptr;
  REQUIRE(ucp_config_read(nullptr, nullptr, &config) == UCS_OK);
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_AM;
  ucp_context_h context = nullptr;
  const ucs_status_t inited = ucp_init(&params, config, &context);
  ucp_config_release(config);
  REQUIRE(inited == UCS_OK);
  ucp_worker_params_t wparams{};
  ucp_worker_h worker = nullptr;
  REQUIRE(ucp_worker_create(context, &wparams, &worker) == UCS_OK);
  ucp_ep_params_t eparams{};
  eparams.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
  eparams.address = reinterpret_cast<const ucp_address_t*>(a.worker_address[0].data());
  ucp_ep_h ep = nullptr;
  REQUIRE(ucp_ep_create(worker, &eparams, &ep) == UCS_OK);
  std::string failure;
  for (uint32_t flags : {uint32_t{UCP_AM_SEND_FLAG_REPLY}, uint32_t{0}}) {
    ucx::AmHeader h{};
    h.imm = 77;
    h.seq = 1;
    h.src_rank = 2;
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = flags | UCP_AM_SEND_FLAG_EAGER;
    ucs_status_ptr_t request = ucp_am_send_nbx(ep, ucx::kAmWriteId, &h, sizeof(h), nullptr, 0, &p);
    const Deadline deadline = Deadline::After(kWait);
    while (UCS_PTR_IS_PTR(request) && ucp_request_check_status(request) == UCS_INPROGRESS) {
      if (deadline.Expired()) {
        failure = "the stranger's write did not complete";
        break;
      }
      ucp_worker_progress(worker);
      if (std::string f = Pump(r); !f.empty()) failure = f;
    }
    if (UCS_PTR_IS_PTR(request)) ucp_request_free(request);
  }
  REQUIRE(r.link->Send(Bytes(1)));  // sent; rank 1 says when it has judged them
  Bytes judged;
  while (!r.link->Readable()) {
    ucp_worker_progress(worker);
    REQUIRE_PASS(Pump(r));
  }
  REQUIRE(r.link->Recv().has_value());
  ucp_request_param_t close{};
  close.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  close.flags = UCP_EP_CLOSE_FLAG_FORCE;
  ucs_status_ptr_t closing = ucp_ep_close_nbx(ep, &close);
  while (UCS_PTR_IS_PTR(closing) && ucp_request_check_status(closing) == UCS_INPROGRESS)
    ucp_worker_progress(worker);
  if (UCS_PTR_IS_PTR(closing)) ucp_request_free(closing);
  ucp_worker_destroy(worker);
  ucp_cleanup(context);
  return failure;
}

// The sender of an active message is the endpoint it came on, not the rank its header names: a
// process that is not the connected rank 2 cannot write as rank 2. Refused (DATA_LOSS, once),
// nothing delivered. (Shared memory has no handler to check; tcp only.)
TEST_P(UcxTransportTest, ActiveMessageClaimingAnotherRankIsRefused) {
  if (GetParam().setup.name != "tcp") {
    GTEST_SKIP()
        << "the receiver checks who sent a write only on the active-message (network) path";
  }
  Body body = [](Rank& r) -> std::string {
    // The pair's rank 0 is the job's rank 2 (and hosts the stranger); its rank 1 is rank 1.
    const int me = r.rank == 0 ? 2 : 1;
    const int other = r.rank == 0 ? 1 : 2;
    ASSIGN_OR_FAIL(r.t, r.transport->create(TrioConfig(me, other)));
    ASSIGN_OR_FAIL(Bytes mine, r.t->LocalAddress(other));
    REQUIRE(r.link->Send(mine));
    std::optional<Bytes> theirs = r.link->Recv();
    REQUIRE(theirs.has_value());
    REQUIRE_OK(r.t->Connect(other, *theirs));
    if (r.rank == 0) {
      REQUIRE_PASS(SendAsStranger(r, *theirs));
    } else {
      Bytes sent;
      REQUIRE_PASS(RecvWhilePumping(r, &sent, /*allow_errors=*/true));
      const Deadline deadline = Deadline::After(kWait);
      while (r.errors.empty()) {
        REQUIRE_PASS(Pump(r));
        REQUIRE(r.imms[0].empty(), "a stranger's write was delivered as rank 2's");
        REQUIRE(!deadline.Expired(), "no kError for a stranger's write");
      }
      const Deadline settle = Deadline::After(300ms);
      while (!settle.Expired()) REQUIRE_PASS(Pump(r));
      REQUIRE(r.imms[0].empty(), "a stranger's write was delivered as rank 2's");
      REQUIRE(r.errors.size() == 1, "the refusal is reported once");
      const Completion& e = r.errors.front();
      REQUIRE(e.error.code() == StatusCode::kDataLoss, e.error.ToString());
      REQUIRE(e.error.message().find("claiming rank 2") != std::string::npos, e.error.message());
      REQUIRE(r.link->Send(Bytes(1)));
    }
    return CloseAfterSync(r);
  };
  EXPECT_EQ(RunPair(GetParam(), body, 60s), "");
}

// A key made for one peer's block (PackRemoteKeyFor) reaches that block only, and a send buffer
// (RegisterSource) has no key and takes no write: rank 0 writes its own block, then forges its key
// to reach `victim` (1: the block of another sender; 2: a send buffer of rank 1). The receiver
// refuses that write (DATA_LOSS naming rank 0) and the bytes stay as they were. (tcp only: a writer
// on shared memory stores through its own mapping.)
TEST_P(UcxTransportTest, KeyReachesOnlyItsPeersBlockAndNoSendBuffer) {
  if (GetParam().setup.name != "tcp") {
    GTEST_SKIP() << "the receiver checks write targets only on the active-message (network) path";
  }
  static constexpr size_t kBlock = 4096;
  for (int victim : {1, 2}) {
    Body body = [victim](Rank& r) -> std::string {
      REQUIRE_PASS(Connect(r, 4));
      if (r.rank == 0) {
        std::vector<std::byte> source(kBlock);
        Fill(source.data(), source.size(), 3);
        ASSIGN_OR_FAIL(auto local,
                       r.t->RegisterSource(source.data(), source.size(), MemoryKind::kHost));
        std::optional<Bytes> key = r.link->Recv();
        std::optional<Bytes> target = r.link->Recv();
        REQUIRE(key.has_value() && key->size() > 32 && target.has_value() && target->size() == 8);
        ASSIGN_OR_FAIL(auto mine, r.t->UnpackRemoteKey(1, *key));
        Write own = MakeWrite(r, Lane::kData, local.get(), 0, mine.get(), 0, 100, 1, 1);
        REQUIRE_OK(r.t->Post({&own, 1}));
        REQUIRE_PASS(WaitDone(r, 1));
        // The packed key: magic, version, padding, address, size, rkey length, rkey.
        std::memcpy(key->data() + 8, target->data(), 8);
        ASSIGN_OR_FAIL(auto forged, r.t->UnpackRemoteKey(1, *key));
        Write bad = MakeWrite(r, Lane::kData, local.get(), 0, forged.get(), 0, 100, 2, 2);
        REQUIRE_OK(r.t->Post({&bad, 1}));
        REQUIRE_PASS(WaitDone(r, 2));
        Bytes done;
        REQUIRE_PASS(RecvWhilePumping(r, &done));
      } else {
        ASSIGN_OR_FAIL(auto slots, r.t->Allocate(2 * kBlock, MemoryKind::kHost));
        std::vector<std::byte> send_buffer(kBlock);
        Fill(send_buffer.data(), send_buffer.size(), 9);
        ASSIGN_OR_FAIL(auto sending, r.t->RegisterSource(send_buffer.data(), send_buffer.size(),
                                                         MemoryKind::kHost));
        auto no_key = sending->PackRemoteKey();
        REQUIRE(no_key.status().code() == StatusCode::kFailedPrecondition,
                no_key.status().ToString());
        ASSIGN_OR_FAIL(BlockKey key, slots->PackRemoteKeyFor(0, 0, kBlock));
        REQUIRE(key.offset == 0);
        (void)slots->PackRemoteKeyFor(2, kBlock, kBlock);  // another sender's block
        const uint64_t target = victim == 1 ? reinterpret_cast<uintptr_t>(slots->data() + kBlock)
                                            : reinterpret_cast<uintptr_t>(send_buffer.data());
        Bytes target_bytes(8);
        std::memcpy(target_bytes.data(), &target, 8);
        REQUIRE(r.link->Send(key.key) && r.link->Send(target_bytes));
        const Deadline deadline = Deadline::After(kWait);
        while (r.errors.empty() || r.imms[0].empty()) {
          REQUIRE_PASS(Pump(r));
          REQUIRE(!deadline.Expired(),
                  "no immediate for the write into its own block, or no kError for the other");
        }
        REQUIRE(r.imms[0].size() == 1 && r.imms[0].front().imm == 1,
                "only the write into its own block lands");
        REQUIRE(FirstWrong(slots->data(), 100, 3) < 0, "the write into its own block");
        r.imms[0].clear();
        const Completion& e = r.errors.front();
        REQUIRE(e.peer == 0 && e.error.code() == StatusCode::kDataLoss, e.error.ToString());
        REQUIRE(e.error.message().find("not inside memory registered here for this peer") !=
                    std::string::npos,
                e.error.message());
        REQUIRE(r.imms[0].empty(), "a refused write was delivered");
        for (size_t i = 0; i < kBlock; ++i)
          REQUIRE(slots->data()[kBlock + i] == std::byte{0}, "another block written");
        REQUIRE(FirstWrong(send_buffer.data(), kBlock, 9) < 0, "the send buffer was written");
        REQUIRE(r.link->Send(Bytes(1)));
      }
      REQUIRE(r.link->Sync());
      (void)r.t->Close(Deadline::After(2s));
      return "";
    };
    EXPECT_EQ(RunPair(GetParam(), body, 60s), "") << "victim " << victim;
  }
}

// The shared memory UCX allocates for this process (slots, rings, its own FIFOs) is readable and
// writable by the user alone: no System V segment made by this process and no /dev/shm file it
// holds open has a group or other permission bit. UCX 1.13 puts System V (0660) first unless told
// otherwise (context.cc).
TEST(UcxSharedMemory, IsPrivateToTheUser) {
  const transport::TransportInfo* info = FindTransport("ucx");
  if (info == nullptr) GTEST_SKIP() << "ucx not built";
  unsetenv("UCX_TLS");
  unsetenv("UCX_ALLOC_PRIO");
  Config config;
  config.rank = 0;
  config.world_size = 2;
  config.peers = {1};
  config.max_unpolled = 4;
  auto t = info->create(config);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  auto slots = (*t)->Allocate(1 << 20, MemoryKind::kHost);
  ASSERT_TRUE(slots.ok()) << slots.status().ToString();
  int segments = 0;
  std::ifstream sysv("/proc/sysvipc/shm");
  std::string line;
  std::getline(sysv, line);  // the header
  while (std::getline(sysv, line)) {
    std::istringstream fields(line);
    long key = 0, id = 0, size = 0, cpid = 0;
    std::string perms;
    fields >> key >> id >> perms >> size >> cpid;
    if (cpid != getpid()) continue;
    ++segments;
    EXPECT_EQ(std::stoul(perms, nullptr, 8) & 077, 0u)
        << "System V segment " << id << " has mode " << perms;
  }
  DIR* fds = opendir("/proc/self/fd");
  ASSERT_NE(fds, nullptr);
  while (dirent* d = readdir(fds)) {
    const std::string fd = std::string("/proc/self/fd/") + d->d_name;
    char target[512] = {};
    if (readlink(fd.c_str(), target, sizeof target - 1) <= 0 ||
        std::strncmp(target, "/dev/shm/", 9) != 0)
      continue;
    struct stat st {};
    if (stat(fd.c_str(), &st) != 0) continue;
    ++segments;
    EXPECT_EQ(st.st_mode & 077, 0u) << target << " has mode " << std::oct << (st.st_mode & 0777);
  }
  closedir(fds);
  if (segments == 0)
    GTEST_SKIP() << "UCX allocated no shared memory here (no posix or sysv transport)";
}

INSTANTIATE_TEST_SUITE_P(ucx, UcxTransportTest, ::testing::Values(kShm, kTcp, kDefault),
                         TransportCaseName);

}  // namespace
}  // namespace m2n::testing

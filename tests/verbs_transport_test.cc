// The verbs transport below the Group: the conformance suite (transport_suite.h) over RC queue
// pairs on the first RDMA device, and the tests only verbs has. Skipped, with the reason, where no
// RDMA device is present; scripts/test-verbs-vm.sh runs it on Soft-RoCE inside a VM.
#include <atomic>
#include <cstring>
#include <thread>

#include "m2n/group.h"
#include "transport_suite.h"

namespace m2n::testing {
namespace {

using namespace m2n::transport;

// Peer exit: a short ACK timeout (4.096 us * 2^12 = 17 ms, 7 retries) lets the QP give up on the
// dead peer within the test's patience (an RC QP reports it when its retries run out). Soft-RoCE
// round trips in an emulated VM take tens of microseconds, hence the short ping-pong.
// capabilities().cuda_memory depends on whether the build found the CUDA toolkit.
const TransportCase kRc{.setup = {.name = "rc", .transport = "verbs"},
                        .native_write_with_imm = true,
                        .cuda_memory = std::nullopt,
                        .peer_exit_env = {{"M2N_VERBS_TIMEOUT", "12"}},
                        .pingpong_iters = 2000};

INSTANTIATE_TEST_SUITE_P(verbs, TransportTest, ::testing::Values(kRc), TransportCaseName);

class VerbsTransportTest : public TransportTest {};

// GPUDirect RDMA: CUDA memory is registered through a dma-buf (ibv_reg_dmabuf_mr). Needs a GPU,
// its driver and an RDMA NIC on one machine; skipped elsewhere, with the reason.
TEST_P(VerbsTransportTest, CudaMemoryRegistersThroughDmaBuf) {
  GTEST_SKIP()
      << "needs a CUDA device, the NVIDIA driver (libcuda.so.1) and an RDMA NIC together: "
         "tests/verbs_gpu_test.cc allocates and registers device memory through the Group there "
         "(its receive slots by Allocate(kCuda), its send buffers by Register(kCuda))";
}

// A send queue that stays full holds Post in WaitForRoom until Config::timeout; the owner's Abort
// (Config::aborted) ends it within a few polls. Rank 1 stops polling, so its receive queue runs
// dry and rank 0's writes wait for it (receiver-not-ready, retried forever: M2N_VERBS_RNR_RETRY=7).
TEST_P(VerbsTransportTest, AbortEndsWaitForRoom) {
  static constexpr int kUnpolled = 4;
  Body body = [](Rank& r) -> std::string {
    AbortToken abort;
    Config config = PairConfig(r, kUnpolled);
    config.timeout = 20s;
    config.aborted = [abort] { return abort.aborted(); };
    ASSIGN_OR_FAIL(r.t, r.transport->create(config));
    ASSIGN_OR_FAIL(Bytes mine, r.t->LocalAddress(r.peer));
    REQUIRE(r.link->Send(mine));
    std::optional<Bytes> theirs = r.link->Recv();
    REQUIRE(theirs.has_value(), "no connection address from the peer");
    REQUIRE_OK(r.t->Connect(r.peer, *theirs));
    REQUIRE(r.link->Sync(), "the peer did not connect");
    if (r.rank == 1) {
      REQUIRE(r.link->Recv(Deadline::After(60s)).has_value(), "rank 0 did not finish");
      return "";
    }
    std::vector<Write> batch;
    for (uint32_t i = 0; i < 1000; ++i)
      batch.push_back(MakeWrite(r, Lane::kData, nullptr, 0, nullptr, 0, 0, i, i));
    Clock::time_point aborted_at;
    std::thread aborter([&] {
      std::this_thread::sleep_for(300ms);
      aborted_at = Clock::now();
      abort.Abort();
    });
    Status s = r.t->Post(batch);
    aborter.join();
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - aborted_at).count();
    REQUIRE(s.code() == StatusCode::kAborted, s.ToString());
    REQUIRE(ms < 1000,
            "Post returned " + std::to_string(ms) + " ms after Abort (its bound: 20000 ms)");
    REQUIRE(r.link->Send(Bytes(1)));
    (void)r.t->Close(Deadline::AfterMs(0));
    return "";
  };
  EXPECT_EQ(RunPair(GetParam(), body, 90s, {{"M2N_VERBS_RNR_RETRY", "7"}}), "");
}

// A key made for one peer's block (PackRemoteKeyFor) reaches that block only, and a send buffer
// (RegisterSource) takes no remote write: rank 0 writes its own block, then forges its key to reach
// `victim` (1: the block of another sender; 2: a send buffer of rank 1). The NIC refuses that write
// (kError at the writer: the block's rkey does not cover the target) and the bytes stay as they
// were.
TEST_P(VerbsTransportTest, KeyReachesOnlyItsPeersBlockAndNoSendBuffer) {
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
        REQUIRE(key.has_value() && key->size() == 28 && target.has_value() && target->size() == 8);
        ASSIGN_OR_FAIL(auto mine, r.t->UnpackRemoteKey(1, *key));
        Write own = MakeWrite(r, Lane::kData, local.get(), 0, mine.get(), 0, 100, 1, 1);
        REQUIRE_OK(r.t->Post({&own, 1}));
        REQUIRE_PASS(WaitDone(r, 1));
        // The packed key: magic, version, padding, address, size, rkey.
        std::memcpy(key->data() + 8, target->data(), 8);
        ASSIGN_OR_FAIL(auto forged, r.t->UnpackRemoteKey(1, *key));
        Write bad = MakeWrite(r, Lane::kData, local.get(), 0, forged.get(), 0, 100, 2, 2);
        REQUIRE_OK(r.t->Post({&bad, 1}));
        const Deadline deadline = Deadline::After(kWait);
        // The failed write's own kWriteDone may come too (the transport completes the sends up to
        // a failed one); what counts is the kError, and that rank 1's bytes stay as they were.
        while (r.errors.empty()) {
          REQUIRE_PASS(Pump(r));
          REQUIRE(!deadline.Expired(), "no kError for a write outside the key's block");
        }
        REQUIRE(r.errors.front().error.message().find("REM_ACCESS") != std::string::npos ||
                    r.errors.front().error.message().find("remote access") != std::string::npos,
                r.errors.front().error.ToString());
        REQUIRE(r.link->Send(Bytes(1)));
        REQUIRE(r.link->Recv().has_value());
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
        ASSIGN_OR_FAIL(BlockKey other,
                       slots->PackRemoteKeyFor(2, kBlock, kBlock));  // another sender's
        REQUIRE(other.key != key.key);
        const uint64_t target = victim == 1 ? reinterpret_cast<uintptr_t>(slots->data() + kBlock)
                                            : reinterpret_cast<uintptr_t>(send_buffer.data());
        Bytes target_bytes(8);
        std::memcpy(target_bytes.data(), &target, 8);
        REQUIRE(r.link->Send(key.key) && r.link->Send(target_bytes));
        Bytes refused;
        REQUIRE_PASS(RecvWhilePumping(r, &refused, /*allow_errors=*/true));
        REQUIRE(!r.imms[0].empty() && r.imms[0].front().imm == 1, "the write into its own block");
        REQUIRE(FirstWrong(slots->data(), 100, 3) < 0, "the write into its own block");
        for (size_t i = 0; i < kBlock; ++i)
          REQUIRE(slots->data()[kBlock + i] == std::byte{0}, "another block written");
        REQUIRE(FirstWrong(send_buffer.data(), kBlock, 9) < 0, "the send buffer was written");
        REQUIRE(r.link->Send(Bytes(1)));
      }
      (void)r.t->Close(Deadline::After(2s));
      return "";
    };
    EXPECT_EQ(RunPair(GetParam(), body, 60s), "") << "victim " << victim;
  }
}

INSTANTIATE_TEST_SUITE_P(verbs, VerbsTransportTest, ::testing::Values(kRc), TransportCaseName);

}  // namespace
}  // namespace m2n::testing

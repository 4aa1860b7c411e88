// The verbs transport below the Group: the conformance suite (transport_suite.h) over RC queue
// pairs on the first RDMA device, and the tests only verbs has. Skipped, with the reason, where no
// RDMA device is present; scripts/test-verbs-vm.sh runs it on Soft-RoCE inside a VM.
#include <atomic>
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
  GTEST_SKIP() << "needs a CUDA device, the NVIDIA driver (libcuda.so.1) and an RDMA NIC together: "
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
    for (uint32_t i = 0; i < 1000; ++i) batch.push_back(MakeWrite(r, Lane::kData, nullptr, 0, nullptr, 0, 0, i, i));
    Clock::time_point aborted_at;
    std::thread aborter([&] {
      std::this_thread::sleep_for(300ms);
      aborted_at = Clock::now();
      abort.Abort();
    });
    Status s = r.t->Post(batch);
    aborter.join();
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - aborted_at).count();
    REQUIRE(s.code() == StatusCode::kAborted, s.ToString());
    REQUIRE(ms < 1000, "Post returned " + std::to_string(ms) + " ms after Abort (its bound: 20000 ms)");
    REQUIRE(r.link->Send(Bytes(1)));
    (void)r.t->Close(Deadline::AfterMs(0));
    return "";
  };
  EXPECT_EQ(RunPair(GetParam(), body, 90s, {{"M2N_VERBS_RNR_RETRY", "7"}}), "");
}

INSTANTIATE_TEST_SUITE_P(verbs, VerbsTransportTest, ::testing::Values(kRc), TransportCaseName);

}  // namespace
}  // namespace m2n::testing

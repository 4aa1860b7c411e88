// The cuda_ipc transport below the Group: the conformance suite (transport_suite.h) on its
// host-driven path with host memory (shared-memory segments and immediate rings), which needs no
// GPU. Its stream-ordered and device-memory paths are tested in cuda_ipc_gpu_test.cc, but for
// AbortEndsWaitForProxyRoom below (it needs the transport itself, and a GPU; it skips without one).
#include "transport_suite.h"

#if defined(M2N_TEST_CUDA_KERNELS)
#include <cuda_runtime.h>

#include <thread>

#include "cuda_test_kernels.h"
#include "gpu_test_util.h"
#include "m2n/group.h"
#endif

namespace m2n::testing {
namespace {

// A peer can write only into memory the transport allocated (a shared-memory segment it can map),
// not into memory the caller registered (registered_targets). Peer exit is not detected (no
// connection to lose: README.md); the suite checks that nothing hangs.
const TransportCase kHost{.setup = {.name = "host", .transport = "cuda_ipc"},
                          .native_write_with_imm = false,
                          .cuda_memory = true,
                          .registered_targets = false,
                          .peer_exit_env = {},
                          .peer_exit_settle = 0ms,
                          .pingpong_iters = 20000};

INSTANTIATE_TEST_SUITE_P(cuda_ipc, TransportTest, ::testing::Values(kHost), TransportCaseName);

class CudaIpcTransportTest : public TransportTest {};

#if defined(M2N_TEST_CUDA_KERNELS)
using namespace m2n::transport;

// Rank 0's half of AbortEndsWaitForProxyRoom: with every SM held by a spinning kernel, the copy
// proxy serves nothing, so the write after its ring's 256 descriptors waits for room until
// Config::timeout; the Abort (Config::aborted) ends that within a few polls.
std::string PostIntoStalledProxy(Rank& r, const AbortToken& abort, const RemoteRegion& remote) {
  void* source = nullptr;
  REQUIRE(cudaMalloc(&source, 4096) == cudaSuccess, "cudaMalloc");
  ASSIGN_OR_FAIL(auto local, r.t->Register(source, 4096, MemoryKind::kCuda));
  unsigned* release = nullptr;
  REQUIRE(cudaHostAlloc(reinterpret_cast<void**>(&release), sizeof *release, cudaHostAllocMapped) == cudaSuccess);
  *release = 0;
  unsigned* release_device = nullptr;
  REQUIRE(cudaHostGetDevicePointer(reinterpret_cast<void**>(&release_device), release, 0) == cudaSuccess);
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(LaunchOccupyUntil(release_device, stream) == cudaSuccess, "the kernel that holds every SM");
  std::vector<Write> batch;
  for (uint32_t i = 0; i < 300; ++i) batch.push_back(MakeWrite(r, Lane::kData, local.get(), 0, &remote, 0, 64, i, i));
  Clock::time_point aborted_at;
  std::thread aborter([&] {
    std::this_thread::sleep_for(300ms);
    aborted_at = Clock::now();
    abort.Abort();
  });
  Status s = r.t->Post(batch);
  aborter.join();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - aborted_at).count();
  *reinterpret_cast<volatile unsigned*>(release) = 1;
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess, "the spinning kernel did not end");
  REQUIRE(s.code() == StatusCode::kAborted, s.ToString());
  REQUIRE(ms < 1000, "Post returned " + std::to_string(ms) + " ms after Abort (its bound: 20000 ms)");
  (void)r.t->Close(Deadline::AfterMs(2000));
  return "";
}

TEST_P(CudaIpcTransportTest, AbortEndsWaitForProxyRoom) {
  SKIP_IF_MISSING(AskInChild(NoCudaDevice));
  Body body = [](Rank& r) -> std::string {
    AbortToken abort;
    Config config = PairConfig(r, /*max_unpolled=*/200);  // room for 300 immediates in the peer's ring
    config.timeout = 20s;
    config.slot_depth = 4;
    config.slot_memory = MemoryKind::kCuda;
    config.aborted = [abort] { return abort.aborted(); };
    ASSIGN_OR_FAIL(r.t, r.transport->create(config));
    ASSIGN_OR_FAIL(Bytes mine, r.t->LocalAddress(r.peer));
    REQUIRE(r.link->Send(mine));
    std::optional<Bytes> theirs = r.link->Recv();
    REQUIRE(theirs.has_value(), "no connection address from the peer");
    REQUIRE_OK(r.t->Connect(r.peer, *theirs));
    std::unique_ptr<Region> target;
    if (r.rank == 1) {
      ASSIGN_OR_FAIL(target, r.t->Allocate(4096, MemoryKind::kCuda));
    }
    std::unique_ptr<RemoteRegion> remote;
    REQUIRE_PASS(SwapKeys(r, target.get(), &remote));
    if (r.rank == 1) {
      REQUIRE(r.link->Recv(Deadline::After(60s)).has_value(), "rank 0 did not finish");
      return "";
    }
    REQUIRE(remote != nullptr, "no key from rank 1");
    std::string failure = PostIntoStalledProxy(r, abort, *remote);
    REQUIRE(r.link->Send(Bytes(1)));
    return failure;
  };
  EXPECT_EQ(RunPair(GetParam(), body, 90s, {{"M2N_CUDA_IPC_PROXY", "1"}}), "");
}
#else
TEST_P(CudaIpcTransportTest, AbortEndsWaitForProxyRoom) {
  GTEST_SKIP() << "built without CUDA: needs a GPU and the CUDA test kernels (tests/cuda_test_kernels.cu)";
}
#endif

INSTANTIATE_TEST_SUITE_P(cuda_ipc, CudaIpcTransportTest, ::testing::Values(kHost), TransportCaseName);

}  // namespace
}  // namespace m2n::testing

// The cuda_ipc transport below the Group: the conformance suite (transport_suite.h) on its
// host-driven path with host memory (shared-memory segments and immediate rings), which needs no
// GPU. Its stream-ordered and device-memory paths are tested in cuda_ipc_gpu_test.cc, but for
// AbortEndsWaitForProxyRoom below (it needs the transport itself, and a GPU; it skips without one).
// Also below the suite: keys and addresses whose declared sizes are larger than the memory they
// name (a forged or stale peer), refused at once instead of mapped and crashed on (SIGBUS) at the
// first write.
#include <algorithm>
#include <cstring>

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

using transport::Bytes;
using transport::Lane;
using transport::RemoteRegion;
using transport::Write;

class CudaIpcForgedTest : public TransportTest {};
INSTANTIATE_TEST_SUITE_P(cuda_ipc, CudaIpcForgedTest, ::testing::Values(kHost), TransportCaseName);

// The offset of the first `value` (8 bytes, host order) in `bytes` at an 8-byte boundary, or npos.
size_t FindWord(const Bytes& bytes, uint64_t value) {
  for (size_t i = 0; i + sizeof value <= bytes.size(); i += sizeof value) {
    if (std::memcmp(bytes.data() + i, &value, sizeof value) == 0) return i;
  }
  return std::string::npos;
}

// Overwrites the first shared-memory name in `bytes` (a key or an address) with `name`.
std::string ReplaceSegmentName(Bytes& bytes, const std::string& name) {
  const std::string prefix = "/m2n-cuda_ipc-";
  auto at =
      std::search(bytes.begin(), bytes.end(), reinterpret_cast<const std::byte*>(prefix.data()),
                  reinterpret_cast<const std::byte*>(prefix.data() + prefix.size()));
  REQUIRE(at != bytes.end(), "no segment name in the bytes");
  REQUIRE(static_cast<size_t>(bytes.end() - at) > name.size());
  std::memcpy(&*at, name.c_str(), name.size() + 1);
  return "";
}

// A key that declares 1 MiB of a 4 KiB segment. Before the check, Unpack mapped 1 MiB and a write
// at 512 KiB killed the writer with SIGBUS (rank 0 "killed by signal 7"); now the key is refused,
// naming the peer and both sizes, and the honest key still works.
TEST_P(CudaIpcForgedTest, KeyLargerThanItsSegmentIsRefused) {
  Body body = [](Rank& r) -> std::string {
    REQUIRE_PASS(Connect(r, 4));
    if (r.rank == 1) {
      ASSIGN_OR_FAIL(auto slots, r.t->Allocate(4096, MemoryKind::kHost));
      ASSIGN_OR_FAIL(Bytes honest, slots->PackRemoteKey());
      Bytes forged = honest;
      const size_t size_at = FindWord(forged, 4096);
      REQUIRE(size_at != std::string::npos, "no size in the key");
      const uint64_t declared = 1 << 20;
      std::memcpy(forged.data() + size_at, &declared, sizeof declared);
      REQUIRE(r.link->Send(forged) && r.link->Send(honest));
      REQUIRE(r.link->Sync());
    } else {
      std::optional<Bytes> forged = r.link->Recv();
      std::optional<Bytes> honest = r.link->Recv();
      REQUIRE(forged && honest);
      std::vector<std::byte> source(64, std::byte{7});
      ASSIGN_OR_FAIL(auto local, r.t->Register(source.data(), source.size(), MemoryKind::kHost));
      auto remote = r.t->UnpackRemoteKey(1, *forged);
      if (remote.ok()) {  // the old behaviour: the write below dies
        Write w = MakeWrite(r, Lane::kData, local.get(), 0, remote->get(), 512 << 10, 64, 1, 1);
        REQUIRE_OK(r.t->Post({&w, 1}));
        return "a key declaring 1 MiB of a 4 KiB segment was accepted and written";
      }
      const Status& s = remote.status();
      REQUIRE(s.code() == StatusCode::kDataLoss, s.ToString());
      for (const char* part : {"peer rank 1", "4096 bytes", "1048576"}) {
        REQUIRE(s.message().find(part) != std::string::npos, s.message());
      }
      ASSIGN_OR_FAIL(auto good, r.t->UnpackRemoteKey(1, *honest));
      REQUIRE(good->size() == 4096);
      REQUIRE(r.link->Sync());
    }
    return CloseAfterSync(r);
  };
  EXPECT_EQ(RunPair(GetParam(), body), "");
}

// A connection address whose mailbox names a 64-byte segment: the rings of rank 1 lie far past
// its end (max_unpolled 1024: 4096 entries a ring). Before the check, Connect mapped it and rank
// 1's first immediate died with SIGBUS; now Connect refuses it, naming the peer.
TEST_P(CudaIpcForgedTest, MailboxSmallerThanItsRingsIsRefused) {
  Body body = [](Rank& r) -> std::string {
    ASSIGN_OR_FAIL(r.t, r.transport->create(PairConfig(r, 1024)));
    ASSIGN_OR_FAIL(Bytes address, r.t->LocalAddress(r.peer));
    if (r.rank == 0) {
      ASSIGN_OR_FAIL(auto tiny, r.t->Allocate(64, MemoryKind::kHost));
      ASSIGN_OR_FAIL(Bytes key, tiny->PackRemoteKey());
      const std::string prefix = "/m2n-cuda_ipc-";
      const auto* text = reinterpret_cast<const char*>(key.data());
      const std::string_view view(text, key.size());
      const size_t at = view.find(prefix);
      REQUIRE(at != std::string_view::npos, "no segment name in the key");
      REQUIRE_PASS(ReplaceSegmentName(address, std::string(text + at)));
      REQUIRE(r.link->Send(address));
      REQUIRE(r.link->Sync());
      return "";
    }
    std::optional<Bytes> forged = r.link->Recv();
    REQUIRE(forged);
    Status s = r.t->Connect(0, *forged);
    if (s.ok()) {  // the old behaviour: the first immediate dies
      Write w = MakeWrite(r, Lane::kData, nullptr, 0, nullptr, 0, 0, 1, 1);
      REQUIRE_OK(r.t->Post({&w, 1}));
      return "a mailbox of 64 bytes was accepted for rings of " + std::to_string(2 * 4096 * 32) +
             "+ bytes";
    }
    REQUIRE(s.code() == StatusCode::kDataLoss, s.ToString());
    for (const char* part : {"peer rank 0", "has 64 bytes", "expected"}) {
      REQUIRE(s.message().find(part) != std::string::npos, s.message());
    }
    REQUIRE(r.link->Sync());
    return "";
  };
  EXPECT_EQ(RunPair(GetParam(), body), "");
}

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
  REQUIRE(cudaHostAlloc(reinterpret_cast<void**>(&release), sizeof *release, cudaHostAllocMapped) ==
          cudaSuccess);
  *release = 0;
  unsigned* release_device = nullptr;
  REQUIRE(cudaHostGetDevicePointer(reinterpret_cast<void**>(&release_device), release, 0) ==
          cudaSuccess);
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(LaunchOccupyUntil(release_device, stream) == cudaSuccess,
          "the kernel that holds every SM");
  std::vector<Write> batch;
  for (uint32_t i = 0; i < 300; ++i)
    batch.push_back(MakeWrite(r, Lane::kData, local.get(), 0, &remote, 0, 64, i, i));
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
  *reinterpret_cast<volatile unsigned*>(release) = 1;
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess, "the spinning kernel did not end");
  REQUIRE(s.code() == StatusCode::kAborted, s.ToString());
  REQUIRE(ms < 1000,
          "Post returned " + std::to_string(ms) + " ms after Abort (its bound: 20000 ms)");
  (void)r.t->Close(Deadline::AfterMs(2000));
  return "";
}

TEST_P(CudaIpcTransportTest, AbortEndsWaitForProxyRoom) {
  SKIP_IF_MISSING(AskInChild(NoCudaDevice));
  Body body = [](Rank& r) -> std::string {
    AbortToken abort;
    Config config =
        PairConfig(r, /*max_unpolled=*/200);  // room for 300 immediates in the peer's ring
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
  GTEST_SKIP()
      << "built without CUDA: needs a GPU and the CUDA test kernels (tests/cuda_test_kernels.cu)";
}
#endif

INSTANTIATE_TEST_SUITE_P(cuda_ipc, CudaIpcTransportTest, ::testing::Values(kHost),
                         TransportCaseName);

}  // namespace
}  // namespace m2n::testing

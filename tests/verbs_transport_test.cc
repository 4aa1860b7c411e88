// The verbs transport below the Group: the conformance suite (transport_suite.h) over RC queue
// pairs on the first RDMA device, and the tests only verbs has. Skipped, with the reason, where no
// RDMA device is present; scripts/test-verbs-vm.sh runs it on Soft-RoCE inside a VM.
#include "transport_suite.h"

namespace m2n::testing {
namespace {

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

INSTANTIATE_TEST_SUITE_P(verbs, VerbsTransportTest, ::testing::Values(kRc), TransportCaseName);

}  // namespace
}  // namespace m2n::testing

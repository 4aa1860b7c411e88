// The cuda_ipc transport below the Group: the conformance suite (transport_suite.h) on its
// host-driven path with host memory (shared-memory segments and immediate rings), which needs no
// GPU. Its stream-ordered and device-memory paths are tested in cuda_ipc_gpu_test.cc.
#include "transport_suite.h"

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

}  // namespace
}  // namespace m2n::testing

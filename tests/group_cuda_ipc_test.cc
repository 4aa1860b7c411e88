// The M x N suite (group_suite.cc) over the cuda_ipc transport with receive slots in host memory:
// POSIX shared memory and the transport's immediate rings, no GPU needed (the GPU paths are in
// cuda_ipc_gpu_test.cc). Holds cuda_ipc's host-driven path to the contract ucx and verbs meet.
#include "group_suite.h"

namespace m2n::testing {
namespace {

const TransportSetup kHost{"host", "cuda_ipc", {}};

INSTANTIATE_TEST_SUITE_P(cuda_ipc, GroupTest,
                         ::testing::Values(GroupCase{kHost, 1, 1}, GroupCase{kHost, 2, 2},
                                           GroupCase{kHost, 3, 2}, GroupCase{kHost, 1, 4}),
                         GroupCaseName);

INSTANTIATE_TEST_SUITE_P(cuda_ipc, GroupCreditTest,
                         ::testing::Values(GroupCase{kHost, 1, 1}, GroupCase{kHost, 2, 2}),
                         GroupCaseName);

}  // namespace
}  // namespace m2n::testing

// The M x N suite (group_suite.cc) over the UCX transport: shared memory, and TCP over loopback.
#include "group_suite.h"

namespace m2n::testing {
namespace {

const TransportSetup kShm{"shm", "ucx", {{"UCX_TLS", "shm,self"}}};
const TransportSetup kTcp{"tcp", "ucx", {{"UCX_TLS", "tcp,self"}, {"UCX_NET_DEVICES", "lo"}}};

INSTANTIATE_TEST_SUITE_P(ucx, GroupTest,
                         ::testing::Values(GroupCase{kShm, 1, 1}, GroupCase{kShm, 2, 2},
                                           GroupCase{kShm, 3, 2}, GroupCase{kShm, 1, 4},
                                           GroupCase{kTcp, 1, 1}, GroupCase{kTcp, 2, 2},
                                           GroupCase{kTcp, 3, 2}, GroupCase{kTcp, 1, 4}),
                         GroupCaseName);

INSTANTIATE_TEST_SUITE_P(ucx, GroupCreditTest,
                         ::testing::Values(GroupCase{kShm, 1, 1}, GroupCase{kShm, 2, 2},
                                           GroupCase{kTcp, 1, 1}, GroupCase{kTcp, 2, 2}),
                         GroupCaseName);

}  // namespace
}  // namespace m2n::testing

// The M x N suite (group_suite.cc) over the verbs transport: RC queue pairs on the first RDMA
// device found (M2N_VERBS_DEVICE etc. choose another). Skipped, with the reason, where no RDMA
// device is present; scripts/test-verbs-vm.sh runs it on Soft-RoCE inside a VM.
#include "group_suite.h"

namespace m2n::testing {
namespace {

const TransportSetup kRc{"rc", "verbs", {}};

INSTANTIATE_TEST_SUITE_P(verbs, GroupTest,
                         ::testing::Values(GroupCase{kRc, 1, 1}, GroupCase{kRc, 2, 2},
                                           GroupCase{kRc, 3, 2}, GroupCase{kRc, 1, 4}),
                         GroupCaseName);

INSTANTIATE_TEST_SUITE_P(verbs, GroupCreditTest,
                         ::testing::Values(GroupCase{kRc, 1, 1}, GroupCase{kRc, 2, 2}),
                         GroupCaseName);

}  // namespace
}  // namespace m2n::testing

// The kill-a-peer trials (kill_suite.cc) over the verbs transport: RC queue pairs on the first RDMA
// device found. Skipped, with the reason, where there is none; scripts/test-verbs-vm.sh runs them
// on Soft-RoCE inside a VM (their names start with verbs/).
#include "kill_suite.h"

namespace m2n::testing {
namespace {

INSTANTIATE_TEST_SUITE_P(verbs, KillTest, ::testing::Values(TransportSetup{"rc", "verbs", {}}),
                         KillSetupName);

}  // namespace
}  // namespace m2n::testing

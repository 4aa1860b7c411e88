// The bad-input suite (bad_input_suite.cc) over the verbs transport; skipped, with the reason,
// where no RDMA device is present.
#include "bad_input_suite.h"

namespace m2n::testing {
namespace {

INSTANTIATE_TEST_SUITE_P(verbs, BadInputTest, ::testing::Values(TransportSetup{"rc", "verbs", {}}),
                         SetupName);

}  // namespace
}  // namespace m2n::testing

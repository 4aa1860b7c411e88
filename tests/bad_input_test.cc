// The bad-input suite (bad_input_suite.cc) over the UCX transport (shared memory).
#include "bad_input_suite.h"

namespace m2n::testing {
namespace {

INSTANTIATE_TEST_SUITE_P(ucx, BadInputTest,
                         ::testing::Values(TransportSetup{"shm", "ucx", {{"UCX_TLS", "shm,self"}}}),
                         SetupName);

}  // namespace
}  // namespace m2n::testing

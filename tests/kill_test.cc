// The kill-a-peer trials (kill_suite.cc) over UCX: shared memory, and TCP over loopback.
#include "kill_suite.h"

namespace m2n::testing {
namespace {

INSTANTIATE_TEST_SUITE_P(
    ucx, KillTest,
    ::testing::Values(TransportSetup{"shm", "ucx", {{"UCX_TLS", "shm,self"}}},
                      TransportSetup{
                          "tcp", "ucx", {{"UCX_TLS", "tcp,self"}, {"UCX_NET_DEVICES", "lo"}}}),
    KillSetupName);

}  // namespace
}  // namespace m2n::testing

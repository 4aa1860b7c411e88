// The M x N suite (group_suite.cc) over the UCX transport: shared memory, and TCP over loopback.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <string>

#include "group_suite.h"
#include "harness.h"
#include "m2n/m2n.h"

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

// Two groups in one job (as the MoE pipeline's host and device groups): the second is made from the
// first one's options with a store port of its own, while the launcher's M2N_MASTER_PORT names the
// first one's. The second must reach its own store (not the first's: 'rank already connected'), and
// each carries its own messages.
TEST(TwoGroups, SecondGroupFromTheFirstOnesOptionsKeepsItsPort) {
  const int second_port = FreePort();
  auto outcomes = RunRanks(2, [&](int rank, int port) -> int {
    ApplySetup(kShm);
    setenv("M2N_MASTER_PORT", std::to_string(port).c_str(), 1);  // as SpawnLocal / torchrun do
    auto first = Group::Create(TestOptions(1, 1, rank, port));
    CHILD_OK(first.status());
    Options o = (*first)->options();
    o.bootstrap.master_port = second_port;
    o.bootstrap.job_id += "/second";
    auto second = Group::Create(o);
    CHILD_OK(second.status());
    CHILD_CHECK((*second)->options().bootstrap.master_port == second_port, "port %d, expected %d",
                (*second)->options().bootstrap.master_port, second_port);
    for (Group* g : {first->get(), second->get()}) {
      const bool on_second = g == second->get();
      if (rank == 0) {
        std::byte data[64];
        FillPattern(data, sizeof(data), 0, 1, on_second);
        auto region = g->RegisterMemory(data, sizeof(data));
        CHILD_OK(region.status());
        CHILD_OK(g->Send(SendRequest{1, data, sizeof(data)}, Deadline::AfterMs(20000)));
        CHILD_OK(g->Close(Deadline::AfterMs(20000)));
      } else {
        auto got = g->Receive(0, Deadline::AfterMs(20000));
        CHILD_OK(got.status());
        CHILD_CHECK(CountWrong(got->data, got->length, 0, 1, on_second) == 0 && got->length == 64,
                    "group %d: wrong payload", int(on_second));
        CHILD_OK(g->Release(*got));
        CHILD_OK(g->Close(Deadline::AfterMs(20000)));
      }
    }
    return 0;
  });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

}  // namespace
}  // namespace m2n::testing

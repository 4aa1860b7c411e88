// Group::device_group() where the device-side API cannot run, on a machine without a GPU (CI): a
// UCX group and a cuda_ipc group with host slots get a clear error naming what is missing, and the
// failed call leaves the group free to use its host-driven path. The API itself is tested on a GPU
// (device_api_gpu_test.cc).
#include <gtest/gtest.h>

#include <string>

#include "harness.h"
#include "m2n/m2n.h"
#include "transport_setup.h"

namespace m2n::testing {
namespace {

// One rank: device_group() fails with `code` and a message holding `text`, twice (nothing was
// taken), then one message goes each way by the host-driven path.
int RefusedThenHostPath(int rank, int port, StatusCode code, const char* text) {
  Options o = TestOptions(1, 1, rank, port);
  auto created = Group::Create(o);
  CHILD_OK(created.status());
  Group& g = **created;
  for (int i = 0; i < 2; ++i) {
    StatusOr<DeviceGroup> d = g.device_group();
    CHILD_CHECK(d.status().code() == code, "%s", d.status().ToString().c_str());
    CHILD_CHECK(d.status().message().find(text) != std::string::npos &&
                    d.status().message().find("device_group()") != std::string::npos,
                "%s", d.status().ToString().c_str());
  }
  const int peer = g.peers()[0];
  char byte = static_cast<char>(rank);
  auto region = g.RegisterMemory(&byte, 1);
  CHILD_OK(region.status());
  CHILD_OK(g.Send(SendRequest{peer, &byte, 1}, Deadline::AfterMs(20000)));
  auto m = g.Receive(peer, Deadline::AfterMs(20000));
  CHILD_OK(m.status());
  CHILD_OK(g.Release(*m));
  CHILD_OK(g.Close(Deadline::AfterMs(20000)));
  return 0;
}

void RunRefused(const TransportSetup& setup, StatusCode code, const char* text) {
  if (std::string why = SkipReason(setup); !why.empty()) GTEST_SKIP() << why;
  auto outcomes = RunRanks(2, [&](int rank, int port) {
    ApplySetup(setup);
    return RefusedThenHostPath(rank, port, code, text);
  });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

TEST(DeviceGroup, UcxGroupSaysItCannot) {
  RunRefused(TransportSetup{"shm", "ucx", {{"UCX_TLS", "shm,self"}}},
             StatusCode::kFailedPrecondition, "transport 'ucx' cannot serve the device-side API");
}

TEST(DeviceGroup, HostSlotGroupSaysSlotsMustBeOnTheDevice) {
  RunRefused(TransportSetup{"host", "cuda_ipc", {}}, StatusCode::kFailedPrecondition,
             "needs receive slots in device memory (Options::slot_memory = kCuda)");
}

}  // namespace
}  // namespace m2n::testing

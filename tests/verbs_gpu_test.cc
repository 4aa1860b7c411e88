// The stream-ordered GPU path over verbs (transports/verbs/stream.h): GPU receive slots registered
// for GPUDirect RDMA (dma-buf), a proxy thread posting RDMA writes-with-immediate once the producer
// kernel is done, streams held by cuStreamWaitValue32. Real processes, one per GPU (shared when
// there are fewer GPUs than ranks). Needs a CUDA device and an RDMA NIC on one machine; skipped,
// saying why, elsewhere (the proxy alone is tested in the Soft-RoCE VM: verbs_stream_test.cc).
//   StreamPayload: 1x1 and 2x2, 1 B to 1 MB, dispatch and combine, producer and consumer kernels.
//   CreditPressure: 100 messages per pair through 2 slots, the sender enqueuing all of them at
//   once.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "gpu_test_util.h"
#include "harness.h"
#include "m2n/m2n.h"
#include "transports/verbs/context.h"

namespace m2n {
namespace {

using testing::AskInChild;
using testing::DescribeFailures;
using testing::NoCudaDevice;
using testing::RunRanks;

// Why this machine cannot run the test ("" when it can), asked once.
std::string MissingHardware() {
  static const std::string reason = AskInChild([] {
    std::string why = NoCudaDevice();
    if (Status rdma = transport::verbs::Probe(); !rdma.ok()) {
      why += (why.empty() ? "" : "; ") + std::string("no RDMA NIC: ") + rdma.ToString();
    }
    return why;
  });
  return reason;
}

#define SKIP_WITHOUT_GPU_AND_NIC() SKIP_IF_MISSING(MissingHardware())

Options VerbsGpuOptions(int m, int n, int rank, int port, size_t slot_bytes, int depth) {
  Options o = testing::DeviceSlotOptions("verbs", m, n, rank, port, slot_bytes, depth);
  cudaFree(nullptr);  // the context the verbs transport finds current
  return o;
}

using Shape = std::tuple<int, int>;
class VerbsStreamPayload : public ::testing::TestWithParam<Shape> {};

int StreamPayloadRank(int m, int n, int rank, int port) {
  const std::vector<size_t> sizes = {1, 4096, 65536 + 3, size_t{1} << 20};
  auto created = Group::Create(VerbsGpuOptions(m, n, rank, port, sizes.back(), 2));
  CHILD_OK(created.status());
  Group& g = **created;
  CHILD_CHECK(g.transport_name() == "verbs", "transport %s",
              std::string(g.transport_name()).c_str());
  return testing::StreamPayloadRank(g, rank, sizes, 2, /*check_fields=*/false);
}

TEST_P(VerbsStreamPayload, BothDirections) {
  SKIP_WITHOUT_GPU_AND_NIC();
  auto [m, n] = GetParam();
  auto outcomes =
      RunRanks(m + n, [&](int rank, int port) { return StreamPayloadRank(m, n, rank, port); });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

INSTANTIATE_TEST_SUITE_P(Shapes, VerbsStreamPayload, ::testing::Values(Shape{1, 1}, Shape{2, 2}),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                           return std::to_string(std::get<0>(info.param)) + "x" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST(VerbsGpu, CreditPressure) {
  SKIP_WITHOUT_GPU_AND_NIC();
  constexpr int kMessages = 100;
  constexpr size_t kMax = 5000;
  auto outcomes = RunRanks(4, [&](int rank, int port) {
    auto created = Group::Create(VerbsGpuOptions(2, 2, rank, port, kMax, 2));
    CHILD_OK(created.status());
    Group& g = **created;
    return testing::CreditPressureRank(g, rank, kMessages, kMax, /*check_slots=*/false);
  });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

}  // namespace
}  // namespace m2n

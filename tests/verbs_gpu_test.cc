// The stream-ordered GPU path over verbs (transports/verbs/stream.h): GPU receive slots registered
// for GPUDirect RDMA (dma-buf), a proxy thread posting RDMA writes-with-immediate once the producer
// kernel is done, streams held by cuStreamWaitValue32. Real processes, one per GPU (shared when
// there are fewer GPUs than ranks). Needs a CUDA device and an RDMA NIC on one machine; skipped,
// saying why, elsewhere (the proxy alone is tested in the Soft-RoCE VM: verbs_stream_test.cc).
//   StreamPayload: 1x1 and 2x2, 1 B to 1 MB, dispatch and combine, producer and consumer kernels.
//   CreditPressure: 100 messages per pair through 2 slots, the sender enqueuing all of them at
//   once.
//   DevicePayload: the device-side API (m2n/device.cuh) over verbs, 1x1 and 2x2: the kernels of
//   device_api_gpu_test.cc, block and warp scope, their messages carried by the proxy (staging
//   slot -> write-with-imm -> the peer's slot; the proxy alone: verbs_device_ring_test.cc).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "device_api_test_kernels.h"
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

class VerbsDevicePayload : public ::testing::TestWithParam<Shape> {};

// Rounds of 2 messages to every peer then from every peer, alternating block and warp scope; no
// byte wrong, no wait that gave up, the group well after.
int DevicePayloadRank(int m, int n, int rank, int port) {
  constexpr size_t kSlotBytes = 256 << 10;
  constexpr int kDepth = 2;
  auto created = Group::Create(VerbsGpuOptions(m, n, rank, port, kSlotBytes, kDepth));
  CHILD_OK(created.status());
  Group& g = **created;
  auto handle = g.device_group();
  CHILD_OK(handle.status());
  CHILD_CHECK(handle->ring.entries != nullptr, "verbs handed out no descriptor ring");
  cudaStream_t stream = nullptr;
  CUDA_CHILD_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  testing::DeviceBuffer words(2 * sizeof(unsigned long long));
  auto* word = static_cast<unsigned long long*>(words.data);
  CUDA_CHILD_OK(cudaMemsetAsync(word, 0, 2 * sizeof(unsigned long long), stream));
  for (int round = 0; round < 6; ++round) {
    testing::DeviceTrial t;
    t.group = *handle;
    t.rank = g.rank();
    t.count = kDepth;
    t.first_number = static_cast<unsigned long long>(round) * kDepth;
    t.warp = round % 2 == 1;
    t.num_sizes = 4;
    const unsigned long long sizes[] = {0, 1, 65539, kSlotBytes};
    for (int i = 0; i < 4; ++i) t.sizes[i] = sizes[i];
    t.wrong = word;
    t.gave_up = word + 1;
    CUDA_CHILD_OK(testing::LaunchDeviceSends(t, stream));
    CUDA_CHILD_OK(testing::LaunchDeviceReceives(t, stream));
  }
  CUDA_CHILD_OK(cudaStreamSynchronize(stream));
  unsigned long long host[2] = {};
  CUDA_CHILD_OK(cudaMemcpy(host, word, sizeof host, cudaMemcpyDeviceToHost));
  CHILD_CHECK(host[0] == 0, "%llu wrong (bytes, + 2^40 per wrong length)", host[0]);
  CHILD_CHECK(host[1] == 0, "%llu device waits gave up", host[1]);
  CHILD_OK(g.Progress());
  CHILD_OK(g.Close(Deadline::AfterMs(20000)));
  return 0;
}

TEST_P(VerbsDevicePayload, BlockAndWarp) {
  SKIP_WITHOUT_GPU_AND_NIC();
  auto [m, n] = GetParam();
  auto outcomes =
      RunRanks(m + n, [&](int rank, int port) { return DevicePayloadRank(m, n, rank, port); });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

INSTANTIATE_TEST_SUITE_P(Shapes, VerbsDevicePayload, ::testing::Values(Shape{1, 1}, Shape{2, 2}),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                           return std::to_string(std::get<0>(info.param)) + "x" +
                                  std::to_string(std::get<1>(info.param));
                         });

}  // namespace
}  // namespace m2n

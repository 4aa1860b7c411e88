// GPU tests of the device-side API (m2n/device.h, m2n/device.cuh) over cuda_ipc, in real processes
// that share one GPU when there are fewer GPUs than ranks (CUDA IPC works between processes of
// one GPU). The user kernels are device_api_test_kernels.cu. They skip, saying why, without a GPU.
//   Payload: shapes 1x1, 2x2, 3x1, 1x3, both directions; block-scope, warp-scope and multi-block
//     messages of 0 B to slot_bytes, no host call between the sender's stores and the check; a
//     second device_group() gives the same handle, a stream-ordered call is refused.
//   CreditPressure: 300 messages per pair through 2 slots, the receiver starting 300 ms late.
//   GraphCapture: the send and receive kernels captured into CUDA graphs and replayed 20 times.
//   ReceiverNeverComes: the sender's credit wait gives up within the timeout and the next host call
//     is kDeadlineExceeded naming the peer and slot; mixing data paths is refused.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "device_api_test_kernels.h"
#include "gpu_test_util.h"
#include "harness.h"
#include "m2n/m2n.h"

namespace m2n {
namespace {

using testing::AskInChild;
using testing::DescribeFailures;
using testing::DeviceTrial;
using testing::NoCudaDevice;
using testing::RunRanks;

std::string NoGpuReason() {
  static const std::string reason = AskInChild(NoCudaDevice);
  return reason;
}
#define SKIP_WITHOUT_GPU() SKIP_IF_MISSING(NoGpuReason())

// A rank's group with device slots, its DeviceGroup, a stream and three device words: [0] wrong
// bytes, [1] waits that gave up, [2] a replay counter.
struct DeviceRank {
  std::unique_ptr<Group> group;
  DeviceGroup handle;
  cudaStream_t stream = nullptr;
  // Allocated once the rank's GPU is selected (DeviceSlotOptions), on that GPU.
  std::unique_ptr<testing::DeviceBuffer> words;
  unsigned long long* word(int i) const {
    return static_cast<unsigned long long*>(words->data) + i;
  }

  DeviceTrial Trial(int count, std::initializer_list<unsigned long long> sizes) const {
    DeviceTrial t;
    t.group = handle;
    t.rank = group->rank();
    t.count = count;
    t.num_sizes = 0;
    for (unsigned long long s : sizes) t.sizes[t.num_sizes++] = s;
    t.wrong = word(0);
    t.gave_up = word(1);
    return t;
  }
};

// Creates the rank's group (M x N, device slots) and its DeviceGroup; "" or what failed.
std::string MakeRank(DeviceRank& r, const Options& o) {
  auto created = Group::Create(o);
  if (!created.ok()) return created.status().ToString();
  r.group = std::move(*created);
  auto handle = r.group->device_group();
  if (!handle.ok()) return handle.status().ToString();
  r.handle = *handle;
  if (cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking) != cudaSuccess) return "stream";
  r.words = std::make_unique<testing::DeviceBuffer>(3 * sizeof(unsigned long long));
  // On the rank's stream: the legacy stream's cudaMemset would not order before its kernels.
  if (cudaMemsetAsync(r.words->data, 0, 3 * sizeof(unsigned long long), r.stream) != cudaSuccess)
    return "memset";
  return "";
}

// The end of a trial: the stream done, no wrong byte, no wait that gave up, the group still well,
// and a clean Close. A rank's exit code.
int Finish(DeviceRank& r) {
  CUDA_CHILD_OK(cudaStreamSynchronize(r.stream));
  unsigned long long host[2] = {};
  CUDA_CHILD_OK(cudaMemcpy(host, r.words->data, sizeof host, cudaMemcpyDeviceToHost));
  CHILD_CHECK(host[0] == 0, "%llu wrong (bytes, + 2^40 per wrong length)", host[0]);
  CHILD_CHECK(host[1] == 0, "%llu device waits gave up", host[1]);
  CHILD_OK(r.group->Progress());
  CHILD_OK(r.group->Close(Deadline::AfterMs(20000)));
  return 0;
}

// ---------------------------------------------------------------------------------------------

using Shape = std::tuple<int, int>;
class DevicePayload : public ::testing::TestWithParam<Shape> {};

// Rounds of `depth` messages to every peer, then as many from every peer, on one stream (the
// credits of a round are there: the peer received the last round), rotating through block scope,
// warp scope and multi-block messages (4 blocks a message, one message a launch).
int PayloadRank(int m, int n, int rank, int port) {
  constexpr size_t kSlotBytes = 256 << 10;
  constexpr int kDepth = 2;
  constexpr int kRounds = 6;
  DeviceRank r;
  std::string made =
      MakeRank(r, testing::DeviceSlotOptions("cuda_ipc", m, n, rank, port, kSlotBytes, kDepth));
  CHILD_CHECK(made.empty(), "%s", made.c_str());
  CHILD_CHECK(r.handle.num_peers == static_cast<int>(r.group->peers().size()) &&
                  r.handle.slot_bytes == kSlotBytes && r.handle.slot_depth == kDepth,
              "handle: %d peers, %llu slot bytes", r.handle.num_peers, r.handle.slot_bytes);
  auto again = r.group->device_group();  // the same handle, the same device words
  CHILD_CHECK(again.ok() && again->peers == r.handle.peers, "second device_group(): %s",
              again.status().ToString().c_str());
  Status mixed = r.group->SendOnStream({}, r.stream);
  CHILD_CHECK(mixed.code() == StatusCode::kFailedPrecondition &&
                  mixed.message().find("device-side API") != std::string::npos,
              "SendOnStream after device_group(): %s", mixed.ToString().c_str());
  const auto sizes = {0ull, 1ull, 4095ull, 65539ull, 1000ull, 0ull + kSlotBytes};
  for (int round = 0; round < kRounds; ++round) {
    const unsigned long long first = static_cast<unsigned long long>(round) * kDepth;
    DeviceTrial send = r.Trial(kDepth, sizes);
    send.first_number = first;
    send.warp = round % 3 == 1;
    if (round % 3 == 2) {
      send.count = 1;
      send.blocks_per_message = 4;
      for (int k = 0; k < kDepth; ++k) {
        send.first_number = first + static_cast<unsigned long long>(k);
        CUDA_CHILD_OK(testing::LaunchDeviceSends(send, r.stream));
      }
    } else {
      CUDA_CHILD_OK(testing::LaunchDeviceSends(send, r.stream));
    }
    DeviceTrial receive = r.Trial(kDepth, sizes);
    receive.first_number = first;
    receive.warp = round % 3 == 1;
    CUDA_CHILD_OK(testing::LaunchDeviceReceives(receive, r.stream));
  }
  return Finish(r);
}

TEST_P(DevicePayload, BothDirectionsBlockWarpMultiBlock) {
  SKIP_WITHOUT_GPU();
  auto [m, n] = GetParam();
  auto outcomes =
      RunRanks(m + n, [&](int rank, int port) { return PayloadRank(m, n, rank, port); });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

INSTANTIATE_TEST_SUITE_P(Shapes, DevicePayload,
                         ::testing::Values(Shape{1, 1}, Shape{2, 2}, Shape{3, 1}, Shape{1, 3}),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                           return std::to_string(std::get<0>(info.param)) + "x" +
                                  std::to_string(std::get<1>(info.param));
                         });

// ---------------------------------------------------------------------------------------------

TEST(DeviceApi, CreditPressure) {
  SKIP_WITHOUT_GPU();
  constexpr int kMessages = 300;
  auto outcomes = RunRanks(4, [&](int rank, int port) {
    DeviceRank r;
    std::string made =
        MakeRank(r, testing::DeviceSlotOptions("cuda_ipc", 2, 2, rank, port, 5000, 2));
    CHILD_CHECK(made.empty(), "%s", made.c_str());
    DeviceTrial t = r.Trial(kMessages, {1, 5000, 777, 0});
    if (r.group->role() == Role::kSender) {
      CUDA_CHILD_OK(testing::LaunchDeviceSends(t, r.stream));  // far ahead: waits for credits
    } else {
      usleep(300 * 1000);
      CUDA_CHILD_OK(testing::LaunchDeviceReceives(t, r.stream));
    }
    return Finish(r);
  });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

// ---------------------------------------------------------------------------------------------

TEST(DeviceApi, GraphCapture) {
  SKIP_WITHOUT_GPU();
  constexpr int kReplays = 20;
  auto outcomes = RunRanks(3, [&](int rank, int port) {
    DeviceRank r;
    std::string made =
        MakeRank(r, testing::DeviceSlotOptions("cuda_ipc", 1, 2, rank, port, 100000, 2));
    CHILD_CHECK(made.empty(), "%s", made.c_str());
    DeviceTrial t = r.Trial(1, {100000, 3, 0});
    t.replay = r.word(2);  // message n = the replay's number
    CUDA_CHILD_OK(cudaStreamBeginCapture(r.stream, cudaStreamCaptureModeThreadLocal));
    if (r.group->role() == Role::kSender) {
      CUDA_CHILD_OK(testing::LaunchDeviceSends(t, r.stream));
    } else {
      CUDA_CHILD_OK(testing::LaunchDeviceReceives(t, r.stream));
    }
    CUDA_CHILD_OK(testing::LaunchAddOne(r.word(2), r.stream));
    cudaGraph_t graph;
    CUDA_CHILD_OK(cudaStreamEndCapture(r.stream, &graph));
    cudaGraphExec_t exec;
    CUDA_CHILD_OK(cudaGraphInstantiate(&exec, graph, 0));
    for (int i = 0; i < kReplays; ++i) CUDA_CHILD_OK(cudaGraphLaunch(exec, r.stream));
    CUDA_CHILD_OK(cudaStreamSynchronize(r.stream));
    unsigned long long replays = 0;
    CUDA_CHILD_OK(cudaMemcpy(&replays, r.word(2), sizeof replays, cudaMemcpyDeviceToHost));
    CHILD_CHECK(replays == kReplays, "%llu replays counted", replays);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    return Finish(r);
  });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

// ---------------------------------------------------------------------------------------------

TEST(DeviceApi, ReceiverNeverComes) {
  SKIP_WITHOUT_GPU();
  auto outcomes = RunRanks(2, [&](int rank, int port) {
    Options o = testing::DeviceSlotOptions("cuda_ipc", 1, 1, rank, port, 4096, 2);
    o.bootstrap.timeout = std::chrono::milliseconds(3000);  // bounds the device waits
    if (rank == 1) {
      // The receiver joins the group but never receives; it leaves without Close.
      auto created = Group::Create(o);
      CHILD_OK(created.status());
      usleep(6000 * 1000);
      return 0;
    }
    DeviceRank r;
    std::string made = MakeRank(r, o);
    CHILD_CHECK(made.empty(), "%s", made.c_str());
    // One group, one data path.
    char byte = 0;
    Status mixed = r.group->Send(SendRequest{1, &byte, 1}, Deadline::AfterMs(1000));
    CHILD_CHECK(mixed.code() == StatusCode::kFailedPrecondition &&
                    mixed.message().find("device-side API") != std::string::npos &&
                    mixed.message().find("host-driven") != std::string::npos,
                "mixing paths: %s", mixed.ToString().c_str());
    // Two messages fill the two slots; the third waits for slot 0's credit and gives up.
    DeviceTrial t = r.Trial(3, {16});
    const auto start = std::chrono::steady_clock::now();
    CUDA_CHILD_OK(testing::LaunchDeviceSends(t, r.stream));
    CUDA_CHILD_OK(cudaStreamSynchronize(r.stream));
    const auto waited = std::chrono::steady_clock::now() - start;
    CHILD_CHECK(waited < std::chrono::seconds(5), "the wait took %lld ms",
                static_cast<long long>(
                    std::chrono::duration_cast<std::chrono::milliseconds>(waited).count()));
    unsigned long long gave_up = 0;
    CUDA_CHILD_OK(cudaMemcpy(&gave_up, r.word(1), sizeof gave_up, cudaMemcpyDeviceToHost));
    CHILD_CHECK(gave_up == 1, "%llu waits gave up", gave_up);
    Status s = r.group->Progress();
    CHILD_CHECK(s.code() == StatusCode::kDeadlineExceeded &&
                    s.message().find("rank 1") != std::string::npos &&
                    s.message().find("slot 0") != std::string::npos &&
                    s.message().find("device-side") != std::string::npos,
                "%s", s.ToString().c_str());
    auto again = r.group->device_group();
    CHILD_CHECK(again.status().code() == StatusCode::kDeadlineExceeded, "%s",
                again.status().ToString().c_str());
    return 0;
  });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

}  // namespace
}  // namespace m2n

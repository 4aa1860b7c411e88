// GPU tests of the cuda_ipc transport and the stream-ordered calls, in real processes, one per GPU
// (several processes share a GPU when there are fewer GPUs than ranks). They skip, saying why, on a
// machine without a CUDA device.
//   StreamPayload: shapes 1x1, 2x2, 3x1, 1x3; 1 B to 4 MB; dispatch and combine; a producer kernel
//     feeds every send and a consumer kernel checks every receive, with no host wait in between.
//   CreditPressure: 300 messages per pair through 2 slots, the sender far ahead of the receiver.
//   GraphCapture: send and receive captured into CUDA graphs and replayed 20 times.
//   BadInput, DeviceWaitTimeout: the errors a user sees.
//   HostPath: the host-driven Send / Receive over cuda_ipc (host and device slots, and device slots
//     through the copy proxy kernel), ACKs included.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_test_kernels.h"
#include "gpu_test_util.h"
#include "harness.h"
#include "m2n/m2n.h"

namespace m2n {
namespace {

using testing::AskInChild;
using testing::DescribeFailures;
using testing::DeviceBuffer;
using testing::LaunchCheck;
using testing::LaunchFill;
using testing::LaunchIncrement;
using testing::NoCudaDevice;
using testing::RunRanks;

#define SKIP_WITHOUT_GPU() SKIP_IF_MISSING(NoGpuReason())

// Why there is no GPU here ("" when there is one), asked once.
std::string NoGpuReason() {
  static const std::string reason = AskInChild(NoCudaDevice);
  return reason;
}

// Selects rank's GPU (rank mod the GPUs) and makes options for a device-slot cuda_ipc group.
Options GpuOptions(int m, int n, int rank, int port, size_t slot_bytes, int depth) {
  return testing::DeviceSlotOptions("cuda_ipc", m, n, rank, port, slot_bytes, depth);
}

// ---------------------------------------------------------------------------------------------

using Shape = std::tuple<int, int>;
class StreamPayload : public ::testing::TestWithParam<Shape> {};

int StreamPayloadRank(int m, int n, int rank, int port) {
  const std::vector<size_t> sizes = {1, 7, 4096, 65536 + 3, size_t{1} << 20, size_t{4} << 20};
  Options o = GpuOptions(m, n, rank, port, sizes.back(), 2);
  auto created = Group::Create(o);
  CHILD_OK(created.status());
  Group& g = **created;
  CHILD_CHECK(g.transport_name() == "cuda_ipc", "transport %s",
              std::string(g.transport_name()).c_str());
  return testing::StreamPayloadRank(g, rank, sizes, 3, /*check_fields=*/true);
}

TEST_P(StreamPayload, BothDirectionsAllSizes) {
  SKIP_WITHOUT_GPU();
  auto [m, n] = GetParam();
  auto outcomes =
      RunRanks(m + n, [&](int rank, int port) { return StreamPayloadRank(m, n, rank, port); });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

INSTANTIATE_TEST_SUITE_P(Shapes, StreamPayload,
                         ::testing::Values(Shape{1, 1}, Shape{2, 2}, Shape{3, 1}, Shape{1, 3}),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                           return std::to_string(std::get<0>(info.param)) + "x" +
                                  std::to_string(std::get<1>(info.param));
                         });

// ---------------------------------------------------------------------------------------------

TEST(CudaIpc, CreditPressure) {
  SKIP_WITHOUT_GPU();
  constexpr int kMessages = 300;
  constexpr size_t kMax = 5000;
  auto outcomes = RunRanks(4, [&](int rank, int port) {
    Options o = GpuOptions(2, 2, rank, port, kMax, 2);
    auto created = Group::Create(o);
    CHILD_OK(created.status());
    Group& g = **created;
    return testing::CreditPressureRank(g, rank, kMessages, kMax, /*check_slots=*/true);
  });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

// ---------------------------------------------------------------------------------------------

TEST(CudaIpc, GraphCapture) {
  SKIP_WITHOUT_GPU();
  constexpr int kReplays = 20;
  constexpr size_t kBytes = 100000;
  auto outcomes = RunRanks(3, [&](int rank, int port) {
    Options o = GpuOptions(1, 2, rank, port, kBytes, 2);
    auto created = Group::Create(o);
    CHILD_OK(created.status());
    Group& g = **created;
    std::vector<int> peers(g.peers().begin(), g.peers().end());
    DeviceBuffer buffer(kBytes * peers.size());
    DeviceBuffer words(2 * sizeof(unsigned long long));  // [0]: replay counter, [1]: wrong bytes
    CUDA_CHILD_OK(cudaMemset(words.data, 0, 2 * sizeof(unsigned long long)));
    auto* counter = static_cast<unsigned long long*>(words.data);
    auto region = g.RegisterMemory(buffer.data, kBytes * peers.size(), MemoryKind::kCuda);
    CHILD_OK(region.status());
    cudaStream_t stream;
    CUDA_CHILD_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    std::vector<Message> got(peers.size());
    CUDA_CHILD_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    Status captured;
    if (g.role() == Role::kSender) {
      std::vector<SendRequest> requests;
      for (size_t i = 0; i < peers.size(); ++i) {
        std::byte* data = buffer.bytes() + i * kBytes;
        CUDA_CHILD_OK(LaunchFill(data, kBytes, rank, peers[i], 7, counter, stream));
        requests.push_back({peers[i], data, kBytes});
      }
      captured = g.SendOnStream(requests, stream);
    } else {
      captured = g.ReceiveOnStream(peers, got, stream);
      for (size_t i = 0; i < peers.size() && captured.ok(); ++i) {
        CUDA_CHILD_OK(LaunchCheck(got[i].data, got[i].device_length, kBytes, peers[i], rank, 7,
                                  counter, counter + 1, stream));
      }
      if (captured.ok()) captured = g.ReleaseOnStream(got, stream);
    }
    CUDA_CHILD_OK(LaunchIncrement(counter, stream));
    cudaGraph_t graph;
    CUDA_CHILD_OK(cudaStreamEndCapture(stream, &graph));
    CHILD_OK(captured);
    cudaGraphExec_t exec;
    CUDA_CHILD_OK(cudaGraphInstantiate(&exec, graph, 0));
    for (int r = 0; r < kReplays; ++r) CUDA_CHILD_OK(cudaGraphLaunch(exec, stream));
    CUDA_CHILD_OK(cudaStreamSynchronize(stream));
    unsigned long long host[2] = {};
    CUDA_CHILD_OK(cudaMemcpy(host, words.data, sizeof host, cudaMemcpyDeviceToHost));
    CHILD_CHECK(host[0] == kReplays, "%llu replays counted", host[0]);
    CHILD_CHECK(host[1] == 0, "%llu wrong bytes", host[1]);
    CHILD_OK(g.Progress());
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    CHILD_OK(g.Close(Deadline::AfterMs(20000)));
    return 0;
  });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

// ---------------------------------------------------------------------------------------------

TEST(CudaIpc, BadInput) {
  SKIP_WITHOUT_GPU();
  auto outcomes = RunRanks(2, [&](int rank, int port) {
    Options o = GpuOptions(1, 1, rank, port, 4096, 2);
    o.bootstrap.timeout =
        std::chrono::milliseconds(3000);  // bounds the receiver's last device wait
    auto created = Group::Create(o);
    CHILD_OK(created.status());
    Group& g = **created;
    const int peer = g.peers()[0];
    cudaStream_t stream;
    CUDA_CHILD_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    std::vector<std::byte> host(4096);
    DeviceBuffer device(8192);
    // Host memory cannot be registered as device memory.
    auto wrong_kind = g.RegisterMemory(host.data(), host.size(), MemoryKind::kCuda);
    CHILD_CHECK(wrong_kind.status().code() == StatusCode::kInvalidArgument, "%s",
                wrong_kind.status().ToString().c_str());
    auto host_region = g.RegisterMemory(host.data(), host.size(), MemoryKind::kHost);
    CHILD_OK(host_region.status());
    auto device_region = g.RegisterMemory(device.data, 4096, MemoryKind::kCuda);
    CHILD_OK(device_region.status());
    if (g.role() == Role::kSender) {
      Status s = g.SendOnStream(std::vector<SendRequest>{{peer, host.data(), 16}}, stream);
      CHILD_CHECK(s.code() == StatusCode::kInvalidArgument &&
                      s.message().find("host memory") != std::string::npos,
                  "host source: %s", s.ToString().c_str());
      s = g.SendOnStream(std::vector<SendRequest>{{peer, device.bytes() + 4096, 16}}, stream);
      CHILD_CHECK(s.code() == StatusCode::kInvalidArgument &&
                      s.message().find("not inside memory registered") != std::string::npos,
                  "unregistered: %s", s.ToString().c_str());
      s = g.SendOnStream(std::vector<SendRequest>{{peer, device.data, 5000}}, stream);
      CHILD_CHECK(s.code() == StatusCode::kInvalidArgument, "too long: %s", s.ToString().c_str());
      std::vector<SendRequest> three(3, SendRequest{peer, device.data, 16});
      s = g.SendOnStream(three, stream);
      CHILD_CHECK(s.code() == StatusCode::kInvalidArgument, "3 > depth: %s", s.ToString().c_str());
      CHILD_OK(g.SendOnStream(std::vector<SendRequest>{{peer, device.data, 16}}, stream));
      s = g.Send(SendRequest{peer, host.data(), 16}, Deadline::AfterMs(1000));
      CHILD_CHECK(s.code() == StatusCode::kFailedPrecondition, "mixing paths: %s",
                  s.ToString().c_str());
    } else {
      std::vector<Message> got(1);
      CHILD_OK(g.ReceiveOnStream(std::vector<int>{peer}, got, stream));
      CHILD_OK(g.ReleaseOnStream(got, stream));
      Status s = g.ReleaseOnStream(got, stream);
      CHILD_CHECK(s.code() == StatusCode::kFailedPrecondition, "double release: %s",
                  s.ToString().c_str());
      std::vector<Message> two(2);
      CHILD_OK(g.ReceiveOnStream(std::vector<int>{peer}, {&two[0], 1}, stream));
      CHILD_OK(g.ReceiveOnStream(std::vector<int>{peer}, {&two[1], 1}, stream));
      std::vector<Message> third(1);
      s = g.ReceiveOnStream(std::vector<int>{peer}, third, stream);
      CHILD_CHECK(s.code() == StatusCode::kFailedPrecondition &&
                      s.message().find("release it") != std::string::npos,
                  "receive into a held slot: %s", s.ToString().c_str());
      CHILD_OK(g.ReleaseOnStream(two, stream));
    }
    // The receiver waits on the GPU for two more messages that never come; its device wait gives
    // up after the group's 3 s timeout, and the process ends without Close.
    CHILD_OK(g.Barrier(Deadline::AfterMs(20000)));
    return 0;
  });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

TEST(CudaIpc, DeviceWaitTimeout) {
  SKIP_WITHOUT_GPU();
  auto outcomes = RunRanks(2, [&](int rank, int port) {
    Options o = GpuOptions(1, 1, rank, port, 4096, 2);
    o.bootstrap.timeout = std::chrono::milliseconds(3000);
    auto created = Group::Create(o);
    CHILD_OK(created.status());
    Group& g = **created;
    if (g.role() == Role::kSender) {
      usleep(4000 * 1000);  // sends nothing
      return 0;
    }
    cudaStream_t stream;
    CUDA_CHILD_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    std::vector<Message> got(1);
    CHILD_OK(g.ReceiveOnStream(std::vector<int>{g.peers()[0]}, got, stream));
    CUDA_CHILD_OK(cudaStreamSynchronize(stream));  // returns once the device wait gives up
    Status s = g.Progress();
    CHILD_CHECK(s.code() == StatusCode::kDeadlineExceeded &&
                    s.message().find("gave up") != std::string::npos,
                "%s", s.ToString().c_str());
    return 0;
  });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

// ---------------------------------------------------------------------------------------------
// The host-driven path: Send / Receive / Release over cuda_ipc's shared-memory rings (ACKs too).

// kCuda with `proxy`: writes of device memory go through the copy proxy kernel (proxy.h), with
// 4 KB per block (so up to 16 blocks share a message) and a 1 ms idle end, so that the kernel ends
// and is launched again many times between messages.
struct HostPathCase {
  MemoryKind kind;
  bool proxy;
};
class HostPath : public ::testing::TestWithParam<HostPathCase> {};

TEST_P(HostPath, SendReceiveRelease) {
  SKIP_WITHOUT_GPU();
  const MemoryKind kind = GetParam().kind;
  const bool proxy = GetParam().proxy;
  auto outcomes = RunRanks(4, [&](int rank, int port) {
    if (proxy) {
      setenv("M2N_CUDA_IPC_PROXY", "1", 1);
      setenv("M2N_CUDA_IPC_PROXY_BLOCK_BYTES", "4096", 1);
      setenv("M2N_CUDA_IPC_PROXY_IDLE_MS", "1", 1);
    }
    Options o = GpuOptions(2, 2, rank, port, 65536, 2);
    o.slot_memory = kind;
    auto created = Group::Create(o);
    CHILD_OK(created.status());
    Group& g = **created;
    std::vector<int> peers(g.peers().begin(), g.peers().end());
    std::vector<std::byte> host(65536);
    DeviceBuffer device(65536);
    auto region = kind == MemoryKind::kCuda
                      ? g.RegisterMemory(device.data, 65536, MemoryKind::kCuda)
                      : g.RegisterMemory(host.data(), host.size());
    CHILD_OK(region.status());
    for (int k = 0; k < 50; ++k) {
      const size_t size = 1 + static_cast<size_t>(k) * 1301 % 65536;
      if (g.role() == Role::kSender) {
        for (int peer : peers) {
          testing::FillPattern(host.data(), size, rank, peer, k);
          const std::byte* data = host.data();
          if (kind == MemoryKind::kCuda) {
            CUDA_CHILD_OK(cudaMemcpy(device.data, host.data(), size, cudaMemcpyHostToDevice));
            // From pageable memory cudaMemcpy may return before its DMA lands, and the copy proxy
            // reads the buffer as soon as Send posts it: wait for the copy (legacy stream).
            if (proxy) CUDA_CHILD_OK(cudaStreamSynchronize(cudaStreamLegacy));
            data = device.bytes();
          }
          CHILD_OK(g.Send(SendRequest{peer, data, size}, Deadline::AfterMs(20000)));
        }
      } else {
        for (int peer : peers) {
          auto m = g.Receive(peer, Deadline::AfterMs(20000));
          CHILD_OK(m.status());
          CHILD_CHECK(m->length == size, "length %zu, expected %zu", m->length, size);
          std::vector<std::byte> got(size);
          CUDA_CHILD_OK(cudaMemcpy(got.data(), m->data, size, cudaMemcpyDefault));
          size_t wrong = testing::CountWrong(got.data(), size, peer, rank, k);
          CHILD_CHECK(wrong == 0, "%zu wrong bytes from %d", wrong, peer);
          CHILD_OK(g.Release(*m));
        }
      }
    }
    CHILD_OK(g.Close(Deadline::AfterMs(20000)));
    return 0;
  });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

INSTANTIATE_TEST_SUITE_P(Slots, HostPath,
                         ::testing::Values(HostPathCase{MemoryKind::kHost, false},
                                           HostPathCase{MemoryKind::kCuda, false},
                                           HostPathCase{MemoryKind::kCuda, true}),
                         [](const ::testing::TestParamInfo<HostPathCase>& info) {
                           return std::string(MemoryKindName(info.param.kind)) +
                                  (info.param.proxy ? "_proxy" : "");
                         });

}  // namespace
}  // namespace m2n

// The stream-ordered GPU path over verbs (transports/verbs/stream.h): GPU receive slots registered
// for GPUDirect RDMA (dma-buf), a proxy thread posting RDMA writes-with-immediate once the producer
// kernel is done, streams held by cuStreamWaitValue32. Real processes, one per GPU (shared when
// there are fewer GPUs than ranks). Needs a CUDA device and an RDMA NIC on one machine; skipped,
// saying why, elsewhere (the proxy alone is tested in the Soft-RoCE VM: verbs_stream_test.cc).
//   StreamPayload: 1x1 and 2x2, 1 B to 1 MB, dispatch and combine, producer and consumer kernels.
//   CreditPressure: 100 messages per pair through 2 slots, the sender enqueuing all of them at once.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <tuple>
#include <vector>

#include "cuda_test_kernels.h"
#include "harness.h"
#include "m2n/m2n.h"
#include "transports/verbs/context.h"

namespace m2n {
namespace {

using testing::DescribeFailures;
using testing::LaunchCheck;
using testing::LaunchFill;
using testing::RunRanks;
using testing::TestOptions;

#define CUDA_CHILD_OK(call)                                                    \
  do {                                                                         \
    cudaError_t e_ = (call);                                                   \
    CHILD_CHECK(e_ == cudaSuccess, "%s -> %s", #call, cudaGetErrorString(e_)); \
  } while (0)

// Why this machine cannot run the test ("" when it can). Asked in a child process: a parent that
// started CUDA could not fork ranks that use it.
std::string MissingHardware() {
  static const std::string reason = [] {
    int fds[2];
    if (pipe(fds) != 0) return std::string("pipe failed");
    std::fflush(nullptr);
    pid_t pid = fork();
    if (pid == 0) {
      close(fds[0]);
      int count = 0;
      cudaError_t e = cudaGetDeviceCount(&count);
      std::string why = e != cudaSuccess ? std::string("no CUDA device: ") + cudaGetErrorString(e)
                        : count == 0     ? std::string("no CUDA device")
                                         : std::string();
      if (Status rdma = transport::verbs::Probe(); !rdma.ok()) {
        why += (why.empty() ? "" : "; ") + std::string("no RDMA NIC: ") + rdma.ToString();
      }
      ssize_t written = write(fds[1], why.data(), why.size());
      (void)written;
      _exit(0);
    }
    close(fds[1]);
    std::string why;
    char buffer[512];
    for (ssize_t n; (n = read(fds[0], buffer, sizeof buffer)) > 0;) why.append(buffer, static_cast<size_t>(n));
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return why;
  }();
  return reason;
}

#define SKIP_WITHOUT_GPU_AND_NIC()                                                           \
  do {                                                                                       \
    if (std::string why = MissingHardware(); !why.empty()) GTEST_SKIP() << why;            \
  } while (0)

Options VerbsGpuOptions(int m, int n, int rank, int port, size_t slot_bytes, int depth) {
  int count = 1;
  cudaGetDeviceCount(&count);
  cudaSetDevice(rank % count);
  cudaFree(nullptr);  // the context the verbs transport finds current
  Options o = TestOptions(m, n, rank, port);
  o.transport = "verbs";
  o.slot_memory = MemoryKind::kCuda;
  o.slot_bytes = slot_bytes;
  o.slot_depth = depth;
  return o;
}

struct DeviceBuffer {
  explicit DeviceBuffer(size_t bytes) { cudaMalloc(&data, bytes); }
  ~DeviceBuffer() { cudaFree(data); }
  void* data = nullptr;
  std::byte* bytes() const { return static_cast<std::byte*>(data); }
};

using Shape = std::tuple<int, int>;
class VerbsStreamPayload : public ::testing::TestWithParam<Shape> {};

int StreamPayloadRank(int m, int n, int rank, int port) {
  const std::vector<size_t> sizes = {1, 4096, 65536 + 3, size_t{1} << 20};
  auto created = Group::Create(VerbsGpuOptions(m, n, rank, port, sizes.back(), 2));
  CHILD_OK(created.status());
  Group& g = **created;
  CHILD_CHECK(g.transport_name() == "verbs", "transport %s", std::string(g.transport_name()).c_str());
  std::vector<int> peers(g.peers().begin(), g.peers().end());
  DeviceBuffer buffer(sizes.back() * peers.size());
  DeviceBuffer wrong(sizeof(unsigned long long));
  CUDA_CHILD_OK(cudaMemset(wrong.data, 0, sizeof(unsigned long long)));
  auto region = g.RegisterMemory(buffer.data, sizes.back() * peers.size(), MemoryKind::kCuda);
  CHILD_OK(region.status());
  cudaStream_t stream;
  CUDA_CHILD_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  auto* counter = static_cast<unsigned long long*>(wrong.data);
  const bool sender = g.role() == Role::kSender;
  auto send_all = [&](size_t size, uint64_t number) -> Status {
    std::vector<SendRequest> requests;
    for (size_t i = 0; i < peers.size(); ++i) {
      std::byte* data = buffer.bytes() + i * sizes.back();
      if (LaunchFill(data, size, rank, peers[i], number, nullptr, stream) != cudaSuccess) {
        return InternalError("fill kernel");
      }
      requests.push_back({peers[i], data, size});
    }
    return g.SendOnStream(requests, stream);
  };
  auto receive_all = [&](size_t size, uint64_t number) -> Status {
    std::vector<Message> got(peers.size());
    M2N_RETURN_IF_ERROR(g.ReceiveOnStream(peers, got, stream));
    for (size_t i = 0; i < peers.size(); ++i) {
      if (LaunchCheck(got[i].data, got[i].device_length, size, peers[i], rank, number, nullptr, counter, stream) !=
          cudaSuccess) {
        return InternalError("check kernel");
      }
    }
    if (!sender) M2N_RETURN_IF_ERROR(send_all(size, number + 1));
    return g.ReleaseOnStream(got, stream);
  };
  for (int round = 0; round < 2; ++round) {
    for (size_t size : sizes) {
      const uint64_t number = size * 16 + static_cast<uint64_t>(round) * 4;
      if (sender) {
        CHILD_OK(send_all(size, number));
        CHILD_OK(receive_all(size, number + 1));
      } else {
        CHILD_OK(receive_all(size, number));
      }
    }
  }
  CUDA_CHILD_OK(cudaStreamSynchronize(stream));
  unsigned long long bad = 0;
  CUDA_CHILD_OK(cudaMemcpy(&bad, wrong.data, sizeof bad, cudaMemcpyDeviceToHost));
  CHILD_CHECK(bad == 0, "%llu wrong bytes (2^40 per wrong length)", bad);
  CHILD_OK(g.Progress());
  CHILD_OK(g.Close(Deadline::AfterMs(20000)));
  cudaStreamDestroy(stream);
  return 0;
}

TEST_P(VerbsStreamPayload, BothDirections) {
  SKIP_WITHOUT_GPU_AND_NIC();
  auto [m, n] = GetParam();
  auto outcomes = RunRanks(m + n, [&](int rank, int port) { return StreamPayloadRank(m, n, rank, port); });
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
  auto size_of = [](int k) { return static_cast<size_t>(1 + (k * 37) % kMax); };
  auto outcomes = RunRanks(4, [&](int rank, int port) {
    auto created = Group::Create(VerbsGpuOptions(2, 2, rank, port, kMax, 2));
    CHILD_OK(created.status());
    Group& g = **created;
    std::vector<int> peers(g.peers().begin(), g.peers().end());
    DeviceBuffer buffer(kMax * peers.size() * 3);
    DeviceBuffer wrong(sizeof(unsigned long long));
    CUDA_CHILD_OK(cudaMemset(wrong.data, 0, sizeof(unsigned long long)));
    auto region = g.RegisterMemory(buffer.data, kMax * peers.size() * 3, MemoryKind::kCuda);
    CHILD_OK(region.status());
    cudaStream_t stream;
    CUDA_CHILD_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    if (g.role() == Role::kSender) {
      for (int k = 0; k < kMessages; ++k) {
        std::vector<SendRequest> requests;
        for (size_t i = 0; i < peers.size(); ++i) {
          std::byte* data = buffer.bytes() + (i * 3 + static_cast<size_t>(k % 3)) * kMax;
          CUDA_CHILD_OK(LaunchFill(data, size_of(k), rank, peers[i], k, nullptr, stream));
          requests.push_back({peers[i], data, size_of(k)});
        }
        CHILD_OK(g.SendOnStream(requests, stream));
      }
    } else {
      usleep(300 * 1000);  // let the senders run into their credits
      for (int k = 0; k < kMessages; ++k) {
        std::vector<Message> got(peers.size());
        CHILD_OK(g.ReceiveOnStream(peers, got, stream));
        for (size_t i = 0; i < peers.size(); ++i) {
          CUDA_CHILD_OK(LaunchCheck(got[i].data, got[i].device_length, size_of(k), peers[i], rank, k, nullptr,
                                    static_cast<unsigned long long*>(wrong.data), stream));
        }
        CHILD_OK(g.ReleaseOnStream(got, stream));
      }
    }
    CUDA_CHILD_OK(cudaStreamSynchronize(stream));
    unsigned long long bad = 0;
    CUDA_CHILD_OK(cudaMemcpy(&bad, wrong.data, sizeof bad, cudaMemcpyDeviceToHost));
    CHILD_CHECK(bad == 0, "%llu wrong bytes", bad);
    CHILD_OK(g.Progress());
    CHILD_OK(g.Close(Deadline::AfterMs(20000)));
    return 0;
  });
  EXPECT_EQ(DescribeFailures(outcomes), "");
}

}  // namespace
}  // namespace m2n

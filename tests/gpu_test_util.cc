#include "gpu_test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

#include "cuda_test_kernels.h"

namespace m2n::testing {

std::string AskInChild(const std::function<std::string()>& question) {
  int fds[2];
  if (pipe(fds) != 0) return std::string("pipe failed");
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    std::string why = question();
    ssize_t written = write(fds[1], why.data(), why.size());
    (void)written;
    _exit(0);
  }
  close(fds[1]);
  std::string why;
  char buffer[512];
  for (ssize_t n; (n = read(fds[0], buffer, sizeof buffer)) > 0;)
    why.append(buffer, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return why;
}

std::string NoCudaDevice() {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  return e != cudaSuccess ? std::string("no CUDA device: ") + cudaGetErrorString(e)
         : count == 0     ? std::string("no CUDA device")
                          : std::string();
}

Options DeviceSlotOptions(const char* transport, int m, int n, int rank, int port,
                          size_t slot_bytes, int depth) {
  int count = 1;
  cudaGetDeviceCount(&count);
  cudaSetDevice(rank % count);
  Options o = TestOptions(m, n, rank, port);
  o.transport = transport;
  o.slot_memory = MemoryKind::kCuda;
  o.slot_bytes = slot_bytes;
  o.slot_depth = depth;
  return o;
}

namespace {

// A trial's end: waits for its stream, checks the consumer kernels' count of wrong bytes (`note`
// follows it in the message) and closes the group. A rank's exit code.
int FinishTrial(Group& g, cudaStream_t stream, const DeviceBuffer& wrong, const char* note) {
  CUDA_CHILD_OK(cudaStreamSynchronize(stream));
  unsigned long long bad = 0;
  CUDA_CHILD_OK(cudaMemcpy(&bad, wrong.data, sizeof bad, cudaMemcpyDeviceToHost));
  CHILD_CHECK(bad == 0, "%llu wrong bytes%s", bad, note);
  CHILD_OK(g.Progress());
  CHILD_OK(g.Close(Deadline::AfterMs(20000)));
  return 0;
}

}  // namespace

int StreamPayloadRank(Group& g, int rank, const std::vector<size_t>& sizes, int rounds,
                      bool check_fields) {
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
      if (check_fields &&
          (got[i].peer != peers[i] || got[i].length != 0 || got[i].device_length == nullptr)) {
        return InternalError("bad message fields");
      }
      if (LaunchCheck(got[i].data, got[i].device_length, size, peers[i], rank, number, nullptr,
                      counter, stream) != cudaSuccess) {
        return InternalError("check kernel");
      }
    }
    // The combine direction answers before the slots are released, as an expert would.
    if (!sender) M2N_RETURN_IF_ERROR(send_all(size, number + 1));
    return g.ReleaseOnStream(got, stream);
  };
  for (int round = 0; round < rounds; ++round) {
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
  if (int failed = FinishTrial(g, stream, wrong, " (2^40 per wrong length)")) return failed;
  cudaStreamDestroy(stream);
  return 0;
}

int CreditPressureRank(Group& g, int rank, int messages, size_t max_bytes, bool check_slots) {
  auto size_of = [max_bytes](int k) {
    return static_cast<size_t>(1 + (static_cast<size_t>(k) * 37) % max_bytes);
  };
  std::vector<int> peers(g.peers().begin(), g.peers().end());
  DeviceBuffer buffer(max_bytes * peers.size() * 3);
  DeviceBuffer wrong(sizeof(unsigned long long));
  CUDA_CHILD_OK(cudaMemset(wrong.data, 0, sizeof(unsigned long long)));
  auto region = g.RegisterMemory(buffer.data, max_bytes * peers.size() * 3, MemoryKind::kCuda);
  CHILD_OK(region.status());
  cudaStream_t stream;
  CUDA_CHILD_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  if (g.role() == Role::kSender) {
    // Everything is enqueued at once: each send waits for its credit on the GPU.
    for (int k = 0; k < messages; ++k) {
      std::vector<SendRequest> requests;
      for (size_t i = 0; i < peers.size(); ++i) {
        std::byte* data = buffer.bytes() + (i * 3 + static_cast<size_t>(k % 3)) * max_bytes;
        CUDA_CHILD_OK(LaunchFill(data, size_of(k), rank, peers[i], k, nullptr, stream));
        requests.push_back({peers[i], data, size_of(k)});
      }
      CHILD_OK(g.SendOnStream(requests, stream));
    }
  } else {
    usleep(300 * 1000);  // let the senders run into their credits
    for (int k = 0; k < messages; ++k) {
      std::vector<Message> got(peers.size());
      CHILD_OK(g.ReceiveOnStream(peers, got, stream));
      for (size_t i = 0; i < peers.size(); ++i) {
        if (check_slots) CHILD_CHECK(got[i].slot == k % 2, "message %d in slot %d", k, got[i].slot);
        CUDA_CHILD_OK(LaunchCheck(got[i].data, got[i].device_length, size_of(k), peers[i], rank, k,
                                  nullptr, static_cast<unsigned long long*>(wrong.data), stream));
      }
      CHILD_OK(g.ReleaseOnStream(got, stream));
    }
  }
  if (int failed = FinishTrial(g, stream, wrong, "")) return failed;
  return 0;
}

}  // namespace m2n::testing

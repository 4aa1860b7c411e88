// m2n_gpu_latency: the time from a producer kernel's end to the consumer kernel's start between two
// ranks, on the GPU's clock (%globaltimer), for 4 KB to 1 MB, three ways:
//   device  the device-side API (m2n/device.cuh): the producer kernel writes straight into the
//           peer's slot and publishes it; the consumer kernel, already waiting, starts on it
//   stream  the stream-ordered calls: the producer kernel writes a local buffer, SendOnStream,
//           ReceiveOnStream, then the consumer kernel on the receiver's stream
//   NCCL    the same around ncclSend / ncclRecv (built with NCCL, ranks on two GPUs: NCCL puts no
//           two ranks on one GPU)
// Rank 0 produces, rank 1 consumes and prints the table: p50 / p99 in us over -n iterations after
// -w warm-up ones, the ratio to NCCL's p50, and #wrong from a check of every payload byte. Before
// each iteration the consumer enqueues its side, both ranks meet at a host spin barrier, then the
// producer enqueues its own: the consumer is waiting when the producer ends. With one GPU both
// ranks share it (CUDA IPC between processes of one GPU): the GPU time-slices between them, so
// those figures are a smoke test, not NVLink's. Two GPUs' globaltimers may differ by a little.
//
// Usage: m2n_gpu_latency [-n ITERS] [-w WARMUP]; with no launcher it starts its two ranks itself.
// It uses only include/m2n/ and perftest's host barrier. Exit status 1 on a wrong byte.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gpu_latency_kernels.h"
#include "host_barrier.h"
#include "m2n/launch.h"
#include "m2n/m2n.h"
#if M2N_PERF_WITH_NCCL
#include <nccl.h>

#include "nccl_baseline.h"
#endif

namespace m2n::perf {
namespace {

constexpr size_t kSizes[] = {4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20};
constexpr size_t kMaxBytes = 1 << 20;
constexpr int64_t kTimeoutMs = 60000;

Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return OkStatus();
  return InternalError(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}
#define CUDA_OK(call) M2N_RETURN_IF_ERROR(Cuda((call), #call))

struct Row {
  size_t bytes;
  std::string way;
  double p50_us;
  double p99_us;
  unsigned long long wrong;
};

// One rank's buffers and stream, shared by the three ways.
struct Rank {
  int rank = -1;
  bool consumer = false;
  int iters = 2000;
  int warmup = 200;
  cudaStream_t stream = nullptr;
  HostSegment* segment = nullptr;
  void* source = nullptr;  // the buffer producers' output (stream, NCCL)
  void* target = nullptr;  // NCCL's receive buffer
  long long* latency = nullptr;  // device: ns per iteration
  unsigned long long* wrong = nullptr;  // device
  std::vector<Row> rows;  // the consumer's
};

LatencyMessage MessageFor(const Rank& r, size_t bytes, uint64_t iteration) {
  return LatencyMessage{bytes, LatencyBlocks(bytes), iteration, r.latency, r.wrong};
}

// Every iteration: the consumer enqueues its side, the ranks meet, the producer enqueues its side,
// both wait for their stream. Then the consumer summarizes into a row.
Status Iterate(Rank& r, size_t bytes, const std::string& way,
               const std::function<Status(uint64_t)>& consume,
               const std::function<Status(uint64_t)>& produce) {
  CUDA_OK(cudaMemsetAsync(r.wrong, 0, sizeof(unsigned long long), r.stream));
  const int total = r.warmup + r.iters;
  for (int i = 0; i < total; ++i) {
    const uint64_t it = static_cast<uint64_t>(i);
    if (r.consumer) M2N_RETURN_IF_ERROR(consume(it));
    M2N_RETURN_IF_ERROR(r.segment->Barrier(Deadline::AfterMs(kTimeoutMs)));
    if (!r.consumer) M2N_RETURN_IF_ERROR(produce(it));
    CUDA_OK(cudaStreamSynchronize(r.stream));
  }
  if (!r.consumer) return OkStatus();
  std::vector<long long> ns(static_cast<size_t>(total));
  CUDA_OK(cudaMemcpy(ns.data(), r.latency, ns.size() * sizeof(long long), cudaMemcpyDeviceToHost));
  Row row{bytes, way, 0, 0, 0};
  CUDA_OK(cudaMemcpy(&row.wrong, r.wrong, sizeof row.wrong, cudaMemcpyDeviceToHost));
  std::vector<long long> kept(ns.begin() + r.warmup, ns.end());
  std::sort(kept.begin(), kept.end());
  const auto at = [&](double q) {
    return kept.empty() ? 0.0
                        : kept[static_cast<size_t>(q * static_cast<double>(kept.size() - 1))] / 1e3;
  };
  row.p50_us = at(0.50);
  row.p99_us = at(0.99);
  r.rows.push_back(row);
  return OkStatus();
}

Status RunDevice(Rank& r, Group& g, size_t bytes) {
  M2N_ASSIGN_OR_RETURN(DeviceGroup d, g.device_group());
  M2N_RETURN_IF_ERROR(Iterate(
      r, bytes, "device",
      [&](uint64_t it) {
        return Cuda(LaunchDeviceConsumer(d, MessageFor(r, bytes, it), r.stream), "consumer");
      },
      [&](uint64_t it) {
        return Cuda(LaunchDeviceProducer(d, MessageFor(r, bytes, it), r.stream), "producer");
      }));
  return g.Progress();  // a device wait that gave up
}

Status RunStream(Rank& r, Group& g, size_t bytes) {
  const int peer = g.peers()[0];
  std::vector<Message> got(1);
  M2N_RETURN_IF_ERROR(Iterate(
      r, bytes, "stream",
      [&](uint64_t it) -> Status {
        M2N_RETURN_IF_ERROR(g.ReceiveOnStream(std::vector<int>{peer}, got, r.stream));
        CUDA_OK(LaunchBufferConsumer(got[0].data, MessageFor(r, bytes, it), r.stream));
        return g.ReleaseOnStream(got, r.stream);
      },
      [&](uint64_t it) -> Status {
        CUDA_OK(LaunchBufferProducer(r.source, MessageFor(r, bytes, it), r.stream));
        return g.SendOnStream(std::vector<SendRequest>{{peer, r.source, bytes}}, r.stream);
      }));
  return g.Progress();
}

#if M2N_PERF_WITH_NCCL
Status Nccl(ncclResult_t e, const char* what) {
  if (e == ncclSuccess) return OkStatus();
  return InternalError(std::string("NCCL: ") + what + ": " + ncclGetErrorString(e));
}

Status RunNccl(Rank& r, ncclComm_t comm, size_t bytes) {
  return Iterate(
      r, bytes, "NCCL",
      [&](uint64_t it) -> Status {
        M2N_RETURN_IF_ERROR(
            Nccl(ncclRecv(r.target, bytes, ncclUint8, 0, comm, r.stream), "ncclRecv"));
        return Cuda(LaunchBufferConsumer(r.target, MessageFor(r, bytes, it), r.stream), "consumer");
      },
      [&](uint64_t it) -> Status {
        CUDA_OK(LaunchBufferProducer(r.source, MessageFor(r, bytes, it), r.stream));
        return Nccl(ncclSend(r.source, bytes, ncclUint8, 1, comm, r.stream), "ncclSend");
      });
}
#endif

// The consumer's table; the NCCL ratio where NCCL ran.
void PrintTable(const Rank& r, const std::string& where, const std::string& nccl_note) {
  std::printf(
      "# m2n_gpu_latency: producer kernel end -> consumer kernel start (globaltimer), "
      "rank 0 -> rank 1, %s; %d iterations after %d warm-up\n",
      where.c_str(), r.iters, r.warmup);
  if (!nccl_note.empty()) std::printf("# NCCL rows left out: %s\n", nccl_note.c_str());
  std::printf("\n| bytes | way | p50 us | p99 us | p50 x NCCL | p99 x NCCL | #wrong |\n");
  std::printf("|---:|---|---:|---:|---:|---:|---:|\n");
  std::map<size_t, const Row*> nccl;
  for (const Row& row : r.rows)
    if (row.way == "NCCL") nccl[row.bytes] = &row;
  for (const Row& row : r.rows) {
    char r50[32] = "-", r99[32] = "-";
    if (auto it = nccl.find(row.bytes); it != nccl.end() && it->second->p50_us > 0) {
      std::snprintf(r50, sizeof r50, "%.2f", row.p50_us / it->second->p50_us);
      std::snprintf(r99, sizeof r99, "%.2f", row.p99_us / it->second->p99_us);
    }
    std::printf("| %zu | %s | %.2f | %.2f | %s | %s | %llu |\n", row.bytes, row.way.c_str(),
                row.p50_us, row.p99_us, r50, r99, row.wrong);
  }
  std::fflush(stdout);
}

}  // namespace
}  // namespace m2n::perf

namespace m2n::perf {
namespace {

// The two groups (device API; stream-ordered calls: one group has one data path) over cuda_ipc
// with device slots; the second on the next port.
StatusOr<Options> GroupOptions() {
  Options o;
  o.num_senders = 1;
  o.num_receivers = 1;
  o.transport = "cuda_ipc";
  o.slot_memory = MemoryKind::kCuda;
  o.slot_bytes = kMaxBytes;
  o.slot_depth = 2;
  o.bootstrap.timeout = std::chrono::milliseconds(30000);
  M2N_ASSIGN_OR_RETURN(Options resolved, ResolveOptions(o));
  if (resolved.bootstrap.world_size != 2) {
    return InvalidArgumentError("m2n_gpu_latency runs 2 ranks, not " +
                                std::to_string(resolved.bootstrap.world_size));
  }
  return resolved;
}

Status Allocate(Rank& r, int iterations) {
  CUDA_OK(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking));
  CUDA_OK(cudaMalloc(&r.source, kMaxBytes));
  CUDA_OK(cudaMalloc(&r.target, kMaxBytes));
  CUDA_OK(cudaMalloc(&r.latency, static_cast<size_t>(iterations) * sizeof(long long)));
  CUDA_OK(cudaMalloc(&r.wrong, sizeof(unsigned long long)));
  return OkStatus();
}

// Every size, every way; why NCCL's rows are left out ("" when they are not).
StatusOr<std::string> RunWays(Rank& r, Group& device_group, Group& stream_group, int gpus) {
  std::string nccl_note = "built without NCCL";
#if M2N_PERF_WITH_NCCL
  ncclComm_t comm = nullptr;
  if (gpus >= 2) {
    M2N_ASSIGN_OR_RETURN(comm, ConnectNccl(*r.segment, r.rank, 2, kTimeoutMs));
    nccl_note.clear();
  } else {
    nccl_note = "one GPU: NCCL runs no two ranks on one GPU";
  }
#endif
  for (size_t bytes : kSizes) {
    M2N_RETURN_IF_ERROR(RunDevice(r, device_group, bytes));
    M2N_RETURN_IF_ERROR(RunStream(r, stream_group, bytes));
#if M2N_PERF_WITH_NCCL
    if (comm != nullptr) M2N_RETURN_IF_ERROR(RunNccl(r, comm, bytes));
#endif
  }
#if M2N_PERF_WITH_NCCL
  if (comm != nullptr) ncclCommDestroy(comm);
#endif
  return nccl_note;
}

// One rank's whole run; the exit status (1: a wrong byte) or what failed.
StatusOr<int> RunRank(int iters, int warmup) {
  int gpus = 0;
  CUDA_OK(cudaGetDeviceCount(&gpus));
  if (gpus < 1) return FailedPreconditionError("no CUDA device");
  M2N_ASSIGN_OR_RETURN(const LaunchInfo launch, DetectLaunch());
  M2N_ASSIGN_OR_RETURN(const Options options, GroupOptions());
  Rank r;
  r.rank = options.bootstrap.rank;
  r.consumer = r.rank == 1;
  r.iters = iters;
  r.warmup = warmup;
  const int device = LocalRank(launch, r.rank) % gpus;
  CUDA_OK(cudaSetDevice(device));
  M2N_ASSIGN_OR_RETURN(auto device_group, Group::Create(options));
  Options second = options;
  second.bootstrap.master_port = options.bootstrap.master_port + 1;  // resolved: never 0
  second.bootstrap.job_id += ".stream";
  // `second` is resolved: Create keeps its port (SpawnLocal's M2N_MASTER_PORT does not win).
  M2N_ASSIGN_OR_RETURN(auto stream_group, Group::Create(second));
  M2N_ASSIGN_OR_RETURN(
      auto segment,
      HostSegment::Join("/m2n_gpu_latency." + std::to_string(options.bootstrap.master_port), r.rank,
                        2, 1,
                        [&] { return device_group->Barrier(Deadline::AfterMs(kTimeoutMs)); }));
  if (!segment->shared())
    return FailedPreconditionError("the two ranks must share a host: " + segment->why_not_shared());
  r.segment = segment.get();
  M2N_RETURN_IF_ERROR(Allocate(r, warmup + iters));
  M2N_ASSIGN_OR_RETURN(MemoryRegion source,
                       stream_group->RegisterMemory(r.source, kMaxBytes, MemoryKind::kCuda));
  M2N_ASSIGN_OR_RETURN(const std::string nccl_note, RunWays(r, *device_group, *stream_group, gpus));
  cudaDeviceProp prop{};
  CUDA_OK(cudaGetDeviceProperties(&prop, device));
  const std::string where = gpus >= 2 ? "GPU 0 -> GPU 1 (" + std::string(prop.name) + ")"
                                      : "one GPU shared by both processes (" +
                                            std::string(prop.name) + "; time-sliced: a smoke test)";
  unsigned long long wrong = 0;
  for (const Row& row : r.rows) wrong += row.wrong;
  if (r.consumer) PrintTable(r, where, nccl_note);
  M2N_RETURN_IF_ERROR(stream_group->Close(Deadline::AfterMs(kTimeoutMs)));
  M2N_RETURN_IF_ERROR(device_group->Close(Deadline::AfterMs(kTimeoutMs)));
  return wrong == 0 ? 0 : 1;
}

int SpawnBoth(int argc, char** argv) {
  SpawnOptions spawn{.args = std::vector<std::string>(argv, argv + argc),
                     .num_ranks = 2,
                     .wait = {.finished_codes = {0, 1}}};
  auto job = SpawnLocal(spawn, Deadline::After(std::chrono::minutes(30)));
  if (!job.ok()) {
    std::fprintf(stderr, "m2n_gpu_latency: %s\n", job.status().ToString().c_str());
    return 2;
  }
  if (job->first_failure >= 0 || job->timed_out) {
    const int rank = job->first_failure >= 0 ? job->first_failure : 0;
    std::fprintf(stderr, "m2n_gpu_latency: rank %d %s%s\n", rank,
                 job->ranks[static_cast<size_t>(rank)].Describe().c_str(),
                 job->timed_out ? " (the job timed out)" : "");
    return 2;
  }
  int status = 0;
  for (const RankExit& end : job->ranks) status = std::max(status, end.exit_code);
  return status;
}

}  // namespace
}  // namespace m2n::perf

int main(int argc, char** argv) {
  int iters = 2000;
  int warmup = 200;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "-n" || a == "-w") && i + 1 < argc) {
      (a == "-n" ? iters : warmup) = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: m2n_gpu_latency [-n ITERS] [-w WARMUP]\n");
      return 2;
    }
  }
  if (iters < 1 || warmup < 0) {
    std::fprintf(stderr, "m2n_gpu_latency: -n must be at least 1 and -w at least 0\n");
    return 2;
  }
  auto launch = m2n::DetectLaunch();
  if (launch.ok() && launch->launcher == m2n::Launcher::kNone)
    return m2n::perf::SpawnBoth(argc, argv);
  auto result = m2n::perf::RunRank(iters, warmup);
  if (!result.ok()) {
    std::fprintf(stderr, "m2n_gpu_latency: %s\n", result.status().ToString().c_str());
    return 2;
  }
  return *result;
}

// m2n_ep_gpu_perf: the expert-parallel benchmark on GPUs (issue 10, item 4). Per row of the sweep
// (tokens per attention rank, hidden, top-k, experts), dispatch and combine time per call of
// m2n::ExpertParallel's stream-ordered calls (device memory, cuda_ipc) and of the NCCL baseline
// (ep_nccl.h: a count exchange, a host wait for the counts, then grouped ncclSend / ncclRecv), in
// the same job, p50 / p99 over the iterations, and a data check: every attention rank's combined
// output of the first timed call, from m2n and from NCCL, against the expected sum computed here
// on the host (identity experts: out[t] = sum_j w[t][j] * x[t], fp32 in top-k order, rounded once).
//
// Timing: each phase starts after a host barrier (a shared-memory spin, host_barrier.h) and
// lasts from the first rank's start to the last rank's end, each rank ending once its stream is
// done (cudaStreamSynchronize) — the time after which the data is usable everywhere. One host, one
// clock (CLOCK_MONOTONIC). Ranks: M + N processes of this program, GPU = rank mod the GPUs present;
// started bare, it spawns them itself (include/m2n/launch.h). Processes sharing one GPU measure
// the software path, not NVLink: say so with the figures. Usage: perftest/README.md.
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "m2n/m2n.h"
#include "m2n/launch.h"
#include "ep_nccl.h"
#include "ep_perf.h"
#include "host_barrier.h"
#include "nccl_baseline.h"
#include "stats.h"

namespace m2n::perf::ep {
namespace {

Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return OkStatus();
  return InternalError(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}

// A device buffer freed with its owner.
struct DeviceBuffer {
  void* data = nullptr;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (data != nullptr) cudaFree(data);
  }
  Status Allocate(size_t bytes) {
    return Cuda(cudaMalloc(&data, std::max<size_t>(bytes, 1)), "cudaMalloc");
  }
  template <typename T>
  Status Upload(const std::vector<T>& host) {
    M2N_RETURN_IF_ERROR(Allocate(host.size() * sizeof(T)));
    return Cuda(cudaMemcpy(data, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
                "uploading a routing");
  }
};

struct DeviceRouting {
  int tokens = 0;
  DeviceBuffer x, ids, weights;
};

// What an attention rank must get back with identity experts.
std::vector<std::byte> Expected(const EpPerfConfig& c, const Shape& s, const RankRouting& r) {
  const size_t row = size_t(s.hidden) * DataTypeBytes(c.dtype);
  std::vector<std::byte> out(size_t(r.tokens) * row);
  for (int t = 0; t < r.tokens; ++t) {
    for (int h = 0; h < s.hidden; ++h) {
      const float x = LoadElement(r.x.data() + size_t(t) * row, h, c.dtype);
      float acc = 0.0f;
      for (int j = 0; j < s.top_k; ++j) {
        const float product = r.weights[size_t(t) * s.top_k + j] * x;
        acc = acc + product;
      }
      StoreElement(acc, h, c.dtype, out.data() + size_t(t) * row);
    }
  }
  return out;
}

// One implementation's calls on this rank.
struct Side {
  virtual ~Side() = default;
  virtual Status Dispatch(const DeviceRouting* routing, void* stream) = 0;
  virtual Status Combine(void* out, void* stream) = 0;
};

struct M2nSide final : Side {
  ExpertParallel& ep;
  bool attention;
  DeviceExpertBatch batch{};
  explicit M2nSide(ExpertParallel& e, bool a) : ep(e), attention(a) {}
  Status Dispatch(const DeviceRouting* r, void* stream) override {
    if (!attention) return ep.ReceiveDispatchOnStream(&batch, stream);
    return ep.DispatchOnStream(r->x.data, r->tokens, static_cast<const int32_t*>(r->ids.data),
                               static_cast<const float*>(r->weights.data), stream);
  }
  Status Combine(void* out, void* stream) override {
    if (!attention) return ep.CombineOnStream(batch.x, stream);  // identity experts
    return ep.ReceiveCombineOnStream(out, stream);
  }
};

struct NcclSide final : Side {
  NcclExpertParallel& nccl;
  explicit NcclSide(NcclExpertParallel& n) : nccl(n) {}
  Status Dispatch(const DeviceRouting* r, void* stream) override {
    if (r == nullptr) return nccl.Dispatch(nullptr, nullptr, nullptr, stream);
    return nccl.Dispatch(r->x.data, static_cast<const int32_t*>(r->ids.data),
                         static_cast<const float*>(r->weights.data), stream);
  }
  Status Combine(void* out, void* stream) override { return nccl.Combine(out, stream); }
};

struct Rank {
  EpPerfConfig c;
  int rank = 0;
  std::unique_ptr<Group> group;
  std::unique_ptr<HostSegment> segment;
  std::unique_ptr<NcclComm> nccl;
  cudaStream_t stream = nullptr;
  std::string device_name;
  // NCCL refuses two ranks on one GPU ("Duplicate GPU detected"): with fewer GPUs than ranks the
  // baseline is left out and the rows say so.
  bool with_nccl = false;

  bool attention() const { return rank < c.m; }
  Deadline deadline() const { return Deadline::AfterMs(c.timeout_ms); }
  Status Setup();
  // Warm-up and timed calls of one side; rows 4k .. 4k+3 of the segment's stamps: phase starts
  // and ends of timed call k. The output of the first timed call into *first.
  Status RunSide(const std::vector<std::unique_ptr<DeviceRouting>>& routings, Side& side, void* out,
                 size_t out_bytes, std::vector<std::byte>* first);
  // Rank 0: p50 / p99 of dispatch and combine from every rank's stamps.
  void Summarize(LatencySummary* dispatch, LatencySummary* combine);
  Status RunRow(const Shape& s, int64_t* wrong_total);
};

Status Rank::Setup() {
  Options o;
  o.num_senders = c.m;
  o.num_receivers = c.n;
  o.slot_depth = 2;
  o.transport = "cuda_ipc";
  o.bootstrap.timeout = std::chrono::milliseconds(c.timeout_ms);
  M2N_ASSIGN_OR_RETURN(o.slot_bytes, SlotBytesForSweep(c));
  M2N_ASSIGN_OR_RETURN(Options resolved, ResolveOptions(o));
  rank = resolved.bootstrap.rank;
  int devices = 0;
  M2N_RETURN_IF_ERROR(Cuda(cudaGetDeviceCount(&devices), "cudaGetDeviceCount"));
  if (devices == 0) return UnavailableError("no CUDA device");
  M2N_RETURN_IF_ERROR(Cuda(cudaSetDevice(rank % devices), "cudaSetDevice"));
  cudaDeviceProp prop{};
  M2N_RETURN_IF_ERROR(Cuda(cudaGetDeviceProperties(&prop, rank % devices), "device properties"));
  device_name = std::string(prop.name) + " x " + std::to_string(devices);
  with_nccl = devices >= c.m + c.n;
  resolved.slot_memory = MemoryKind::kCuda;
  M2N_ASSIGN_OR_RETURN(group, Group::Create(resolved));
  auto barrier = [this] { return group->Barrier(deadline()); };
  const std::string name = "/m2n_ep_gpu." + std::to_string(resolved.bootstrap.master_port);
  M2N_ASSIGN_OR_RETURN(segment,
                       HostSegment::Join(name, rank, c.m + c.n, 4 * c.iterations, barrier));
  if (!segment->shared()) {
    return FailedPreconditionError("every rank must be on one host (one clock): " +
                                   segment->why_not_shared());
  }
  segment->WatchLiveness([this](Deadline d) { return group->CheckPeersAlive(d); },
                         std::chrono::milliseconds(200));
  if (with_nccl) {
    M2N_ASSIGN_OR_RETURN(nccl, NcclComm::Create(*segment, rank, c.m + c.n, c.timeout_ms));
  }
  return Cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
}

Status Rank::RunSide(const std::vector<std::unique_ptr<DeviceRouting>>& routings, Side& side,
                     void* out, size_t out_bytes, std::vector<std::byte>* first) {
  for (int i = 0; i < c.warmup + c.iterations; ++i) {
    const DeviceRouting* r = attention() ? routings[size_t(i) % routings.size()].get() : nullptr;
    M2N_RETURN_IF_ERROR(segment->Barrier(deadline()));
    const int64_t t0 = NowNs();
    M2N_RETURN_IF_ERROR(side.Dispatch(r, stream));
    M2N_RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(stream), "dispatch"));
    const int64_t t1 = NowNs();
    M2N_RETURN_IF_ERROR(segment->Barrier(deadline()));
    const int64_t t2 = NowNs();
    M2N_RETURN_IF_ERROR(side.Combine(out, stream));
    M2N_RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(stream), "combine"));
    const int64_t t3 = NowNs();
    if (i < c.warmup) continue;
    const int k = i - c.warmup;
    segment->stamp(4 * k, rank) = t0;
    segment->stamp(4 * k + 1, rank) = t1;
    segment->stamp(4 * k + 2, rank) = t2;
    segment->stamp(4 * k + 3, rank) = t3;
    if (k == 0 && attention()) {
      first->resize(out_bytes);
      M2N_RETURN_IF_ERROR(Cuda(cudaMemcpy(first->data(), out, out_bytes, cudaMemcpyDeviceToHost),
                               "reading the output back"));
    }
  }
  return segment->Barrier(deadline());  // every rank's stamps are in
}

void Rank::Summarize(LatencySummary* dispatch, LatencySummary* combine) {
  std::vector<double> d, cmb;
  for (int k = 0; k < c.iterations; ++k) {
    int64_t start[2] = {INT64_MAX, INT64_MAX}, end[2] = {0, 0};
    for (int r = 0; r < c.m + c.n; ++r) {
      for (int p = 0; p < 2; ++p) {
        start[p] = std::min(start[p], segment->stamp(4 * k + 2 * p, r));
        end[p] = std::max(end[p], segment->stamp(4 * k + 2 * p + 1, r));
      }
    }
    d.push_back(double(end[0] - start[0]) / 1e3);
    cmb.push_back(double(end[1] - start[1]) / 1e3);
  }
  *dispatch = perf::Summarize(d);
  *combine = perf::Summarize(cmb);
}

Status Rank::RunRow(const Shape& s, int64_t* wrong_total) {
  std::vector<std::unique_ptr<DeviceRouting>> routings;
  std::vector<RankRouting> host =
      attention() ? MakeRoutings(c, s, rank, 4) : std::vector<RankRouting>{};
  for (const RankRouting& h : host) {
    auto d = std::make_unique<DeviceRouting>();
    d->tokens = h.tokens;
    M2N_RETURN_IF_ERROR(d->x.Upload(h.x));
    M2N_RETURN_IF_ERROR(d->ids.Upload(h.ids));
    M2N_RETURN_IF_ERROR(d->weights.Upload(h.weights));
    routings.push_back(std::move(d));
  }
  const size_t out_bytes = size_t(s.tokens) * size_t(s.hidden) * DataTypeBytes(c.dtype);
  DeviceBuffer out;
  M2N_RETURN_IF_ERROR(out.Allocate(out_bytes));
  M2N_ASSIGN_OR_RETURN(std::unique_ptr<ExpertParallel> ep,
                       ExpertParallel::Create(*group, LayerOptions(c, s)));
  std::unique_ptr<NcclExpertParallel> baseline;
  if (with_nccl) {
    M2N_ASSIGN_OR_RETURN(baseline, NcclExpertParallel::Create(*nccl, c, s, rank));
  }
  M2nSide m2n(*ep, attention());
  std::unique_ptr<NcclSide> nccl_side;
  if (baseline) nccl_side = std::make_unique<NcclSide>(*baseline);
  LatencySummary summary[2][2];
  std::vector<std::byte> first[2];
  Side* sides[2] = {&m2n, nccl_side.get()};
  const int implementations = with_nccl ? 2 : 1;
  for (int i = 0; i < implementations; ++i) {
    M2N_RETURN_IF_ERROR(RunSide(routings, *sides[i], out.data, out_bytes, &first[i]));
    if (rank == 0) Summarize(&summary[i][0], &summary[i][1]);
    M2N_RETURN_IF_ERROR(segment->Barrier(deadline()));  // rank 0 read the stamps
  }
  // The first timed call used routing warmup % 4.
  uint64_t wrong = 0;
  if (attention()) {
    const std::vector<std::byte> expected = Expected(c, s, host[size_t(c.warmup) % host.size()]);
    const size_t row = size_t(s.hidden) * DataTypeBytes(c.dtype);
    for (int i = 0; i < implementations; ++i) {
      const std::vector<std::byte>& got = first[i];
      for (int t = 0; t < s.tokens; ++t)
        wrong += std::memcmp(got.data() + t * row, expected.data() + t * row, row) != 0;
    }
  }
  segment->wrong(rank) = wrong;
  M2N_RETURN_IF_ERROR(segment->Barrier(deadline()));
  if (rank == 0) {
    int64_t all = 0;
    for (int r = 0; r < c.m + c.n; ++r) all += int64_t(segment->wrong(r));
    *wrong_total += all;
    std::printf(" %6d %6d %5d %7d | %8.1f %8.1f %8.1f %8.1f | ", s.tokens, s.hidden, s.top_k,
                s.experts, summary[0][0].p50_us, summary[0][0].p99_us, summary[0][1].p50_us,
                summary[0][1].p99_us);
    if (with_nccl) {
      const double m2n_layer = summary[0][0].p50_us + summary[0][1].p50_us;
      const double nccl_layer = summary[1][0].p50_us + summary[1][1].p50_us;
      std::printf("%8.1f %8.1f %8.1f %8.1f | %7.2f %6lld\n", summary[1][0].p50_us,
                  summary[1][0].p99_us, summary[1][1].p50_us, summary[1][1].p99_us,
                  m2n_layer / nccl_layer, (long long)all);
    } else {
      std::printf("%8s %8s %8s %8s | %7s %6lld\n", "-", "-", "-", "-", "-", (long long)all);
    }
    std::fflush(stdout);
  }
  return segment->Barrier(deadline());
}

void PrintHeader(const Rank& r) {
  char host[256] = "?";
  gethostname(host, sizeof host - 1);
  std::printf(
      "# m2n_ep_gpu_perf: dispatch / combine per call on GPUs, m2n::ExpertParallel "
      "(stream-ordered, cuda_ipc) vs NCCL (count exchange + grouped send / recv)\n");
  std::printf(
      "#   M = %d attention ranks, N = %d expert ranks, %s, identity experts, contiguous "
      "placement; %s; host %s; %s\n",
      r.c.m, r.c.n, std::string(DataTypeName(r.c.dtype)).c_str(), r.device_name.c_str(), host,
      NcclVersion().c_str());
  if (!r.with_nccl) {
    std::printf(
        "#   NCCL baseline left out: NCCL takes one GPU per rank (%d ranks here); processes "
        "sharing a GPU measure m2n's software path, not NVLink\n",
        r.c.m + r.c.n);
  }
  std::printf(
      "#   slot_bytes %zu, slot_depth %d; -n %d, -w %d; time = last rank's stream done - "
      "first rank's start, us; #wrong = output tokens that differ from the expected sum "
      "(m2n and NCCL)\n",
      r.group->options().slot_bytes, r.group->options().slot_depth, r.c.iterations, r.c.warmup);
  std::printf("#%6s %6s %5s %7s | %8s %8s %8s %8s | %8s %8s %8s %8s | %7s %6s\n", "tokens",
              "hidden", "top_k", "experts", "m2n d50", "d99", "c50", "c99", "NCCL d50", "d99",
              "c50", "c99", "m2n/NC", "#wrong");
}

int RunRank(const EpPerfConfig& config) {
  Rank r;
  r.c = config;
  Status s = r.Setup();
  int64_t wrong = 0;
  if (s.ok() && r.rank == 0) PrintHeader(r);
  const std::vector<Shape> shapes = Shapes(config);
  for (size_t i = 0; i < shapes.size() && s.ok(); ++i) {
    s = r.RunRow(shapes[i], &wrong);
    if (r.rank == 0 && s.ok())
      std::fprintf(stderr, "[m2n_ep_gpu_perf] row %zu of %zu done\n", i + 1, shapes.size());
  }
  if (s.ok()) s = r.group->Close(r.deadline());
  if (!s.ok()) {
    std::fprintf(stderr, "m2n_ep_gpu_perf rank %d: %s\n", r.rank, s.ToString().c_str());
    if (r.segment) r.segment->Abort();
    if (r.group) r.group->Abort();
    return 3;
  }
  if (r.rank == 0 && wrong != 0)
    std::printf("# DATA CHECK FAILED: %lld wrong output tokens\n", (long long)wrong);
  return wrong != 0 ? 1 : 0;
}

int Run(int argc, char** argv) {
  auto config = ParseEpPerfArgs(argc, argv, GpuEpPerfDefaults());
  if (!config.ok()) {
    std::fprintf(stderr, "m2n_ep_gpu_perf: %s\n", config.status().ToString().c_str());
    return 2;
  }
  auto launch = DetectLaunch();
  if (!launch.ok()) {
    std::fprintf(stderr, "m2n_ep_gpu_perf: %s\n", launch.status().ToString().c_str());
    return 2;
  }
  if (launch->launcher != Launcher::kNone) return RunRank(*config);
  // Started bare: M + N ranks of this program on this host.
  SpawnOptions spawn{.args = {argv, argv + argc}, .num_ranks = config->m + config->n};
  spawn.wait.finished_codes = {0, 1};
  auto job = SpawnLocal(spawn, Deadline::After(std::chrono::minutes(30)));
  if (!job.ok()) {
    std::fprintf(stderr, "m2n_ep_gpu_perf: %s\n", job.status().ToString().c_str());
    return 3;
  }
  int code = 0;
  for (size_t r = 0; r < job->ranks.size(); ++r) {
    const RankExit& e = job->ranks[r];
    if (e.exit_code != 0) {
      std::fprintf(stderr, "m2n_ep_gpu_perf: rank %zu %s\n", r, e.Describe().c_str());
      code = std::max(code, e.exit_code == 1 ? 1 : 3);
    }
  }
  return code;
}

}  // namespace
}  // namespace m2n::perf::ep

int main(int argc, char** argv) { return m2n::perf::ep::Run(argc, argv); }

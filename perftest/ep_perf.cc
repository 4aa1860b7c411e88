// m2n_ep_perf: the host twin of the expert-parallel benchmark. Per row of the sweep (tokens per
// attention rank, hidden, top-k, experts), dispatch and combine time per call of
// m2n::ExpertParallel and of the MPI baseline (ep_mpi.h) in the same mpirun job, p50 / p99 over the
// iterations. Each phase starts after an MPI_Barrier, so the phases are timed apart, and lasts from
// the first rank's start to the last rank's end on the host's steady clock (one host only), and
// #diff counts the tokens whose combined output differs between m2n and MPI. Started bare, it runs
// itself under `mpirun -np M+N --oversubscribe`. Uses only include/m2n/ and perftest's own code.
// Usage: perftest/README.md.
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "m2n/m2n.h"
#include "ep_mpi.h"
#include "ep_perf.h"
#include "stats.h"

namespace m2n::perf::ep {
namespace {

double NowUs() {
  return std::chrono::duration<double, std::micro>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// One side of the benchmark: the two phases of one call on this rank.
struct Side {
  virtual ~Side() = default;
  virtual Status Dispatch(const RankRouting* routing) = 0;
  virtual Status Combine(std::byte* out) = 0;
};

struct M2nSide : Side {
  ExpertParallel& ep;
  bool attention;
  int64_t timeout_ms;
  const std::byte* y = nullptr;  // identity experts: y = the grouped rows
  M2nSide(ExpertParallel& e, bool a, int64_t t) : ep(e), attention(a), timeout_ms(t) {}
  Status Dispatch(const RankRouting* r) override {
    const Deadline deadline = Deadline::AfterMs(timeout_ms);
    if (attention) return ep.Dispatch(r->x.data(), r->tokens, r->ids, r->weights, deadline);
    auto batch = ep.ReceiveDispatch(deadline);
    if (!batch.ok()) return batch.status();
    y = batch->x;
    return OkStatus();
  }
  Status Combine(std::byte* out) override {
    const Deadline deadline = Deadline::AfterMs(timeout_ms);
    return attention ? ep.ReceiveCombine(out, deadline) : ep.Combine(y, deadline);
  }
};

struct MpiSide : Side {
  MpiExpertParallel mpi;
  MpiSide(const EpPerfConfig& c, const Shape& s, int rank) : mpi(c, s, rank) {}
  Status Dispatch(const RankRouting* r) override { return mpi.Dispatch(r); }
  Status Combine(std::byte* out) override { return mpi.Combine(out); }
};

// Warmup + iterations of one side; per iteration this rank's phase times, and the output of the
// first timed iteration into *first_out (attention ranks).
Status RunSide(const EpPerfConfig& c, const Shape& s, bool attention,
               const std::vector<RankRouting>& routings, Side& side, CallTimes* times,
               std::vector<std::byte>* first_out) {
  std::vector<std::byte> out(size_t(s.tokens) * size_t(s.hidden) * DataTypeBytes(c.dtype));
  for (int i = 0; i < c.warmup + c.iterations; ++i) {
    const RankRouting* routing = attention ? &routings[size_t(i) % routings.size()] : nullptr;
    M2N_RETURN_IF_ERROR(MpiBarrier());
    const double t0 = NowUs();
    M2N_RETURN_IF_ERROR(side.Dispatch(routing));
    const double t1 = NowUs();
    M2N_RETURN_IF_ERROR(MpiBarrier());
    const double t2 = NowUs();
    M2N_RETURN_IF_ERROR(side.Combine(attention ? out.data() : nullptr));
    const double t3 = NowUs();
    if (i < c.warmup) continue;
    times->dispatch_start.push_back(t0);
    times->dispatch_end.push_back(t1);
    times->combine_start.push_back(t2);
    times->combine_end.push_back(t3);
    if (i == c.warmup) *first_out = out;
  }
  return OkStatus();
}

void PrintHeader(const EpPerfConfig& c, const Group& g) {
  char host[256] = "?";
  gethostname(host, sizeof host - 1);
  std::printf(
      "# m2n_ep_perf: expert-parallel dispatch / combine per call, m2n::ExpertParallel vs MPI\n");
  std::printf(
      "#   M = %d attention ranks, N = %d expert ranks, %s, identity experts, contiguous "
      "placement\n",
      c.m, c.n, std::string(DataTypeName(c.dtype)).c_str());
  std::printf("#   m2n: transport %s, slot_bytes %zu, slot_depth %d, spin_us %d\n",
              std::string(g.transport_name()).c_str(), g.options().slot_bytes,
              g.options().slot_depth, g.options().spin_us);
  const char* pml = std::getenv("OMPI_MCA_pml");
  std::printf(
      "#   MPI: %s, pml %s, MPI_Ialltoall (counts) + MPI_Ialltoallv (rows), polled with "
      "sched_yield\n",
      MpiVersion().c_str(),
      pml != nullptr ? pml : "Open MPI's choice (vader shared memory on one host)");
  std::printf(
      "#   host %s, %ld online cores, %d ranks; -n %d, -w %d; time = last rank done - first rank "
      "start, us\n",
      host, sysconf(_SC_NPROCESSORS_ONLN), c.m + c.n, c.iterations, c.warmup);
  std::printf("#%6s %6s %5s %7s | %9s %9s %9s %9s | %9s %9s %9s %9s | %8s %6s\n", "tokens",
              "hidden", "top_k", "experts", "m2n d p50", "d p99", "c p50", "c p99", "MPI d p50",
              "d p99", "c p50", "c p99", "m2n/MPI", "#diff");
}

std::vector<double> Spans(const std::vector<double>& start, const std::vector<double>& end) {
  std::vector<double> spans(start.size());
  for (size_t i = 0; i < start.size(); ++i) spans[i] = end[i] - start[i];
  return spans;
}

// One row: both sides, the slowest rank's samples onto rank 0, printed there. Returns #diff.
StatusOr<int64_t> RunRow(const EpPerfConfig& c, const Shape& s, Group& g) {
  const bool attention = g.role() == Role::kSender;
  const std::vector<RankRouting> routings =
      attention ? MakeRoutings(c, s, g.rank(), 4) : std::vector<RankRouting>{};
  M2N_ASSIGN_OR_RETURN(std::unique_ptr<ExpertParallel> ep,
                       ExpertParallel::Create(g, LayerOptions(c, s)));
  M2nSide m2n(*ep, attention, c.timeout_ms);
  MpiSide mpi(c, s, g.rank());
  CallTimes m2n_times, mpi_times;
  std::vector<std::byte> m2n_out, mpi_out;
  M2N_RETURN_IF_ERROR(RunSide(c, s, attention, routings, m2n, &m2n_times, &m2n_out));
  M2N_RETURN_IF_ERROR(RunSide(c, s, attention, routings, mpi, &mpi_times, &mpi_out));
  const size_t row_bytes = size_t(s.hidden) * DataTypeBytes(c.dtype);
  int64_t diff = 0;
  for (size_t t = 0; t < m2n_out.size() / row_bytes && attention; ++t) {
    diff +=
        std::memcmp(m2n_out.data() + t * row_bytes, mpi_out.data() + t * row_bytes, row_bytes) != 0;
  }
  M2N_RETURN_IF_ERROR(MpiSum(&diff));
  for (CallTimes* t : {&m2n_times, &mpi_times}) {
    M2N_RETURN_IF_ERROR(MpiReduceOnRankZero(t->dispatch_start, false));
    M2N_RETURN_IF_ERROR(MpiReduceOnRankZero(t->dispatch_end, true));
    M2N_RETURN_IF_ERROR(MpiReduceOnRankZero(t->combine_start, false));
    M2N_RETURN_IF_ERROR(MpiReduceOnRankZero(t->combine_end, true));
  }
  if (g.rank() == 0) {
    const LatencySummary md = Summarize(Spans(m2n_times.dispatch_start, m2n_times.dispatch_end));
    const LatencySummary mc = Summarize(Spans(m2n_times.combine_start, m2n_times.combine_end));
    const LatencySummary pd = Summarize(Spans(mpi_times.dispatch_start, mpi_times.dispatch_end));
    const LatencySummary pc = Summarize(Spans(mpi_times.combine_start, mpi_times.combine_end));
    std::printf(
        " %6d %6d %5d %7d | %9.1f %9.1f %9.1f %9.1f | %9.1f %9.1f %9.1f %9.1f | %8.2f %6lld\n",
        s.tokens, s.hidden, s.top_k, s.experts, md.p50_us, md.p99_us, mc.p50_us, mc.p99_us,
        pd.p50_us, pd.p99_us, pc.p50_us, pc.p99_us,
        (md.p50_us + mc.p50_us) / (pd.p50_us + pc.p50_us), (long long)diff);
    std::fflush(stdout);
  }
  return diff;
}

StatusOr<std::unique_ptr<Group>> CreateGroup(const EpPerfConfig& c, int rank) {
  int port = rank == 0 ? FreePort() : 0;
  M2N_RETURN_IF_ERROR(MpiBroadcastInt(&port));
  Options o;
  o.num_senders = c.m;
  o.num_receivers = c.n;
  o.bootstrap.rank = rank;
  o.bootstrap.world_size = c.m + c.n;
  o.bootstrap.master_addr = "127.0.0.1";
  o.bootstrap.master_port = port;
  o.slot_depth = 2;
  M2N_ASSIGN_OR_RETURN(o.slot_bytes, SlotBytesForSweep(c));
  M2N_ASSIGN_OR_RETURN(Options resolved, ResolveOptions(o));
  return Group::Create(resolved);
}

// Started bare: the same command line under mpirun (as root too: a container's user).
int ExecUnderMpirun(const EpPerfConfig& c, int argc, char** argv) {
  char self[4096] = {};
  if (readlink("/proc/self/exe", self, sizeof self - 1) <= 0)
    std::snprintf(self, sizeof self, "%s", argv[0]);
  const std::string np = std::to_string(c.m + c.n);
  std::vector<const char*> args = {"mpirun", "-np", np.c_str(), "--oversubscribe"};
  if (geteuid() == 0) args.push_back("--allow-run-as-root");
  args.push_back(self);
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  args.push_back(nullptr);
  std::fflush(nullptr);
  execvp("mpirun", const_cast<char* const*>(args.data()));
  std::fprintf(stderr, "m2n_ep_perf: cannot start mpirun (apt-get install openmpi-bin): %s\n",
               std::strerror(errno));
  return 3;
}

int Run(int argc, char** argv) {
  auto config = ParseEpPerfArgs(argc, argv);
  if (!config.ok()) {
    std::fprintf(stderr, "m2n_ep_perf: %s\n", config.status().ToString().c_str());
    return 2;
  }
  const EpPerfConfig& c = *config;
  if (std::getenv("OMPI_COMM_WORLD_SIZE") == nullptr) return ExecUnderMpirun(c, argc, argv);
  int rank = 0, world = 0;
  Status s = MpiStart(&argc, &argv, &rank, &world);
  if (s.ok() && world != c.m + c.n) {
    s = InvalidArgumentError("the MPI job has " + std::to_string(world) +
                             " ranks; -M + -N = " + std::to_string(c.m + c.n));
  }
  std::unique_ptr<Group> group;
  if (s.ok()) {
    auto created = CreateGroup(c, rank);
    s = created.status();
    if (s.ok()) group = std::move(*created);
  }
  int64_t diff = 0;
  if (s.ok() && rank == 0) PrintHeader(c, *group);
  for (const Shape& shape : Shapes(c)) {
    if (!s.ok()) break;
    auto row = RunRow(c, shape, *group);
    s = row.status();
    if (s.ok()) diff += *row;
  }
  if (s.ok()) s = group->Close(Deadline::AfterMs(c.timeout_ms));
  if (!s.ok()) {
    std::fprintf(stderr, "m2n_ep_perf rank %d: %s\n", rank, s.ToString().c_str());
    MpiAbort(3);  // the other ranks may wait in an MPI collective that this rank will never join
  }
  MpiStop();
  return !s.ok() ? 3 : diff != 0 ? 1 : 0;
}

}  // namespace
}  // namespace m2n::perf::ep

int main(int argc, char** argv) { return m2n::perf::ep::Run(argc, argv); }

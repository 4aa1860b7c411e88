// m2n_perf: latency, bandwidth and a data check for M senders x N receivers over m2n, optionally
// next to MPI (--baseline mpi). See perftest/README.md.
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "m2n/m2n.h"
#include "m2n/topology.h"
#include "bench.h"
#include "cli.h"
#include "host_barrier.h"
#include "launch.h"
#include "m2n_exchange.h"
#include "perftest_baseline.h"
#include "report.h"
#include "soak.h"
#if M2N_PERF_WITH_MPI
#include "mpi_baseline.h"
#endif
#if M2N_PERF_WITH_CUDA
#include "gpu_bench.h"
#endif
#if M2N_PERF_WITH_NCCL
#include "nccl_baseline.h"
#endif

namespace m2n::perf {
namespace {

// The round-trip "done" message is 8 bytes: slots are never smaller.
constexpr size_t kMinSlotBytes = 8;

int UsageError(const std::string& message) {
  std::fprintf(stderr, "m2n_perf: %s\nRun 'm2n_perf --help' for usage.\n", message.c_str());
  return kExitUsage;
}

// -M / -N against the size of a job someone else launched.
StatusOr<PerfConfig> FitShape(PerfConfig config, const LauncherInfo& launcher) {
  const int world = launcher.world_size;
  if (launcher.kind == LauncherKind::kSelf || world <= 0) return config;
  if (world < 2) {
    return InvalidArgumentError("the job (" + launcher.name + ") has " + std::to_string(world) +
                                " rank; m2n_perf needs at least 2 (a sender and a receiver)");
  }
  if (!config.senders_set && !config.receivers_set) {
    config.senders = world / 2;
    config.receivers = world - config.senders;
  } else if (config.senders_set && !config.receivers_set) {
    config.receivers = world - config.senders;
  } else if (!config.senders_set && config.receivers_set) {
    config.senders = world - config.receivers;
  }
  if (config.senders < 1 || config.receivers < 1 || config.senders + config.receivers != world) {
    return InvalidArgumentError("-M " + std::to_string(config.senders) + " -N " +
                                std::to_string(config.receivers) + " do not fit the job (" +
                                launcher.name + ") of " + std::to_string(world) + " ranks");
  }
  return config;
}

std::string SegmentName(const Options& options) {
  std::string id = options.bootstrap.job_id;
  if (id.empty())
    id = options.bootstrap.master_addr + "_" + std::to_string(options.bootstrap.master_port);
  std::string name = "/m2n_perf.";
  for (char c : id.substr(0, 200))
    name += std::isalnum(static_cast<unsigned char>(c)) || c == '-' ? c : '_';
  return name;
}

// --spin_us auto: spinning while another rank of this host waits for the core only delays it.
struct SpinChoice {
  int spin_us = -1;  // -1: leave m2n's default
  std::string why;
};
SpinChoice ChooseSpin(const PerfConfig& config, const LauncherInfo& launcher) {
  if (std::getenv("M2N_SPIN_US") != nullptr) return {-1, "M2N_SPIN_US"};
  if (config.spin_us >= 0) return {config.spin_us, "--spin_us"};
  cpu_set_t set;
  CPU_ZERO(&set);
  int cores = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 0;
  // mpirun and srun bind each rank to cores of its own: this rank's mask is not what the host's
  // ranks share. Self-started and torchrun ranks inherit one mask, which is.
  if (launcher.kind == LauncherKind::kOpenMpi || launcher.kind == LauncherKind::kSlurm) {
    cores = std::max(cores, static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)));
  }
  const int world = config.senders + config.receivers;
  const int local = launcher.local_size > 0 ? launcher.local_size : launcher.multi_host ? 0 : world;
  if (cores > 0 && local > cores) {
    return {0, "auto: " + std::to_string(local) + " ranks on " + std::to_string(cores) +
                   " usable cores, so never spin"};
  }
  return {-1, "auto: m2n's default"};
}

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "?";
  return name;
}

// One rank of the job.
class Rank {
 public:
  Rank(PerfConfig config, LauncherInfo launcher)
      : config_(std::move(config)), launcher_(std::move(launcher)) {}

  int Run(int argc, char** argv);

 private:
  // What the host sweep has gathered: rank 0's rows, the wrong bytes this rank knows of (its exit
  // status), the sizes per sweep and the time of all sweeps.
  struct Sweep {
    std::vector<Row> rows;
    uint64_t wrong = 0;
    size_t sizes = 0;
    double elapsed_s = 0;
  };

  // Prints the error, tells the other ranks, and gives the exit status.
  int Fail(const Status& status, int code = kExitFailure);
  Status SetUpMpi(int* argc, char*** argv);
  StatusOr<Options> ResolveRunOptions();
  int CreateGroup(Options resolved);
  Status ChooseLatencyMode();
  RunInfo Describe() const;
  BenchSetup MakeBenchSetup() const;
  // The sweep on host memory, its steps, and its end.
  int RunHost();
  Status RunSweeps(Bench& bench, std::span<Exchange* const> exchanges, bool with_impl,
                   Sweep& sweep);
  Status RunSize(Bench& bench, std::span<Exchange* const> exchanges, bool with_impl, int pass,
                 const std::vector<size_t>& sizes, size_t index, Sweep& sweep);
  void NoteResult(const Bench& bench, std::string_view impl, bool with_impl, int pass,
                  const SizeResult& result, Sweep& sweep);
  int FinishHost(const RunInfo& info, Sweep& sweep);
  // --use_cuda: the sweep on device memory with the stream-ordered calls (gpu_bench.h).
  int RunGpu();
  // Rank 0: one row of the table, kept for the footer and --json.
  void ReportSize(bool with_impl, std::vector<Row>& rows, std::string_view impl,
                  const SizeResult& result);
  // The GPU sweep's footer, JSON and close. `wrong`: what this rank saw.
  int Finish(const RunInfo& info, const std::vector<Row>& rows, uint64_t wrong, double elapsed_s);
  // Rank 0, both sweeps: the footer and, with --json, the file.
  // `json`: write the --json file now (false: later, with the perftest rows).
  Status WriteFooterAndJson(const RunInfo& info, const std::vector<Row>& rows, double elapsed_s,
                            size_t sizes, bool json = true);
  Status WriteJson(const RunInfo& info, const std::vector<Row>& rows, double elapsed_s);

  PerfConfig config_;
  LauncherInfo launcher_;
  bool mpi_ = false;
  std::string mpi_library_;
  std::unique_ptr<Group> group_;
  std::unique_ptr<HostSegment> segment_;
  bool forced_round_trip_ = false;
  SpinChoice spin_;
  int rank_ = -1;  // known once the options are resolved
  std::ofstream json_file_;
};

int Rank::Fail(const Status& status, int code) {
  const int rank = group_ ? group_->rank() : rank_;
  const std::string who = rank >= 0 ? "rank " + std::to_string(rank) : "(rank unknown)";
  std::fprintf(stderr, "m2n_perf %s: %s\n", who.c_str(), status.ToString().c_str());
  std::fflush(stderr);
  if (segment_) segment_->Abort();
  // After a failure of the group itself (a dead rank, say), Close says goodbye, and on rank 0,
  // which serves the store, keeps the store up until the other ranks have left: they learn from it
  // which rank died rather than only that rank 0 went (docs/reliability.md). Any other failure
  // leaves the group to its destructor, as before.
  if (group_ && !group_->Progress().ok())
    (void)group_->Close(Deadline::AfterMs(config_.timeout_ms));
#if M2N_PERF_WITH_MPI
  if (mpi_) MpiAbort(code);
#endif
  return code;
}

Status Rank::SetUpMpi(int* argc, char*** argv) {
#if M2N_PERF_WITH_MPI
  M2N_RETURN_IF_ERROR(MpiInit(argc, argv));
  mpi_ = true;
  mpi_library_ = MpiLibraryVersion();
  // Which of Open MPI's point-to-point layers carries the baseline: UCX_TLS applies only to "ucx".
  const char* pml = std::getenv("OMPI_MCA_pml");
  mpi_library_ += pml != nullptr ? std::string(", pml ") + pml +
                                       (std::string(pml) == "ucx" ? " (UCX_TLS applies)" : "")
                                 : ", default pml (UCX_TLS does not apply)";
  const int world = config_.senders + config_.receivers;
  if (MpiWorldSize() != world) {
    return InvalidArgumentError("the MPI job has " + std::to_string(MpiWorldSize()) +
                                " ranks, -M " + std::to_string(config_.senders) + " -N " +
                                std::to_string(config_.receivers) + " need " +
                                std::to_string(world));
  }
  // Under an mpirun someone else started, nobody told the ranks where the m2n store is: rank 0
  // offers a free port on its host.
  if (std::getenv("M2N_MASTER_PORT") == nullptr) {
    std::string addr = std::getenv("M2N_MASTER_ADDR") ? std::getenv("M2N_MASTER_ADDR") : HostName();
    std::string port = "0";
    if (MpiRank() == 0) {
      auto picked = PickFreePort();
      if (picked.ok()) port = std::to_string(*picked);
    }
    M2N_RETURN_IF_ERROR(MpiBroadcast(addr));
    M2N_RETURN_IF_ERROR(MpiBroadcast(port));
    if (port != "0") {
      setenv("M2N_MASTER_ADDR", addr.c_str(), 1);
      setenv("M2N_MASTER_PORT", port.c_str(), 1);
    }
  }
  return OkStatus();
#else
  (void)argc;
  (void)argv;
  return UnimplementedError("this m2n_perf was built without MPI");
#endif
}

// One-way latency needs one clock: all ranks on one host, proven by the shared segment.
Status Rank::ChooseLatencyMode() {
  if (config_.latency_mode == LatencyMode::kRoundTrip) {
    forced_round_trip_ = true;
    return OkStatus();
  }
  if (launcher_.multi_host) {
    if (config_.latency_mode == LatencyMode::kOneWay) {
      return InvalidArgumentError("--latency_mode oneway needs every rank on one host, but " +
                                  launcher_.name + " says the job spans hosts");
    }
    return OkStatus();
  }
  auto barrier = [this] { return group_->Barrier(Deadline::AfterMs(config_.timeout_ms)); };
  M2N_ASSIGN_OR_RETURN(segment_, HostSegment::Join(SegmentName(group_->options()), group_->rank(),
                                                   group_->world_size(),
                                                   config_.warmup_iters + config_.iters, barrier));
  if (segment_->shared()) {
    // A rank that dies while the others wait in the host barrier is named as promptly as in
    // Receive.
    segment_->WatchLiveness(
        [this](Deadline deadline) { return group_->CheckPeersAlive(deadline); },
        std::chrono::milliseconds(std::max(group_->options().liveness_check_ms, 10)));
  } else {
    const std::string why = segment_->why_not_shared();
    segment_.reset();
    if (config_.latency_mode == LatencyMode::kOneWay) {
      return InvalidArgumentError("--latency_mode oneway needs every rank on one host: " + why);
    }
  }
  return OkStatus();
}

RunInfo Rank::Describe() const {
  RunInfo info;
  info.version = kVersionString;
  info.senders = group_->num_senders();
  info.receivers = group_->num_receivers();
  info.transport = std::string(group_->transport_name());
  info.transport_requested = config_.transport;
  info.slot_bytes = group_->options().slot_bytes;
  info.slot_depth = group_->options().slot_depth;
  info.min_bytes = config_.min_bytes;
  info.max_bytes = config_.max_bytes;
  info.step_factor = config_.step_factor;
  info.iters = config_.iters;
  info.warmup_iters = config_.warmup_iters;
  info.check = config_.check;
  info.host = HostName();
  info.launcher = launcher_.name;
  if (const char* tls = std::getenv("UCX_TLS")) info.ucx_tls = tls;
  if (segment_) {
    info.latency_mode = "oneway";
    info.latency_rule = "max(receiver done) - min(sender start) per iteration, one host clock";
  } else {
    info.latency_mode = "roundtrip";
    info.latency_rule = std::string("rank 0's own round trip to all receivers / 2 (") +
                        (forced_round_trip_ ? "--latency_mode roundtrip" : "ranks span hosts") +
                        ")";
  }
  info.spin = std::to_string(group_->options().spin_us) + " us before yielding the core (" +
              spin_.why + ")";
  info.baseline = mpi_                                      ? "mpi"
                  : config_.baseline == Baseline::kNccl     ? "nccl"
                  : config_.baseline == Baseline::kPerftest ? "perftest"
                                                            : "none";
#if M2N_PERF_WITH_NCCL
  if (config_.baseline == Baseline::kNccl) info.nccl_library = NcclVersion();
#endif
  if (config_.use_cuda) {
    info.gpu = "device buffers, stream-ordered calls; rank r on GPU r mod the GPUs (" +
               std::to_string(group_->world_size()) + " ranks)";
  }
  info.mpi_library = mpi_library_;
  // Rank 0's placement (the others' follows the same rule for their GPU) and the machine's
  // topology.
  info.topology = DescribeTopology();
  const Placement placement = ChoosePlacement(group_->options());
  info.placement =
      "NIC " + (placement.nic.empty() ? std::string("(the transport's choice)") : placement.nic) +
      ", proxy core " +
      (placement.proxy_core < 0 ? std::string("(none)") : std::to_string(placement.proxy_core)) +
      ": " + placement.reason;
  return info;
}

// The steps of a run: the group (and MPI), then the sweep on host or device memory.
int Rank::Run(int argc, char** argv) {
  if (config_.baseline == Baseline::kMpi) {
    if (Status s = SetUpMpi(&argc, &argv); !s.ok()) return Fail(s, kExitUsage);
  }
  auto options = ResolveRunOptions();
  if (!options.ok()) return Fail(options.status(), kExitUsage);
  if (int code = CreateGroup(std::move(options).value()); code != kExitOk) return code;
  if (config_.use_cuda) return RunGpu();
  return RunHost();
}

// The flags as m2n Options, with M2N_* applied; rank 0 also opens the --json file, so that a bad
// path fails before the run, not after it. Every error here is the user's to fix.
StatusOr<Options> Rank::ResolveRunOptions() {
  Options options;
  options.num_senders = config_.senders;
  options.num_receivers = config_.receivers;
  options.slot_bytes = std::max(config_.max_bytes, kMinSlotBytes);
  options.slot_depth = config_.slot_depth;
  options.transport = config_.transport;
  options.bootstrap.timeout = std::chrono::milliseconds(config_.timeout_ms);
  spin_ = ChooseSpin(config_, launcher_);
  if (spin_.spin_us >= 0) options.spin_us = spin_.spin_us;
  M2N_ASSIGN_OR_RETURN(Options resolved, ResolveOptions(options));
  rank_ = resolved.bootstrap.rank;
  if (rank_ == 0 && !config_.json_path.empty()) {
    json_file_.open(config_.json_path, std::ios::trunc);
    if (!json_file_) {
      return InvalidArgumentError("--json " + config_.json_path +
                                  ": cannot open for writing: " + std::strerror(errno));
    }
  }
  return resolved;
}

// Creates the group and checks what the environment may have changed; kExitOk or Fail's code.
int Rank::CreateGroup(Options resolved) {
#if M2N_PERF_WITH_CUDA
  if (config_.use_cuda) {
    auto device = UseDeviceOfRank(rank_);
    if (!device.ok()) return Fail(device.status());
    resolved.slot_memory = MemoryKind::kCuda;
  }
#endif
  auto created = Group::Create(resolved);
  if (!created.ok()) {
    // A bad --transport or option value is the user's to fix: usage, not a run-time failure.
    const bool usage = created.status().code() == StatusCode::kInvalidArgument;
    return Fail(created.status().WithContext("creating the m2n group"),
                usage ? kExitUsage : kExitFailure);
  }
  group_ = std::move(created).value();
  // M2N_SLOT_BYTES and friends may have overridden the flags: the group's values are the truth.
  if (group_->options().slot_bytes < config_.max_bytes) {
    return Fail(InvalidArgumentError("slot bytes " + std::to_string(group_->options().slot_bytes) +
                                     " (M2N_SLOT_BYTES?) is smaller than --maxbytes " +
                                     std::to_string(config_.max_bytes)),
                kExitUsage);
  }
  config_.slot_depth = group_->options().slot_depth;
#if M2N_PERF_WITH_MPI
  if (mpi_ && MpiRank() != group_->rank()) {
    return Fail(FailedPreconditionError("MPI rank " + std::to_string(MpiRank()) +
                                        " differs from m2n rank " + std::to_string(group_->rank()) +
                                        " (M2N_RANK set under mpirun?)"));
  }
#endif
  if (Status s = ChooseLatencyMode(); !s.ok()) {
    return Fail(s, s.code() == StatusCode::kInvalidArgument ? kExitUsage : kExitFailure);
  }
  return kExitOk;
}

BenchSetup Rank::MakeBenchSetup() const {
  BenchSetup setup;
  setup.config = config_;
  setup.rank = group_->rank();
  setup.num_senders = group_->num_senders();
  setup.num_receivers = group_->num_receivers();
  setup.peers.assign(group_->peers().begin(), group_->peers().end());
  setup.segment = segment_.get();
  return setup;
}

// The sweep on host memory: m2n, and MPI beside it with --baseline mpi.
int Rank::RunHost() {
  BenchSetup setup = MakeBenchSetup();
  setup.group_barrier = [this] { return group_->Barrier(Deadline::AfterMs(config_.timeout_ms)); };
  Bench bench(std::move(setup));
  auto region = group_->RegisterMemory(bench.send_memory().data(), bench.send_memory().size());
  if (!region.ok()) return Fail(region.status().WithContext("registering the send buffers"));

  M2nExchange m2n_exchange(*group_, config_.timeout_ms);
  std::vector<Exchange*> exchanges = {&m2n_exchange};
  std::unique_ptr<Exchange> mpi_exchange;
#if M2N_PERF_WITH_MPI
  if (mpi_) {
    mpi_exchange = std::make_unique<MpiExchange>(group_->peers(), config_.slot_depth,
                                                 std::max(config_.max_bytes, kMinSlotBytes),
                                                 config_.timeout_ms, group_->options().spin_us);
    exchanges.push_back(mpi_exchange.get());
  }
#endif
  const RunInfo info = Describe();
  const bool with_impl = exchanges.size() > 1;
  if (group_->rank() == 0) {
    PrintHeader(stdout, info);
    PrintTableHead(stdout, with_impl);
    std::fflush(stdout);
  }
  Sweep sweep;
  if (Status s = RunSweeps(bench, exchanges, with_impl, sweep); !s.ok()) return Fail(s);
  return FinishHost(info, sweep);
}

// --soak: the sweep again and again; the table shows the first, each sweep has its own data.
Status Rank::RunSweeps(Bench& bench, std::span<Exchange* const> exchanges, bool with_impl,
                       Sweep& sweep) {
  const std::vector<size_t> sizes = SweepSizes(config_);
  sweep.sizes = sizes.size();
  const int sweeps =
      SoakSweeps(config_, group_->num_senders(), group_->num_receivers(), sizes.size());
  SoakMonitor soak(
      group_->rank(), sweeps,
      MessagesPerSweep(config_, group_->num_senders(), group_->num_receivers(), sizes.size()));
  const int64_t start = NowNs();
  for (int pass = 0; pass < sweeps; ++pass) {
    for (size_t index = 0; index < sizes.size(); ++index) {
      M2N_RETURN_IF_ERROR(RunSize(bench, exchanges, with_impl, pass, sizes, index, sweep));
    }
    if (config_.soak_messages > 0) soak.AfterSweep(stdout, pass, sweep.wrong);
  }
  sweep.elapsed_s = static_cast<double>(NowNs() - start) / 1e9;
  if (config_.soak_messages > 0) soak.Finish(stdout, sweep.wrong, sweep.elapsed_s);
  return OkStatus();
}

// One size of sweep `pass` on every exchange; rank 0 prints its rows in the first sweep.
Status Rank::RunSize(Bench& bench, std::span<Exchange* const> exchanges, bool with_impl, int pass,
                     const std::vector<size_t>& sizes, size_t index, Sweep& sweep) {
  const size_t bytes = sizes[index];
  const uint32_t size_index =
      static_cast<uint32_t>(static_cast<size_t>(pass) * sizes.size() + index);
  double seconds = 0;
  for (Exchange* exchange : exchanges) {
    M2N_ASSIGN_OR_RETURN(SizeResult result, bench.RunSize(*exchange, bytes, size_index));
    sweep.wrong += result.wrong;
    seconds += result.seconds;
    NoteResult(bench, exchange->name(), with_impl, pass, result, sweep);
  }
  if (group_->rank() == 0 && pass == 0) {
    if (with_impl && sweep.rows.size() >= 2)
      PrintRatioRow(stdout, sweep.rows[sweep.rows.size() - 2], sweep.rows.back());
    std::fflush(stdout);
    if (seconds > 1.0) {
      std::fprintf(stderr, "m2n_perf: %zu B done in %.1f s (%zu of %zu sizes)\n", bytes, seconds,
                   index + 1, sizes.size());
    }
  }
  return OkStatus();
}

// Rank 0 prints the first sweep's row; any other rank says what wrong bytes it found itself.
void Rank::NoteResult(const Bench& bench, std::string_view impl, bool with_impl, int pass,
                      const SizeResult& result, Sweep& sweep) {
  const auto local_wrong = static_cast<unsigned long long>(result.local_wrong);
  if (pass > 0) {
    if (result.local_wrong > 0) {
      std::fprintf(stderr, "m2n_perf rank %d: soak sweep %d: %llu wrong byte(s) at %zu B (%s)\n",
                   group_->rank(), pass + 1, local_wrong, result.bytes, std::string(impl).c_str());
    }
    return;
  }
  if (!bench.is_sender() || group_->rank() != 0) {
    if (result.local_wrong > 0 && !bench.one_way()) {
      std::fprintf(stderr, "m2n_perf rank %d: %llu wrong byte(s) at %zu B (%s)\n", group_->rank(),
                   local_wrong, result.bytes, std::string(impl).c_str());
    }
    return;
  }
  ReportSize(with_impl, sweep.rows, impl, result);
}

// Rank 0's footer and --json; the close; with --baseline perftest, perftest's rows after it.
int Rank::FinishHost(const RunInfo& info, Sweep& sweep) {
  const bool report = group_->rank() == 0;
  const bool perftest = config_.baseline == Baseline::kPerftest;
  if (report) {
    if (Status s =
            WriteFooterAndJson(info, sweep.rows, sweep.elapsed_s, sweep.sizes, /*json=*/!perftest);
        !s.ok()) {
      return Fail(s);
    }
  }
  if (Status s = group_->Close(Deadline::AfterMs(config_.timeout_ms)); !s.ok()) {
    return Fail(s.WithContext("closing the group"));
  }
  // perftest on the same device, once every m2n rank is done (nothing else competes for the cores);
  // its rows go into the --json file beside m2n's.
  if (report && perftest) {
    auto baseline = ReportPerftestBaseline(config_, sweep.rows, stdout);
    if (!baseline.ok()) return Fail(baseline.status());
    sweep.rows.insert(sweep.rows.end(), baseline->begin(), baseline->end());
    if (Status s = WriteJson(info, sweep.rows, sweep.elapsed_s); !s.ok()) return Fail(s);
  }
#if M2N_PERF_WITH_MPI
  if (mpi_) MpiFinalize();
#endif
  return sweep.wrong > 0 ? kExitWrongData : kExitOk;
}

void Rank::ReportSize(bool with_impl, std::vector<Row>& rows, std::string_view impl,
                      const SizeResult& result) {
  Row row{.bytes = result.bytes,
          .impl = std::string(impl),
          .latency = result.latency,
          .gbps = result.gbps,
          .mmsg_per_s = result.mmsg_per_s,
          .wrong = result.wrong};
  PrintRow(stdout, row, with_impl);
  rows.push_back(row);
}

Status Rank::WriteFooterAndJson(const RunInfo& info, const std::vector<Row>& rows, double elapsed_s,
                                size_t sizes, bool json) {
  uint64_t total_wrong = 0;
  for (const Row& row : rows) total_wrong += row.wrong;
  PrintFooter(stdout, total_wrong, elapsed_s, sizes);
  std::fflush(stdout);
  return json ? WriteJson(info, rows, elapsed_s) : OkStatus();
}

Status Rank::WriteJson(const RunInfo& info, const std::vector<Row>& rows, double elapsed_s) {
  uint64_t total_wrong = 0;
  for (const Row& row : rows) total_wrong += row.wrong;
  if (!json_file_.is_open()) return OkStatus();
  json_file_ << FormatJson(info, rows, total_wrong, elapsed_s);
  json_file_.close();
  if (!json_file_) {
    return InternalError("--json " + config_.json_path + ": write failed: " + std::strerror(errno));
  }
  return OkStatus();
}

#if M2N_PERF_WITH_CUDA
int Rank::Finish(const RunInfo& info, const std::vector<Row>& rows, uint64_t wrong,
                 double elapsed_s) {
  if (group_->rank() == 0) {
    if (Status s = WriteFooterAndJson(info, rows, elapsed_s, SweepSizes(config_).size()); !s.ok()) {
      return Fail(s);
    }
  }
  if (Status s = group_->Close(Deadline::AfterMs(config_.timeout_ms)); !s.ok()) {
    return Fail(s.WithContext("closing the group"));
  }
  return wrong > 0 ? kExitWrongData : kExitOk;
}

#endif

int Rank::RunGpu() {
#if M2N_PERF_WITH_CUDA
  if (!segment_) {
    return Fail(
        InvalidArgumentError("--use_cuda needs every rank on one host (CUDA IPC, one host clock)"),
        kExitUsage);
  }
  auto bench = GpuBench::Create(MakeBenchSetup());
  if (!bench.ok()) return Fail(bench.status());
  auto region = group_->RegisterMemory((*bench)->send_memory().data(),
                                       (*bench)->send_memory().size(), MemoryKind::kCuda);
  if (!region.ok()) return Fail(region.status().WithContext("registering the device send buffers"));
  std::vector<std::unique_ptr<GpuExchange>> exchanges;
  exchanges.push_back(MakeM2nGpuExchange(*group_));
#if M2N_PERF_WITH_NCCL
  if (config_.baseline == Baseline::kNccl) {
    auto nccl = MakeNcclExchange(*segment_, group_->rank(), group_->world_size(), group_->peers(),
                                 config_.slot_depth, std::max(config_.max_bytes, kMinSlotBytes),
                                 config_.timeout_ms);
    if (!nccl.ok()) return Fail(nccl.status().WithContext("setting up the NCCL baseline"));
    exchanges.push_back(std::move(nccl).value());
  }
#endif
  const bool report = group_->rank() == 0;
  const RunInfo info = Describe();
  const bool with_impl = exchanges.size() > 1;
  if (report) {
    PrintHeader(stdout, info);
    PrintTableHead(stdout, with_impl);
    std::fflush(stdout);
  }
  const std::vector<size_t> sizes = SweepSizes(config_);
  std::vector<Row> rows;
  uint64_t wrong = 0;
  const int64_t start = NowNs();
  for (size_t index = 0; index < sizes.size(); ++index) {
    double seconds = 0;
    for (auto& exchange : exchanges) {
      auto result = (*bench)->RunSize(*exchange, sizes[index], static_cast<uint32_t>(index));
      if (!result.ok()) return Fail(result.status());
      wrong += result->wrong;
      seconds += result->seconds;
      if (report) ReportSize(with_impl, rows, exchange->name(), *result);
    }
    if (report) {
      if (with_impl && rows.size() >= 2) PrintRatioRow(stdout, rows[rows.size() - 2], rows.back());
      std::fflush(stdout);
      if (seconds > 1.0) {
        std::fprintf(stderr, "m2n_perf: %zu B done in %.1f s (%zu of %zu sizes)\n", sizes[index],
                     seconds, index + 1, sizes.size());
      }
    }
  }
  const double elapsed_s = static_cast<double>(NowNs() - start) / 1e9;
  exchanges.clear();  // the NCCL communicator goes before the group
  return Finish(info, rows, wrong, elapsed_s);
#else
  return Fail(UnimplementedError("this m2n_perf was built without CUDA"), kExitUsage);
#endif
}

int Main(int argc, char** argv) {
  auto parsed = ParseCommandLine(argc, argv);
  if (!parsed.ok()) return UsageError(parsed.status().message());
  PerfConfig config = std::move(parsed).value();
  if (config.help) {
    std::fputs(Usage("m2n_perf").c_str(), stdout);
    return kExitOk;
  }
  auto detected = DetectLauncher();
  if (!detected.ok()) return UsageError(detected.status().message());
  const LauncherInfo launcher = std::move(detected).value();
  if (config.use_cuda && !M2N_PERF_WITH_CUDA) {
    return UsageError(
        "--use_cuda: this m2n_perf was built without CUDA (CMake found no CUDA toolkit)");
  }
  if (config.baseline == Baseline::kNccl) {
    if (!config.use_cuda) return UsageError("--baseline nccl measures GPUs: add --use_cuda");
    if (!M2N_PERF_WITH_NCCL) {
      return UsageError(
          "--baseline nccl: this m2n_perf was built without NCCL (CMake found no nccl.h / "
          "libnccl)");
    }
  }
  if (config.use_cuda && config.baseline == Baseline::kPerftest) {
    return UsageError(
        "--baseline perftest measures host memory (ib_write_lat / ib_write_bw): drop --use_cuda");
  }
  if (config.use_cuda && config.baseline == Baseline::kMpi) {
    return UsageError("--use_cuda takes --baseline nccl, not mpi");
  }

  if (config.baseline == Baseline::kMpi) {
#if !M2N_PERF_WITH_MPI
    return UsageError(
        "--baseline mpi: this m2n_perf was built without MPI (CMake found none, or "
        "-DM2N_WITH_MPI=OFF).\n  To get it: apt-get install libopenmpi-dev openmpi-bin, then "
        "re-run cmake with -DM2N_WITH_MPI=ON and rebuild");
#else
    if (config.max_bytes > static_cast<size_t>(INT_MAX)) {
      return UsageError("--baseline mpi: --maxbytes must be below 2G (MPI counts are int)");
    }
    if (launcher.kind == LauncherKind::kNone) return ExecUnderMpirun(config, argc, argv);
    if (launcher.kind != LauncherKind::kOpenMpi) {
      return UsageError(
          "--baseline mpi runs under Open MPI's mpirun, but this job was started by " +
          launcher.name + "; start m2n_perf bare (it runs mpirun itself) or under mpirun");
    }
#endif
  }
  if (launcher.kind == LauncherKind::kNone) return SpawnLocalJob(config, argc, argv);

  auto fitted = FitShape(config, launcher);
  if (!fitted.ok()) return UsageError(fitted.status().message());
  return Rank(std::move(fitted).value(), launcher).Run(argc, argv);
}

}  // namespace
}  // namespace m2n::perf

int main(int argc, char** argv) { return m2n::perf::Main(argc, argv); }

// ResolveOptions (m2n/options.h): the table of M2N_* variables applied over an Options through the
// environment reader (src/base/env.h), then the launcher's rank, world size and master address
// (m2n/launch.h).
#include "m2n/options.h"

#include <sched.h>

#include <sstream>
#include <string>

#include "bootstrap/handshake.h"
#include "m2n/launch.h"
#include "src/base/env.h"

namespace m2n {
namespace {

constexpr EnvironmentVariable kTable[] = {
    {"M2N_RANK", "bootstrap.rank", "this process's rank in [0, M + N)"},
    {"M2N_WORLD_SIZE", "bootstrap.world_size", "number of ranks, M + N"},
    {"M2N_MASTER_ADDR", "bootstrap.master_addr", "host of rank 0's bootstrap store (127.0.0.1)"},
    {"M2N_MASTER_PORT", "bootstrap.master_port", "port of the bootstrap store (29517)"},
    {"M2N_JOB_ID", "bootstrap.job_id", "identity shared by the ranks of one job"},
    {"M2N_JOB_KEY", "bootstrap.job_key",
     "secret shared by the ranks of one job, >= 16 bytes (none)"},
    {"M2N_JOB_KEY_FILE", "bootstrap.job_key",
     "file holding the job key, readable by its owner only (none)"},
    {"M2N_TIMEOUT_MS", "bootstrap.timeout", "bound on group creation, in ms (30000)"},
    {"M2N_SENDERS", "num_senders", "M, the number of senders"},
    {"M2N_RECEIVERS", "num_receivers", "N, the number of receivers"},
    {"M2N_SLOT_BYTES", "slot_bytes", "bytes per receive slot = largest message (1 MiB)"},
    {"M2N_SLOT_DEPTH", "slot_depth", "receive slots per peer = credits per peer (4)"},
    {"M2N_TRANSPORT", "transport", "auto, or a transport name (ucx, ...)"},
    {"M2N_SPIN_US", "spin_us",
     "how long an idle wait spins before yielding the core, in us; -1: auto (-1)"},
    {"M2N_LIVENESS_CHECK_MS", "liveness_check_ms",
     "how often a blocked call checks for dead peers (200)"},
    {"M2N_CHECKSUM", "checksum", "1: check every payload on arrival (CRC-32C trailer); 0: off (0)"},
    {"M2N_NIC", "nic", "RDMA NIC a NIC transport must use (nearest to the GPU, from the topology)"},
    {"M2N_PROXY_CORE", "proxy_core",
     "CPU a transport's proxy thread is pinned to; -1: from the topology (-1)"},
};

// Reads an integer variable over *field; absent leaves it untouched. A bad value names the
// variable.
template <typename T>
Status ReadInt(const char* name, int64_t min, int64_t max, T* field) {
  M2N_ASSIGN_OR_RETURN(int64_t value, env::Int(name, min, max, static_cast<int64_t>(*field)));
  *field = static_cast<T>(value);
  return OkStatus();
}

void ReadString(const char* name, std::string* field) {
  *field = env::String(name, std::move(*field));
}

// The job key: M2N_JOB_KEY, else the file M2N_JOB_KEY_FILE names, else the one set in code. Both
// variables set is refused: which one the operator meant cannot be told.
Status ReadJobKey(std::string* key) {
  const bool from_variable = env::IsSet("M2N_JOB_KEY");
  const bool from_file = env::IsSet("M2N_JOB_KEY_FILE");
  if (from_variable && from_file) {
    return InvalidArgumentError("options: both M2N_JOB_KEY and M2N_JOB_KEY_FILE are set; set one");
  }
  if (from_variable) *key = env::String("M2N_JOB_KEY", "");
  if (from_file) {
    M2N_ASSIGN_OR_RETURN(*key, bootstrap::ReadJobKeyFile(env::String("M2N_JOB_KEY_FILE", "")));
  }
  return bootstrap::CheckJobKey(*key, from_variable ? "M2N_JOB_KEY" : "Options::bootstrap.job_key");
}

// What the launcher calls this run, the same on all its ranks and different for another run, so
// two jobs that share a master port get different default job ids and never join each other's
// store. Empty where the launcher names no run (then set M2N_JOB_ID or a job key).
std::string LauncherRunName(Launcher launcher) {
  switch (launcher) {
    case Launcher::kTorchrun:
      return env::String("TORCHELASTIC_RUN_ID", "");
    case Launcher::kOpenMpi:
      return env::String("PMIX_NAMESPACE", env::String("OMPI_MCA_ess_base_jobid", ""));
    case Launcher::kSlurm: {
      const std::string job = env::String("SLURM_JOB_ID", "");
      return job.empty() ? job : job + "." + env::String("SLURM_STEP_ID", "0");
    }
    default:
      return "";
  }
}

// Fills what the code and the M2N_* variables left unset from the launcher's variables, and says
// what the launcher calls this run (LauncherRunName).
Status ReadLauncher(BootstrapOptions* b, std::string* run_name) {
  M2N_ASSIGN_OR_RETURN(const LaunchInfo launch, DetectLaunch());
  if (b->rank < 0) b->rank = launch.rank;
  if (b->world_size < 0) b->world_size = launch.world_size;
  if (b->master_addr.empty()) b->master_addr = launch.master_addr;
  if (b->master_port == 0) b->master_port = launch.master_port;
  *run_name = LauncherRunName(launch.launcher);
  return OkStatus();
}

// Longer than a screen on purpose: a flat list of one bounded read per M2N_* variable, in the order
// of the environment table, which reads best as one list. Then the launcher's variables fill what
// is still unset.
Status ApplyEnvironment(Options& o, std::string* run_name) {
  BootstrapOptions& b = o.bootstrap;
  // M2N_* variables are the operator's override: they win over fields set in code.
  M2N_RETURN_IF_ERROR(ReadInt("M2N_RANK", 0, 1 << 20, &b.rank));
  M2N_RETURN_IF_ERROR(ReadInt("M2N_WORLD_SIZE", 1, 1 << 20, &b.world_size));
  ReadString("M2N_MASTER_ADDR", &b.master_addr);
  M2N_RETURN_IF_ERROR(ReadInt("M2N_MASTER_PORT", 1, 65535, &b.master_port));
  ReadString("M2N_JOB_ID", &b.job_id);
  M2N_RETURN_IF_ERROR(ReadJobKey(&b.job_key));
  int64_t timeout_ms = b.timeout.count();
  M2N_RETURN_IF_ERROR(ReadInt("M2N_TIMEOUT_MS", 1, int64_t{1} << 40, &timeout_ms));
  b.timeout = std::chrono::milliseconds(timeout_ms);
  M2N_RETURN_IF_ERROR(ReadInt("M2N_SENDERS", 1, 1 << 16, &o.num_senders));
  M2N_RETURN_IF_ERROR(ReadInt("M2N_RECEIVERS", 1, 1 << 16, &o.num_receivers));
  M2N_ASSIGN_OR_RETURN(o.slot_bytes,
                       env::Size("M2N_SLOT_BYTES", 1, uint64_t{1} << 32, o.slot_bytes));
  M2N_RETURN_IF_ERROR(ReadInt("M2N_SLOT_DEPTH", 1, 1024, &o.slot_depth));
  ReadString("M2N_TRANSPORT", &o.transport);
  M2N_RETURN_IF_ERROR(ReadInt("M2N_SPIN_US", -1, 10'000'000, &o.spin_us));
  M2N_RETURN_IF_ERROR(ReadInt("M2N_LIVENESS_CHECK_MS", 1, 3'600'000, &o.liveness_check_ms));
  M2N_ASSIGN_OR_RETURN(o.checksum, env::Bool("M2N_CHECKSUM", o.checksum));
  ReadString("M2N_NIC", &o.nic);
  M2N_RETURN_IF_ERROR(ReadInt("M2N_PROXY_CORE", -1, CPU_SETSIZE - 1, &o.proxy_core));
  return ReadLauncher(&b, run_name);
}

}  // namespace

std::span<const EnvironmentVariable> EnvironmentTable() { return kTable; }

StatusOr<Options> ResolveOptions(const Options& in) {
  Options o = in;
  BootstrapOptions& b = o.bootstrap;
  // Options that were resolved already (ResolveOptions' result, Group::options()) are final: what
  // the caller changed since, e.g. the port of a second group, is not overridden by the variables.
  std::string run_name;
  if (!in.resolved) M2N_RETURN_IF_ERROR(ApplyEnvironment(o, &run_name));
  o.resolved = true;

  if (b.master_addr.empty()) b.master_addr = "127.0.0.1";
  if (b.master_port == 0) b.master_port = 29517;
  if (b.job_id.empty()) {
    b.job_id = "m2n@" + b.master_addr + ":" + std::to_string(b.master_port) +
               (run_name.empty() ? "" : "/" + run_name);
  }

  // Shape checks that need no peer: the bootstrap cannot even start without them.
  if (o.num_senders <= 0 || o.num_receivers <= 0) {
    return InvalidArgumentError(
        "options: num_senders (M) and num_receivers (N) must be >= 1, got M=" +
        std::to_string(o.num_senders) + " N=" + std::to_string(o.num_receivers) +
        " (set them in Options or M2N_SENDERS / M2N_RECEIVERS)");
  }
  if (b.world_size < 0) {
    return InvalidArgumentError(
        "options: no world size: set Options::bootstrap.world_size, M2N_WORLD_SIZE, "
        "or launch with torchrun / mpirun / srun");
  }
  if (b.rank < 0) {
    return InvalidArgumentError(
        "options: no rank: set Options::bootstrap.rank, M2N_RANK, "
        "or launch with torchrun / mpirun / srun");
  }
  if (b.world_size != o.num_senders + o.num_receivers) {
    return InvalidArgumentError("options: world size " + std::to_string(b.world_size) +
                                " != M + N = " + std::to_string(o.num_senders) + " + " +
                                std::to_string(o.num_receivers));
  }
  if (b.rank >= b.world_size) {
    return InvalidArgumentError("options: rank " + std::to_string(b.rank) + " is outside [0, " +
                                std::to_string(b.world_size) + ")");
  }
  if (o.slot_bytes == 0) return InvalidArgumentError("options: slot_bytes must be > 0");
  if (o.slot_depth < 1 || o.slot_depth > 1024) {
    return InvalidArgumentError("options: slot_depth " + std::to_string(o.slot_depth) +
                                " is outside [1, 1024]");
  }
  return o;
}

std::string DescribeOptions(const Options& o) {
  std::ostringstream out;
  out << "senders (M)        " << o.num_senders << "\n"
      << "receivers (N)      " << o.num_receivers << "\n"
      << "rank / world       " << o.bootstrap.rank << " / " << o.bootstrap.world_size << "\n"
      << "slot bytes x depth " << o.slot_bytes << " x " << o.slot_depth << "\n"
      << "transport          " << o.transport << "\n"
      << "master             " << o.bootstrap.master_addr << ":" << o.bootstrap.master_port << "\n"
      << "job id             " << o.bootstrap.job_id << "\n"
      << "job key            " << (o.bootstrap.job_key.empty() ? "none" : "set (not shown)") << "\n"
      << "timeout            " << o.bootstrap.timeout.count() << " ms\n"
      << "spin               "
      << (o.spin_us < 0 ? std::string("auto") : std::to_string(o.spin_us) + " us") << "\n"
      << "liveness check     " << o.liveness_check_ms << " ms\n"
      << "checksum           " << (o.checksum ? "on" : "off") << "\n"
      << "nic                " << (o.nic.empty() ? std::string("auto (topology)") : o.nic) << "\n"
      << "proxy core         "
      << (o.proxy_core < 0 ? std::string("auto (topology)") : std::to_string(o.proxy_core)) << "\n";
  return out.str();
}

}  // namespace m2n

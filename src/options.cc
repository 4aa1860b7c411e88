#include "m2n/options.h"

#include <sched.h>

#include <charconv>
#include <cstdlib>
#include <sstream>
#include <string>

namespace m2n {
namespace {

constexpr EnvironmentVariable kTable[] = {
    {"M2N_RANK", "bootstrap.rank", "this process's rank in [0, M + N)"},
    {"M2N_WORLD_SIZE", "bootstrap.world_size", "number of ranks, M + N"},
    {"M2N_MASTER_ADDR", "bootstrap.master_addr", "host of rank 0's bootstrap store (127.0.0.1)"},
    {"M2N_MASTER_PORT", "bootstrap.master_port", "port of the bootstrap store (29517)"},
    {"M2N_JOB_ID", "bootstrap.job_id", "identity shared by the ranks of one job"},
    {"M2N_TIMEOUT_MS", "bootstrap.timeout", "bound on group creation, in ms (30000)"},
    {"M2N_SENDERS", "num_senders", "M, the number of senders"},
    {"M2N_RECEIVERS", "num_receivers", "N, the number of receivers"},
    {"M2N_SLOT_BYTES", "slot_bytes", "bytes per receive slot = largest message (1 MiB)"},
    {"M2N_SLOT_DEPTH", "slot_depth", "receive slots per peer = credits per peer (4)"},
    {"M2N_TRANSPORT", "transport", "auto, or a transport name (ucx, ...)"},
    {"M2N_SPIN_US", "spin_us", "how long an idle wait spins before yielding the core, in us; -1: auto (-1)"},
    {"M2N_LIVENESS_CHECK_MS", "liveness_check_ms", "how often a blocked call checks for dead peers (200)"},
    {"M2N_CHECKSUM", "checksum", "1: check every payload on arrival (CRC-32C trailer); 0: off (0)"},
    {"M2N_NIC", "nic", "RDMA NIC a NIC transport must use (nearest to the GPU, from the topology)"},
    {"M2N_PROXY_CORE", "proxy_core", "CPU a transport's proxy thread is pinned to; -1: from the topology (-1)"},
};

// Reads an integer variable; absent leaves *out untouched. A malformed value names the variable.
Status ReadInt(const char* name, int64_t min, int64_t max, int64_t* out) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return OkStatus();
  std::string_view view(text);
  int64_t value = 0;
  auto [end, ec] = std::from_chars(view.data(), view.data() + view.size(), value);
  // Accept K/M/G suffixes (powers of two) so M2N_SLOT_BYTES=4M works.
  if (ec == std::errc() && end != view.data() + view.size()) {
    std::string_view rest(end, view.data() + view.size() - end);
    if (rest == "K" || rest == "k") value <<= 10;
    else if (rest == "M" || rest == "m") value <<= 20;
    else if (rest == "G" || rest == "g") value <<= 30;
    else ec = std::errc::invalid_argument;
  }
  if (ec != std::errc()) {
    return InvalidArgumentError(std::string(name) + "='" + text + "' is not an integer");
  }
  if (value < min || value > max) {
    return InvalidArgumentError(std::string(name) + "=" + text + " is outside [" +
                                std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  *out = value;
  return OkStatus();
}

template <typename T>
Status ReadIntInto(const char* name, int64_t min, int64_t max, T* field) {
  int64_t value = static_cast<int64_t>(*field);
  M2N_RETURN_IF_ERROR(ReadInt(name, min, max, &value));
  *field = static_cast<T>(value);
  return OkStatus();
}

void ReadString(const char* name, std::string* field) {
  const char* text = std::getenv(name);
  if (text != nullptr && *text != '\0') *field = text;
}

bool HasEnv(const char* name) {
  const char* text = std::getenv(name);
  return text != nullptr && *text != '\0';
}

// Fills rank and world size from the first launcher whose variables are present.
Status ReadLauncher(BootstrapOptions* b) {
  struct Launcher {
    const char* rank;
    const char* size;
  };
  static constexpr Launcher kLaunchers[] = {
      {"M2N_RANK", "M2N_WORLD_SIZE"},
      {"RANK", "WORLD_SIZE"},                                  // torchrun
      {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},        // Open MPI
      {"PMI_RANK", "PMI_SIZE"},                                // MPICH / Hydra
      {"SLURM_PROCID", "SLURM_NTASKS"},                        // Slurm
  };
  constexpr int64_t kMaxRanks = 1 << 20;
  for (const Launcher& l : kLaunchers) {
    if (b->rank < 0 && HasEnv(l.rank)) M2N_RETURN_IF_ERROR(ReadIntInto(l.rank, 0, kMaxRanks, &b->rank));
    if (b->world_size < 0 && HasEnv(l.size)) {
      M2N_RETURN_IF_ERROR(ReadIntInto(l.size, 1, kMaxRanks, &b->world_size));
    }
  }
  if (b->master_addr.empty()) ReadString("MASTER_ADDR", &b->master_addr);
  if (b->master_port == 0 && HasEnv("MASTER_PORT")) {
    M2N_RETURN_IF_ERROR(ReadIntInto("MASTER_PORT", 1, 65535, &b->master_port));
  }
  return OkStatus();
}

}  // namespace

std::span<const EnvironmentVariable> EnvironmentTable() { return kTable; }

StatusOr<Options> ResolveOptions(const Options& in) {
  Options o = in;
  BootstrapOptions& b = o.bootstrap;
  // M2N_* variables are the operator's override: they win over fields set in code.
  M2N_RETURN_IF_ERROR(ReadIntInto("M2N_RANK", 0, 1 << 20, &b.rank));
  M2N_RETURN_IF_ERROR(ReadIntInto("M2N_WORLD_SIZE", 1, 1 << 20, &b.world_size));
  ReadString("M2N_MASTER_ADDR", &b.master_addr);
  M2N_RETURN_IF_ERROR(ReadIntInto("M2N_MASTER_PORT", 1, 65535, &b.master_port));
  ReadString("M2N_JOB_ID", &b.job_id);
  int64_t timeout_ms = b.timeout.count();
  M2N_RETURN_IF_ERROR(ReadInt("M2N_TIMEOUT_MS", 1, int64_t{1} << 40, &timeout_ms));
  b.timeout = std::chrono::milliseconds(timeout_ms);
  M2N_RETURN_IF_ERROR(ReadIntInto("M2N_SENDERS", 1, 1 << 16, &o.num_senders));
  M2N_RETURN_IF_ERROR(ReadIntInto("M2N_RECEIVERS", 1, 1 << 16, &o.num_receivers));
  M2N_RETURN_IF_ERROR(ReadIntInto("M2N_SLOT_BYTES", 1, int64_t{1} << 32, &o.slot_bytes));
  M2N_RETURN_IF_ERROR(ReadIntInto("M2N_SLOT_DEPTH", 1, 1024, &o.slot_depth));
  ReadString("M2N_TRANSPORT", &o.transport);
  M2N_RETURN_IF_ERROR(ReadIntInto("M2N_SPIN_US", -1, 10'000'000, &o.spin_us));
  M2N_RETURN_IF_ERROR(ReadIntInto("M2N_LIVENESS_CHECK_MS", 1, 3'600'000, &o.liveness_check_ms));
  M2N_RETURN_IF_ERROR(ReadIntInto("M2N_CHECKSUM", 0, 1, &o.checksum));
  ReadString("M2N_NIC", &o.nic);
  M2N_RETURN_IF_ERROR(ReadIntInto("M2N_PROXY_CORE", -1, CPU_SETSIZE - 1, &o.proxy_core));
  M2N_RETURN_IF_ERROR(ReadLauncher(&b));

  if (b.master_addr.empty()) b.master_addr = "127.0.0.1";
  if (b.master_port == 0) b.master_port = 29517;
  if (b.job_id.empty()) b.job_id = "m2n@" + b.master_addr + ":" + std::to_string(b.master_port);

  // Shape checks that need no peer: the bootstrap cannot even start without them.
  if (o.num_senders <= 0 || o.num_receivers <= 0) {
    return InvalidArgumentError("options: num_senders (M) and num_receivers (N) must be >= 1, got M=" +
                                std::to_string(o.num_senders) + " N=" + std::to_string(o.num_receivers) +
                                " (set them in Options or M2N_SENDERS / M2N_RECEIVERS)");
  }
  if (b.world_size < 0) {
    return InvalidArgumentError("options: no world size: set Options::bootstrap.world_size, M2N_WORLD_SIZE, "
                                "or launch with torchrun / mpirun / srun");
  }
  if (b.rank < 0) {
    return InvalidArgumentError("options: no rank: set Options::bootstrap.rank, M2N_RANK, "
                                "or launch with torchrun / mpirun / srun");
  }
  if (b.world_size != o.num_senders + o.num_receivers) {
    return InvalidArgumentError("options: world size " + std::to_string(b.world_size) + " != M + N = " +
                                std::to_string(o.num_senders) + " + " + std::to_string(o.num_receivers));
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
      << "timeout            " << o.bootstrap.timeout.count() << " ms\n"
      << "spin               " << (o.spin_us < 0 ? std::string("auto") : std::to_string(o.spin_us) + " us")
      << "\n"
      << "liveness check     " << o.liveness_check_ms << " ms\n"
      << "checksum           " << (o.checksum ? "on" : "off") << "\n"
      << "nic                " << (o.nic.empty() ? std::string("auto (topology)") : o.nic) << "\n"
      << "proxy core         " << (o.proxy_core < 0 ? std::string("auto (topology)") : std::to_string(o.proxy_core))
      << "\n";
  return out.str();
}

}  // namespace m2n

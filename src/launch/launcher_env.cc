// What the launcher said (m2n/launch.h): the table of launchers' variables, read once through the
// environment reader, and the local-rank rule. The order is ResolveOptions' order: the first
// launcher whose rank variable is set gives the rank, the first size variable set the world size.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "m2n/launch.h"
#include "src/base/env.h"

namespace m2n {
namespace {

constexpr int64_t kMaxRanks = int64_t{1} << 20;

struct LauncherVariables {
  Launcher launcher;
  const char* rank;
  const char* size;
  const char* local_rank;
  const char* local_size;
};

constexpr LauncherVariables kLaunchers[] = {
    {Launcher::kM2n, "M2N_RANK", "M2N_WORLD_SIZE", "M2N_LOCAL_RANK", "M2N_LOCAL_WORLD_SIZE"},
    {Launcher::kTorchrun, "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
    {Launcher::kOpenMpi, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
     "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"},
    {Launcher::kPmi, "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"},
    // SLURM_NTASKS_PER_NODE is read apart: it is set only on request, and not always a number.
    {Launcher::kSlurm, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", nullptr},
};

// The first of `names` that is set, parsed into *out (left alone when none is).
Status ReadFirst(std::initializer_list<const char*> names, int64_t min, int64_t max, int* out) {
  for (const char* name : names) {
    if (name == nullptr || !env::IsSet(name)) continue;
    M2N_ASSIGN_OR_RETURN(int64_t value, env::Int(name, min, max, -1));
    *out = static_cast<int>(value);
    return OkStatus();
  }
  return OkStatus();
}

// Slurm's tasks per node: "4", or "2(x3),1" for uneven layouts, which says nothing about this
// host: only a plain number is a local size.
int SlurmTasksPerNode() {
  auto value = env::ParseInt("SLURM_NTASKS_PER_NODE", env::String("SLURM_NTASKS_PER_NODE", "?"), 1,
                             kMaxRanks);
  return value.ok() ? static_cast<int>(*value) : -1;
}

Status ReadLocal(const LauncherVariables& own, LaunchInfo* info) {
  // The launcher's own variable first, then any other's (M2N_RANK set by hand under torchrun).
  M2N_RETURN_IF_ERROR(ReadFirst({own.local_rank}, 0, kMaxRanks, &info->local_rank));
  M2N_RETURN_IF_ERROR(ReadFirst({own.local_size}, 1, kMaxRanks, &info->local_size));
  for (const LauncherVariables& l : kLaunchers) {
    if (info->local_rank < 0)
      M2N_RETURN_IF_ERROR(ReadFirst({l.local_rank}, 0, kMaxRanks, &info->local_rank));
  }
  if (info->launcher == Launcher::kSlurm) {
    if (info->local_size < 0) info->local_size = SlurmTasksPerNode();
    M2N_RETURN_IF_ERROR(
        ReadFirst({"SLURM_STEP_NUM_NODES", "SLURM_NNODES"}, 1, kMaxRanks, &info->num_hosts));
  }
  return OkStatus();
}

}  // namespace

std::string_view LauncherName(Launcher launcher) {
  switch (launcher) {
    case Launcher::kNone:
      return "none";
    case Launcher::kM2n:
      return "M2N_RANK";
    case Launcher::kTorchrun:
      return "torchrun";
    case Launcher::kOpenMpi:
      return "Open MPI";
    case Launcher::kPmi:
      return "PMI";
    case Launcher::kSlurm:
      return "Slurm";
  }
  return "?";
}

bool LaunchInfo::multi_host() const {
  if (num_hosts > 1) return true;
  return local_size > 0 && world_size > 0 && local_size < world_size;
}

StatusOr<LaunchInfo> DetectLaunch() {
  LaunchInfo info;
  const LauncherVariables* own = nullptr;
  for (const LauncherVariables& l : kLaunchers) {
    if (own == nullptr && env::IsSet(l.rank)) {
      own = &l;
      info.launcher = l.launcher;
      M2N_RETURN_IF_ERROR(ReadFirst({l.rank}, 0, kMaxRanks, &info.rank));
    }
    if (info.world_size < 0)
      M2N_RETURN_IF_ERROR(ReadFirst({l.size}, 1, kMaxRanks, &info.world_size));
  }
  if (own != nullptr) M2N_RETURN_IF_ERROR(ReadLocal(*own, &info));
  info.master_addr = env::String("M2N_MASTER_ADDR", env::String("MASTER_ADDR", ""));
  M2N_RETURN_IF_ERROR(ReadFirst({"M2N_MASTER_PORT", "MASTER_PORT"}, 1, 65535, &info.master_port));
  return info;
}

int LocalRank(const LaunchInfo& info, int rank) {
  return info.local_rank >= 0 ? info.local_rank : rank;
}

StatusOr<int> PickFreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return InternalError(std::string("cannot find a free port: socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) != 0) {
    const std::string error = std::strerror(errno);
    close(fd);
    return InternalError("cannot find a free port on 127.0.0.1: " + error);
  }
  close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

}  // namespace m2n

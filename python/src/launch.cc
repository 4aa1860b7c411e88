// m2n/launch.h for Python: what the launcher said (detect_launch), a free port (pick_free_port) and
// the local spawner (spawn_local) that python/m2n/launch.py drives, so that Python and C++ jobs
// start their ranks by one rule (M2N_RANK / M2N_WORLD_SIZE / M2N_MASTER_* / M2N_LOCAL_*, stop on
// failure).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <chrono>

#include "errors.h"
#include "launch.h"
#include "m2n/launch.h"

namespace nb = nanobind;

namespace m2n::python {
namespace {

nb::dict DetectLaunchInfo() {
  const LaunchInfo info = Check(DetectLaunch());
  nb::dict out;
  out["launcher"] = std::string(LauncherName(info.launcher));
  out["rank"] = info.rank;
  out["world_size"] = info.world_size;
  out["local_rank"] = info.local_rank;
  out["local_size"] = info.local_size;
  out["master_addr"] = info.master_addr;
  out["master_port"] = info.master_port;
  return out;
}

// Exit codes by rank, as subprocess reports them: the status, or -signal for a rank a signal ended.
std::vector<int> Spawn(const std::string& program, const std::vector<std::string>& args,
                       int num_ranks, const std::vector<std::string>& env, double timeout_s) {
  SpawnOptions options;
  options.program = program;
  options.args = args;
  options.num_ranks = num_ranks;
  options.env = env;
  StatusOr<JobExit> job = [&] {
    nb::gil_scoped_release release;  // the ranks may be Python processes that take long
    return SpawnLocal(options,
                      Deadline::After(std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::duration<double>(timeout_s))));
  }();
  std::vector<int> codes;
  for (const RankExit& rank : Check(std::move(job)).ranks) {
    codes.push_back(rank.signal != 0 ? -rank.signal : rank.exit_code);
  }
  return codes;
}

}  // namespace

void BindLaunch(nb::module_& m) {
  m.def("detect_launch", &DetectLaunchInfo,
        "What the launcher said (torchrun, Open MPI, PMI, Slurm or M2N_*): a dict of launcher, "
        "rank,\n"
        "world_size, local_rank, local_size, master_addr, master_port (-1 / '' where not said).\n"
        "Raises m2n.InvalidArgumentError naming a variable whose value does not parse.");
  m.def(
      "pick_free_port", [] { return Check(PickFreePort()); },
      "A TCP port of 127.0.0.1 that was free a moment ago (for the bootstrap store).");
  m.def(
      "spawn_local", &Spawn, nb::arg("program"), nb::arg("args"), nb::arg("num_ranks"),
      nb::arg("env") = std::vector<std::string>{}, nb::arg("timeout") = 300.0,
      "Runs `program` (an absolute path; `args` is its argv, args[0] included) as ranks\n"
      "0 .. num_ranks - 1 of one job on this host (m2n/launch.h SpawnLocal): each rank gets\n"
      "M2N_RANK, M2N_WORLD_SIZE, M2N_MASTER_ADDR / PORT and M2N_LOCAL_*, plus `env` (NAME=VALUE).\n"
      "A failing rank stops the others; ranks still running after `timeout` seconds are stopped.\n"
      "Returns the exit codes by rank (-N: ended by signal N).");
}

}  // namespace m2n::python

// The exit status of a job moe_pipeline starts itself (launch.h): m2n::SpawnLocal runs the ranks;
// this file says which rank stopped the job, and why, in the example's own words.
#include "runtime/launch.h"

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

namespace moe {

int SpawnLocalJob(int world, int attention_workers, int timeout_s, int argc, char** argv) {
  const m2n::SpawnOptions spawn{.args = std::vector<std::string>(argv, argv + argc),
                                .num_ranks = world,
                                // A rank whose check failed finished; the exit status says so.
                                .wait = {.finished_codes = {kExitOk, kExitCheckFailed}}};
  // Room for set-up and the reference check (whose report is awaited 10 x timeout_s).
  auto job =
      m2n::SpawnLocal(spawn, m2n::Deadline::After(std::chrono::seconds(12 * int64_t{timeout_s})));
  if (!job.ok()) {
    std::fprintf(stderr, "moe_pipeline: %s\n", job.status().ToString().c_str());
    return kExitFailure;
  }
  if (job->first_failure >= 0) {
    const int rank = job->first_failure;
    const m2n::RankExit& end = job->ranks[static_cast<size_t>(rank)];
    std::fprintf(stderr, "moe_pipeline: rank %d (%s worker) %s%s\n", rank,
                 rank < attention_workers ? "attention" : "expert", end.Describe().c_str(),
                 job->running_at_failure > 0 ? "; stopped the others" : "");
    return end.exit_code == kExitUsage ? kExitUsage : kExitFailure;
  }
  if (job->timed_out) {
    std::fprintf(
        stderr,
        "moe_pipeline: the job was still running after %lld s (12 x --timeout_s); stopped it\n",
        12 * static_cast<long long>(timeout_s));
    return kExitFailure;
  }
  for (const m2n::RankExit& end : job->ranks) {
    if (end.exit_code == kExitCheckFailed) return kExitCheckFailed;
  }
  return kExitOk;
}

}  // namespace moe

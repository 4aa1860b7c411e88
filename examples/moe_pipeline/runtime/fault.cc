// Fault injection (--fault): see fault.h.
#include "runtime/fault.h"

#include <unistd.h>

namespace moe {

void InjectRoutingFault(const PipelineOptions& options, Routing* routing) {
  if (options.fault != "swap_experts") return;
  for (int& e : routing->expert) e = e == 0 ? 1 : e == 1 ? 0 : e;
}

void InjectExpertDeath(const PipelineOptions& options, const m2n::Group& group, int64_t rounds) {
  if (options.fault != "kill_expert" || group.rank() != group.num_senders() || rounds != 3) return;
  _exit(9);  // a worker dying mid-run, without a goodbye
}

}  // namespace moe

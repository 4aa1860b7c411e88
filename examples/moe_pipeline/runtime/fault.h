// Fault injection (--fault): the faults the example's tests inject to prove that the check and
// the failure path work. Each is one named call at the one place its fault happens, so the
// workers' loops read as the pipeline and not as its tests.
//
//   swap_experts  every token of expert 0 goes to expert 1 and back, after the gate's choice was
//                 recorded for the check: a routing bug the check must catch
//   kill_expert   the first expert worker exits after its 3rd round: the others must fail by
//                 their deadlines, naming it
#pragma once

#include <cstdint>

#include "compute/compute.h"
#include "m2n/m2n.h"
#include "runtime/pipeline.h"

namespace moe {

// swap_experts: swaps experts 0 and 1 in `routing`; otherwise leaves it alone.
void InjectRoutingFault(const PipelineOptions& options, Routing* routing);

// kill_expert: ends this process (exit code 9, no goodbye to the group) when it is the first expert
// worker and has served `rounds` = 3 rounds; otherwise returns.
void InjectExpertDeath(const PipelineOptions& options, const m2n::Group& group, int64_t rounds);

}  // namespace moe

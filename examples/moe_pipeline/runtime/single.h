// The single-process path (moe_pipeline --single): one process runs the whole model, attention and
// every expert, with no m2n group and no other process; the collocated baseline on one rank without
// its exchange. It is what one GPU serving a whole model looks like: with --offload POLICY
// --gpu_experts C the experts go through the expert cache (offload/offloaded_experts.h), so a model
// whose experts do not fit the device still runs, with the same kernels and the same outputs.
#pragma once

#include "m2n/status.h"
#include "model/json.h"
#include "runtime/pipeline.h"

namespace moe {

// Serves options.workload's requests (as rank 0 would) and checks them against the reference
// unless options.check is off; *summary receives the one report, as runtime/report.h reads it.
m2n::Status RunSingleProcess(const PipelineOptions& options, Json* summary);

}  // namespace moe

// The pipeline's check: every request's recorded logits (and routing) against the reference
// forward over the same tokens, within the backend's tolerance. Both the disaggregated pipeline
// and the collocated baseline put its result into their reports.
#pragma once

#include <string>

#include "model/config.h"
#include "model/json.h"
#include "model/weights.h"
#include "runtime/workload.h"

namespace moe {

// {"passed", "requests_compared", "requests_failed", "tokens_compared", "max_relative_error",
// "tolerance", "routings_compared", "routings_followed_near_tie", "routing_errors",
// "tie_threshold", "precision", "seconds", "first_failure" (when one failed)}, or {"passed": false,
// "error"} when the reference cannot run. `backend`: the compute backend that made the outputs.
Json CheckAgainstReference(const ModelConfig& config, const WeightSource& weights,
                           const std::string& backend, const Workload& workload);

}  // namespace moe

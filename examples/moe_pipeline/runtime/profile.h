// `moe_pipeline --profile FILE`: a short sweep of one backend's compute, written as JSON, for the
// deployment planner (tools/plan/, m2n_plan) to build its performance model from measured curves
// instead of a roofline. No m2n group: the sweep runs in this one process, on the backend the
// pipeline would use (its local GPU for cuda), with the pipeline's thread count.
//
// What it measures, each the median of a few repeats:
//   attention: time per layer of one micro-batch of `batch` decode tokens, each at position
//              `context - 1` of its own KV-cache slot (attention, gate and top-k, then the token
//              gather for the dispatch and the scatter-add of the combine: the pipeline's T_a),
//              over batch in powers of 2 up to --max_tokens and context in powers of 4 from 64 up
//              to --max_context (and the model's positions);
//   head:      per micro-batch of `batch` tokens, the embedding and the final norm + LM head
//              (once per iteration, not per layer);
//   expert:    time per layer per expert, with up to 8 experts held and each given `tokens`
//              tokens (gather, SwiGLU GEMM chain, weighted scatter; several experts so that their
//              weights stream from memory as in the pipeline: the pipeline's T_e is the sum over
//              the experts a worker holds), tokens in powers of 2 up to --max_tokens.
#pragma once

#include <string>

#include "m2n/status.h"
#include "runtime/pipeline.h"

namespace moe {

// Runs the sweep for options.config on options.backend with options.threads and writes `path`.
// Progress lines go to stderr unless options.progress is false.
m2n::Status WriteComputeProfile(const PipelineOptions& options, const std::string& path);

}  // namespace moe

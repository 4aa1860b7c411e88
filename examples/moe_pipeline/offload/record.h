// Recording routing traces with the C++ model: text prompts (byte tokens, for vocab-256 models such
// as configs/mixtral-8x7b-tiny.json) run through the single-process reference forward, and every
// token's gate distribution at every layer is kept (moe_pipeline --trace). The pipeline's routing
// is the reference's (its check compares them), so this is the routing the workers would see.
//
// Prompts file: one prompt a line, "KIND<TAB>HELD_OUT<TAB>TEXT", HELD_OUT 1 for the evaluation set,
// TEXT with "\n", "\t" and "\\" escaped (tools/train_tiny_moe.py --prompts writes one).
#pragma once

#include <string>
#include <vector>

#include "m2n/status.h"
#include "model/config.h"
#include "model/weights.h"
#include "offload/trace.h"

namespace moe::offload {

struct TracedPrompt {
  std::string kind;
  bool held_out = false;
  std::vector<int> tokens;  // bytes
};

m2n::StatusOr<std::vector<TracedPrompt>> ReadPrompts(const std::string& path);

// The trace of `prompts`; each request's embedding is the mean of its first `prompt_len` tokens'
// embeddings.
m2n::StatusOr<Trace> RecordTrace(const ModelConfig& config, const WeightSource& weights,
                                 const std::vector<TracedPrompt>& prompts, int prompt_len);

}  // namespace moe::offload

// The reference: a single-process forward of the whole model, one token at a time, written as
// plain loops with double accumulators and no code shared with compute/ (a shared bug would
// otherwise agree with itself). The pipeline's outputs are checked against it.
#pragma once

#include <span>
#include <vector>

#include "m2n/status.h"
#include "model/config.h"
#include "model/weights.h"

namespace moe {

struct ReferenceOutput {
  std::vector<float> logits;  // [positions from first_logit on, vocab]
  // The gate logits of the k-th and (k+1)-th experts were closer than tie_threshold at
  // tie_position: fp32 rounding may route that token differently in the pipeline, and what it
  // computes from there on (that token, and later ones through the KV cache) cannot be compared.
  bool near_tie = false;
  int tie_position = -1;
  int tie_layer = -1;
};

class ReferenceModel {
 public:
  // bf16_weights: round every weight to bf16 first, as a bf16 backend does, so that the check
  // measures the backend's arithmetic, not the rounding of its weights.
  static m2n::StatusOr<ReferenceModel> Load(const ModelConfig& config, const WeightSource& source, bool bf16_weights);
  // Runs tokens[0, n) from position 0 and returns the logits of positions [first_logit, n).
  // tie_threshold: see ReferenceOutput::near_tie.
  m2n::StatusOr<ReferenceOutput> Forward(std::span<const int> tokens, int first_logit, double tie_threshold) const;

 private:
  ModelConfig config_;
  AttentionWeights attention_;
  ExpertShard experts_;  // all of them
};

}  // namespace moe

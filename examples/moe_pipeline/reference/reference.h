// The reference: a single-process forward of the whole model, one token at a time, written as
// plain loops with double accumulators and no code shared with compute/ (a shared bug would
// otherwise agree with itself). The pipeline's outputs are checked against it.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "m2n/status.h"
#include "model/config.h"
#include "model/weights.h"

namespace moe {

// A (position, layer) where the pipeline chose experts the reference's gate does not explain: one
// of them has a gate logit more than tie_threshold below the reference's k-th largest.
struct RoutingError {
  int position = 0;
  int layer = 0;
  std::vector<int> pipeline;  // the pipeline's experts
  std::vector<int> reference;  // the reference's top-k, descending
  double gap =
      0;  // the reference's k-th largest gate logit - the lowest of the pipeline's experts'
};

struct ReferenceOutput {
  std::vector<float> logits;  // [positions from first_logit on, vocab]
  std::vector<float> gate_logits;  // [positions, layers, experts]
  std::vector<int32_t> routing;  // the experts each token went to, [positions, layers, top_k]
  int routings = 0;  // (position, layer) pairs routed
  // Pairs where the pipeline's expert set differed from the reference's top-k by a near-tie (every
  // expert it chose within tie_threshold of the k-th largest gate logit): the reference took the
  // pipeline's experts there, so that both compute the same function from then on.
  int followed_near_ties = 0;
  // Pairs where it differed by more: a routing bug; the reference kept its own top-k there.
  std::vector<RoutingError> routing_errors;
};

class ReferenceModel {
 public:
  // bf16_weights: round every weight to bf16 first, as a bf16 backend does, so that the check
  // measures the backend's arithmetic, not the rounding of its weights.
  static m2n::StatusOr<ReferenceModel> Load(const ModelConfig& config, const WeightSource& source,
                                            bool bf16_weights);
  // Runs tokens[0, n) from position 0 and returns the logits of positions [first_logit, n).
  // routing: empty, or the pipeline's experts for every (position, layer) ([n][layers][top_k]; any
  // order within a token). Where they are not the reference's own top-k, the reference follows them
  // when each is within tie_threshold of its k-th largest gate logit (a difference of rounding;
  // weights: the reference's probabilities of those experts, renormalized as the config says) and
  // reports a RoutingError otherwise. Empty: the reference's own top-k throughout.
  m2n::StatusOr<ReferenceOutput> Forward(std::span<const int> tokens, int first_logit,
                                         double tie_threshold,
                                         std::span<const int32_t> routing = {}) const;

 private:
  ModelConfig config_;
  AttentionWeights attention_;
  ExpertShard experts_;  // all of them
};

}  // namespace moe

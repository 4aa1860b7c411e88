// Requests and continuous batching on an attention worker.
//
// Requests have input / output lengths either fixed or drawn like production traffic (log-normal
// around a median input of ~571 and output of ~159 tokens). Up to `batch` requests are in flight at
// once, each holding a KV-cache slot; a finished request frees its slot and the next waiting one
// joins (continuous batching). Every iteration cuts the in-flight work into m micro-batches of at
// most max_tokens tokens: one token per decoding request, and chunks of the prompts of requests
// still in prefill (chunked prefill), balanced across the micro-batches.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "compute/compute.h"
#include "m2n/status.h"

namespace moe {

struct WorkloadOptions {
  int requests = 8;  // per attention worker
  int batch = 4;  // requests in flight per attention worker
  bool production = true;  // production-like lengths, else fixed
  int input_len = 571;  // fixed input length, or the median of the production distribution
  int output_len = 159;  // likewise
  int max_tokens = 256;  // per micro-batch
  int micro_batches = 2;  // m
  int max_context =
      4096;  // KV-cache positions per request (at most the model's); production lengths fit in it
  uint64_t seed = 1;
  bool record = true;  // keep every output token's logits (for the reference check)
};

struct Request {
  int id = 0;
  std::vector<int> tokens;  // the prompt, then the generated tokens
  int input_len = 0;
  int output_len = 0;
  int kv_slot = -1;
  int processed = 0;  // positions whose K/V are in the cache
  int generated = 0;
  double joined_s = 0;  // when it got a KV slot
  double last_token_s = 0;
  std::vector<float> logits;  // [generated, vocab] when recording
  // When recording: the experts the pipeline's gate chose for every fed position, per layer
  // ([position][layer][top_k], -1 until that position is fed), for the reference to follow.
  std::vector<int32_t> routing;
  bool done() const { return generated == output_len; }
};

// One iteration's plan for one micro-batch.
struct MicroBatchPlan {
  std::vector<TokenRef> tokens;
  std::vector<int32_t> logit_rows;  // rows whose logits produce a token
  std::vector<int> logit_requests;  // the request of each such row (index into requests())
  int prefill_tokens = 0;
  int decode_tokens = 0;
};

class Workload {
 public:
  // `worker`: the attention worker's index (seeds its requests); `vocab`, `max_context` from the
  // model.
  static m2n::StatusOr<Workload> Create(const WorkloadOptions& options, int worker, int vocab,
                                        int max_context);

  // Admits waiting requests into free KV slots (at `now_s`) and plans the next iteration.
  std::vector<MicroBatchPlan> NextIteration(double now_s);
  // When recording: stores the gate's choice for `layer` of every token of `plan` (this
  // iteration's, before Complete) in its request's `routing`. `layers`: the model's.
  m2n::Status RecordRouting(const MicroBatchPlan& plan, int layer, int layers,
                            const Routing& routing);
  // Takes micro-batch results: logits [plan.logit_rows.size(), vocab]; returns the time-between-
  // tokens samples (ms) of requests that produced a non-first token.
  void Complete(const MicroBatchPlan& plan, std::span<const float> logits, double now_s,
                std::vector<double>* tbt_ms, std::vector<double>* ttft_ms);

  // The iterations until Create(options, worker, vocab, max_context) is finished. The schedule
  // depends only on the lengths and the batch (greedy tokens never change it), so every rank can
  // count any worker's iterations without running the model: the disaggregated pipeline runs every
  // attention worker for the longest count (runtime/pipeline.h).
  static m2n::StatusOr<int64_t> CountIterations(const WorkloadOptions& options, int worker,
                                                int vocab, int max_context);

  bool finished() const { return finished_ == static_cast<int>(requests_.size()); }
  int finished_count() const { return finished_; }
  const std::vector<Request>& requests() const { return requests_; }
  int max_context() const { return max_context_; }
  int64_t generated_tokens() const { return generated_; }
  int64_t prefill_tokens() const { return prefilled_; }

 private:
  WorkloadOptions o_;
  int vocab_ = 0;
  int max_context_ = 0;
  std::vector<Request> requests_;
  std::vector<int> running_;  // indices of requests holding a KV slot
  std::vector<int> free_slots_;
  size_t next_waiting_ = 0;
  int finished_ = 0;
  int64_t generated_ = 0;
  int64_t prefilled_ = 0;
};

// The KV-cache positions per request: fixed lengths need input + output; production lengths are
// drawn to fit max_context; never more than the model's positions.
int MaxContext(const WorkloadOptions& options, int model_max_positions);

}  // namespace moe

#include "runtime/workload.h"

#include <algorithm>
#include <cmath>

namespace moe {
namespace {
// Production-like spread (log-normal sigma) of input and output lengths.
constexpr double kInputSigma = 0.9;
constexpr double kOutputSigma = 0.8;

int ClampLength(double v, int lo, int hi) {
  return std::clamp(static_cast<int>(std::lround(v)), lo, hi);
}
}  // namespace

int MaxContext(const WorkloadOptions& o, int model_max_positions) {
  if (!o.production) return std::min(model_max_positions, o.input_len + o.output_len);
  return std::min(model_max_positions, o.max_context);
}

m2n::StatusOr<Workload> Workload::Create(const WorkloadOptions& o, int worker, int vocab,
                                         int max_context) {
  if (o.requests < 1 || o.batch < 1 || o.input_len < 1 || o.output_len < 1 || o.micro_batches < 1) {
    return m2n::InvalidArgumentError(
        "workload: --requests, --batch, --input_len, --output_len and -m must be >= 1");
  }
  if (o.max_tokens < (o.batch + o.micro_batches - 1) / o.micro_batches) {
    return m2n::InvalidArgumentError("workload: --max_tokens " + std::to_string(o.max_tokens) +
                                     " cannot hold " + std::to_string(o.batch) +
                                     " decoding requests in " + std::to_string(o.micro_batches) +
                                     " micro-batches");
  }
  if (!o.production && o.input_len + o.output_len - 1 > max_context) {
    return m2n::InvalidArgumentError("workload: input " + std::to_string(o.input_len) +
                                     " + output " + std::to_string(o.output_len) +
                                     " exceeds the model's " + std::to_string(max_context) +
                                     " positions");
  }
  Workload w;
  w.o_ = o;
  w.vocab_ = vocab;
  w.max_context_ = max_context;
  std::mt19937_64 rng(o.seed * 1000003 + static_cast<uint64_t>(worker));
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_int_distribution<int> token(0, vocab - 1);
  for (int i = 0; i < o.requests; ++i) {
    Request r;
    r.id = worker * o.requests + i;
    if (o.production) {
      r.output_len = ClampLength(o.output_len * std::exp(kOutputSigma * normal(rng)), 1,
                                 std::max(1, max_context / 4));
      r.input_len = ClampLength(o.input_len * std::exp(kInputSigma * normal(rng)), 1,
                                max_context - r.output_len + 1);
    } else {
      r.input_len = o.input_len;
      r.output_len = o.output_len;
    }
    for (int t = 0; t < r.input_len; ++t) r.tokens.push_back(token(rng));
    w.requests_.push_back(std::move(r));
  }
  for (int s = o.batch - 1; s >= 0; --s) w.free_slots_.push_back(s);
  return w;
}

m2n::StatusOr<int64_t> Workload::CountIterations(const WorkloadOptions& options, int worker,
                                                 int vocab, int max_context) {
  WorkloadOptions o = options;
  o.record = false;
  M2N_ASSIGN_OR_RETURN(Workload w, Create(o, worker, vocab, max_context));
  std::vector<float> logits;  // zeros: the tokens they pick never change the schedule
  std::vector<double> ignored;
  int64_t iterations = 0;
  for (; !w.finished(); ++iterations) {
    for (const MicroBatchPlan& plan : w.NextIteration(0)) {
      logits.resize(plan.logit_rows.size() * static_cast<size_t>(vocab));
      w.Complete(plan, logits, 0, &ignored, &ignored);
    }
    ignored.clear();
  }
  return iterations;
}

std::vector<MicroBatchPlan> Workload::NextIteration(double now_s) {
  while (!free_slots_.empty() && next_waiting_ < requests_.size()) {
    Request& r = requests_[next_waiting_];
    r.kv_slot = free_slots_.back();
    free_slots_.pop_back();
    r.joined_s = now_s;
    running_.push_back(static_cast<int>(next_waiting_++));
  }
  const int m = o_.micro_batches;
  std::vector<MicroBatchPlan> plans(static_cast<size_t>(m));
  auto least_loaded = [&] {
    size_t best = 0;
    for (size_t i = 1; i < plans.size(); ++i) {
      if (plans[i].tokens.size() < plans[best].tokens.size()) best = i;
    }
    return best;
  };
  // Decoding requests first (one token each), then prompt chunks where budget is left.
  for (int pass = 0; pass < 2; ++pass) {
    for (int index : running_) {
      Request& r = requests_[static_cast<size_t>(index)];
      const bool decoding = r.processed >= r.input_len;
      if ((pass == 0) != decoding) continue;
      MicroBatchPlan& plan = plans[least_loaded()];
      const int room = o_.max_tokens - static_cast<int>(plan.tokens.size());
      const int want = decoding ? 1 : r.input_len - r.processed;
      const int take = std::min(room, want);
      if (take <= 0) continue;
      for (int t = 0; t < take; ++t) {
        const int pos = r.processed + t;
        plan.tokens.push_back({r.kv_slot, pos, r.tokens[static_cast<size_t>(pos)]});
      }
      (decoding ? plan.decode_tokens : plan.prefill_tokens) += take;
      // The last prompt token and every decode token yield the next token.
      if (r.processed + take == static_cast<int>(r.tokens.size())) {
        plan.logit_rows.push_back(static_cast<int32_t>(plan.tokens.size()) - 1);
        plan.logit_requests.push_back(index);
      }
      r.processed += take;
    }
  }
  return plans;
}

m2n::Status Workload::RecordRouting(const MicroBatchPlan& plan, int layer, int layers,
                                    const Routing& routing) {
  if (!o_.record) return m2n::OkStatus();
  const size_t k = static_cast<size_t>(routing.top_k);
  if (routing.expert.size() != plan.tokens.size() * k || layer < 0 || layer >= layers) {
    return m2n::InternalError("workload: routing of " + std::to_string(routing.expert.size()) +
                              " expert ids (top-" + std::to_string(k) + ") for a micro-batch of " +
                              std::to_string(plan.tokens.size()) + " tokens at layer " +
                              std::to_string(layer));
  }
  // The requests in flight this iteration, by KV-cache slot.
  std::vector<int> by_slot(static_cast<size_t>(o_.batch), -1);
  for (int index : running_)
    by_slot[static_cast<size_t>(requests_[static_cast<size_t>(index)].kv_slot)] = index;
  for (size_t t = 0; t < plan.tokens.size(); ++t) {
    const TokenRef& token = plan.tokens[t];
    const int index = token.kv_slot >= 0 && token.kv_slot < o_.batch
                          ? by_slot[static_cast<size_t>(token.kv_slot)]
                          : -1;
    if (index < 0) {
      return m2n::InternalError("workload: a token of KV-cache slot " +
                                std::to_string(token.kv_slot) + " that no running request holds");
    }
    Request& r = requests_[static_cast<size_t>(index)];
    const size_t at = (static_cast<size_t>(token.position) * static_cast<size_t>(layers) +
                       static_cast<size_t>(layer)) *
                      k;
    if (r.routing.size() < at + k) {
      // Room for every position this request will feed (its last token is never fed).
      const size_t positions = std::max(static_cast<size_t>(token.position) + 1,
                                        static_cast<size_t>(r.input_len + r.output_len - 1));
      r.routing.resize(positions * static_cast<size_t>(layers) * k, -1);
    }
    for (size_t j = 0; j < k; ++j) r.routing[at + j] = routing.expert[t * k + j];
  }
  return m2n::OkStatus();
}

void Workload::Complete(const MicroBatchPlan& plan, std::span<const float> logits, double now_s,
                        std::vector<double>* tbt_ms, std::vector<double>* ttft_ms) {
  prefilled_ += plan.prefill_tokens;
  for (size_t i = 0; i < plan.logit_requests.size(); ++i) {
    Request& r = requests_[static_cast<size_t>(plan.logit_requests[i])];
    const float* row = logits.data() + i * static_cast<size_t>(vocab_);
    // Greedy decoding.
    const int next = static_cast<int>(std::max_element(row, row + vocab_) - row);
    if (o_.record) r.logits.insert(r.logits.end(), row, row + vocab_);
    if (r.generated == 0) {
      ttft_ms->push_back((now_s - r.joined_s) * 1e3);
    } else {
      tbt_ms->push_back((now_s - r.last_token_s) * 1e3);
    }
    r.last_token_s = now_s;
    ++r.generated;
    ++generated_;
    if (!r.done()) {
      r.tokens.push_back(next);
      continue;
    }
    r.tokens.push_back(next);  // kept for the record; never fed back
    ++finished_;
    free_slots_.push_back(r.kv_slot);
    running_.erase(std::find(running_.begin(), running_.end(), plan.logit_requests[i]));
  }
}

}  // namespace moe

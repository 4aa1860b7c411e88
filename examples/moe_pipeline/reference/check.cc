// The pipeline's check against the reference forward: see check.h. Per request, the largest
// relative error over its output tokens' logits, and the routing errors the reference reports.
#include "reference/check.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "compute/compute.h"
#include "reference/reference.h"

namespace moe {
namespace {

// What the check found over all requests so far.
struct CheckTotals {
  int compared = 0, failed = 0;  // requests
  int64_t tokens = 0, routings = 0, followed = 0, routing_errors = 0;  // over all compared requests
  double max_error = 0;
  std::string first_failure;
};

Json Failed(const m2n::Status& status) {
  Json r = Json::Object();
  r.Set("passed", Json::Bool(false));
  r.Set("error", Json::String(status.ToString()));
  return r;
}

// The largest relative error over the output tokens of `q`, and (in *worst_token) where.
double WorstError(const Request& q, const ReferenceOutput& ref, size_t vocab, int* worst_token) {
  double request_error = 0;
  const size_t outputs = q.logits.size() / vocab;
  for (size_t t = 0; t < outputs; ++t) {
    double diff = 0, scale = 0;
    for (size_t v = 0; v < vocab; ++v) {
      diff = std::max(diff, std::fabs(static_cast<double>(q.logits[t * vocab + v]) -
                                      ref.logits[t * vocab + v]));
      scale = std::max(scale, std::fabs(static_cast<double>(ref.logits[t * vocab + v])));
    }
    const double e = diff / std::max(scale, 1e-30);
    if (e > request_error) {
      request_error = e;
      *worst_token = static_cast<int>(t);
    }
  }
  return request_error;
}

std::string ExpertSet(const std::vector<int>& experts) {
  std::string s;
  for (int x : experts) s += (s.empty() ? "{" : ", ") + std::to_string(x);
  return s + "}";
}

// Why request `q` failed: its worst token's error and / or its first routing error.
std::string DescribeFailure(const Request& q, double request_error, int worst_token,
                            const ReferenceOutput& ref, const Precision& precision) {
  char buf[160];
  std::string failure = "request " + std::to_string(q.id);
  const bool error_too_large = request_error > precision.tolerance;
  if (error_too_large) {
    std::snprintf(buf, sizeof(buf), ": output token %d relative error %.3g > %.0e", worst_token,
                  request_error, precision.tolerance);
    failure += buf;
  }
  if (!ref.routing_errors.empty()) {
    const RoutingError& e = ref.routing_errors.front();
    std::snprintf(
        buf, sizeof(buf),
        ", a gate logit %.3g below the reference's k-th largest (near-tie threshold %.0e)", e.gap,
        precision.tie_threshold);
    failure += (error_too_large ? "; " : ": ") + std::to_string(ref.routing_errors.size()) +
               " routing errors, the first at position " + std::to_string(e.position) + " layer " +
               std::to_string(e.layer) + ": the pipeline chose " + ExpertSet(e.pipeline) +
               ", the reference's top-" + std::to_string(e.reference.size()) + " is " +
               ExpertSet(e.reference) + buf;
  }
  return failure;
}

void CheckRequest(const ReferenceModel& reference, const Precision& precision, const Request& q,
                  size_t vocab, CheckTotals& totals) {
  const std::span<const int> seq(q.tokens.data(),
                                 q.tokens.size() - 1);  // the last token is never fed
  // The reference follows the pipeline's routing where the two differ by a near-tie (reference/),
  // so every output token stays comparable.
  auto ref = reference.Forward(seq, q.input_len - 1, precision.tie_threshold, q.routing);
  if (ref.ok() && ref->logits.size() != q.logits.size()) {
    ref = m2n::InternalError("the pipeline recorded " + std::to_string(q.logits.size() / vocab) +
                             " output tokens, the reference has " +
                             std::to_string(ref->logits.size() / vocab));
  }
  if (!ref.ok()) {
    ++totals.failed;
    if (totals.first_failure.empty()) {
      totals.first_failure = "request " + std::to_string(q.id) + ": " + ref.status().ToString();
    }
    return;
  }
  int worst_token = 0;
  const double request_error = WorstError(q, *ref, vocab, &worst_token);
  totals.tokens += static_cast<int64_t>(q.logits.size() / vocab);
  ++totals.compared;
  totals.routings += ref->routings;
  totals.followed += ref->followed_near_ties;
  totals.routing_errors += static_cast<int64_t>(ref->routing_errors.size());
  totals.max_error = std::max(totals.max_error, request_error);
  if (request_error <= precision.tolerance && ref->routing_errors.empty()) return;
  ++totals.failed;
  if (totals.first_failure.empty()) {
    totals.first_failure = DescribeFailure(q, request_error, worst_token, *ref, precision);
  }
}

}  // namespace

Json CheckAgainstReference(const ModelConfig& config, const WeightSource& weights,
                           const std::string& backend, const Workload& workload) {
  auto precision = BackendPrecision(backend);
  if (!precision.ok()) return Failed(precision.status());
  auto reference = ReferenceModel::Load(config, weights, precision->bf16_weights);
  if (!reference.ok()) return Failed(reference.status());
  const auto start = std::chrono::steady_clock::now();
  CheckTotals t;
  for (const Request& q : workload.requests()) {
    CheckRequest(*reference, *precision, q, static_cast<size_t>(config.vocab_size), t);
  }
  Json r = Json::Object();
  r.Set("passed", Json::Bool(t.failed == 0 && t.compared > 0));
  r.Set("requests_compared", Json::Number(t.compared));
  r.Set("requests_failed", Json::Number(t.failed));
  r.Set("tokens_compared", Json::Number(static_cast<double>(t.tokens)));
  r.Set("max_relative_error", Json::Number(t.max_error));
  r.Set("tolerance", Json::Number(precision->tolerance));
  r.Set("routings_compared", Json::Number(static_cast<double>(t.routings)));
  r.Set("routings_followed_near_tie", Json::Number(static_cast<double>(t.followed)));
  r.Set("routing_errors", Json::Number(static_cast<double>(t.routing_errors)));
  r.Set("tie_threshold", Json::Number(precision->tie_threshold));
  r.Set("precision", Json::String(precision->what));
  r.Set("seconds",
        Json::Number(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()));
  if (!t.first_failure.empty()) r.Set("first_failure", Json::String(t.first_failure));
  return r;
}

}  // namespace moe

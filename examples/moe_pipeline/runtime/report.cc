// The run's reports: their transfer to rank 0 in slot-sized chunks, and the summary rank 0 makes of
// them (report.h says what each metric means).
#include "runtime/report.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "runtime/wire.h"

namespace moe {
namespace {

double Num(const Json& j, const char* key) {
  const Json* v = j.Find(key);
  return v != nullptr && v->is_number() ? v->as_number() : 0.0;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double at = p / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(at)), hi = static_cast<size_t>(std::ceil(at));
  return v[lo] + (v[hi] - v[lo]) * (at - static_cast<double>(lo));
}

std::string Format(const char* fmt, double a, double b = 0, double c = 0, double d = 0) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), fmt, a, b, c, d);
  return buf;
}

}  // namespace

Summary Summarize(const Json& reports, const PipelineOptions& o, const std::string& transport) {
  Summary s;
  const ModelConfig& c = o.config;
  std::vector<double> tbt, ttft;
  double generated = 0, prefill = 0, serving_s = 0, requests = 0, input = 0, output = 0;
  double attn_busy = 0, attn_idle = 0, attn_m2n_per_layer = 0, exp_busy = 0, exp_idle = 0;
  double t_a = 0,
         t_e = 0;  // compute per (layer, micro-batch) on each side, the ping-pong model's T_a, T_e
  int attention = 0, experts = 0;
  bool any_collocated = false, single = false;
  bool check_all = true, any_check = false;
  double max_error = 0, compared = 0, failed = 0, check_s = 0, tokens = 0;
  double routings = 0, followed = 0, routing_errors = 0;
  double tolerance = 0, tie_threshold = 0;
  std::string first_failure;
  Json workers = Json::Array();
  std::string backend = o.backend;  // as the first worker describes it
  if (!reports.items().empty()) {
    if (const Json* b = reports.items()[0].Find("backend"); b != nullptr && b->is_string())
      backend = b->as_string();
  }
  for (const Json& r : reports.items()) {
    const std::string role = r.Find("role") != nullptr ? r.Find("role")->as_string() : "";
    // A collocated process runs attention and experts: it counts as an attention worker here; so
    // does the single process (runtime/single.h), a collocated job of one without the exchange.
    single = single || role == "single";
    const bool collocated = role == "collocated" || role == "single";
    const bool is_attention = role == "attention" || collocated;
    any_collocated = any_collocated || collocated;
    const double wall = std::max(Num(r, "wall_s"), 1e-9);
    Json w = Json::Object();
    w.Set("rank", Json::Number(Num(r, "rank")));
    w.Set("role", Json::String(role));
    w.Set("busy", Json::Number(Num(r, "compute_s") / wall));
    w.Set("idle", Json::Number(Num(r, "wait_s") / wall));
    w.Set("send", Json::Number(Num(r, "send_s") / wall));
    w.Set("wall_s", Json::Number(wall));
    // How the disaggregated workers' tokens travelled: "device" (GPU memory) or "host".
    if (const Json* path = r.Find("ep_path")) w.Set("ep_path", *path);
    if (is_attention) {
      ++attention;
      generated += Num(r, "generated_tokens");
      prefill += Num(r, "prefill_tokens");
      requests += Num(r, "requests");
      input += Num(r, "input_tokens");
      output += Num(r, "output_tokens");
      serving_s = std::max(serving_s, wall);
      attn_busy += Num(r, "compute_s") / wall;
      attn_idle += Num(r, "wait_s") / wall;
      const double passes = std::max(1.0, Num(r, "iterations") * Num(r, "layers"));
      attn_m2n_per_layer += (Num(r, "send_s") + Num(r, "wait_s")) / passes;
      t_a += Num(r, "compute_s") / (passes * o.workload.micro_batches);
      for (const Json& x : r.Find("tbt_ms")->items()) tbt.push_back(x.as_number());
      for (const Json& x : r.Find("ttft_ms")->items()) ttft.push_back(x.as_number());
      w.Set("iterations", Json::Number(Num(r, "iterations")));
      w.Set("generated_tokens", Json::Number(Num(r, "generated_tokens")));
      if (const Json* check = r.Find("check")) {
        any_check = true;
        const bool passed = check->Find("passed") != nullptr && check->Find("passed")->as_bool();
        check_all = check_all && passed;
        max_error = std::max(max_error, Num(*check, "max_relative_error"));
        compared += Num(*check, "requests_compared");
        tokens += Num(*check, "tokens_compared");
        routings += Num(*check, "routings_compared");
        followed += Num(*check, "routings_followed_near_tie");
        routing_errors += Num(*check, "routing_errors");
        failed += Num(*check, "requests_failed");
        check_s = std::max(check_s, Num(*check, "seconds"));
        tolerance = std::max(tolerance, Num(*check, "tolerance"));
        tie_threshold = std::max(tie_threshold, Num(*check, "tie_threshold"));
        for (const char* key : {"first_failure", "error"}) {
          if (const Json* f = check->Find(key); f != nullptr && first_failure.empty()) {
            first_failure =
                "rank " + std::to_string(static_cast<int>(Num(r, "rank"))) + ": " + f->as_string();
          }
        }
      }
    } else {
      ++experts;
      exp_busy += Num(r, "compute_s") / wall;
      exp_idle += Num(r, "wait_s") / wall;
      t_e += Num(r, "compute_s") / std::max(1.0, Num(r, "rounds"));
      w.Set("rounds", Json::Number(Num(r, "rounds")));
      w.Set("rows", Json::Number(Num(r, "rows")));
      w.Set("experts", *r.Find("experts"));
    }
    workers.Push(std::move(w));
  }
  attn_busy /= std::max(attention, 1);
  attn_idle /= std::max(attention, 1);
  attn_m2n_per_layer /= std::max(attention, 1);
  t_a /= std::max(attention, 1);
  t_e /= std::max(experts, 1);
  exp_busy /= std::max(experts, 1);
  exp_idle /= std::max(experts, 1);
  const double tokens_per_s = generated / std::max(serving_s, 1e-9);
  const int processes = attention + experts;

  Json& j = s.json;
  j = Json::Object();
  j.Set("model", Json::String(c.name));
  j.Set("config", Json::String(o.config_path));
  j.Set("weights", Json::String(o.weights.Describe()));
  j.Set("backend", Json::String(backend));
  j.Set("transport", Json::String(transport));
  j.Set("mode", Json::String(single           ? "single process"
                             : any_collocated ? "collocated (NCCL all-to-all)"
                                              : "disaggregated (m2n)"));
  j.Set("attention_workers", Json::Number(attention));
  j.Set("expert_workers", Json::Number(experts));
  j.Set("micro_batches", Json::Number(o.workload.micro_batches));
  j.Set("batch_per_attention_worker", Json::Number(o.workload.batch));
  j.Set("max_tokens_per_micro_batch", Json::Number(o.workload.max_tokens));
  j.Set("lengths", Json::String(o.workload.production ? "production" : "fixed"));
  j.Set("requests", Json::Number(requests));
  j.Set("mean_input_tokens", Json::Number(input / std::max(requests, 1.0)));
  j.Set("mean_output_tokens", Json::Number(output / std::max(requests, 1.0)));
  j.Set("serving_s", Json::Number(serving_s));
  j.Set("decode_tokens", Json::Number(generated));
  j.Set("prefill_tokens", Json::Number(prefill));
  j.Set("decode_tokens_per_s", Json::Number(tokens_per_s));
  j.Set("decode_tokens_per_s_per_process", Json::Number(tokens_per_s / std::max(processes, 1)));
  j.Set("tbt_p50_ms", Json::Number(Percentile(tbt, 50)));
  j.Set("tbt_p99_ms", Json::Number(Percentile(tbt, 99)));
  j.Set("ttft_p50_ms", Json::Number(Percentile(ttft, 50)));
  j.Set("ttft_p99_ms", Json::Number(Percentile(ttft, 99)));
  j.Set("attention_busy", Json::Number(attn_busy));
  j.Set("attention_idle", Json::Number(attn_idle));
  j.Set("expert_busy", Json::Number(exp_busy));
  j.Set("expert_idle", Json::Number(exp_idle));
  j.Set("m2n_ms_per_layer", Json::Number(attn_m2n_per_layer * 1e3));
  j.Set("t_a_ms", Json::Number(t_a * 1e3));
  j.Set("t_e_ms", Json::Number(t_e * 1e3));
  j.Set("workers", std::move(workers));
  s.check_ran = any_check;
  s.check_passed = any_check && check_all;
  if (any_check) {
    Json check = Json::Object();
    check.Set("verdict", Json::String(s.check_passed ? "PASS" : "FAIL"));
    check.Set("requests_compared", Json::Number(compared));
    check.Set("requests_failed", Json::Number(failed));
    check.Set("tokens_compared", Json::Number(tokens));
    check.Set("max_relative_error", Json::Number(max_error));
    check.Set("tolerance", Json::Number(tolerance));
    check.Set("routings_compared", Json::Number(routings));
    check.Set("routings_followed_near_tie", Json::Number(followed));
    check.Set("routing_errors", Json::Number(routing_errors));
    check.Set("tie_threshold", Json::Number(tie_threshold));
    if (!first_failure.empty()) check.Set("first_failure", Json::String(first_failure));
    j.Set("check", std::move(check));
  }

  std::string& t = s.text;
  t += "# moe_pipeline: " + c.Describe() + "\n";
  t += "# weights " + o.weights.Describe() + ", compute " + backend + ", m2n transport " +
       transport + "\n";
  t +=
      (single
           ? Format("# single process: attention + every expert, m = %.0f micro-batches in turn, "
                    "batch %.0f",
                    o.workload.micro_batches, o.workload.batch)
       : any_collocated
           ? Format("# collocated baseline: %.0f processes, each attention + experts, NCCL "
                    "all-to-all, "
                    "m = %.0f micro-batches in turn, batch %.0f per process",
                    attention, o.workload.micro_batches, o.workload.batch)
           : Format(
                 "# %.0f attention + %.0f expert processes, m = %.0f micro-batches, batch %.0f per "
                 "attention worker",
                 attention, experts, o.workload.micro_batches, o.workload.batch)) +
      Format(", %.0f requests (", requests) + (o.workload.production ? "production" : "fixed") +
      Format(" lengths, mean input %.0f, output %.0f)\n", input / std::max(requests, 1.0),
             output / std::max(requests, 1.0));
  t += Format("decode          %10.1f tokens/s total, %.1f per process (%.0f tokens in %.2f s)\n",
              tokens_per_s, tokens_per_s / std::max(processes, 1), generated, serving_s);
  t += Format("prefill         %10.0f tokens\n", prefill);
  t += Format("TBT             p50 %8.3f ms   p99 %8.3f ms\n", Percentile(tbt, 50),
              Percentile(tbt, 99));
  t += Format("TTFT            p50 %8.3f ms   p99 %8.3f ms\n", Percentile(ttft, 50),
              Percentile(ttft, 99));
  if (single) {
    // One process, nothing to wait for: no busy / idle split.
  } else if (any_collocated) {
    t += Format("each process    busy %5.1f %%   in the all-to-all %5.1f %%\n", attn_busy * 100,
                attn_idle * 100);
  } else {
    t +=
        Format("attention side  busy %5.1f %%   idle %5.1f %%\n", attn_busy * 100, attn_idle * 100);
    t += Format("expert side     busy %5.1f %%   idle %5.1f %%\n", exp_busy * 100, exp_idle * 100);
  }
  if (!single) {
    t += Format(
        "M2N per layer   %8.3f ms (attention worker's Send + Receive per layer and iteration)\n",
        attn_m2n_per_layer * 1e3);
  }
  if (!any_collocated) {
    t += Format(
        "T_a / T_e       %8.3f / %.3f ms compute per (layer, micro-batch) on the attention / "
        "expert side "
        "(shared/MISSION.md's ping-pong model)\n",
        t_a * 1e3, t_e * 1e3);
  }
  if (any_check) {
    t += std::string("check           ") + (s.check_passed ? "PASS" : "FAIL") +
         Format(
             ": %.0f output tokens of %.0f requests vs the single-process reference, max relative "
             "error %.2e "
             "(tolerance %.0e)\n",
             tokens, compared, max_error, tolerance) +
         Format(
             "                routing: %.0f of %.0f (position, layer) followed as near-ties (gate "
             "logits within "
             "%.0e), ",
             followed, routings, tie_threshold) +
         Format("%.0f routing errors; %.1f s\n", routing_errors, check_s);
    if (!first_failure.empty()) t += "                first failure: " + first_failure + "\n";
  } else {
    t += "check           not run (--no_check)\n";
  }
  return s;
}

// ---- Reports on the wire: a JSON string in chunks of one slot each ----

m2n::Status SendReport(m2n::Group& group, int peer, const std::string& text, std::byte* buffer,
                       size_t slot_bytes, const PipelineOptions& o) {
  const size_t chunk = slot_bytes - sizeof(Header);
  size_t sent = 0;
  do {
    const size_t n = std::min(chunk, text.size() - sent);
    Header h;
    h.kind = static_cast<uint16_t>(MessageKind::kReport);
    h.rows = static_cast<uint32_t>(n);
    h.report_bytes = text.size();
    std::memcpy(buffer, &h, sizeof(h));
    std::memcpy(buffer + sizeof(h), text.data() + sent, n);
    M2N_RETURN_IF_ERROR(group.Send({peer, buffer, sizeof(h) + n}, CallDeadline(o)));
    sent += n;
  } while (sent < text.size());
  return m2n::OkStatus();
}

m2n::StatusOr<Json> ReceiveReport(m2n::Group& group, int peer, const PipelineOptions& o) {
  std::string text;
  uint64_t total = 0;
  do {
    // A report comes after its sender's reference check, which may take much longer than a step.
    M2N_ASSIGN_OR_RETURN(
        m2n::Message m,
        group.Receive(peer, m2n::Deadline::After(std::chrono::seconds(10 * int64_t{o.timeout_s}))));
    m2n::Status s = CheckMessage(m.data, m.length, peer, MessageKind::kReport, Header{});
    const Header h = ReadHeader(m.data);
    if (s.ok() && sizeof(Header) + h.rows != m.length)
      s = m2n::DataLossError("report chunk of bad length");
    if (s.ok()) {
      total = h.report_bytes;
      text.append(reinterpret_cast<const char*>(m.data) + sizeof(Header), h.rows);
    }
    M2N_RETURN_IF_ERROR(group.Release(m));
    M2N_RETURN_IF_ERROR(s);
  } while (text.size() < total);
  return Json::Parse(text, "report from rank " + std::to_string(peer));
}

}  // namespace moe

// The run's summary: rank 0 turns every worker's report into the metrics below, prints them and
// writes them as JSON.
//
//   decode tokens/s      generated tokens / the attention workers' serving time; per process
//                        (per GPU on GPUs) divides by all A + E processes
//   TBT p50 / p99        time between two tokens of one request (ms); TTFT: join to first token
//   busy / idle          per side: compute time / serving time; idle: time blocked waiting for the
//                        other side (Receive); the rest is Send and bookkeeping
//   M2N time per layer   per attention worker, time in Send + Receive per (iteration, layer)
#pragma once

#include <string>

#include "model/json.h"
#include "runtime/pipeline.h"

namespace moe {

struct Summary {
  Json json;
  std::string text;
  bool check_ran = false;
  bool check_passed = false;
};

Summary Summarize(const Json& reports, const PipelineOptions& options, const std::string& transport);

}  // namespace moe

// The run's reports: each worker's JSON report travels to rank 0 in chunks of one slot
// (SendReport / ReceiveReport), and rank 0 turns them all into the summary's metrics below,
// prints them and writes them as JSON.
//
//   decode tokens/s      generated tokens / the attention workers' serving time; per process
//                        (per GPU on GPUs) divides by all A + E processes
//   TBT p50 / p99        time between two tokens of one request (ms); TTFT: join to first token
//   busy / idle          per side: compute time / serving time; idle: time blocked waiting for the
//                        other side (Receive); the rest is Send and bookkeeping
//   M2N time per layer   per attention worker, time in Send + Receive per (iteration, layer)
#pragma once

#include <cstddef>
#include <string>

#include "m2n/m2n.h"
#include "model/json.h"
#include "runtime/pipeline.h"

namespace moe {

struct Summary {
  Json json;
  std::string text;
  bool check_ran = false;
  bool check_passed = false;
};

// A JSON report to `peer` in chunks of one slot, from `buffer` (registered, slot_bytes long).
m2n::Status SendReport(m2n::Group& group, int peer, const std::string& text, std::byte* buffer,
                       size_t slot_bytes, const PipelineOptions& options);
// The report `peer` sends by SendReport, whole.
m2n::StatusOr<Json> ReceiveReport(m2n::Group& group, int peer, const PipelineOptions& options);

Summary Summarize(const Json& reports, const PipelineOptions& options,
                  const std::string& transport);

}  // namespace moe

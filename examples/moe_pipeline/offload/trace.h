// Routing traces: per request, the prompt embedding (mean of its token embeddings) and the full
// gate distribution of every token at every layer. Written by the model's trace script
// (tools/train_tiny_moe.py) or by a run of the pipeline, replayed by the offloading simulator.
//
// File format (little-endian): "M2NTRACE", u32 version 1, i32 layers, experts, top_k, embed_dim,
// requests; then per request: i32 kind length, the kind's bytes (e.g. "code", "prose", "licence"),
// i32 held_out (1: evaluation set, never learned from), i32 tokens, f32 embedding[embed_dim],
// f32 gates[tokens][layers][experts].
#pragma once

#include <string>
#include <vector>

#include "m2n/status.h"

namespace moe::offload {

struct TraceRequest {
  std::string kind;
  bool held_out = false;
  int tokens = 0;
  std::vector<float> embedding;
  std::vector<float> gates;  // [tokens][layers][experts]
};

struct Trace {
  int layers = 0, experts = 0, top_k = 0, embed_dim = 0;
  std::vector<TraceRequest> requests;
};

m2n::StatusOr<Trace> ReadTrace(const std::string& path);
m2n::Status WriteTrace(const std::string& path, const Trace& trace);

}  // namespace moe::offload

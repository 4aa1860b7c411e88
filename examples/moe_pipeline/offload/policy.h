// Expert offloading policies behind one interface (README.md, "Expert offloading"): when a worker's
// experts do not all fit its device, a cache of C experts (cache.h) keeps the ones a policy values
// and loads the rest from the host copy. A policy sees what the gates decide, layer by layer, and
// answers two questions: what to bring in ahead of need (Prefetch) and what to give up first
// (KeepScore). The cache does the loading and the accounting, so every policy is measured the same
// way.
//
// Policies: "lru" (on demand, least recently used goes: a plain offloading runtime), "frequency"
// (MoE-Infinity-style: per-request activation counts), "fmoe" (FineMoE: expert maps matched by
// prompt semantics and gate trajectories, fmoe.cc).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "m2n/status.h"

namespace moe::offload {

struct ExpertId {
  int layer = 0;
  int expert = 0;
  bool operator==(const ExpertId&) const = default;
};

// What is offloaded: layers x experts of `expert_bytes` each, top_k chosen per token and layer.
struct OffloadShape {
  int layers = 0;
  int experts = 0;
  int top_k = 0;
  int64_t expert_bytes = 0;
  int total() const { return layers * experts; }
  int Index(ExpertId id) const { return id.layer * experts + id.expert; }
};

// Tuning of the fMoE policy; the defaults are FineMoE's.
struct FmoeOptions {
  int store_capacity = 1024;  // expert maps kept
  int semantic_layers = 1;  // layers matched by prompt semantics; trajectory beyond
  int distance = 3;  // prefetch distance in layers (FineMoE: 3-6)
};

class OffloadPolicy {
 public:
  virtual ~OffloadPolicy() = default;
  virtual std::string name() const = 0;
  // History the policy may learn from before serving (training prompts, never the evaluation
  // set): one request's prompt embedding and its gate distributions [tokens][layers][experts].
  virtual void Learn(std::span<const float> embedding, int tokens, std::span<const float> gates) {
    (void)embedding, (void)tokens, (void)gates;
  }
  virtual void BeginRequest(std::span<const float> embedding) = 0;
  virtual void BeginIteration() = 0;
  // Layer `layer`'s gate ran: its full distribution (averaged over the batch) and the chosen
  // experts.
  virtual void ObserveGate(int layer, std::span<const float> probs,
                           std::span<const int> chosen) = 0;
  // The cache missed `id` while serving layer id.layer (fMoE pauses prefetching on a miss).
  virtual void Missed(ExpertId id) { (void)id; }
  // What to load ahead, most urgent first; `layer` is the layer just served (-1: iteration start).
  virtual std::vector<ExpertId> Prefetch(int layer) = 0;
  // How much to keep a resident expert: the lowest goes first. `last_use` is the cache's clock at
  // its last use (ties and LRU).
  virtual double KeepScore(ExpertId id, int64_t last_use) const = 0;
};

// "lru", "frequency" or "fmoe"; anything else is an InvalidArgument naming the choices.
m2n::StatusOr<std::unique_ptr<OffloadPolicy>> MakePolicy(const std::string& name,
                                                         const OffloadShape& shape,
                                                         const FmoeOptions& fmoe = {});
std::unique_ptr<OffloadPolicy> MakeLruPolicy();
std::unique_ptr<OffloadPolicy> MakeFrequencyPolicy(const OffloadShape& shape, int distance);
std::unique_ptr<OffloadPolicy> MakeFmoePolicy(const OffloadShape& shape,
                                              const FmoeOptions& options);
const char* PolicyNames();  // "lru, frequency, fmoe"

}  // namespace moe::offload

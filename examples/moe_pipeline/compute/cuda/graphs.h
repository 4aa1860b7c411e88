// CUDA graphs of repeated stream work for the GPU backend's device path: the attention worker's
// per-layer work of one micro-batch (cuda_compute.cc) is captured into a graph the second time a
// key (micro-batch, layer, token count) is seen and replayed from then on. The key holds every
// host value the work depends on (buffer addresses are fixed per micro-batch; token ids, positions
// and KV-cache slots are read from device memory), so a replay is the work eager enqueueing would
// do. Shapes that come once (prefill chunks of odd sizes) run eagerly and cost no capture. Where a
// capture or instantiation fails (a cuBLAS that cannot be captured, say), graphs are turned off for
// the object's life and the work runs eagerly: correct, only slower; why_off() says why.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <functional>
#include <map>
#include <string>

#include "m2n/status.h"

namespace moe::cuda {

class GraphCache {
 public:
  using Key = std::array<int, 3>;
  GraphCache() = default;
  GraphCache(const GraphCache&) = delete;
  GraphCache& operator=(const GraphCache&) = delete;
  ~GraphCache();

  // Enqueues on `stream` what `enqueue` enqueues there (it must enqueue on `stream` only): by
  // calling it, or by capturing it once and replaying the graph.
  m2n::Status Run(const Key& key, cudaStream_t stream, const std::function<m2n::Status()>& enqueue);
  const std::string& why_off() const { return why_off_; }
  int graphs() const { return static_cast<int>(graphs_); }

 private:
  struct Entry {
    int seen = 0;
    cudaGraphExec_t exec = nullptr;
  };
  m2n::Status Capture(cudaStream_t stream, const std::function<m2n::Status()>& enqueue,
                      cudaGraphExec_t* exec);

  static constexpr size_t kMaxKeys = 4096;  // beyond: eager (shapes that keep changing)
  std::map<Key, Entry> entries_;
  size_t graphs_ = 0;
  std::string why_off_;  // empty: graphs on
};

}  // namespace moe::cuda

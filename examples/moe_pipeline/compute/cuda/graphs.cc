// GraphCache (graphs.h): capture on a key's second sighting, replay after; eager on any failure.
#include "compute/cuda/graphs.h"

#include <cstdio>

namespace moe::cuda {

GraphCache::~GraphCache() {
  for (auto& [key, entry] : entries_) {
    if (entry.exec != nullptr) (void)cudaGraphExecDestroy(entry.exec);
  }
}

m2n::Status GraphCache::Run(const Key& key, cudaStream_t stream,
                            const std::function<m2n::Status()>& enqueue) {
  if (!why_off_.empty()) return enqueue();
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    if (entries_.size() >= kMaxKeys) return enqueue();
    it = entries_.emplace(key, Entry{}).first;
  }
  Entry& e = it->second;
  if (e.exec == nullptr && ++e.seen < 2) return enqueue();
  if (e.exec == nullptr) {
    const m2n::Status captured = Capture(stream, enqueue, &e.exec);
    if (!captured.ok()) {
      why_off_ = captured.ToString();
      (void)cudaGetLastError();  // a failed capture's error is not sticky: clear it
      std::fprintf(stderr, "[moe_pipeline] CUDA graphs off, running eagerly: %s\n",
                   why_off_.c_str());
      return enqueue();
    }
    ++graphs_;
  }
  const cudaError_t launched = cudaGraphLaunch(e.exec, stream);
  if (launched == cudaSuccess) return m2n::OkStatus();
  return m2n::InternalError(std::string("cudaGraphLaunch: ") + cudaGetErrorString(launched));
}

m2n::Status GraphCache::Capture(cudaStream_t stream, const std::function<m2n::Status()>& enqueue,
                                cudaGraphExec_t* exec) {
  cudaError_t e = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal);
  if (e != cudaSuccess)
    return m2n::InternalError(std::string("cudaStreamBeginCapture: ") + cudaGetErrorString(e));
  const m2n::Status enqueued = enqueue();
  cudaGraph_t graph = nullptr;
  e = cudaStreamEndCapture(stream, &graph);  // always ends the capture, even after an error
  if (!enqueued.ok()) {
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
    return enqueued.WithContext("captured work");
  }
  if (e != cudaSuccess)
    return m2n::InternalError(std::string("cudaStreamEndCapture: ") + cudaGetErrorString(e));
  e = cudaGraphInstantiate(exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  if (e == cudaSuccess) return m2n::OkStatus();
  *exec = nullptr;
  return m2n::InternalError(std::string("cudaGraphInstantiate: ") + cudaGetErrorString(e));
}

}  // namespace moe::cuda

// What the disaggregated pipeline's two workers (attention_worker.cc, expert_worker.cc) share;
// their schedule is pipeline.h's, these helpers are in pipeline.cc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "m2n/ep.h"
#include "m2n/group.h"
#include "runtime/pipeline.h"

namespace moe {

// "dispatch on rank 2 (expert worker)": where an m2n call failed, for its error's context.
std::string Where(const m2n::Group& group, const char* what);
// "iteration 3 layer 1 micro-batch 0".
std::string Step(int64_t iteration, int layer, int mb);

// A worker's send buffers: one slot of registered memory per peer, kept for the whole run.
struct SendBuffers {
  m2n::Status Register(m2n::Group& group, size_t peers);
  std::byte* operator[](size_t peer_index) const { return send[peer_index]; }

  size_t slot_bytes = 0;
  std::vector<std::byte> buffer;
  // MemoryRegion's default constructor needs its Impl's size: held in an optional instead.
  std::optional<m2n::MemoryRegion> region;
  std::vector<std::byte*> send;
};

// The EP layer of the pipeline: the hidden states travel in fp32 (the compute backends' activations
// on the host); expert e lives on expert worker ExpertOwner(e, E), global rank A + that.
m2n::ExpertParallelOptions EpOptions(const PipelineOptions& options);
// The iterations every attention worker runs: the longest workload's (pipeline.h).
m2n::StatusOr<int64_t> RunIterations(const PipelineOptions& options);

// The device path (pipeline.h): the cuda backend's EP layer on device memory, over a group of its
// own (receive slots in GPU memory; one group, one data path), while the finish and the reports
// stay on the host group. Not with the faults that rewrite the routing on the host, nor with
// expert offloading (its cache takes host routing): those keep the host path.
bool DevicePath(const PipelineOptions& options);
// The device path's group: the host group's ranks and bootstrap, its store on the next port.
m2n::StatusOr<std::unique_ptr<m2n::Group>> MakeDeviceGroup(const m2n::Group& host_group,
                                                           const PipelineOptions& options);
// Ends the device path once the caller has synchronized its streams: the layer, then its group.
m2n::Status CloseDeviceGroup(std::unique_ptr<m2n::ExpertParallel>& ep,
                             std::unique_ptr<m2n::Group>& group, const PipelineOptions& options);

}  // namespace moe

// The two kinds of worker and the ping-pong schedule between them, over one m2n::Group:
// attention workers are the senders (ranks [0, A)), expert workers the receivers ([A, A + E)), and
// the tokens move through m2n::ExpertParallel (include/m2n/ep.h) on that group: attention workers
// are its attention ranks, expert workers its expert ranks, expert e on worker ExpertOwner(e, E).
//
// Per decode iteration, an attention worker cuts its in-flight tokens into m micro-batches and
// runs, for each layer l and micro-batch i in turn:
//     ReceiveCombine of (l - 1, i): the top-k weighted sum per token, added to i's residual (N ->
//     M) attention + gate + top-k of (l, i) Dispatch (l, i): each token once to every expert worker
//     holding one of its experts (M -> N)
// so while micro-batch i's tokens are at the experts, the attention worker computes the other m - 1
// micro-batches (ping-pong); the last layer's combines are received at the end of the iteration.
// An expert worker takes the next call's ExpertBatch (every attention worker's rows, grouped by
// expert), runs each expert over its contiguous rows, and Combines the unweighted outputs back.
// Every EP call is numbered; both sides map call c to (iteration, layer, micro-batch) =
// (c / (L m), c / m % L, c % m) and check it.
//
// Every EP call involves every attention worker, so all of them run the same number of
// iterations: the longest workload's (Workload::CountIterations: the schedule does not depend on
// the tokens, so every rank counts it alone, with no message). A worker whose own requests are
// done dispatches empty micro-batches until then (not counted in its report).
//
// The EP layer must be the only traffic on its group while it is used; the pipeline's own
// messages (runtime/wire.h) come after the run's last EP call, on the same group: each attention
// worker sends every expert worker a finish (so both sides check that they agree on where the EP
// traffic ended), then the reports go to rank 0.
//
// The device path (the cuda backend, unless --fault swap_experts or --offload): the EP layer's
// stream-ordered calls on a second group whose receive slots are GPU memory (its bootstrap store on
// the host group's port + 1; the host group keeps the finish and the reports, as a group has one
// data path). The attention worker enqueues layer l of micro-batch i on its compute stream, the
// dispatch and combine of i on i's own stream (after an event; and after the previous call of the
// same kind, on whichever stream: the EP layer's call numbers are device words), and the residual
// add back on the compute stream (after another): no host copy of token data and no host wait per
// layer; the routing goes to pinned host memory on the way, read for the check once per iteration.
// The expert worker's one host wait per call is for the batch's row counts, which cuBLAS takes on
// the host.
//
// Slots: slot_bytes fits the EP layer's largest message (ExpertParallel::SlotBytesNeeded) and a
// report chunk; slot_depth >= m: at most m dispatches and m combines per pair are in flight, so
// no Send ever waits for a credit that only the waiting side could free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "compute/compute.h"
#include "m2n/m2n.h"
#include "model/config.h"
#include "model/json.h"
#include "model/weights.h"
#include "runtime/wire.h"
#include "runtime/workload.h"

namespace moe {

struct PipelineOptions {
  std::string config_path;
  ModelConfig config;
  WeightSource weights;
  std::string backend = "auto";  // resolved by ResolveBackend before the run
  int attention_workers = 2;
  int expert_workers = 2;
  int collocated = 0;  // > 0: the collocated baseline on this many processes (runtime/collocated.h)
  bool single = false;  // the single-process path: one process, no m2n (runtime/single.h)
  WorkloadOptions workload;
  int threads = 1;  // compute threads per process
  std::string transport = "auto";
  int timeout_s = 120;  // every m2n call's deadline
  bool check = true;  // compare with the reference
  bool progress = true;  // a progress line on stderr every second
  bool cuda_graphs = true;  // the device path's attention layers as CUDA graphs (--no_cuda_graphs)
  // Fault injection: "swap_experts" routes every token of expert 0 to expert 1 and back (a routing
  // bug the check must catch); "kill_expert" ends the first expert worker after 3 rounds (the
  // others must fail by their deadlines, naming it).
  std::string fault;
  // Expert offloading on the expert workers and the single process (offload/offloaded_experts.h):
  // a policy and C.
  std::string offload;
  int gpu_experts = 0;
  std::string offload_maps;  // a routing trace the policy learns from
};

// Which expert worker holds global expert e.
inline int ExpertOwner(int expert, int expert_workers) { return expert % expert_workers; }

// The disaggregated pipeline's group slot: the EP layer's largest message, at least a report chunk.
size_t SlotBytesFor(const PipelineOptions& options);
// The collocated baseline's buffer per peer: its largest dispatch message (runtime/wire.h).
size_t WireSlotBytes(const PipelineOptions& options);

// Runs this rank's part of the pipeline and the report gather. On rank 0, *summary receives the
// whole job's report (every worker's, see runtime/report.h); elsewhere it is left null.
m2n::Status RunAttentionWorker(m2n::Group& group, const PipelineOptions& options, Json* summary);
m2n::Status RunExpertWorker(m2n::Group& group, const PipelineOptions& options);

// ---- Shared with the collocated baseline (runtime/collocated.h) ----
m2n::Deadline CallDeadline(const PipelineOptions& options);  // the deadline of one m2n call
int LocalRank(const m2n::Group& group);  // the launcher's local rank, else the global rank
// A serving rank's workload (its own requests) into *workload, and the options of its compute
// (attention, and the experts of a collocated rank) on the rank's local GPU.
m2n::StatusOr<ComputeOptions> MakeServingWorkload(const m2n::Group& group,
                                                  const PipelineOptions& options,
                                                  std::unique_ptr<Workload>* workload);
// The same for serving rank `rank` on GPU `local_rank`, without a group (the single process).
m2n::StatusOr<ComputeOptions> MakeServingWorkload(int rank, int local_rank,
                                                  const PipelineOptions& options,
                                                  std::unique_ptr<Workload>* workload);
// The expert side of a process holding `experts`: offloaded through the expert cache when
// options.offload names a policy, every expert resident otherwise.
m2n::StatusOr<std::unique_ptr<ExpertCompute>> MakeWorkerExperts(const PipelineOptions& options,
                                                                std::span<const int> experts,
                                                                const ComputeOptions& compute);
// The collocated baseline's dispatch (runtime/wire.h) to rank `w` of `workers`, which holds the
// experts e with ExpertOwner(e, workers) == w: the tokens of micro-batch `mb` at `layer` routed to
// any of its experts into *rows, and into msg the header, those rows, their top-k expert ids (-1
// for another rank's) and gate weights. The tokens' hidden states (at the layout's x) are the
// caller's to gather.
DispatchLayout WriteDispatch(const Routing& routing, int w, int workers, int hidden,
                             int64_t iteration, int layer, int mb, std::vector<int32_t>* rows,
                             std::byte* msg);
Json Samples(const std::vector<double>& values);  // a JSON array, rounded to 1e-3
// A serving rank's report fields from its workload: requests, tokens, TBT and TTFT samples (ms).
void SetWorkloadReport(Json& report, const Workload& workload, const std::vector<double>& tbt_ms,
                       const std::vector<double>& ttft_ms);

}  // namespace moe

// The collocated baseline (issue 6, item 7): every process (one per GPU) runs attention for its own
// requests and holds a share of every layer's experts (expert e on process e mod P). Every layer,
// tokens go to their experts' processes and back by NCCL grouped send / recv (all-to-all), with the
// same compute backends, workload and message layouts as the disaggregated pipeline, so that the
// gain of disaggregation is measured against the same kernels. No ping-pong: the m micro-batches
// run one after another. An m2n group (rank 0 its one sender) carries only the NCCL id and the
// reports.
#pragma once

#include "m2n/m2n.h"
#include "model/json.h"
#include "runtime/pipeline.h"

namespace moe {

// Whether this build has NCCL (the baseline needs it and a GPU per process).
bool CollocatedAvailable();

// Runs one rank of a collocated job of group.world_size() processes; rank 0 receives the job's
// reports in *summary.
m2n::Status RunCollocatedRank(m2n::Group& group, const PipelineOptions& options, Json* summary);

}  // namespace moe

// The compute of the two sides, behind one interface per side, so that the pipeline (runtime/) is
// the same on CPU (compute/cpu/) and GPU (compute/cuda/, to come).
//
// Attention side (one object per attention worker): holds the attention weights and the KV cache
// of its requests; keeps, per micro-batch, the residual stream of that micro-batch's tokens and the
// experts' input (the post-attention-normed activations). Expert side: holds the worker's share of
// every layer's experts and runs them over the rows m2n::ExpertParallel delivers (an ExpertBatch:
// grouped by expert) or over the collocated baseline's dispatch messages.
//
// Buffers the runtime hands in and out (dispatch rows, combine rows, logits) are host memory; the
// GPU backend also takes device memory for the rows (GatherRows' dst, ScatterAddRows' src,
// ExpertInput's x and out: the collocated baseline's NCCL buffers). A GPU backend also serves the
// device path (the *OnDevice calls below; the CPU backend does not): the experts' input, the gate's
// top-k, the combined rows and the expert outputs stay in device memory and go straight to
// m2n::ExpertParallel's stream-ordered calls; only the routing (for the check, copied
// asynchronously) and the logits cross to the host.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "m2n/ep.h"
#include "m2n/status.h"
#include "model/config.h"
#include "model/weights.h"

namespace moe {

// One token of a micro-batch: which request (its KV-cache slot), at which position, which token.
struct TokenRef {
  int kv_slot = 0;
  int position = 0;
  int token = 0;
};

// The gate's decision for every token of a micro-batch: top_k (expert, weight) pairs per token,
// experts in descending probability.
struct Routing {
  int top_k = 0;
  std::vector<int> expert;  // [tokens * top_k]
  std::vector<float> weight;  // [tokens * top_k]
};

// Where a micro-batch's dispatch data lie on the device path (AttentionCompute::
// AttentionAndGateOnDevice): all device memory, valid in the order of `stream`.
struct DeviceDispatch {
  const float* x = nullptr;  // [tokens, hidden] fp32: the experts' input, in token order
  const int32_t* topk_ids = nullptr;  // [tokens, top_k]
  const float* topk_weights = nullptr;  // [tokens, top_k]
  float* combined = nullptr;  // [max_tokens, hidden] fp32: where the combine is to land
  void* stream = nullptr;  // the micro-batch's cudaStream_t
};

struct ComputeOptions {
  int threads = 1;  // compute threads of this process
  int micro_batches = 1;  // m
  int max_tokens = 0;  // per micro-batch
  int kv_slots = 0;  // requests in flight at once (KV-cache slots)
  int max_context = 0;  // positions per KV-cache slot
  int local_rank =
      0;  // this process's index among the job's processes on this host (picks its GPU)
  // The device path's attention layers as CUDA graphs where a shape repeats (GPU backend).
  bool cuda_graphs = false;
};

class AttentionCompute {
 public:
  virtual ~AttentionCompute() = default;
  virtual std::string name() const = 0;
  // Micro-batch `mb` starts a forward pass over `tokens` (at most max_tokens): embeds them.
  virtual m2n::Status Begin(int mb, std::span<const TokenRef> tokens) = 0;
  // Layer `layer` up to the experts: RMSNorm, Q/K/V, RoPE, KV-cache append, grouped-query attention
  // over the cache (causal: a token sees positions <= its own of its request), o-proj, residual
  // add, post-attention RMSNorm (the experts' input), gate, softmax and top-k into `routing`.
  virtual m2n::Status AttentionAndGate(int mb, int layer, Routing* routing) = 0;
  // Token gather: dst[i] = experts' input of token rows[i] ([rows.size(), hidden] floats).
  virtual m2n::Status GatherRows(int mb, std::span<const int32_t> rows, float* dst) = 0;
  // Combine: residual of token rows[i] += src[i] (the experts already applied the gate weights).
  virtual m2n::Status ScatterAddRows(int mb, std::span<const int32_t> rows, const float* src) = 0;
  // Final RMSNorm and LM head: out[i] = logits of token rows[i] ([rows.size(), vocab] floats,
  // host).
  virtual m2n::Status Logits(int mb, std::span<const int32_t> rows, float* out) = 0;

  // ---- Device path (a GPU backend; the defaults are kUnimplemented) ----
  // Layer `layer` up to the experts, as AttentionAndGate, with the gate's top-k left on the device
  // in micro-batch mb's own buffers; *out says where, and names mb's stream, which the caller
  // enqueues the dispatch and combine on (ordered after this work; other micro-batches' compute
  // runs meanwhile on the compute stream). The routing is copied to pinned host memory on the way
  // (RoutingOnHost), with no host wait.
  virtual m2n::Status AttentionAndGateOnDevice(int mb, int layer, DeviceDispatch* out);
  // mb's buffers and stream without computing (an empty micro-batch's dispatch).
  virtual m2n::Status DeviceLane(int mb, DeviceDispatch* out);
  // The EP layer's calls of one kind (dispatches; combines received) must run on the device in the
  // order they are made (their call numbers and slot cursors are device words), yet they go on
  // different micro-batches' streams: around each such call on mb's stream, BeforeEpCall makes
  // that stream wait for the last call of the kind, AfterEpCall marks this one as the last. The two
  // kinds use separate device state, so a dispatch and a combine may still run at once.
  virtual m2n::Status BeforeEpCall(int mb, bool dispatch);
  virtual m2n::Status AfterEpCall(int mb, bool dispatch);
  // The compute stream waits for the work enqueued on mb's stream so far (its combine); then the
  // residual of mb's first `tokens` tokens += the combined rows (none when 0).
  virtual m2n::Status AddCombinedOnDevice(int mb, int tokens);
  // The routing of (mb, layer) of this iteration, for the check: waits for the compute stream.
  virtual m2n::Status RoutingOnHost(int mb, int layer, Routing* routing);
  // Waits for the compute stream (and so for every micro-batch stream it waited for).
  virtual m2n::Status SyncDevice();
};

// Tokens from one dispatch message for one layer (the collocated baseline's, runtime/wire.h; and
// --profile's): `rows` rows of x, each with top_k (global expert id, weight) pairs, -1 where the
// expert lives on another worker. The result goes to out.
struct ExpertInput {
  int rows = 0;
  const float* x = nullptr;  // [rows, hidden]
  const int32_t* expert = nullptr;  // [rows, top_k]
  const float* weight = nullptr;  // [rows, top_k]
  float* out = nullptr;  // [rows, hidden]: sum over this worker's experts of weight * FFN(x)
};

// Walks every (input, row, top-k pair) of `inputs` routed to an expert, in that order, calling
// visit(input index, row, local index, gate weight), where local[global expert id] is the expert's
// index on this worker (-1 if not held). A DataLossError for a token dispatched to an expert this
// worker does not hold (`num_experts`: the model's experts).
template <typename Visit>
m2n::Status ForEachRoutedRow(std::span<const ExpertInput> inputs, int top_k, int num_experts,
                             const std::vector<int>& local, Visit&& visit) {
  for (size_t in = 0; in < inputs.size(); ++in) {
    const ExpertInput& x = inputs[in];
    for (int r = 0; r < x.rows; ++r) {
      for (int j = 0; j < top_k; ++j) {
        const int32_t e = x.expert[static_cast<size_t>(r) * top_k + j];
        if (e < 0) continue;
        if (e >= num_experts || local[static_cast<size_t>(e)] < 0) {
          return m2n::DataLossError("a token was dispatched to expert " + std::to_string(e) +
                                    ", which this worker does not hold");
        }
        visit(in, r, local[static_cast<size_t>(e)], x.weight[static_cast<size_t>(r) * top_k + j]);
      }
    }
  }
  return m2n::OkStatus();
}

class ExpertCompute {
 public:
  virtual ~ExpertCompute() = default;
  virtual std::string name() const = 0;
  // The SwiGLU experts of `layer` over every input's rows: each expert gathers its tokens from all
  // inputs, runs one GEMM chain over them, and scatters weight * result back. (The collocated
  // baseline and --profile; the disaggregated pipeline calls ForwardGrouped.)
  virtual m2n::Status Forward(int layer, int top_k, std::span<const ExpertInput> inputs) = 0;
  // The experts of `layer` over what m2n::ExpertParallel delivered: batch.x holds fp32 rows grouped
  // by local expert, so each expert runs one GEMM chain over its contiguous rows. y[i]
  // ([batch.rows, hidden] floats, host) = the output of row i's expert, unweighted: the attention
  // side applies the gate weights when it combines. The default runs Forward on the batch as top-1
  // rows of weight 1 (the GPU backend, until it moves to the device-memory EP layer); the CPU
  // backends override it.
  virtual m2n::Status ForwardGrouped(int layer, const m2n::ExpertBatch& batch, float* y);

  // ---- Device path (a GPU backend; the defaults are nullptr / kUnimplemented) ----
  // The stream (cudaStream_t) this side's device work and its EP calls go on.
  virtual void* device_stream() { return nullptr; }
  // ForwardGrouped over a DeviceExpertBatch (received on device_stream()): *y (device, fp32,
  // [rows, hidden]) = each row's expert output, unweighted, enqueued on device_stream(). cuBLAS
  // takes host row counts: this waits for the batch's pinned host_counts (the one host
  // synchronization left on the device path).
  virtual m2n::Status ForwardGroupedOnDevice(int layer, const m2n::DeviceExpertBatch& batch,
                                             const float** y);
  // Waits for device_stream().
  virtual m2n::Status SyncDevice();
};

// How closely a backend's outputs follow the fp32 reference, for the check.
struct Precision {
  double tolerance;  // max |pipeline - reference| / max |reference| over a token's logits
  double tie_threshold;  // gate-logit gap below which a token's routing may differ (see reference/)
  bool bf16_weights;  // the backend rounds weights to bf16: so does the reference it is checked
                      // against
  const char* what;  // "fp32", "bf16"
};

// Backends: "cpu" (always), "cuda" (when built with CUDA). Each loads its own weights from
// `source` (only its share: the expert side the `experts` it holds), so that a GPU backend can
// generate or upload them straight into device memory.
std::vector<std::string> AvailableBackends();
// "auto": "cuda" when built and a GPU is visible, else "cpu"; other names are returned as they are.
std::string ResolveBackend(const std::string& name);
m2n::StatusOr<Precision> BackendPrecision(const std::string& backend);
m2n::StatusOr<std::unique_ptr<AttentionCompute>> MakeAttentionCompute(
    const std::string& backend, const ModelConfig& config, const WeightSource& source,
    const ComputeOptions& options);
m2n::StatusOr<std::unique_ptr<ExpertCompute>> MakeExpertCompute(const std::string& backend,
                                                                const ModelConfig& config,
                                                                const WeightSource& source,
                                                                std::span<const int> experts,
                                                                const ComputeOptions& options);

}  // namespace moe

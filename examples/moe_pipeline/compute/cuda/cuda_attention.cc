// The cuda backend's attention side (cuda_compute.h): bf16 weights and KV cache on the GPU, cuBLAS
// projections, own kernels for RMSNorm, RoPE, attention and the gate; the device path's lanes and
// the per-shape CUDA graphs of a layer (graphs.h).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>
#include <vector>

#include "compute/cuda/context.h"
#include "compute/cuda/graphs.h"
#include "compute/cuda/kernels.h"

namespace moe::cuda {
namespace {

class CudaAttention final : public AttentionCompute {
 public:
  CudaAttention(const ModelConfig& c, const ComputeOptions& o) : c_(c), o_(o) {}

  m2n::Status Init(const WeightSource& source) {
    M2N_RETURN_IF_ERROR(ctx_.Init(o_.local_rank));
    M2N_ASSIGN_OR_RETURN(WeightLoader w, WeightLoader::Open(source, &ctx_));
    const int64_t h = c_.hidden_size;
    M2N_RETURN_IF_ERROR(w.Load("model.embed_tokens.weight", {c_.vocab_size, h}, &embed_));
    layers_.resize(static_cast<size_t>(c_.num_hidden_layers));
    for (int l = 0; l < c_.num_hidden_layers; ++l) {
      const std::string p = LayerPrefix(l);
      Layer& L = layers_[static_cast<size_t>(l)];
      M2N_RETURN_IF_ERROR(w.Load(p + "input_layernorm.weight", {h}, &L.input_norm));
      M2N_RETURN_IF_ERROR(w.Load(p + "self_attn.q_proj.weight", {c_.q_dim(), h}, &L.wq));
      M2N_RETURN_IF_ERROR(w.Load(p + "self_attn.k_proj.weight", {c_.kv_dim(), h}, &L.wk));
      M2N_RETURN_IF_ERROR(w.Load(p + "self_attn.v_proj.weight", {c_.kv_dim(), h}, &L.wv));
      M2N_RETURN_IF_ERROR(w.Load(p + "self_attn.o_proj.weight", {h, c_.q_dim()}, &L.wo));
      M2N_RETURN_IF_ERROR(w.Load(p + "post_attention_layernorm.weight", {h}, &L.post_norm));
      M2N_RETURN_IF_ERROR(
          w.Load(p + "block_sparse_moe.gate.weight", {c_.num_local_experts, h}, &L.gate));
    }
    M2N_RETURN_IF_ERROR(w.Load("model.norm.weight", {h}, &final_norm_));
    M2N_RETURN_IF_ERROR(w.Load("lm_head.weight", {c_.vocab_size, h}, &lm_head_));

    const size_t t = static_cast<size_t>(o_.max_tokens), hs = static_cast<size_t>(h);
    mbs_.resize(static_cast<size_t>(std::max(1, o_.micro_batches)));
    for (MicroBatch& mb : mbs_) {
      M2N_RETURN_IF_ERROR(mb.residual.Allocate(t * hs, "residual"));
      M2N_RETURN_IF_ERROR(mb.moe_input.Allocate(t * hs, "experts' input"));
      M2N_RETURN_IF_ERROR(mb.tokens.Allocate(t, "tokens"));
      M2N_RETURN_IF_ERROR(mb.slots.Allocate(t, "slots"));
      M2N_RETURN_IF_ERROR(mb.positions.Allocate(t, "positions"));
    }
    M2N_RETURN_IF_ERROR(normed_.Allocate(t * hs, "normed"));
    M2N_RETURN_IF_ERROR(q_.Allocate(t * static_cast<size_t>(c_.q_dim()), "q"));
    M2N_RETURN_IF_ERROR(k_.Allocate(t * static_cast<size_t>(c_.kv_dim()), "k"));
    M2N_RETURN_IF_ERROR(v_.Allocate(t * static_cast<size_t>(c_.kv_dim()), "v"));
    M2N_RETURN_IF_ERROR(attn_.Allocate(t * static_cast<size_t>(c_.q_dim()), "attention output"));
    M2N_RETURN_IF_ERROR(out_.Allocate(t * hs, "o-proj output"));
    M2N_RETURN_IF_ERROR(
        gate_.Allocate(t * static_cast<size_t>(c_.num_local_experts), "gate logits"));
    M2N_RETURN_IF_ERROR(
        top_index_.Allocate(t * static_cast<size_t>(c_.num_experts_per_tok), "top-k"));
    M2N_RETURN_IF_ERROR(
        top_weight_.Allocate(t * static_cast<size_t>(c_.num_experts_per_tok), "top-k weights"));
    M2N_RETURN_IF_ERROR(rows_.Allocate(t, "rows"));
    M2N_RETURN_IF_ERROR(staging_.Allocate(t * hs, "staging"));
    M2N_RETURN_IF_ERROR(logits_.Allocate(t * static_cast<size_t>(c_.vocab_size), "logits"));
    const size_t cache = static_cast<size_t>(o_.kv_slots) *
                         static_cast<size_t>(c_.num_hidden_layers) *
                         static_cast<size_t>(o_.max_context) * static_cast<size_t>(c_.kv_dim());
    M2N_RETURN_IF_ERROR(k_cache_.Allocate(cache, "KV cache (keys)"));
    M2N_RETURN_IF_ERROR(v_cache_.Allocate(cache, "KV cache (values)"));
    return ctx_.Sync();
  }

  std::string name() const override {
    return "cuda (bf16 weights and KV cache, cuBLAS, fp32 accumulation)";
  }

  m2n::Status Begin(int mb, std::span<const TokenRef> tokens) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    if (static_cast<int>(tokens.size()) > o_.max_tokens) {
      return m2n::InvalidArgumentError("micro-batch of " + std::to_string(tokens.size()) +
                                       " tokens exceeds max_tokens");
    }
    MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    m.rows = static_cast<int>(tokens.size());
    std::vector<int32_t> token(tokens.size()), slot(tokens.size()), position(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) {
      const TokenRef& t = tokens[i];
      if (t.token < 0 || t.token >= c_.vocab_size || t.kv_slot < 0 || t.kv_slot >= o_.kv_slots ||
          t.position < 0 || t.position >= o_.max_context) {
        return m2n::InvalidArgumentError("token " + std::to_string(i) + " is out of range");
      }
      token[i] = t.token;
      slot[i] = t.kv_slot;
      position[i] = t.position;
    }
    M2N_RETURN_IF_ERROR(ctx_.ToDevice(m.tokens.get(), token.data(), token.size() * 4));
    M2N_RETURN_IF_ERROR(ctx_.ToDevice(m.slots.get(), slot.data(), slot.size() * 4));
    M2N_RETURN_IF_ERROR(ctx_.ToDevice(m.positions.get(), position.data(), position.size() * 4));
    MOE_CUDA(LaunchEmbed(m.tokens.get(), m.rows, embed_.get(), c_.hidden_size, m.residual.get(),
                         ctx_.stream()));
    return ctx_.Sync();  // the host vectors go out of scope
  }

  m2n::Status AttentionAndGate(int mb, int layer, Routing* routing) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    M2N_RETURN_IF_ERROR(EnqueueLayer(mb, layer, top_index_.get(), top_weight_.get()));
    const int n = mbs_[static_cast<size_t>(mb)].rows, k = c_.num_experts_per_tok;
    routing->top_k = k;
    routing->expert.resize(static_cast<size_t>(n) * k);
    routing->weight.resize(static_cast<size_t>(n) * k);
    std::vector<int32_t> index(routing->expert.size());
    M2N_RETURN_IF_ERROR(ctx_.ToHost(index.data(), top_index_.get(), index.size() * 4));
    M2N_RETURN_IF_ERROR(
        ctx_.ToHost(routing->weight.data(), top_weight_.get(), routing->weight.size() * 4));
    M2N_RETURN_IF_ERROR(ctx_.Sync());
    for (size_t i = 0; i < index.size(); ++i) routing->expert[i] = index[i];
    return m2n::OkStatus();
  }

  // ---- Device path (compute.h) ----
  m2n::Status AttentionAndGateOnDevice(int mb, int layer, DeviceDispatch* out) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    if (layer < 0 || layer >= c_.num_hidden_layers)
      return m2n::InvalidArgumentError("layer out of range");
    M2N_RETURN_IF_ERROR(Lanes());
    const MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    Lane& lane = *lanes_[static_cast<size_t>(mb)];
    // The layer and, for the check, the routing's copy into pinned memory (read after the
    // iteration): as a CUDA graph where this shape came before (graphs.h).
    const size_t pairs = static_cast<size_t>(m.rows) * c_.num_experts_per_tok;
    const size_t at = static_cast<size_t>(layer) * lane.pairs_per_layer;
    lane.routed_rows[static_cast<size_t>(layer)] = m.rows;
    auto enqueue = [&]() -> m2n::Status {
      M2N_RETURN_IF_ERROR(EnqueueLayer(mb, layer, lane.top_index.get(), lane.top_weight.get()));
      M2N_RETURN_IF_ERROR(ctx_.ToHost(lane.host_index.get() + at, lane.top_index.get(), pairs * 4));
      return ctx_.ToHost(lane.host_weight.get() + at, lane.top_weight.get(), pairs * 4);
    };
    if (o_.cuda_graphs && m.rows > 0) {
      M2N_RETURN_IF_ERROR(graphs_.Run({mb, layer, m.rows}, ctx_.stream(), enqueue));
    } else {
      M2N_RETURN_IF_ERROR(enqueue());
    }
    MOE_CUDA(cudaEventRecord(lane.gate_done, ctx_.stream()));
    MOE_CUDA(cudaStreamWaitEvent(lane.stream, lane.gate_done, 0));
    return DeviceLane(mb, out);
  }

  m2n::Status DeviceLane(int mb, DeviceDispatch* out) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    M2N_RETURN_IF_ERROR(Lanes());
    Lane& lane = *lanes_[static_cast<size_t>(mb)];
    *out = {mbs_[static_cast<size_t>(mb)].moe_input.get(), lane.top_index.get(),
            lane.top_weight.get(), lane.combined.get(), lane.stream};
    return m2n::OkStatus();
  }

  m2n::Status BeforeEpCall(int mb, bool dispatch) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    M2N_RETURN_IF_ERROR(Lanes());
    const int last = dispatch ? last_dispatch_ : last_combine_;
    if (last < 0 || last == mb) return m2n::OkStatus();  // none yet, or this stream's own
    const Lane& before = *lanes_[static_cast<size_t>(last)];
    MOE_CUDA(cudaStreamWaitEvent(lanes_[static_cast<size_t>(mb)]->stream,
                                 dispatch ? before.dispatched : before.combined_in, 0));
    return m2n::OkStatus();
  }

  m2n::Status AfterEpCall(int mb, bool dispatch) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    M2N_RETURN_IF_ERROR(Lanes());
    const Lane& lane = *lanes_[static_cast<size_t>(mb)];
    MOE_CUDA(cudaEventRecord(dispatch ? lane.dispatched : lane.combined_in, lane.stream));
    (dispatch ? last_dispatch_ : last_combine_) = mb;
    return m2n::OkStatus();
  }

  m2n::Status AddCombinedOnDevice(int mb, int tokens) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    M2N_RETURN_IF_ERROR(Lanes());
    const MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    if (tokens < 0 || tokens > m.rows)
      return m2n::InvalidArgumentError("combined tokens outside the micro-batch");
    Lane& lane = *lanes_[static_cast<size_t>(mb)];
    MOE_CUDA(cudaEventRecord(lane.combine_done, lane.stream));
    MOE_CUDA(cudaStreamWaitEvent(ctx_.stream(), lane.combine_done, 0));
    if (tokens == 0) return m2n::OkStatus();
    MOE_CUDA(LaunchAdd(m.residual.get(), lane.combined.get(), int64_t{tokens} * c_.hidden_size,
                       ctx_.stream()));
    return m2n::OkStatus();
  }

  m2n::Status SyncDevice() override { return ctx_.Sync(); }

  m2n::Status RoutingOnHost(int mb, int layer, Routing* routing) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    M2N_RETURN_IF_ERROR(Lanes());
    if (layer < 0 || layer >= c_.num_hidden_layers)
      return m2n::InvalidArgumentError("layer out of range");
    M2N_RETURN_IF_ERROR(ctx_.Sync());
    const Lane& lane = *lanes_[static_cast<size_t>(mb)];
    const int k = c_.num_experts_per_tok;
    const size_t pairs = static_cast<size_t>(lane.routed_rows[static_cast<size_t>(layer)]) * k;
    const size_t at = static_cast<size_t>(layer) * lane.pairs_per_layer;
    routing->top_k = k;
    routing->expert.assign(lane.host_index.get() + at, lane.host_index.get() + at + pairs);
    routing->weight.assign(lane.host_weight.get() + at, lane.host_weight.get() + at + pairs);
    return m2n::OkStatus();
  }

  m2n::Status GatherRows(int mb, std::span<const int32_t> rows, float* dst) override {
    M2N_RETURN_IF_ERROR(CheckRows(mb, rows));
    const MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    const int n = static_cast<int>(rows.size()), h = c_.hidden_size;
    M2N_RETURN_IF_ERROR(ctx_.ToDevice(rows_.get(), rows.data(), rows.size() * 4));
    MOE_CUDA(LaunchGatherRows(m.moe_input.get(), rows_.get(), n, h, staging_.get(), ctx_.stream()));
    M2N_RETURN_IF_ERROR(ctx_.Copy(dst, staging_.get(), rows.size() * static_cast<size_t>(h) * 4));
    return ctx_.Sync();
  }

  m2n::Status ScatterAddRows(int mb, std::span<const int32_t> rows, const float* src) override {
    M2N_RETURN_IF_ERROR(CheckRows(mb, rows));
    MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    const int n = static_cast<int>(rows.size()), h = c_.hidden_size;
    M2N_RETURN_IF_ERROR(ctx_.ToDevice(rows_.get(), rows.data(), rows.size() * 4));
    M2N_RETURN_IF_ERROR(ctx_.Copy(staging_.get(), src, rows.size() * static_cast<size_t>(h) * 4));
    MOE_CUDA(LaunchScatterAddRows(m.residual.get(), rows_.get(), nullptr, n, h, staging_.get(),
                                  ctx_.stream()));
    return ctx_.Sync();  // `src` is an m2n slot, released after this returns
  }

  m2n::Status Logits(int mb, std::span<const int32_t> rows, float* out) override {
    M2N_RETURN_IF_ERROR(CheckRows(mb, rows));
    const MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    const int n = static_cast<int>(rows.size()), h = c_.hidden_size;
    cudaStream_t s = ctx_.stream();
    M2N_RETURN_IF_ERROR(ctx_.ToDevice(rows_.get(), rows.data(), rows.size() * 4));
    MOE_CUDA(LaunchGatherRows(m.residual.get(), rows_.get(), n, h, staging_.get(), s));
    MOE_CUDA(LaunchRmsNorm(staging_.get(), n, h, final_norm_.get(),
                           static_cast<float>(c_.rms_norm_eps), normed_.get(), nullptr, s));
    M2N_RETURN_IF_ERROR(
        ctx_.Gemm(normed_.get(), n, h, lm_head_.get(), c_.vocab_size, logits_.get()));
    M2N_RETURN_IF_ERROR(
        ctx_.ToHost(out, logits_.get(), rows.size() * static_cast<size_t>(c_.vocab_size) * 4));
    return ctx_.Sync();
  }

 private:
  struct Layer {
    Bf16Array input_norm, wq, wk, wv, wo, post_norm, gate;
  };
  struct MicroBatch {
    int rows = 0;
    DeviceArray<float> residual, moe_input;
    DeviceArray<int32_t> tokens, slots, positions;
  };

  // Layer `layer` of micro-batch mb up to the experts, enqueued on the compute stream; the top-k
  // into top_index / top_weight ([rows, top_k], device).
  m2n::Status EnqueueLayer(int mb, int layer, int32_t* top_index, float* top_weight) {
    MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    const Layer& w = layers_[static_cast<size_t>(layer)];
    const int n = m.rows, h = c_.hidden_size, L = c_.num_hidden_layers;
    const float eps = static_cast<float>(c_.rms_norm_eps);
    const double log_theta = std::log(c_.rope_theta);
    cudaStream_t s = ctx_.stream();
    MOE_CUDA(
        LaunchRmsNorm(m.residual.get(), n, h, w.input_norm.get(), eps, normed_.get(), nullptr, s));
    M2N_RETURN_IF_ERROR(ctx_.Gemm(normed_.get(), n, h, w.wq.get(), c_.q_dim(), q_.get()));
    M2N_RETURN_IF_ERROR(ctx_.Gemm(normed_.get(), n, h, w.wk.get(), c_.kv_dim(), k_.get()));
    M2N_RETURN_IF_ERROR(ctx_.Gemm(normed_.get(), n, h, w.wv.get(), c_.kv_dim(), v_.get()));
    MOE_CUDA(LaunchRope(q_.get(), n, c_.num_attention_heads, c_.head_dim, m.positions.get(),
                        log_theta, s));
    MOE_CUDA(LaunchRope(k_.get(), n, c_.num_key_value_heads, c_.head_dim, m.positions.get(),
                        log_theta, s));
    MOE_CUDA(LaunchAppendKv(k_.get(), v_.get(), n, c_.kv_dim(), m.slots.get(), m.positions.get(),
                            layer, L, o_.max_context, k_cache_.get(), v_cache_.get(), s));
    MOE_CUDA(LaunchAttention(q_.get(), n, c_.num_attention_heads, c_.num_key_value_heads,
                             c_.head_dim, m.slots.get(), m.positions.get(), layer, L,
                             o_.max_context, k_cache_.get(), v_cache_.get(), attn_.get(), s));
    M2N_RETURN_IF_ERROR(ctx_.Gemm(attn_.get(), n, c_.q_dim(), w.wo.get(), h, out_.get()));
    MOE_CUDA(LaunchAdd(m.residual.get(), out_.get(), int64_t{n} * h, s));
    MOE_CUDA(LaunchRmsNorm(m.residual.get(), n, h, w.post_norm.get(), eps, normed_.get(),
                           m.moe_input.get(), s));
    M2N_RETURN_IF_ERROR(
        ctx_.Gemm(normed_.get(), n, h, w.gate.get(), c_.num_local_experts, gate_.get()));
    const int k = c_.num_experts_per_tok;
    MOE_CUDA(LaunchGateTopK(gate_.get(), n, c_.num_local_experts, k, c_.norm_topk_prob, top_index,
                            top_weight, s));
    return m2n::OkStatus();
  }

  // A micro-batch's own stream for its EP calls (device path), with its top-k, its combine
  // buffer and the pinned host copy of its routing at every layer of the iteration.
  struct Lane {
    ~Lane() {
      if (gate_done != nullptr) (void)cudaEventDestroy(gate_done);
      if (combine_done != nullptr) (void)cudaEventDestroy(combine_done);
      if (dispatched != nullptr) (void)cudaEventDestroy(dispatched);
      if (combined_in != nullptr) (void)cudaEventDestroy(combined_in);
      if (stream != nullptr) (void)cudaStreamDestroy(stream);
    }
    cudaStream_t stream = nullptr;
    cudaEvent_t gate_done = nullptr, combine_done = nullptr;
    cudaEvent_t dispatched = nullptr, combined_in = nullptr;  // after its EP calls (BeforeEpCall)
    DeviceArray<int32_t> top_index;
    DeviceArray<float> top_weight, combined;
    size_t pairs_per_layer = 0;  // max_tokens x top_k
    PinnedArray<int32_t> host_index;  // [layer][pairs_per_layer]
    PinnedArray<float> host_weight;
    std::vector<int> routed_rows;  // [layer]: tokens of its last gate at that layer
  };

  // The lanes, made at the first device-path call (the host path never needs them).
  m2n::Status Lanes() {
    if (!lanes_.empty()) return m2n::OkStatus();
    const size_t t = static_cast<size_t>(o_.max_tokens);
    const size_t k = static_cast<size_t>(c_.num_experts_per_tok);
    const size_t layers = static_cast<size_t>(c_.num_hidden_layers);
    for (size_t i = 0; i < mbs_.size(); ++i) {
      auto lane = std::make_unique<Lane>();
      MOE_CUDA(cudaStreamCreateWithFlags(&lane->stream, cudaStreamNonBlocking));
      MOE_CUDA(cudaEventCreateWithFlags(&lane->gate_done, cudaEventDisableTiming));
      MOE_CUDA(cudaEventCreateWithFlags(&lane->combine_done, cudaEventDisableTiming));
      MOE_CUDA(cudaEventCreateWithFlags(&lane->dispatched, cudaEventDisableTiming));
      MOE_CUDA(cudaEventCreateWithFlags(&lane->combined_in, cudaEventDisableTiming));
      M2N_RETURN_IF_ERROR(lane->top_index.Allocate(std::max<size_t>(t * k, 1), "top-k"));
      M2N_RETURN_IF_ERROR(lane->top_weight.Allocate(std::max<size_t>(t * k, 1), "top-k weights"));
      M2N_RETURN_IF_ERROR(lane->combined.Allocate(
          std::max<size_t>(t, 1) * static_cast<size_t>(c_.hidden_size), "combined rows"));
      lane->pairs_per_layer = t * k;
      M2N_RETURN_IF_ERROR(lane->host_index.Allocate(layers * t * k, "routing (host)"));
      M2N_RETURN_IF_ERROR(lane->host_weight.Allocate(layers * t * k, "routing weights (host)"));
      lane->routed_rows.assign(layers, 0);
      lanes_.push_back(std::move(lane));
    }
    return m2n::OkStatus();
  }

  m2n::Status CheckMb(int mb) const {
    if (mb < 0 || mb >= static_cast<int>(mbs_.size()))
      return m2n::InvalidArgumentError("micro-batch out of range");
    return m2n::OkStatus();
  }
  m2n::Status CheckRows(int mb, std::span<const int32_t> rows) const {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    const int n = mbs_[static_cast<size_t>(mb)].rows;
    for (int32_t r : rows) {
      if (r < 0 || r >= n) {
        return m2n::DataLossError("token row " + std::to_string(r) +
                                  " outside the micro-batch of " + std::to_string(n));
      }
    }
    return m2n::OkStatus();
  }

  ModelConfig c_;
  ComputeOptions o_;
  Context ctx_;
  Bf16Array embed_, final_norm_, lm_head_;
  std::vector<Layer> layers_;
  std::vector<MicroBatch> mbs_;
  Bf16Array normed_, attn_, k_cache_, v_cache_;
  DeviceArray<float> q_, k_, v_, out_, gate_, top_weight_, staging_, logits_;
  DeviceArray<int32_t> top_index_, rows_;
  // Destroyed before ctx_ (declared after it): their streams end before the compute stream's.
  std::vector<std::unique_ptr<Lane>> lanes_;
  int last_dispatch_ = -1, last_combine_ = -1;  // the lane of the last EP call of each kind
  GraphCache graphs_;  // the device path's layers (ComputeOptions::cuda_graphs)
};

}  // namespace

m2n::StatusOr<std::unique_ptr<AttentionCompute>> MakeCudaAttention(const ModelConfig& config,
                                                                   const WeightSource& source,
                                                                   const ComputeOptions& options) {
  auto a = std::make_unique<CudaAttention>(config, options);
  M2N_RETURN_IF_ERROR(a->Init(source));
  return std::unique_ptr<AttentionCompute>(std::move(a));
}

}  // namespace moe::cuda

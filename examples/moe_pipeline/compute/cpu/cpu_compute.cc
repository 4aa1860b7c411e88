#include "compute/cpu/cpu_compute.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "compute/cpu/expert_ffn.h"
#include "compute/cpu/ops.h"
#include "compute/cpu/thread_pool.h"

namespace moe::cpu {
namespace {

class CpuAttention final : public AttentionCompute {
 public:
  CpuAttention(const ModelConfig& c, AttentionWeights w, const ComputeOptions& o)
      : c_(c),
        w_(std::move(w)),
        o_(o),
        pool_(o.threads),
        mbs_(static_cast<size_t>(std::max(1, o.micro_batches))) {
    const size_t h = static_cast<size_t>(c.hidden_size), t = static_cast<size_t>(o.max_tokens);
    for (MicroBatch& mb : mbs_) {
      mb.residual.resize(t * h);
      mb.moe_input.resize(t * h);
    }
    normed_.resize(t * h);
    q_.resize(t * static_cast<size_t>(c.q_dim()));
    k_.resize(t * static_cast<size_t>(c.kv_dim()));
    v_.resize(t * static_cast<size_t>(c.kv_dim()));
    attn_.resize(t * static_cast<size_t>(c.q_dim()));
    out_.resize(t * h);
    gate_.resize(t * static_cast<size_t>(c.num_local_experts));
    // KV cache: [slot][layer][position][kv_dim], for keys and values.
    const size_t cache = static_cast<size_t>(o.kv_slots) *
                         static_cast<size_t>(c.num_hidden_layers) *
                         static_cast<size_t>(o.max_context) * static_cast<size_t>(c.kv_dim());
    k_cache_.resize(cache);
    v_cache_.resize(cache);
  }

  std::string name() const override {
    return "cpu (fp32, " + std::to_string(pool_.threads()) +
           (pool_.threads() == 1 ? " thread)" : " threads)");
  }

  m2n::Status Begin(int mb, std::span<const TokenRef> tokens) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    if (static_cast<int>(tokens.size()) > o_.max_tokens) {
      return m2n::InvalidArgumentError("micro-batch of " + std::to_string(tokens.size()) +
                                       " tokens exceeds max_tokens " +
                                       std::to_string(o_.max_tokens));
    }
    MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    m.tokens.assign(tokens.begin(), tokens.end());
    m.positions.clear();
    const size_t h = static_cast<size_t>(c_.hidden_size);
    for (size_t i = 0; i < tokens.size(); ++i) {
      const TokenRef& t = tokens[i];
      if (t.token < 0 || t.token >= c_.vocab_size || t.kv_slot < 0 || t.kv_slot >= o_.kv_slots ||
          t.position < 0 || t.position >= o_.max_context) {
        return m2n::InvalidArgumentError("token " + std::to_string(i) + " (token " +
                                         std::to_string(t.token) + ", slot " +
                                         std::to_string(t.kv_slot) + ", position " +
                                         std::to_string(t.position) + ") is out of range");
      }
      std::memcpy(&m.residual[i * h], &w_.embed[static_cast<size_t>(t.token) * h],
                  h * sizeof(float));
      m.positions.push_back(t.position);
    }
    return m2n::OkStatus();
  }

  m2n::Status AttentionAndGate(int mb, int layer, Routing* routing) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    const AttentionLayerWeights& lw = w_.layers[static_cast<size_t>(layer)];
    const int n = static_cast<int>(m.tokens.size());
    const int h = c_.hidden_size, qd = c_.q_dim(), kvd = c_.kv_dim(), hd = c_.head_dim;
    const float eps = static_cast<float>(c_.rms_norm_eps);
    RmsNorm(m.residual.data(), n, h, lw.input_norm.data(), eps, normed_.data());
    MatMulNT(normed_.data(), n, h, lw.wq.data(), qd, q_.data(), pool_);
    MatMulNT(normed_.data(), n, h, lw.wk.data(), kvd, k_.data(), pool_);
    MatMulNT(normed_.data(), n, h, lw.wv.data(), kvd, v_.data(), pool_);
    ApplyRope(q_.data(), n, c_.num_attention_heads, hd, m.positions.data(), c_.rope_theta);
    ApplyRope(k_.data(), n, c_.num_key_value_heads, hd, m.positions.data(), c_.rope_theta);
    // Append every token's K and V first: a prefill chunk's tokens see each other.
    for (int i = 0; i < n; ++i) {
      const size_t at = CacheOffset(m.tokens[static_cast<size_t>(i)].kv_slot, layer,
                                    m.positions[static_cast<size_t>(i)]);
      std::memcpy(&k_cache_[at], &k_[static_cast<size_t>(i) * kvd],
                  static_cast<size_t>(kvd) * sizeof(float));
      std::memcpy(&v_cache_[at], &v_[static_cast<size_t>(i) * kvd],
                  static_cast<size_t>(kvd) * sizeof(float));
    }
    // Grouped-query attention: head hq reads KV head hq / group.
    const int heads = c_.num_attention_heads, group = heads / c_.num_key_value_heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    pool_.ParallelFor(n * heads, 1, [&](int begin, int end) {
      std::vector<float> scores;
      for (int job = begin; job < end; ++job) {
        const int i = job / heads, hq = job % heads, hk = hq / group;
        const TokenRef& t = m.tokens[static_cast<size_t>(i)];
        const int len = t.position + 1;
        const float* q = &q_[static_cast<size_t>(i) * qd + static_cast<size_t>(hq) * hd];
        scores.resize(static_cast<size_t>(len));
        const size_t base = CacheOffset(t.kv_slot, layer, 0) + static_cast<size_t>(hk) * hd;
        for (int p = 0; p < len; ++p) {
          const float* kp = &k_cache_[base + static_cast<size_t>(p) * kvd];
          float s = 0;
          for (int d = 0; d < hd; ++d) s += q[d] * kp[d];
          scores[static_cast<size_t>(p)] = s * scale;
        }
        Softmax(scores.data(), len);
        float* out = &attn_[static_cast<size_t>(i) * qd + static_cast<size_t>(hq) * hd];
        std::fill(out, out + hd, 0.0f);
        for (int p = 0; p < len; ++p) {
          const float* vp = &v_cache_[base + static_cast<size_t>(p) * kvd];
          const float s = scores[static_cast<size_t>(p)];
          for (int d = 0; d < hd; ++d) out[d] += s * vp[d];
        }
      }
    });
    MatMulNT(attn_.data(), n, qd, lw.wo.data(), h, out_.data(), pool_);
    for (size_t i = 0; i < static_cast<size_t>(n) * h; ++i) m.residual[i] += out_[i];
    RmsNorm(m.residual.data(), n, h, lw.post_norm.data(), eps, m.moe_input.data());
    // Gate: softmax over all experts, top-k, renormalized (Mixtral).
    const int experts = c_.num_local_experts, k = c_.num_experts_per_tok;
    MatMulNT(m.moe_input.data(), n, h, lw.gate.data(), experts, gate_.data(), pool_);
    routing->top_k = k;
    routing->expert.resize(static_cast<size_t>(n) * k);
    routing->weight.resize(static_cast<size_t>(n) * k);
    for (int i = 0; i < n; ++i) {
      float* probs = &gate_[static_cast<size_t>(i) * experts];
      Softmax(probs, experts);
      int* idx = &routing->expert[static_cast<size_t>(i) * k];
      float* wt = &routing->weight[static_cast<size_t>(i) * k];
      TopK(probs, experts, k, idx, wt);
      if (c_.norm_topk_prob) {
        float sum = 0;
        for (int j = 0; j < k; ++j) sum += wt[j];
        for (int j = 0; j < k; ++j) wt[j] /= sum;
      }
    }
    return m2n::OkStatus();
  }

  m2n::Status GatherRows(int mb, std::span<const int32_t> rows, float* dst) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    const MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    const size_t h = static_cast<size_t>(c_.hidden_size);
    for (size_t i = 0; i < rows.size(); ++i) {
      M2N_RETURN_IF_ERROR(CheckRow(m, rows[i]));
      std::memcpy(dst + i * h, &m.moe_input[static_cast<size_t>(rows[i]) * h], h * sizeof(float));
    }
    return m2n::OkStatus();
  }

  m2n::Status ScatterAddRows(int mb, std::span<const int32_t> rows, const float* src) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    const size_t h = static_cast<size_t>(c_.hidden_size);
    for (size_t i = 0; i < rows.size(); ++i) {
      M2N_RETURN_IF_ERROR(CheckRow(m, rows[i]));
      float* r = &m.residual[static_cast<size_t>(rows[i]) * h];
      for (size_t d = 0; d < h; ++d) r[d] += src[i * h + d];
    }
    return m2n::OkStatus();
  }

  m2n::Status Logits(int mb, std::span<const int32_t> rows, float* out) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    const MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    const size_t h = static_cast<size_t>(c_.hidden_size);
    std::vector<float> normed(rows.size() * h);
    for (size_t i = 0; i < rows.size(); ++i) {
      M2N_RETURN_IF_ERROR(CheckRow(m, rows[i]));
      RmsNorm(&m.residual[static_cast<size_t>(rows[i]) * h], 1, c_.hidden_size,
              w_.final_norm.data(), static_cast<float>(c_.rms_norm_eps), &normed[i * h]);
    }
    MatMulNT(normed.data(), static_cast<int>(rows.size()), c_.hidden_size, w_.lm_head.data(),
             c_.vocab_size, out, pool_);
    return m2n::OkStatus();
  }

 private:
  struct MicroBatch {
    std::vector<TokenRef> tokens;
    std::vector<int> positions;
    std::vector<float> residual;  // [max_tokens, hidden]
    std::vector<float> moe_input;  // [max_tokens, hidden]
  };

  m2n::Status CheckMb(int mb) const {
    if (mb < 0 || mb >= static_cast<int>(mbs_.size())) {
      return m2n::InvalidArgumentError("micro-batch " + std::to_string(mb) + " out of range [0, " +
                                       std::to_string(mbs_.size()) + ")");
    }
    return m2n::OkStatus();
  }
  static m2n::Status CheckRow(const MicroBatch& m, int32_t row) {
    if (row < 0 || row >= static_cast<int32_t>(m.tokens.size())) {
      return m2n::DataLossError("token row " + std::to_string(row) +
                                " outside the micro-batch of " + std::to_string(m.tokens.size()) +
                                " tokens");
    }
    return m2n::OkStatus();
  }
  size_t CacheOffset(int slot, int layer, int position) const {
    return ((static_cast<size_t>(slot) * c_.num_hidden_layers + static_cast<size_t>(layer)) *
                o_.max_context +
            static_cast<size_t>(position)) *
           static_cast<size_t>(c_.kv_dim());
  }

  ModelConfig c_;
  AttentionWeights w_;
  ComputeOptions o_;
  ThreadPool pool_;
  std::vector<MicroBatch> mbs_;
  std::vector<float> normed_, q_, k_, v_, attn_, out_, gate_;
  std::vector<float> k_cache_, v_cache_;
};

class CpuExperts final : public ExpertCompute {
 public:
  CpuExperts(const ModelConfig& c, ExpertShard shard, const ComputeOptions& o)
      : c_(c),
        shard_(std::move(shard)),
        pool_(o.threads),
        local_(static_cast<size_t>(c.num_local_experts), -1) {
    for (size_t i = 0; i < shard_.experts.size(); ++i)
      local_[static_cast<size_t>(shard_.experts[i])] = static_cast<int>(i);
  }

  std::string name() const override {
    return "cpu (fp32, " + std::to_string(pool_.threads()) +
           (pool_.threads() == 1 ? " thread)" : " threads)");
  }

  m2n::Status Forward(int layer, int top_k, std::span<const ExpertInput> inputs) override {
    M2N_RETURN_IF_ERROR(CheckLayer(layer));
    const size_t h = static_cast<size_t>(c_.hidden_size);
    // Which (input, row, weight) each local expert serves.
    std::vector<std::vector<RoutedRow>> uses(shard_.experts.size());
    for (const ExpertInput& x : inputs)
      std::fill(x.out, x.out + static_cast<size_t>(x.rows) * h, 0.0f);
    M2N_RETURN_IF_ERROR(ForEachRoutedRow(
        inputs, top_k, c_.num_local_experts, local_, [&](size_t in, int r, int le, float weight) {
          uses[static_cast<size_t>(le)].push_back({static_cast<int>(in), r, weight});
        }));
    // Token gather, one GEMM chain per expert, weighted scatter-add.
    for (size_t le = 0; le < uses.size(); ++le) {
      if (uses[le].empty()) continue;
      ExpertFfnRouted(shard_.layers[static_cast<size_t>(layer)][le], uses[le], inputs,
                      c_.hidden_size, c_.intermediate_size, scratch_, pool_);
    }
    return m2n::OkStatus();
  }

  // The rows are already grouped by expert: one GEMM chain per expert straight over its rows.
  m2n::Status ForwardGrouped(int layer, const m2n::ExpertBatch& b, float* y) override {
    M2N_RETURN_IF_ERROR(CheckLayer(layer));
    const size_t h = static_cast<size_t>(c_.hidden_size);
    const auto* x = reinterpret_cast<const float*>(b.x);
    for (size_t l = 0; l < b.experts.size(); ++l) {
      const int e = b.experts[l];
      if (e < 0 || e >= c_.num_local_experts || local_[static_cast<size_t>(e)] < 0) {
        return m2n::DataLossError("a token was dispatched to expert " + std::to_string(e) +
                                  ", which this worker does not hold");
      }
      const size_t first = static_cast<size_t>(b.offsets[l]);
      ExpertFfn(shard_.layers[static_cast<size_t>(layer)]
                             [static_cast<size_t>(local_[static_cast<size_t>(e)])],
                x + first * h, b.counts[l], c_.hidden_size, c_.intermediate_size, y + first * h,
                scratch_, pool_);
    }
    return m2n::OkStatus();
  }

 private:
  ModelConfig c_;
  ExpertShard shard_;
  ThreadPool pool_;
  std::vector<int> local_;  // global expert id -> index in shard_, -1 if not held
  FfnScratch scratch_;

  m2n::Status CheckLayer(int layer) const {
    if (layer >= 0 && layer < c_.num_hidden_layers) return m2n::OkStatus();
    return m2n::InvalidArgumentError("layer " + std::to_string(layer) + " out of range");
  }
};

}  // namespace

std::unique_ptr<AttentionCompute> MakeCpuAttention(const ModelConfig& config,
                                                   AttentionWeights weights,
                                                   const ComputeOptions& options) {
  return std::make_unique<CpuAttention>(config, std::move(weights), options);
}

std::unique_ptr<ExpertCompute> MakeCpuExperts(const ModelConfig& config, ExpertShard shard,
                                              const ComputeOptions& options) {
  return std::make_unique<CpuExperts>(config, std::move(shard), options);
}

}  // namespace moe::cpu

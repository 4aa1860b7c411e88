#include "reference/reference.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "model/safetensors.h"

namespace moe {
namespace {

// y[j] = sum_i w[j][i] x[i], w row-major [n][k]
std::vector<double> MatVec(const std::vector<float>& w, const std::vector<double>& x, int n) {
  const size_t k = x.size();
  std::vector<double> y(static_cast<size_t>(n), 0.0);
  for (size_t j = 0; j < static_cast<size_t>(n); ++j) {
    double s = 0;
    for (size_t i = 0; i < k; ++i) s += static_cast<double>(w[j * k + i]) * x[i];
    y[j] = s;
  }
  return y;
}

std::vector<double> Norm(const std::vector<double>& x, const std::vector<float>& weight,
                         double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double scale = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + eps);
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] * scale * weight[i];
  return out;
}

// RoPE in the rotate-half layout: pairs (i, i + d/2) of each head.
void Rotate(std::vector<double>* x, int heads, int d, int position, double theta) {
  for (int h = 0; h < heads; ++h) {
    for (int i = 0; i < d / 2; ++i) {
      const double angle = position / std::pow(theta, 2.0 * i / d);
      double& a = (*x)[static_cast<size_t>(h * d + i)];
      double& b = (*x)[static_cast<size_t>(h * d + i + d / 2)];
      const double a0 = a, b0 = b;
      a = a0 * std::cos(angle) - b0 * std::sin(angle);
      b = b0 * std::cos(angle) + a0 * std::sin(angle);
    }
  }
}

}  // namespace

m2n::StatusOr<ReferenceModel> ReferenceModel::Load(const ModelConfig& config,
                                                   const WeightSource& source, bool bf16_weights) {
  ReferenceModel model;
  model.config_ = config;
  M2N_ASSIGN_OR_RETURN(model.attention_, LoadAttentionWeights(config, source));
  std::vector<int> all(static_cast<size_t>(config.num_local_experts));
  std::iota(all.begin(), all.end(), 0);
  M2N_ASSIGN_OR_RETURN(model.experts_, LoadExpertShard(config, source, all));
  if (bf16_weights) {
    auto round = [](std::vector<float>& v) {
      for (float& x : v) x = Bf16ToFloat(FloatToBf16(x));
    };
    AttentionWeights& a = model.attention_;
    round(a.embed);
    round(a.final_norm);
    round(a.lm_head);
    for (AttentionLayerWeights& l : a.layers) {
      for (auto* v : {&l.input_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.post_norm, &l.gate}) round(*v);
    }
    for (auto& layer : model.experts_.layers) {
      for (ExpertWeights& e : layer) {
        for (auto* v : {&e.w1, &e.w2, &e.w3}) round(*v);
      }
    }
  }
  return model;
}

m2n::StatusOr<ReferenceOutput> ReferenceModel::Forward(std::span<const int> tokens, int first_logit,
                                                       double tie_threshold,
                                                       std::span<const int32_t> routing) const {
  const ModelConfig& c = config_;
  const int L = c.num_hidden_layers, H = c.hidden_size, d = c.head_dim;
  const int heads = c.num_attention_heads, kv_heads = c.num_key_value_heads;
  if (tokens.empty() || first_logit < 0 || first_logit >= static_cast<int>(tokens.size()) ||
      static_cast<int>(tokens.size()) > c.max_position_embeddings) {
    return m2n::InvalidArgumentError("reference: bad sequence (" + std::to_string(tokens.size()) +
                                     " tokens, logits from " + std::to_string(first_logit) + ")");
  }
  const int k_top = c.num_experts_per_tok, E = c.num_local_experts;
  if (!routing.empty() &&
      routing.size() != tokens.size() * static_cast<size_t>(L) * static_cast<size_t>(k_top)) {
    return m2n::InvalidArgumentError("reference: the pipeline's routing has " +
                                     std::to_string(routing.size()) + " expert ids, want " +
                                     std::to_string(tokens.size()) + " positions x " +
                                     std::to_string(L) + " layers x top-" + std::to_string(k_top));
  }
  ReferenceOutput result;
  // keys[layer][position] = the rotated keys of every KV head; values likewise.
  std::vector<std::vector<std::vector<double>>> keys(static_cast<size_t>(L)),
      values(static_cast<size_t>(L));
  for (size_t pos = 0; pos < tokens.size(); ++pos) {
    const int token = tokens[pos];
    if (token < 0 || token >= c.vocab_size)
      return m2n::InvalidArgumentError("reference: token out of range");
    std::vector<double> x(static_cast<size_t>(H));
    for (int i = 0; i < H; ++i)
      x[static_cast<size_t>(i)] = attention_.embed[static_cast<size_t>(token) * H + i];
    for (int l = 0; l < L; ++l) {
      const AttentionLayerWeights& w = attention_.layers[static_cast<size_t>(l)];
      const std::vector<double> normed = Norm(x, w.input_norm, c.rms_norm_eps);
      std::vector<double> q = MatVec(w.wq, normed, c.q_dim());
      std::vector<double> k = MatVec(w.wk, normed, c.kv_dim());
      std::vector<double> v = MatVec(w.wv, normed, c.kv_dim());
      Rotate(&q, heads, d, static_cast<int>(pos), c.rope_theta);
      Rotate(&k, kv_heads, d, static_cast<int>(pos), c.rope_theta);
      keys[static_cast<size_t>(l)].push_back(k);
      values[static_cast<size_t>(l)].push_back(v);
      std::vector<double> attended(static_cast<size_t>(c.q_dim()), 0.0);
      for (int h = 0; h < heads; ++h) {
        const int kvh = h / (heads / kv_heads);
        std::vector<double> score(pos + 1);
        double top = -1e300;
        for (size_t p = 0; p <= pos; ++p) {
          double s = 0;
          for (int i = 0; i < d; ++i)
            s += q[static_cast<size_t>(h * d + i)] *
                 keys[static_cast<size_t>(l)][p][static_cast<size_t>(kvh * d + i)];
          score[p] = s / std::sqrt(static_cast<double>(d));
          top = std::max(top, score[p]);
        }
        double sum = 0;
        for (double& s : score) sum += (s = std::exp(s - top));
        for (size_t p = 0; p <= pos; ++p) {
          for (int i = 0; i < d; ++i) {
            attended[static_cast<size_t>(h * d + i)] +=
                score[p] / sum *
                values[static_cast<size_t>(l)][p][static_cast<size_t>(kvh * d + i)];
          }
        }
      }
      const std::vector<double> o = MatVec(w.wo, attended, H);
      for (int i = 0; i < H; ++i) x[static_cast<size_t>(i)] += o[static_cast<size_t>(i)];

      // MoE: softmax gate over all experts, top-k, renormalized, SwiGLU experts.
      const std::vector<double> h2 = Norm(x, w.post_norm, c.rms_norm_eps);
      const std::vector<double> gate_logits = MatVec(w.gate, h2, c.num_local_experts);
      std::vector<double> prob = gate_logits;
      const double top = *std::max_element(prob.begin(), prob.end());
      double sum = 0;
      for (double& p : prob) sum += (p = std::exp(p - top));
      for (double& p : prob) p /= sum;
      std::vector<int> order(prob.size());
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
        return prob[static_cast<size_t>(a)] > prob[static_cast<size_t>(b)];
      });
      // The experts this token goes to: the reference's top-k, or the pipeline's where they differ
      // by a near-tie.
      std::vector<int> chosen_experts(order.begin(), order.begin() + k_top);
      ++result.routings;
      if (!routing.empty()) {
        const size_t at =
            (pos * static_cast<size_t>(L) + static_cast<size_t>(l)) * static_cast<size_t>(k_top);
        std::vector<int> theirs(
            routing.begin() + static_cast<std::ptrdiff_t>(at),
            routing.begin() + static_cast<std::ptrdiff_t>(at + static_cast<size_t>(k_top)));
        std::vector<int> sorted_theirs = theirs, sorted_ours = chosen_experts;
        std::sort(sorted_theirs.begin(), sorted_theirs.end());
        std::sort(sorted_ours.begin(), sorted_ours.end());
        if (sorted_theirs.front() < 0 || sorted_theirs.back() >= E ||
            std::adjacent_find(sorted_theirs.begin(), sorted_theirs.end()) != sorted_theirs.end()) {
          std::string ids;
          for (int e : theirs) ids += (ids.empty() ? "" : ", ") + std::to_string(e);
          return m2n::InvalidArgumentError(
              "reference: the pipeline's routing at position " + std::to_string(pos) + ", layer " +
              std::to_string(l) + " is not " + std::to_string(k_top) + " distinct experts of " +
              std::to_string(E) + ": {" + ids + "}");
        }
        if (sorted_theirs != sorted_ours) {
          const double kth =
              gate_logits[static_cast<size_t>(order[static_cast<size_t>(k_top - 1)])];
          double lowest = kth;
          for (int e : theirs) lowest = std::min(lowest, gate_logits[static_cast<size_t>(e)]);
          if (kth - lowest <= tie_threshold) {
            ++result.followed_near_ties;
            chosen_experts = theirs;
          } else {
            result.routing_errors.push_back(
                {static_cast<int>(pos), l, theirs, chosen_experts, kth - lowest});
          }
        }
      }
      for (double g : gate_logits) result.gate_logits.push_back(static_cast<float>(g));
      result.routing.insert(result.routing.end(), chosen_experts.begin(), chosen_experts.end());
      double chosen = 0;
      for (int e : chosen_experts) chosen += prob[static_cast<size_t>(e)];
      std::vector<double> moe(static_cast<size_t>(H), 0.0);
      for (int e : chosen_experts) {
        const double weight = prob[static_cast<size_t>(e)] / (c.norm_topk_prob ? chosen : 1.0);
        const ExpertWeights& ew = experts_.layers[static_cast<size_t>(l)][static_cast<size_t>(e)];
        const std::vector<double> g = MatVec(ew.w1, h2, c.intermediate_size);
        const std::vector<double> u = MatVec(ew.w3, h2, c.intermediate_size);
        std::vector<double> a(g.size());
        for (size_t i = 0; i < g.size(); ++i) a[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
        const std::vector<double> y = MatVec(ew.w2, a, H);
        for (int i = 0; i < H; ++i)
          moe[static_cast<size_t>(i)] += weight * y[static_cast<size_t>(i)];
      }
      for (int i = 0; i < H; ++i) x[static_cast<size_t>(i)] += moe[static_cast<size_t>(i)];
    }
    if (static_cast<int>(pos) >= first_logit) {
      const std::vector<double> normed = Norm(x, attention_.final_norm, c.rms_norm_eps);
      const std::vector<double> logits = MatVec(attention_.lm_head, normed, c.vocab_size);
      for (double v : logits) result.logits.push_back(static_cast<float>(v));
    }
  }
  return result;
}

}  // namespace moe

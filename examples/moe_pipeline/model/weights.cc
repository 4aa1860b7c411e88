#include "model/weights.h"

#include <sys/stat.h>

#include <cmath>
#include <fstream>
#include <memory>

#include "model/json.h"
#include "model/safetensors.h"

namespace moe {
namespace {

uint64_t SplitMix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t NameHash(const std::string& name) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 0x100000001B3ull;
  return h;
}

std::string LayerPrefix(int layer) { return "model.layers." + std::to_string(layer) + "."; }

// Scales: activations stay O(1) through the layers; the gate is sharper than the rest so that
// routing decisions are not near-ties.
float LinearScale(int64_t fan_in) { return 1.0f / std::sqrt(static_cast<float>(fan_in)); }

class Source {
 public:
  static m2n::StatusOr<Source> Open(const WeightSource& source) {
    Source s;
    s.seed_ = source.seed;
    if (!source.checkpoint.empty()) {
      M2N_ASSIGN_OR_RETURN(Checkpoint c, Checkpoint::Open(source.checkpoint));
      s.checkpoint_ = std::make_unique<Checkpoint>(std::move(c));
    }
    return s;
  }

  m2n::Status Get(const std::string& name, std::vector<int64_t> shape, float scale, bool is_norm,
                  std::vector<float>* out) const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    out->assign(static_cast<size_t>(n), 0.0f);
    if (checkpoint_) return checkpoint_->Read(name, shape, *out);
    FillSeeded(seed_, name, scale, is_norm, *out);
    return m2n::OkStatus();
  }

 private:
  uint64_t seed_ = 1;
  std::unique_ptr<Checkpoint> checkpoint_;
};

}  // namespace

std::string WeightSource::Describe() const {
  return checkpoint.empty() ? "seeded random (seed " + std::to_string(seed) + ")"
                            : "safetensors " + checkpoint;
}

std::string ExpertTensorName(int layer, int expert, const char* which) {
  return LayerPrefix(layer) + "block_sparse_moe.experts." + std::to_string(expert) + "." + which +
         ".weight";
}

uint64_t SeededKey(uint64_t seed, const std::string& name) {
  return SplitMix(seed ^ NameHash(name));
}

void FillSeeded(uint64_t seed, const std::string& name, float scale, bool is_norm,
                std::span<float> out) {
  const uint64_t key = SeededKey(seed, name);
  for (size_t i = 0; i < out.size(); ++i) {
    // Uniform in [-1, 1) from the top 24 bits.
    const float u = static_cast<float>(SplitMix(key + i) >> 40) * (2.0f / 16777216.0f) - 1.0f;
    out[i] = is_norm ? 1.0f + 0.1f * u : scale * std::sqrt(3.0f) * u;
  }
}

std::vector<TensorSpec> AllTensors(const ModelConfig& c) {
  const int64_t h = c.hidden_size;
  std::vector<TensorSpec> t;
  t.push_back({"model.embed_tokens.weight", {c.vocab_size, h}});
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = LayerPrefix(l);
    t.push_back({p + "input_layernorm.weight", {h}});
    t.push_back({p + "self_attn.q_proj.weight", {c.q_dim(), h}});
    t.push_back({p + "self_attn.k_proj.weight", {c.kv_dim(), h}});
    t.push_back({p + "self_attn.v_proj.weight", {c.kv_dim(), h}});
    t.push_back({p + "self_attn.o_proj.weight", {h, c.q_dim()}});
    t.push_back({p + "post_attention_layernorm.weight", {h}});
    t.push_back({p + "block_sparse_moe.gate.weight", {c.num_local_experts, h}});
    for (int e = 0; e < c.num_local_experts; ++e) {
      t.push_back({ExpertTensorName(l, e, "w1"), {c.intermediate_size, h}});
      t.push_back({ExpertTensorName(l, e, "w2"), {h, c.intermediate_size}});
      t.push_back({ExpertTensorName(l, e, "w3"), {c.intermediate_size, h}});
    }
  }
  t.push_back({"model.norm.weight", {h}});
  t.push_back({"lm_head.weight", {c.vocab_size, h}});
  return t;
}

void SeededParameters(const std::string& name, std::span<const int64_t> shape, float* scale,
                      bool* is_norm) {
  *is_norm = shape.size() == 1;
  if (name == "model.embed_tokens.weight") {
    *scale = 1.0f;
  } else if (name.find("gate.weight") != std::string::npos) {
    *scale = 4.0f * LinearScale(shape[1]);
  } else {
    *scale = shape.size() == 2 ? LinearScale(shape[1]) : 1.0f;
  }
}

namespace {
void SeededKind(const TensorSpec& spec, float* scale, bool* is_norm) {
  SeededParameters(spec.name, spec.shape, scale, is_norm);
}
}  // namespace

m2n::StatusOr<AttentionWeights> LoadAttentionWeights(const ModelConfig& c,
                                                     const WeightSource& source) {
  M2N_ASSIGN_OR_RETURN(Source s, Source::Open(source));
  AttentionWeights w;
  const int64_t h = c.hidden_size;
  auto get = [&](const std::string& name, std::vector<int64_t> shape, std::vector<float>* out) {
    float scale = 1;
    bool is_norm = false;
    SeededKind({name, shape}, &scale, &is_norm);
    return s.Get(name, std::move(shape), scale, is_norm, out);
  };
  M2N_RETURN_IF_ERROR(get("model.embed_tokens.weight", {c.vocab_size, h}, &w.embed));
  w.layers.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = LayerPrefix(l);
    AttentionLayerWeights& lw = w.layers[static_cast<size_t>(l)];
    M2N_RETURN_IF_ERROR(get(p + "input_layernorm.weight", {h}, &lw.input_norm));
    M2N_RETURN_IF_ERROR(get(p + "self_attn.q_proj.weight", {c.q_dim(), h}, &lw.wq));
    M2N_RETURN_IF_ERROR(get(p + "self_attn.k_proj.weight", {c.kv_dim(), h}, &lw.wk));
    M2N_RETURN_IF_ERROR(get(p + "self_attn.v_proj.weight", {c.kv_dim(), h}, &lw.wv));
    M2N_RETURN_IF_ERROR(get(p + "self_attn.o_proj.weight", {h, c.q_dim()}, &lw.wo));
    M2N_RETURN_IF_ERROR(get(p + "post_attention_layernorm.weight", {h}, &lw.post_norm));
    M2N_RETURN_IF_ERROR(
        get(p + "block_sparse_moe.gate.weight", {c.num_local_experts, h}, &lw.gate));
  }
  M2N_RETURN_IF_ERROR(get("model.norm.weight", {h}, &w.final_norm));
  M2N_RETURN_IF_ERROR(get("lm_head.weight", {c.vocab_size, h}, &w.lm_head));
  return w;
}

m2n::StatusOr<ExpertShard> LoadExpertShard(const ModelConfig& c, const WeightSource& source,
                                           std::span<const int> experts) {
  M2N_ASSIGN_OR_RETURN(Source s, Source::Open(source));
  ExpertShard shard;
  shard.experts.assign(experts.begin(), experts.end());
  const int64_t h = c.hidden_size, inter = c.intermediate_size;
  shard.layers.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    for (int e : experts) {
      if (e < 0 || e >= c.num_local_experts) {
        return m2n::InvalidArgumentError("expert " + std::to_string(e) +
                                         " does not exist (the model has " +
                                         std::to_string(c.num_local_experts) + ")");
      }
      ExpertWeights ew;
      M2N_RETURN_IF_ERROR(
          s.Get(ExpertTensorName(l, e, "w1"), {inter, h}, LinearScale(h), false, &ew.w1));
      M2N_RETURN_IF_ERROR(
          s.Get(ExpertTensorName(l, e, "w3"), {inter, h}, LinearScale(h), false, &ew.w3));
      M2N_RETURN_IF_ERROR(
          s.Get(ExpertTensorName(l, e, "w2"), {h, inter}, LinearScale(inter), false, &ew.w2));
      shard.layers[static_cast<size_t>(l)].push_back(std::move(ew));
    }
  }
  return shard;
}

m2n::Status SaveSeededCheckpoint(const ModelConfig& config, uint64_t seed,
                                 const std::string& folder, int files, bool bf16) {
  if (files < 1) return m2n::InvalidArgumentError("SaveSeededCheckpoint: files must be >= 1");
  mkdir(folder.c_str(), 0755);
  const std::vector<TensorSpec> all = AllTensors(config);
  Json weight_map = Json::Object();
  const size_t per_file =
      (all.size() + static_cast<size_t>(files) - 1) / static_cast<size_t>(files);
  for (int f = 0; f < files; ++f) {
    const size_t from = static_cast<size_t>(f) * per_file,
                 to = std::min(all.size(), from + per_file);
    if (from >= to) break;
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", f + 1, files);
    std::vector<std::vector<float>> data(to - from);
    std::vector<TensorToWrite> tensors;
    for (size_t i = from; i < to; ++i) {
      float scale = 1;
      bool is_norm = false;
      SeededKind(all[i], &scale, &is_norm);
      int64_t n = 1;
      for (int64_t d : all[i].shape) n *= d;
      data[i - from].resize(static_cast<size_t>(n));
      FillSeeded(seed, all[i].name, scale, is_norm, data[i - from]);
      tensors.push_back({all[i].name, all[i].shape, data[i - from]});
      weight_map.Set(all[i].name, Json::String(name));
    }
    M2N_RETURN_IF_ERROR(
        WriteSafetensors(folder + "/" + name, tensors, bf16 ? Dtype::kBF16 : Dtype::kF32));
  }
  Json index = Json::Object();
  index.Set("metadata", Json::Object());
  index.Set("weight_map", std::move(weight_map));
  std::ofstream out(folder + "/model.safetensors.index.json");
  out << index.Dump(2) << "\n";
  if (!out) return m2n::InternalError("cannot write " + folder + "/model.safetensors.index.json");
  return m2n::OkStatus();
}

}  // namespace moe

#include "model/config.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

namespace moe {
namespace {

// Reads an integer field; `aliases` are other models' names for it (Qwen-MoE's num_experts, ...).
m2n::Status ReadInt(const Json& json, const std::string& what,
                    std::initializer_list<const char*> names, bool required, int* out) {
  for (const char* name : names) {
    const Json* v = json.Find(name);
    if (v == nullptr || v->is_null()) continue;
    if (!v->is_number() || v->as_number() != std::floor(v->as_number()) || v->as_number() < 0 ||
        v->as_number() > 1e9) {
      return m2n::InvalidArgumentError(what + ": \"" + name +
                                       "\" must be a non-negative integer, got " + v->Dump());
    }
    *out = static_cast<int>(v->as_number());
    return m2n::OkStatus();
  }
  if (required) {
    return m2n::InvalidArgumentError(what + ": missing \"" + std::string(*names.begin()) + "\"");
  }
  return m2n::OkStatus();
}

m2n::Status ReadDouble(const Json& json, const std::string& what, const char* name, double* out) {
  const Json* v = json.Find(name);
  if (v == nullptr || v->is_null()) return m2n::OkStatus();
  if (!v->is_number() || !(v->as_number() > 0)) {
    return m2n::InvalidArgumentError(what + ": \"" + name + "\" must be a positive number, got " +
                                     v->Dump());
  }
  *out = v->as_number();
  return m2n::OkStatus();
}

}  // namespace

int64_t ModelConfig::ParameterCount() const {
  const int64_t h = hidden_size;
  const int64_t attention = h * q_dim() + 2 * h * kv_dim() + int64_t{q_dim()} * h + 2 * h;
  const int64_t experts =
      int64_t{num_local_experts} * 3 * h * intermediate_size + h * num_local_experts;
  return int64_t{num_hidden_layers} * (attention + experts) + 2 * int64_t{vocab_size} * h + h;
}

std::string ModelConfig::Describe() const {
  std::ostringstream s;
  s << name << ": hidden " << hidden_size << ", heads " << num_attention_heads << " (KV "
    << num_key_value_heads << ", dim " << head_dim << "), layers " << num_hidden_layers
    << ", experts " << num_local_experts << " top-" << num_experts_per_tok << ", intermediate "
    << intermediate_size << ", vocab " << vocab_size << ", "
    << static_cast<double>(ParameterCount()) / 1e6 << " M parameters";
  return s.str();
}

m2n::StatusOr<ModelConfig> ParseModelConfig(const Json& json, const std::string& what) {
  if (!json.is_object())
    return m2n::InvalidArgumentError(what + ": a model config must be a JSON object");
  ModelConfig c;
  if (const Json* n = json.Find("name"); n != nullptr && n->is_string()) c.name = n->as_string();
  if (const Json* n = json.Find("_name_or_path"); n != nullptr && n->is_string())
    c.name = n->as_string();
  M2N_RETURN_IF_ERROR(ReadInt(json, what, {"hidden_size"}, true, &c.hidden_size));
  M2N_RETURN_IF_ERROR(ReadInt(json, what, {"num_attention_heads"}, true, &c.num_attention_heads));
  c.num_key_value_heads = c.num_attention_heads;
  M2N_RETURN_IF_ERROR(ReadInt(json, what, {"num_key_value_heads"}, false, &c.num_key_value_heads));
  M2N_RETURN_IF_ERROR(ReadInt(json, what, {"num_hidden_layers"}, true, &c.num_hidden_layers));
  M2N_RETURN_IF_ERROR(ReadInt(json, what, {"num_local_experts", "num_experts", "n_routed_experts"},
                              true, &c.num_local_experts));
  M2N_RETURN_IF_ERROR(
      ReadInt(json, what, {"num_experts_per_tok", "top_k"}, true, &c.num_experts_per_tok));
  M2N_RETURN_IF_ERROR(ReadInt(json, what, {"moe_intermediate_size", "intermediate_size"}, true,
                              &c.intermediate_size));
  M2N_RETURN_IF_ERROR(ReadInt(json, what, {"vocab_size"}, true, &c.vocab_size));
  M2N_RETURN_IF_ERROR(
      ReadInt(json, what, {"max_position_embeddings"}, false, &c.max_position_embeddings));
  M2N_RETURN_IF_ERROR(ReadDouble(json, what, "rms_norm_eps", &c.rms_norm_eps));
  M2N_RETURN_IF_ERROR(ReadDouble(json, what, "rope_theta", &c.rope_theta));
  if (const Json* n = json.Find("norm_topk_prob"); n != nullptr && n->type() == Json::Type::kBool) {
    c.norm_topk_prob = n->as_bool();
  }
  auto positive = [&](const char* field, int value) -> m2n::Status {
    if (value > 0) return m2n::OkStatus();
    return m2n::InvalidArgumentError(what + ": \"" + field + "\" must be > 0, got " +
                                     std::to_string(value));
  };
  M2N_RETURN_IF_ERROR(positive("hidden_size", c.hidden_size));
  M2N_RETURN_IF_ERROR(positive("num_attention_heads", c.num_attention_heads));
  M2N_RETURN_IF_ERROR(positive("num_key_value_heads", c.num_key_value_heads));
  M2N_RETURN_IF_ERROR(positive("num_hidden_layers", c.num_hidden_layers));
  M2N_RETURN_IF_ERROR(positive("num_local_experts", c.num_local_experts));
  M2N_RETURN_IF_ERROR(positive("num_experts_per_tok", c.num_experts_per_tok));
  M2N_RETURN_IF_ERROR(positive("intermediate_size", c.intermediate_size));
  M2N_RETURN_IF_ERROR(positive("vocab_size", c.vocab_size));
  M2N_RETURN_IF_ERROR(positive("max_position_embeddings", c.max_position_embeddings));
  c.head_dim = c.hidden_size / c.num_attention_heads;
  M2N_RETURN_IF_ERROR(ReadInt(json, what, {"head_dim"}, false, &c.head_dim));
  M2N_RETURN_IF_ERROR(positive("head_dim", c.head_dim));
  if (c.head_dim % 2 != 0) {
    return m2n::InvalidArgumentError(what + ": head_dim " + std::to_string(c.head_dim) +
                                     " must be even (RoPE rotates pairs)");
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return m2n::InvalidArgumentError(
        what + ": num_attention_heads " + std::to_string(c.num_attention_heads) +
        " is not a multiple of num_key_value_heads " + std::to_string(c.num_key_value_heads));
  }
  if (c.num_experts_per_tok > c.num_local_experts) {
    return m2n::InvalidArgumentError(
        what + ": num_experts_per_tok " + std::to_string(c.num_experts_per_tok) +
        " exceeds num_local_experts " + std::to_string(c.num_local_experts));
  }
  return c;
}

m2n::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return m2n::NotFoundError("cannot open " + path + ": " + std::strerror(errno));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

m2n::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  M2N_ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  M2N_ASSIGN_OR_RETURN(Json json, Json::Parse(text, path));
  return ParseModelConfig(json, path);
}

}  // namespace moe

// The model's shape, read from a JSON file shaped like the usual model configs (Mixtral's
// config.json: hidden_size, num_attention_heads, num_key_value_heads, ...).
#pragma once

#include <cstdint>
#include <string>

#include "m2n/status.h"
#include "model/json.h"

namespace moe {

struct ModelConfig {
  std::string name = "unnamed";
  int hidden_size = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;  // grouped-query attention: heads share KV heads in groups
  int head_dim = 0;  // default hidden_size / num_attention_heads
  int num_hidden_layers = 0;
  int num_local_experts = 0;
  int num_experts_per_tok = 0;  // top-k
  int intermediate_size = 0;  // of one expert
  int vocab_size = 0;
  int max_position_embeddings = 4096;
  double rms_norm_eps = 1e-5;
  double rope_theta = 1e6;
  // Mixtral renormalizes the top-k gate probabilities to sum to 1; some models do not.
  bool norm_topk_prob = true;

  int q_dim() const { return num_attention_heads * head_dim; }
  int kv_dim() const { return num_key_value_heads * head_dim; }
  // Parameters: all of them, and those one token touches.
  int64_t ParameterCount() const;
  std::string Describe() const;
};

// Reads and checks a config; errors name the file and the field.
m2n::StatusOr<ModelConfig> ParseModelConfig(const Json& json, const std::string& what);
m2n::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);
m2n::StatusOr<std::string> ReadTextFile(const std::string& path);

}  // namespace moe

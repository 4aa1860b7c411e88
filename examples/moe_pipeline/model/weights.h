// The model's weights, split the way the workers hold them: an attention worker holds the
// embedding, every layer's attention, norms and gate, the final norm and the LM head; an expert
// worker holds its share of every layer's experts. All fp32, row-major, [out, in] like PyTorch's
// nn.Linear (y = x W^T).
//
// Tensor names are those of Mixtral checkpoints
// (model.layers.{l}.block_sparse_moe.experts.{e}.w1...). Seeded weights are counter based: element
// i of tensor `name` is a function of (seed, name, i) only, so a worker generates just its share,
// and a GPU backend can generate the same values in a kernel.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "m2n/status.h"
#include "model/config.h"

namespace moe {

struct AttentionLayerWeights {
  std::vector<float> input_norm;  // [hidden]
  std::vector<float> wq;  // [q_dim, hidden]
  std::vector<float> wk;  // [kv_dim, hidden]
  std::vector<float> wv;  // [kv_dim, hidden]
  std::vector<float> wo;  // [hidden, q_dim]
  std::vector<float> post_norm;  // [hidden]
  std::vector<float> gate;  // [experts, hidden]
};

struct AttentionWeights {
  std::vector<float> embed;  // [vocab, hidden]
  std::vector<AttentionLayerWeights> layers;
  std::vector<float> final_norm;  // [hidden]
  std::vector<float> lm_head;  // [vocab, hidden]
};

struct ExpertWeights {
  std::vector<float> w1;  // gate projection [intermediate, hidden]
  std::vector<float> w3;  // up projection [intermediate, hidden]
  std::vector<float> w2;  // down projection [hidden, intermediate]
};

struct ExpertShard {
  std::vector<int> experts;  // global expert ids held, ascending
  std::vector<std::vector<ExpertWeights>> layers;  // [layer][index into experts]
};

// Where weights come from: seeded random, or a safetensors checkpoint (file or folder).
struct WeightSource {
  uint64_t seed = 1;
  std::string checkpoint;  // empty: seeded
  std::string Describe() const;
};

// One tensor's name and shape, in checkpoint order.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};
std::vector<TensorSpec> AllTensors(const ModelConfig& config);
std::string ExpertTensorName(int layer, int expert, const char* which);  // which: "w1", "w2", "w3"

// Fills `out` with the seeded values of tensor `name` (a norm weight when is_norm): element i is
// a function of (SeededKey(seed, name), i) only (the GPU backend generates the same values).
void FillSeeded(uint64_t seed, const std::string& name, float scale, bool is_norm,
                std::span<float> out);
uint64_t SeededKey(uint64_t seed, const std::string& name);
// The scale and kind the seeded init gives a tensor of this name and shape.
void SeededParameters(const std::string& name, std::span<const int64_t> shape, float* scale,
                      bool* is_norm);

m2n::StatusOr<AttentionWeights> LoadAttentionWeights(const ModelConfig& config,
                                                     const WeightSource& source);
m2n::StatusOr<ExpertShard> LoadExpertShard(const ModelConfig& config, const WeightSource& source,
                                           std::span<const int> experts);

// Writes the seeded model as a safetensors checkpoint folder (`files` files + an index), in
// `dtype`.
m2n::Status SaveSeededCheckpoint(const ModelConfig& config, uint64_t seed,
                                 const std::string& folder, int files, bool bf16);

}  // namespace moe

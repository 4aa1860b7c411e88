// fMoE's expert map store: one map per served iteration (the full gate distribution of every
// layer, [layers][experts]) with the prompt embedding of its request. It holds at most `capacity`
// maps; when full, the most redundant map (the one most similar to another map, the newcomer
// included) is the one given up, so the store keeps the variety of routings it has seen.
//
// Two searches: semantic (cosine of prompt embeddings: before a request's gates say anything) and
// trajectory (cosine of the gate distributions seen so far in this iteration against the same
// layers of each map; kept incrementally, layer by layer, by Trajectory).
#pragma once

#include <span>
#include <vector>

namespace moe::offload {

struct MapMatch {
  double similarity = 0;  // cosine in [-1, 1]; 0 when the store is empty
  std::vector<float> map;  // [layers][experts]; empty when the store is empty
};

class MapStore {
 public:
  MapStore(int capacity, int layers, int experts)
      : capacity_(capacity), layers_(layers), experts_(experts) {}

  void Add(std::span<const float> embedding, std::span<const float> map);
  // The best match by prompt embedding; the maps that tie with it (the same prompt) are averaged.
  MapMatch SearchSemantic(std::span<const float> embedding) const;

  int size() const { return static_cast<int>(maps_.size()); }
  int capacity() const { return capacity_; }
  int replaced() const { return replaced_; }  // maps given up as redundant (newcomers included)
  std::span<const float> Map(int i) const { return maps_[static_cast<size_t>(i)]; }
  int map_size() const { return layers_ * experts_; }
  int experts() const { return experts_; }

 private:
  void Rescan(int i);  // recomputes entry i's nearest neighbour
  double MapCosine(int i, std::span<const float> map, double norm) const;

  int capacity_, layers_, experts_;
  int replaced_ = 0;
  std::vector<std::vector<float>> maps_, embeddings_;
  std::vector<double> norms_;  // of each map
  std::vector<double> nearest_sim_;  // each map's cosine to its most similar other map
  std::vector<int> nearest_;  // and which one
};

// The trajectory search of one iteration: Observe each layer's distribution as it comes, then Best.
class Trajectory {
 public:
  explicit Trajectory(const MapStore& store) : store_(store) {}
  void Reset();
  void Observe(int layer, std::span<const float> probs);
  MapMatch Best() const;

 private:
  const MapStore& store_;
  std::vector<double> dot_, map_norm2_;
  double observed_norm2_ = 0;
};

double Cosine(std::span<const float> a, std::span<const float> b);

}  // namespace moe::offload

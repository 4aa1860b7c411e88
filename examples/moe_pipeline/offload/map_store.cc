// The expert map store and its two searches (map_store.h).
#include "offload/map_store.h"

#include <algorithm>
#include <cmath>

namespace moe::offload {
namespace {

double Dot(const float* a, const float* b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

}  // namespace

double Cosine(std::span<const float> a, std::span<const float> b) {
  const double na = Dot(a.data(), a.data(), a.size()), nb = Dot(b.data(), b.data(), b.size());
  if (na <= 0 || nb <= 0 || a.size() != b.size()) return 0;
  return Dot(a.data(), b.data(), a.size()) / std::sqrt(na * nb);
}

double MapStore::MapCosine(int i, std::span<const float> map, double norm) const {
  const auto& m = maps_[static_cast<size_t>(i)];
  const double d = norms_[static_cast<size_t>(i)] * norm;
  return d > 0 ? Dot(m.data(), map.data(), m.size()) / d : 0;
}

void MapStore::Rescan(int i) {
  nearest_sim_[static_cast<size_t>(i)] = -2;
  nearest_[static_cast<size_t>(i)] = -1;
  for (int j = 0; j < size(); ++j) {
    if (j == i) continue;
    const double s = MapCosine(j, maps_[static_cast<size_t>(i)], norms_[static_cast<size_t>(i)]);
    if (s > nearest_sim_[static_cast<size_t>(i)])
      nearest_sim_[static_cast<size_t>(i)] = s, nearest_[static_cast<size_t>(i)] = j;
  }
}

void MapStore::Add(std::span<const float> embedding, std::span<const float> map) {
  const double norm = std::sqrt(Dot(map.data(), map.data(), map.size()));
  // The newcomer's similarity to each map already stored.
  std::vector<double> sim(maps_.size());
  int best = -1;
  for (int j = 0; j < size(); ++j) {
    sim[static_cast<size_t>(j)] = MapCosine(j, map, norm);
    if (best < 0 || sim[static_cast<size_t>(j)] > sim[static_cast<size_t>(best)]) best = j;
  }
  int slot = size();
  if (size() >= capacity_) {
    int victim = 0;
    for (int j = 1; j < size(); ++j) {
      if (nearest_sim_[static_cast<size_t>(j)] > nearest_sim_[static_cast<size_t>(victim)])
        victim = j;
    }
    ++replaced_;
    // The newcomer is itself the most redundant: the store already knows this routing.
    if (best >= 0 && sim[static_cast<size_t>(best)] >= nearest_sim_[static_cast<size_t>(victim)])
      return;
    slot = victim;
  } else {
    maps_.emplace_back(), embeddings_.emplace_back(), norms_.push_back(0),
        nearest_sim_.push_back(-2), nearest_.push_back(-1);
  }
  const size_t s = static_cast<size_t>(slot);
  maps_[s].assign(map.begin(), map.end());
  embeddings_[s].assign(embedding.begin(), embedding.end());
  norms_[s] = norm;
  for (int j = 0; j < size(); ++j) {
    if (j == slot) continue;
    const size_t u = static_cast<size_t>(j);
    if (nearest_[u] == slot) {
      Rescan(j);  // its neighbour was the map just replaced
    } else if (sim[u] > nearest_sim_[u]) {
      nearest_sim_[u] = sim[u], nearest_[u] = slot;
    }
  }
  Rescan(slot);
}

MapMatch MapStore::SearchSemantic(std::span<const float> embedding) const {
  MapMatch out;
  if (maps_.empty()) return out;
  std::vector<double> sim(maps_.size());
  double best = -2;
  for (size_t i = 0; i < maps_.size(); ++i)
    best = std::max(best, sim[i] = Cosine(embeddings_[i], embedding));
  out.similarity = best;
  out.map.assign(static_cast<size_t>(map_size()), 0.0f);
  int ties = 0;
  for (size_t i = 0; i < maps_.size(); ++i) {
    if (sim[i] < best - 1e-6) continue;
    ++ties;
    for (size_t k = 0; k < out.map.size(); ++k) out.map[k] += maps_[i][k];
  }
  for (float& v : out.map) v /= static_cast<float>(ties);
  return out;
}

void Trajectory::Reset() {
  dot_.assign(static_cast<size_t>(store_.size()), 0.0);
  map_norm2_.assign(static_cast<size_t>(store_.size()), 0.0);
  observed_norm2_ = 0;
}

void Trajectory::Observe(int layer, std::span<const float> probs) {
  if (dot_.size() != static_cast<size_t>(store_.size())) Reset();
  const size_t e = static_cast<size_t>(store_.experts());
  observed_norm2_ += Dot(probs.data(), probs.data(), e);
  for (int i = 0; i < store_.size(); ++i) {
    const float* m = store_.Map(i).data() + static_cast<size_t>(layer) * e;
    dot_[static_cast<size_t>(i)] += Dot(m, probs.data(), e);
    map_norm2_[static_cast<size_t>(i)] += Dot(m, m, e);
  }
}

MapMatch Trajectory::Best() const {
  MapMatch out;
  int best = -1;
  double best_sim = -2;
  for (size_t i = 0; i < dot_.size(); ++i) {
    const double d = std::sqrt(map_norm2_[i] * observed_norm2_);
    const double s = d > 0 ? dot_[i] / d : 0;
    if (s > best_sim) best_sim = s, best = static_cast<int>(i);
  }
  if (best < 0) return out;
  out.similarity = best_sim;
  const auto m = store_.Map(best);
  out.map.assign(m.begin(), m.end());
  return out;
}

}  // namespace moe::offload

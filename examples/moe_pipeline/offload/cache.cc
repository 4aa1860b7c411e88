// The expert cache and its CPU backend (cache.h).
#include "offload/cache.h"

#include <cstring>

namespace moe::offload {

HostArena::HostArena(const OffloadShape& shape, int slots)
    : shape_(shape),
      host_(static_cast<size_t>(shape.total()) * static_cast<size_t>(shape.expert_bytes)),
      arena_(static_cast<size_t>(slots) * static_cast<size_t>(shape.expert_bytes)) {}

std::span<std::byte> HostArena::Host(ExpertId id) {
  const size_t b = static_cast<size_t>(shape_.expert_bytes);
  return {host_.data() + static_cast<size_t>(shape_.Index(id)) * b, b};
}

std::span<const std::byte> HostArena::Slot(int slot) const {
  const size_t b = static_cast<size_t>(shape_.expert_bytes);
  return {arena_.data() + static_cast<size_t>(slot) * b, b};
}

m2n::Status HostArena::Load(ExpertId id, int slot) {
  const size_t b = static_cast<size_t>(shape_.expert_bytes);
  if (slot < 0 || (static_cast<size_t>(slot) + 1) * b > arena_.size()) {
    return m2n::InternalError("HostArena: slot " + std::to_string(slot) + " outside the arena");
  }
  std::memcpy(arena_.data() + static_cast<size_t>(slot) * b, Host(id).data(), b);
  return m2n::OkStatus();
}

std::string CacheStats::Describe() const {
  return "hits " + std::to_string(hits) + ", misses " + std::to_string(misses) + ", prefetches " +
         std::to_string(prefetches) + " (used " + std::to_string(prefetch_used) + ", wasted " +
         std::to_string(prefetch_wasted) + "), evictions " + std::to_string(evictions) +
         ", bytes moved " + std::to_string(bytes_moved);
}

m2n::StatusOr<std::unique_ptr<ExpertCache>> ExpertCache::Create(const OffloadShape& shape,
                                                                int capacity, OffloadPolicy* policy,
                                                                LoadBackend* backend) {
  if (shape.layers <= 0 || shape.experts <= 0 || shape.top_k <= 0 || shape.top_k > shape.experts) {
    return m2n::InvalidArgumentError("expert cache: bad shape (" + std::to_string(shape.layers) +
                                     " layers, " + std::to_string(shape.experts) +
                                     " experts, top-" + std::to_string(shape.top_k) + ")");
  }
  if (capacity < shape.top_k || capacity > shape.total()) {
    return m2n::InvalidArgumentError("--gpu_experts " + std::to_string(capacity) +
                                     ": the cache must hold at least one layer's top-k (" +
                                     std::to_string(shape.top_k) + ") and at most every expert (" +
                                     std::to_string(shape.total()) + ")");
  }
  return std::unique_ptr<ExpertCache>(new ExpertCache(shape, capacity, policy, backend));
}

ExpertCache::ExpertCache(const OffloadShape& shape, int capacity, OffloadPolicy* policy,
                         LoadBackend* backend)
    : shape_(shape),
      capacity_(capacity),
      policy_(policy),
      backend_(backend),
      slot_of_(static_cast<size_t>(shape.total()), -1),
      expert_in_(static_cast<size_t>(capacity), -1),
      pins_(static_cast<size_t>(shape.total()), 0),
      last_use_(static_cast<size_t>(shape.total()), 0),
      prefetched_(static_cast<size_t>(shape.total()), 0) {}

int ExpertCache::FindSlot(double keep, int64_t round) {
  int victim = -1;
  double victim_keep = 0;
  for (int s = 0; s < capacity_; ++s) {
    const int e = expert_in_[static_cast<size_t>(s)];
    if (e < 0) return s;
    const size_t u = static_cast<size_t>(e);
    if (pins_[u] > 0 || (round > 0 && prefetched_[u] == round)) continue;
    const double k = policy_->KeepScore({e / shape_.experts, e % shape_.experts}, last_use_[u]);
    if (victim < 0 || k < victim_keep) victim = s, victim_keep = k;
  }
  if (victim < 0 || (keep >= 0 && victim_keep >= keep)) return -1;
  const size_t u = static_cast<size_t>(expert_in_[static_cast<size_t>(victim)]);
  if (prefetched_[u] != 0) ++stats_.prefetch_wasted;
  prefetched_[u] = 0;
  slot_of_[u] = -1;
  expert_in_[static_cast<size_t>(victim)] = -1;
  --resident_;
  ++stats_.evictions;
  return victim;
}

m2n::Status ExpertCache::LoadInto(ExpertId id, int slot, bool prefetch) {
  const size_t u = static_cast<size_t>(shape_.Index(id));
  if (slot_of_[u] >= 0) return m2n::InternalError("expert cache: loading a resident expert twice");
  if (auto s = backend_->Load(id, slot); !s.ok()) return s;
  slot_of_[u] = slot;
  expert_in_[static_cast<size_t>(slot)] = static_cast<int>(u);
  ++resident_;
  stats_.bytes_moved += shape_.expert_bytes;
  if (prefetch) ++stats_.prefetches, prefetched_[u] = round_;
  return m2n::OkStatus();
}

m2n::Status ExpertCache::Acquire(int layer, std::span<const int> experts) {
  ++clock_;
  for (int e : experts) {
    if (layer < 0 || layer >= shape_.layers || e < 0 || e >= shape_.experts) {
      return m2n::InvalidArgumentError("expert cache: expert (" + std::to_string(layer) + ", " +
                                       std::to_string(e) + ") outside the shape");
    }
    const ExpertId id{layer, e};
    const size_t u = static_cast<size_t>(shape_.Index(id));
    if (slot_of_[u] >= 0) {
      // A second token of the batch asking for the same expert is not a second hit.
      if (pins_[u] == 0) ++stats_.hits;
      if (prefetched_[u] != 0) ++stats_.prefetch_used, prefetched_[u] = 0;
    } else {
      ++stats_.misses;
      policy_->Missed(id);
      const int slot = FindSlot(-1, 0);
      if (slot < 0) {
        return m2n::FailedPreconditionError(
            "expert cache: all " + std::to_string(capacity_) +
            " slots pinned; a step needs more experts than --gpu_experts holds");
      }
      if (auto s = LoadInto(id, slot, false); !s.ok()) return s;
    }
    ++pins_[u];
    last_use_[u] = clock_;
  }
  return m2n::OkStatus();
}

void ExpertCache::Release(int layer, std::span<const int> experts) {
  for (int e : experts) {
    int& pins = pins_[static_cast<size_t>(shape_.Index({layer, e}))];
    if (pins > 0) --pins;
  }
}

m2n::Status ExpertCache::Prefetch(std::span<const ExpertId> wanted) {
  ++round_;
  for (const ExpertId& id : wanted) {
    if (SlotOf(id) >= 0) continue;
    const int slot = FindSlot(policy_->KeepScore(id, clock_), round_);
    if (slot < 0) break;  // the rest are less urgent still
    if (auto s = LoadInto(id, slot, true); !s.ok()) return s;
  }
  return m2n::OkStatus();
}

void ExpertCache::Finish() {
  for (int64_t& p : prefetched_) {
    if (p != 0) ++stats_.prefetch_wasted, p = 0;
  }
}

m2n::Status ExpertCache::CheckInvariants() const {
  int resident = 0;
  for (int s = 0; s < capacity_; ++s) {
    const int e = expert_in_[static_cast<size_t>(s)];
    if (e < 0) continue;
    ++resident;
    if (slot_of_[static_cast<size_t>(e)] != s)
      return m2n::InternalError("expert cache: slot map out of step");
  }
  for (size_t u = 0; u < pins_.size(); ++u) {
    if (pins_[u] > 0 && slot_of_[u] < 0)
      return m2n::InternalError("expert cache: a pinned expert is not resident");
  }
  if (resident != resident_ || resident_ > capacity_)
    return m2n::InternalError("expert cache: over budget");
  return m2n::OkStatus();
}

}  // namespace moe::offload

// The expert cache: C of a worker's experts resident in a 'device' arena (GPU memory, or on CPU a
// separate host arena standing for it), the rest in the host copy. A policy (policy.h) says what
// to prefetch and what to give up; the cache loads through a backend and keeps the accounting:
// hits, misses, prefetches used and wasted, bytes moved, evictions.
//
// Invariants (CheckInvariants, and the tests): an expert pinned by Acquire is never evicted until
// Release; an expert is never loaded while resident; never more than C resident.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "m2n/status.h"
#include "offload/policy.h"

namespace moe::offload {

// Moves one expert's weights from the host copy into a cache slot. The CPU backend (HostArena)
// copies bytes so that outputs with offloading are those without; the trace-driven simulator uses
// NoCopy; a CUDA backend issues cudaMemcpyAsync on a copy stream (the GPU plan in README.md).
class LoadBackend {
 public:
  virtual ~LoadBackend() = default;
  virtual m2n::Status Load(ExpertId id, int slot) = 0;
};

class NoCopy final : public LoadBackend {
 public:
  m2n::Status Load(ExpertId, int) override { return m2n::OkStatus(); }
};

// The CPU backend: every expert's bytes in a host copy ([layers][experts] blocks of expert_bytes),
// and an arena of `slots` blocks that the cache fills.
class HostArena final : public LoadBackend {
 public:
  HostArena(const OffloadShape& shape, int slots);
  std::span<std::byte> Host(ExpertId id);
  std::span<const std::byte> Slot(int slot) const;
  m2n::Status Load(ExpertId id, int slot) override;

 private:
  OffloadShape shape_;
  std::vector<std::byte> host_, arena_;
};

struct CacheStats {
  int64_t hits = 0, misses = 0;
  int64_t prefetches = 0, prefetch_used = 0, prefetch_wasted = 0;
  int64_t evictions = 0, bytes_moved = 0;
  double HitRate() const {
    return hits + misses > 0 ? static_cast<double>(hits) / static_cast<double>(hits + misses) : 0;
  }
  std::string Describe() const;
};

class ExpertCache {
 public:
  // Fails when `capacity` cannot hold one layer's top-k (a step could never run).
  static m2n::StatusOr<std::unique_ptr<ExpertCache>> Create(const OffloadShape& shape, int capacity,
                                                            OffloadPolicy* policy,
                                                            LoadBackend* backend);

  // Makes `experts` of `layer` resident (loading the misses on demand) and pins them.
  m2n::Status Acquire(int layer, std::span<const int> experts);
  void Release(int layer, std::span<const int> experts);
  // Loads what it can of `wanted` (most urgent first) without evicting a pinned expert, one
  // prefetched in this call, or one the policy values more than the newcomer.
  m2n::Status Prefetch(std::span<const ExpertId> wanted);
  // Prefetched experts still unused count as wasted from here on (end of a run).
  void Finish();

  int SlotOf(ExpertId id) const { return slot_of_[static_cast<size_t>(shape_.Index(id))]; }
  int resident() const { return resident_; }
  int capacity() const { return capacity_; }
  const CacheStats& stats() const { return stats_; }
  m2n::Status CheckInvariants() const;

 private:
  ExpertCache(const OffloadShape& shape, int capacity, OffloadPolicy* policy, LoadBackend* backend);
  // A slot for a newcomer valued `keep` (or unconditionally when keep < 0): a free one or a
  // victim's.
  int FindSlot(double keep, int64_t round);
  m2n::Status LoadInto(ExpertId id, int slot, bool prefetch);

  OffloadShape shape_;
  int capacity_;
  OffloadPolicy* policy_;
  LoadBackend* backend_;
  std::vector<int> slot_of_;  // per expert: its slot, or -1
  std::vector<int> expert_in_;  // per slot: the expert index, or -1
  std::vector<int> pins_;  // per expert
  std::vector<int64_t> last_use_;  // per expert
  std::vector<int64_t>
      prefetched_;  // per expert: the Prefetch round that loaded it and is unused, or 0
  int resident_ = 0;
  int64_t clock_ = 0, round_ = 0;
  CacheStats stats_;
};

}  // namespace moe::offload

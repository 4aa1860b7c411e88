// One host's shared-memory segment for m2n_perf: a sense-reversing barrier for all ranks of the job
// and a table where ranks leave timestamps and counts for rank 0 to read.
//
// One-way latency is max(receiver done) - min(sender start) over ranks in different processes; that
// is meaningful only with one clock, i.e. on one host (CLOCK_MONOTONIC is system-wide), and the
// barrier that starts every iteration must cost far less than a message. Hence a spin on a shared
// word, not the bootstrap store's Barrier. The spin yields the core every round: on a machine with
// fewer cores than ranks the ranks that still have work must get to run.
//
// Set-up, with `group_barrier` a barrier over all ranks (Group::Barrier):
//   rank 0 creates the segment (removing a stale one of the same name); group_barrier; every other
//   rank opens it, without creating, and counts itself in; group_barrier; a rank that sees all
//   world_size - 1 others counted is on one host with all of them. The answer is the same on every
//   rank: a rank that cannot open the segment, or sees fewer, is not; rank 0 then removes the name.
//
// A rank that dies leaves the others spinning on a word it will never touch. So each rank also
// notes in the segment how many barriers it entered (a waiting rank can name who never came), and
// a waiting rank asks the group, as often as the group's own waits do, whether a rank died
// (WatchLiveness): a dead rank is named at once, not after the whole deadline.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "m2n/deadline.h"
#include "m2n/status.h"

namespace m2n::perf {

class HostSegment {
 public:
  struct Layout;

  // `name` identifies the job ("/m2n_perf.<job>"); rows: iterations per size kept in the table.
  // Returns a segment that is `shared()` only if every rank reached it. Never fails for lack of
  // shared memory: it then returns an unshared segment (round-trip mode needs none).
  static StatusOr<std::unique_ptr<HostSegment>> Join(const std::string& name, int rank,
                                                     int world_size, int rows,
                                                     const std::function<Status()>& group_barrier);
  ~HostSegment();
  HostSegment(const HostSegment&) = delete;
  HostSegment& operator=(const HostSegment&) = delete;

  // All ranks of the job mapped this segment: they share a host.
  bool shared() const { return shared_; }
  int world_size() const { return world_size_; }
  // Why this rank does not count as sharing a host ("" when shared() or when it only saw fewer).
  const std::string& why_not_shared() const { return why_not_shared_; }
  int rows() const { return rows_; }

  // How Barrier notices a dead rank: `check` (Group::CheckPeersAlive) runs every `period` while it
  // waits, when another rank aborted, and before a timeout; its error ends the wait.
  void WatchLiveness(std::function<Status(Deadline)> check, std::chrono::milliseconds period);

  // Waits until every rank has arrived. `progress` runs between polls (an m2n rank keeps its ACKs
  // moving). Fails with the liveness check's error (naming a dead rank), kAborted if another rank
  // called Abort(), kDeadlineExceeded at `deadline`; each names the ranks that had not arrived.
  Status Barrier(Deadline deadline, const std::function<void()>& progress = {});
  // Tells ranks waiting in Barrier to give up (this rank failed).
  void Abort();

  // Timestamp (ns, CLOCK_MONOTONIC) of `rank` for latency iteration `row`.
  int64_t& stamp(int row, int rank);
  // Bandwidth phase: when `rank` started / finished.
  int64_t& stream_start(int rank);
  int64_t& stream_done(int rank);
  // 256 bytes any rank may read after a Barrier that follows rank 0's write (an NCCL unique id).
  std::span<std::byte> blob();
  // Wrong bytes `rank` found in the current size.
  uint64_t& wrong(int rank);

 private:
  HostSegment() = default;
  // "rank 1" / "ranks 1, 3": those that have not entered this rank's current barrier.
  std::string MissingRanks() const;
  // The liveness check's error, said as the barrier's, or OK.
  Status CheckLiveness(Deadline deadline) const;
  // How a wait ends when another rank aborted, or at the deadline.
  Status AbortedByOther() const;
  Status TimedOut() const;

  Layout* layout_ = nullptr;
  size_t mapped_bytes_ = 0;
  int64_t* stamps_ = nullptr;
  uint64_t* wrong_ = nullptr;
  int64_t* entered_ = nullptr;  // per rank: how many barriers it entered (atomic_ref)
  int64_t barriers_ = 0;  // how many this rank entered
  std::function<Status(Deadline)> liveness_;
  std::chrono::milliseconds liveness_period_{200};
  int rank_ = 0;
  int world_size_ = 0;
  int rows_ = 0;
  bool shared_ = false;
  std::string why_not_shared_;
  uint32_t sense_ = 0;  // this rank's sense: the value the barrier word takes when all arrived
};

// Nanoseconds of CLOCK_MONOTONIC: one clock for every process of a host.
int64_t NowNs();

}  // namespace m2n::perf

#include "host_barrier.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <new>

namespace m2n::perf {

// Process-shared atomics: lock-free std::atomic<uint32_t> is address-free, so it works in a mapping
// shared between processes. Each hot word gets its own cache line.
struct HostSegment::Layout {
  alignas(64) std::atomic<uint32_t> attached;  // ranks other than 0 that opened the segment
  alignas(64) std::atomic<uint32_t> arrived;  // ranks in the current barrier
  alignas(64) std::atomic<uint32_t> sense;  // flips when the last rank arrives
  alignas(64) std::atomic<uint32_t> aborted;  // 1 + the rank that aborted first; 0: none
  alignas(64) std::byte blob[256];  // rank 0's bytes for all (e.g. an NCCL unique id)
  uint32_t world_size;
  uint32_t rows;
  // Followed by int64 stamps[rows + 2][world_size] (the last two rows: stream start, stream done),
  // uint64 wrong[world_size] and int64 entered[world_size] (barriers each rank entered).
};
static_assert(std::atomic<uint32_t>::is_always_lock_free);
static_assert(std::atomic_ref<int64_t>::is_always_lock_free);

namespace {

size_t SegmentBytes(int world_size, int rows) {
  return sizeof(HostSegment::Layout) + (static_cast<size_t>(rows) + 4) * world_size * 8;
}

std::string Errno(const char* what, const std::string& name) {
  return std::string(what) + "(" + name + "): " + std::strerror(errno);
}

}  // namespace

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

StatusOr<std::unique_ptr<HostSegment>> HostSegment::Join(
    const std::string& name, int rank, int world_size, int rows,
    const std::function<Status()>& group_barrier) {
  std::unique_ptr<HostSegment> segment(new HostSegment());
  segment->rank_ = rank;
  segment->world_size_ = world_size;
  segment->rows_ = rows;
  const size_t bytes = SegmentBytes(world_size, rows);

  // Phase 1: rank 0 creates and initialises.
  std::string error;
  if (rank == 0) {
    shm_unlink(name.c_str());  // a stale segment from a killed run of the same job id
    int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) {
      error = Errno("shm_open", name);
    } else if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
      error = Errno("ftruncate", name);
      close(fd);
      shm_unlink(name.c_str());
    } else {
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      close(fd);
      if (p == MAP_FAILED) {
        error = Errno("mmap", name);
        shm_unlink(name.c_str());
      } else {
        segment->layout_ = new (p) Layout{};
        segment->layout_->world_size = static_cast<uint32_t>(world_size);
        segment->layout_->rows = static_cast<uint32_t>(rows);
        segment->mapped_bytes_ = bytes;
      }
    }
  }
  M2N_RETURN_IF_ERROR(group_barrier());

  // Phase 2: everyone else opens what rank 0 made, if it is on this host.
  if (rank != 0) {
    int fd = shm_open(name.c_str(), O_RDWR, 0);
    if (fd >= 0) {
      struct stat st {};
      if (fstat(fd, &st) == 0 && static_cast<size_t>(st.st_size) == bytes) {
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED) {
          segment->layout_ = static_cast<Layout*>(p);
          segment->mapped_bytes_ = bytes;
          // A segment of another shape is someone else's (a stale name): leave it alone.
          if (segment->layout_->world_size == static_cast<uint32_t>(world_size) &&
              segment->layout_->rows == static_cast<uint32_t>(rows)) {
            segment->layout_->attached.fetch_add(1, std::memory_order_acq_rel);
          }
        }
      }
      close(fd);
    }
  }
  M2N_RETURN_IF_ERROR(group_barrier());

  if (segment->layout_ != nullptr) {
    segment->shared_ = segment->layout_->attached.load(std::memory_order_acquire) ==
                       static_cast<uint32_t>(world_size - 1);
    if (segment->shared_) {
      auto* base = reinterpret_cast<std::byte*>(segment->layout_) + sizeof(Layout);
      segment->stamps_ = reinterpret_cast<int64_t*>(base);
      segment->wrong_ = reinterpret_cast<uint64_t*>(segment->stamps_ +
                                                    (static_cast<size_t>(rows) + 2) * world_size);
      segment->entered_ = segment->stamps_ + (static_cast<size_t>(rows) + 3) * world_size;
    }
  }
  if (rank == 0) shm_unlink(name.c_str());  // every rank that will map it has; no leak on a crash
  // An unshared segment is a valid answer (round-trip mode needs none); keep the reason for
  // messages.
  if (!segment->shared_) {
    segment->why_not_shared_ =
        !error.empty() ? error
        : segment->layout_ == nullptr
            ? "rank 0's segment " + name + " is not visible from rank " + std::to_string(rank)
            : "only " + std::to_string(segment->layout_->attached.load()) + " of " +
                  std::to_string(world_size - 1) + " other ranks mapped " + name;
  }
  return segment;
}

HostSegment::~HostSegment() {
  if (layout_ != nullptr) munmap(layout_, mapped_bytes_);
}

void HostSegment::WatchLiveness(std::function<Status(Deadline)> check,
                                std::chrono::milliseconds period) {
  liveness_ = std::move(check);
  liveness_period_ = period;
}

Status HostSegment::Barrier(Deadline deadline, const std::function<void()>& progress) {
  if (!shared_) return FailedPreconditionError("host barrier: the ranks do not share a host");
  sense_ ^= 1;
  ++barriers_;
  // Before the count: a rank that sees this one counted also sees that it entered.
  std::atomic_ref<int64_t>(entered_[rank_]).store(barriers_, std::memory_order_release);
  if (layout_->arrived.fetch_add(1, std::memory_order_acq_rel) ==
      static_cast<uint32_t>(world_size_ - 1)) {
    layout_->arrived.store(0, std::memory_order_relaxed);
    layout_->sense.store(sense_, std::memory_order_release);
    return OkStatus();
  }
  auto next_check = Clock::now() + liveness_period_;
  for (uint64_t spins = 0;; ++spins) {
    if (layout_->sense.load(std::memory_order_acquire) == sense_) return OkStatus();
    if (layout_->aborted.load(std::memory_order_acquire) != 0) return AbortedByOther();
    if (progress) progress();
    sched_yield();
    // Reading the clock costs little next to a yield, but need not happen every round.
    if ((spins & 15) != 15) continue;
    const auto now = Clock::now();
    if (now >= deadline.time()) return TimedOut();
    if (now >= next_check) {
      next_check = now + liveness_period_;
      M2N_RETURN_IF_ERROR(CheckLiveness(deadline));
    }
  }
}

std::string HostSegment::MissingRanks() const {
  std::string ranks;
  int count = 0;
  for (int r = 0; r < world_size_; ++r) {
    if (std::atomic_ref<int64_t>(entered_[r]).load(std::memory_order_acquire) >= barriers_)
      continue;
    ranks += (count++ == 0 ? "" : ", ") + std::to_string(r);
  }
  return (count == 1 ? "rank " : "ranks ") + ranks;
}

Status HostSegment::CheckLiveness(Deadline deadline) const {
  if (!liveness_) return OkStatus();
  Status alive = liveness_(deadline);
  if (alive.ok()) return alive;
  return Status(alive.code(), "host barrier: rank " + std::to_string(rank_) + " was waiting for " +
                                  MissingRanks() + ": " + std::string(alive.message()));
}

Status HostSegment::AbortedByOther() const {
  // The rank that aborted may have done so because a rank died: that is the news worth giving.
  M2N_RETURN_IF_ERROR(CheckLiveness(Deadline::After(liveness_period_)));
  const uint32_t by = layout_->aborted.load(std::memory_order_acquire);
  return AbortedError("host barrier: rank " + std::to_string(by - 1) + " failed (rank " +
                      std::to_string(rank_) + " was waiting for " + MissingRanks() + ")");
}

Status HostSegment::TimedOut() const {
  // A wait that ran out because a rank died says so (as the group's own waits do).
  M2N_RETURN_IF_ERROR(
      CheckLiveness(Deadline::After(std::min(liveness_period_, std::chrono::milliseconds(100)))));
  return DeadlineExceededError(
      "host barrier: rank " + std::to_string(rank_) + " waited for " + MissingRanks() + " (" +
      std::to_string(world_size_ - layout_->arrived.load()) + " of " + std::to_string(world_size_) +
      " ranks) until the deadline (--timeout_ms)");
}

void HostSegment::Abort() {
  if (layout_ == nullptr) return;
  uint32_t none = 0;  // the first rank to abort is the one named
  layout_->aborted.compare_exchange_strong(none, static_cast<uint32_t>(rank_) + 1,
                                           std::memory_order_acq_rel);
}

int64_t& HostSegment::stamp(int row, int rank) {
  return stamps_[static_cast<size_t>(row) * world_size_ + rank];
}
std::span<std::byte> HostSegment::blob() { return {layout_->blob, sizeof layout_->blob}; }

int64_t& HostSegment::stream_start(int rank) { return stamp(rows_, rank); }
int64_t& HostSegment::stream_done(int rank) { return stamp(rows_ + 1, rank); }
uint64_t& HostSegment::wrong(int rank) { return wrong_[rank]; }

}  // namespace m2n::perf

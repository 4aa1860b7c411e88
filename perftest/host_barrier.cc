#include "perftest/host_barrier.h"

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
  alignas(64) std::atomic<uint32_t> arrived;   // ranks in the current barrier
  alignas(64) std::atomic<uint32_t> sense;     // flips when the last rank arrives
  alignas(64) std::atomic<uint32_t> aborted;
  alignas(64) std::byte blob[256];             // rank 0's bytes for all (e.g. an NCCL unique id)
  uint32_t world_size;
  uint32_t rows;
  // Followed by int64 stamps[rows + 2][world_size] (the last two rows: stream start, stream done)
  // and uint64 wrong[world_size].
};
static_assert(std::atomic<uint32_t>::is_always_lock_free);

namespace {

size_t SegmentBytes(int world_size, int rows) {
  return sizeof(HostSegment::Layout) + (static_cast<size_t>(rows) + 3) * world_size * 8;
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

StatusOr<std::unique_ptr<HostSegment>> HostSegment::Join(const std::string& name, int rank,
                                                         int world_size, int rows,
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
      segment->wrong_ = reinterpret_cast<uint64_t*>(segment->stamps_ + (static_cast<size_t>(rows) + 2) * world_size);
    }
  }
  if (rank == 0) shm_unlink(name.c_str());  // every rank that will map it has; no leak on a crash
  // An unshared segment is a valid answer (round-trip mode needs none); keep the reason for messages.
  if (!segment->shared_) {
    segment->why_not_shared_ = !error.empty() ? error
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

Status HostSegment::Barrier(Deadline deadline, const std::function<void()>& progress) {
  if (!shared_) return FailedPreconditionError("host barrier: the ranks do not share a host");
  sense_ ^= 1;
  if (layout_->arrived.fetch_add(1, std::memory_order_acq_rel) ==
      static_cast<uint32_t>(world_size_ - 1)) {
    layout_->arrived.store(0, std::memory_order_relaxed);
    layout_->sense.store(sense_, std::memory_order_release);
    return OkStatus();
  }
  for (uint64_t spins = 0;; ++spins) {
    if (layout_->sense.load(std::memory_order_acquire) == sense_) return OkStatus();
    if (layout_->aborted.load(std::memory_order_relaxed) != 0) {
      return AbortedError("host barrier: another rank failed (rank " + std::to_string(rank_) +
                          " was waiting)");
    }
    if (progress) progress();
    sched_yield();
    if ((spins & 255) == 255 && deadline.Expired()) {
      return DeadlineExceededError("host barrier: rank " + std::to_string(rank_) + " waited for " +
                                   std::to_string(world_size_ - layout_->arrived.load()) +
                                   " of " + std::to_string(world_size_) +
                                   " ranks until the deadline (--timeout_ms)");
    }
  }
}

void HostSegment::Abort() {
  if (layout_ != nullptr) layout_->aborted.store(1, std::memory_order_relaxed);
}

int64_t& HostSegment::stamp(int row, int rank) {
  return stamps_[static_cast<size_t>(row) * world_size_ + rank];
}
std::span<std::byte> HostSegment::blob() { return {layout_->blob, sizeof layout_->blob}; }

int64_t& HostSegment::stream_start(int rank) { return stamp(rows_, rank); }
int64_t& HostSegment::stream_done(int rank) { return stamp(rows_ + 1, rank); }
uint64_t& HostSegment::wrong(int rank) { return wrong_[rank]; }

}  // namespace m2n::perf

// Immediates of the cuda_ipc transport: rings in host shared memory.
//
// Every rank owns one Mailbox: a shared-memory segment holding, for every rank of the job and every
// Lane, a single-producer single-consumer ring of immediates that only that rank writes. A peer
// maps it (its name travels in the connection address) and pushes an entry after the payload it
// signals is in place; the owner's Poll reads entries in order. The ACK lane is a ring of its own,
// so credit returns never wait behind data.
//
// Entry protocol: the writer fills (imm, length), then stores sequence = index + 1 with release
// order; the reader takes entry `index` once it loads sequence == index + 1 with acquire order, and
// publishes how many it consumed, so the writer can see a full ring (a protocol bug: the group's
// credits bound what is in flight) instead of overwriting an entry.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "m2n/status.h"
#include "transports/cuda_ipc/memory.h"
#include "transports/transport.h"

namespace m2n::transport::cuda_ipc {

struct RingEntry {
  std::atomic<uint64_t> sequence;
  uint32_t imm;
  uint32_t reserved;
  uint64_t length;
  uint64_t padding;
};
static_assert(sizeof(RingEntry) == 32);

struct alignas(64) RingHeader {
  std::atomic<uint64_t> consumed;
};

// The layout both sides compute: ring (writer, lane) of `world` x kNumLanes rings.
struct MailboxLayout {
  int world = 0;
  uint32_t capacity = 0;  // entries per ring, a power of two
  size_t RingBytes() const { return sizeof(RingHeader) + capacity * sizeof(RingEntry); }
  size_t Bytes() const { return RingBytes() * static_cast<size_t>(world) * kNumLanes; }
  size_t Offset(int writer, Lane lane) const {
    return RingBytes() * (static_cast<size_t>(writer) * kNumLanes + static_cast<size_t>(lane));
  }
};

struct Immediate {
  uint32_t imm = 0;
  uint64_t length = 0;
};

// This rank's rings, read here.
class Mailbox {
 public:
  static StatusOr<std::unique_ptr<Mailbox>> Create(MailboxLayout layout);
  const std::string& name() const { return segment_->name(); }
  // The next immediate `writer` pushed on `lane`, if any.
  std::optional<Immediate> Take(int writer, Lane lane);

 private:
  MailboxLayout layout_;
  std::unique_ptr<SharedSegment> segment_;
  std::vector<uint64_t> next_;  // per (writer, lane): next entry to read
};

// A peer's ring for this rank, written here.
class Outbox {
 public:
  // Maps `name` (the peer's Mailbox) and finds the rings this rank (`me`) writes.
  static StatusOr<std::unique_ptr<Outbox>> Open(const std::string& name, MailboxLayout layout,
                                                int me);
  // Pushes one immediate; fails if the peer has not consumed enough (never with correct credits).
  Status Push(Lane lane, uint32_t imm, uint64_t length);
  // Fills the next entry but leaves it unpublished: the caller (the copy proxy, on the GPU) stores
  // `value` into `*sequence` once the payload is in place. Entries are read in order, so an entry
  // pushed after a reserved one waits for it.
  struct Reserved {
    std::atomic<uint64_t>* sequence;
    uint64_t value;
  };
  StatusOr<Reserved> Reserve(Lane lane, uint32_t imm, uint64_t length);
  // The mapped segment (registered with CUDA when the copy proxy writes it).
  std::byte* data() const { return segment_->data(); }
  size_t size() const { return segment_->size(); }

 private:
  MailboxLayout layout_;
  std::unique_ptr<SharedSegment> segment_;
  int me_ = -1;
  uint64_t next_[kNumLanes] = {};
};

}  // namespace m2n::transport::cuda_ipc

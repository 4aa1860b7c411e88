#include "transports/cuda_ipc/endpoint.h"

#include <new>

namespace m2n::transport::cuda_ipc {
namespace {

RingHeader* Header(std::byte* base, const MailboxLayout& layout, int writer, Lane lane) {
  return reinterpret_cast<RingHeader*>(base + layout.Offset(writer, lane));
}
RingEntry* Entries(std::byte* base, const MailboxLayout& layout, int writer, Lane lane) {
  return reinterpret_cast<RingEntry*>(base + layout.Offset(writer, lane) + sizeof(RingHeader));
}

}  // namespace

StatusOr<std::unique_ptr<Mailbox>> Mailbox::Create(MailboxLayout layout) {
  auto box = std::make_unique<Mailbox>();
  box->layout_ = layout;
  M2N_ASSIGN_OR_RETURN(box->segment_, SharedSegment::Create(layout.Bytes()));
  // A fresh segment is zero-filled: every sequence is 0 (empty), every consumed count 0.
  box->next_.assign(static_cast<size_t>(layout.world) * kNumLanes, 0);
  return box;
}

std::optional<Immediate> Mailbox::Take(int writer, Lane lane) {
  uint64_t& next = next_[static_cast<size_t>(writer) * kNumLanes + static_cast<size_t>(lane)];
  RingEntry& e = Entries(segment_->data(), layout_, writer, lane)[next & (layout_.capacity - 1)];
  if (e.sequence.load(std::memory_order_acquire) != next + 1) return std::nullopt;
  Immediate out{e.imm, e.length};
  ++next;
  Header(segment_->data(), layout_, writer, lane)->consumed.store(next, std::memory_order_release);
  return out;
}

StatusOr<std::unique_ptr<Outbox>> Outbox::Open(const std::string& name, MailboxLayout layout,
                                               int me) {
  auto box = std::make_unique<Outbox>();
  box->layout_ = layout;
  box->me_ = me;
  M2N_ASSIGN_OR_RETURN(box->segment_, SharedSegment::Open(name, layout.Bytes()));
  return box;
}

Status Outbox::Push(Lane lane, uint32_t imm, uint64_t length) {
  M2N_ASSIGN_OR_RETURN(Reserved r, Reserve(lane, imm, length));
  r.sequence->store(r.value, std::memory_order_release);
  return OkStatus();
}

StatusOr<Outbox::Reserved> Outbox::Reserve(Lane lane, uint32_t imm, uint64_t length) {
  uint64_t& next = next_[static_cast<size_t>(lane)];
  RingHeader* header = Header(segment_->data(), layout_, me_, lane);
  if (next - header->consumed.load(std::memory_order_acquire) >= layout_.capacity) {
    return InternalError("cuda_ipc: the peer's immediate ring is full (" +
                         std::to_string(layout_.capacity) +
                         " entries unread): more writes in flight than the credits allow");
  }
  RingEntry& e = Entries(segment_->data(), layout_, me_, lane)[next & (layout_.capacity - 1)];
  e.imm = imm;
  e.length = length;
  ++next;
  return Reserved{&e.sequence, next};
}

}  // namespace m2n::transport::cuda_ipc

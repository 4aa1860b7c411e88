// UcxTransport's write path: Post checks a batch (validate.h), then each write goes out as a store
// or put and a ring entry (a peer reached through shared memory) or as one active message; writes
// that do not finish inside Post wait in pooled PendingWrite records that Poll advances (poll.cc).
#include <cstring>
#include <string>
#include <typeinfo>
#include <utility>

#include "transports/ucx/transport.h"
#include "transports/validate.h"

namespace m2n::transport::ucx {
namespace {

// Pending-write records come in chunks of this many (stable addresses: UCX reads `staging`).
constexpr size_t kPendingChunk = 64;

// Orders a memcpy into mapped peer memory before the ring entry stored after it. glibc's memcpy
// switches to non-temporal stores for large copies (never below 16 KiB), which x86's store order
// does not cover; an sfence does. Elsewhere the entry's release store orders everything before it.
inline void FenceAfterCopy(size_t length) {
#if defined(__x86_64__) || defined(__i386__)
  if (length >= 4096) __builtin_ia32_sfence();
#else
  (void)length;
#endif
}

}  // namespace

Status UcxTransport::Validate(const Write& w) const {
  Endpoint* e = FindEndpoint(w.peer);
  if (e == nullptr) {
    if (w.peer >= 0 && w.peer < config_.world_size && peer_index_[w.peer] >= 0) {
      return FailedPreconditionError(PeerText(w.peer, "write before Connect"));
    }
    return InvalidArgumentError("ucx: rank " + std::to_string(config_.rank) + ": write to rank " +
                                std::to_string(w.peer) + ", which is not in Config::peers");
  }
  if (static_cast<int>(w.lane) >= kNumLanes) {
    return InvalidArgumentError(
        PeerText(w.peer, "write on lane " + std::to_string(static_cast<int>(w.lane))));
  }
  if (e->failure() != UCS_OK) return e->FailureStatus();
  if (w.length == 0) return OkStatus();

  M2N_RETURN_IF_ERROR(ValidateWriteRegions(w, "ucx", typeid(UcxRegion), typeid(UcxRemoteRegion)));
  // Messages are built only on failure: this runs for every write.
  auto refuse = [&w](const std::string& why) {
    return InvalidArgumentError(WriteText(w, "ucx", why));
  };
  const auto* local = static_cast<const UcxRegion*>(w.local);
  const auto* remote = static_cast<const UcxRemoteRegion*>(w.remote);
  if (local->owner() != ctx_.get()) return refuse(": local region not registered here");
  if (remote->owner() != ctx_.get()) return refuse(": remote region not unpacked here");
  if (remote->peer() != w.peer) {
    return refuse(": remote region belongs to peer rank " + std::to_string(remote->peer()));
  }
  if (w.length > UINT32_MAX) return refuse(": more than 2^32-1 bytes");
  return OkStatus();
}

Status UcxTransport::Post(std::span<const Write> writes) {
  if (closed_)
    return FailedPreconditionError("ucx: rank " + std::to_string(config_.rank) +
                                   ": Post after Close");
  // All or nothing for bad arguments: nothing is posted unless every write is valid.
  for (const Write& w : writes) M2N_RETURN_IF_ERROR(Validate(w));
  for (const Write& w : writes) M2N_RETURN_IF_ERROR(PostOne(w));
  return OkStatus();
}

Status UcxTransport::PostOne(const Write& w) {
  Endpoint& e = *FindEndpoint(w.peer);
  Endpoint::TxLane& tx = e.tx(w.lane);
  // The ring is mapped here exactly when UCX reaches the peer through shared memory; then puts
  // and stores complete at the peer on return, and everything below is cheap. Otherwise the write
  // is one active message (one network send for small writes, rendezvous for large ones).
  if (tx.ring_mapped == nullptr) return PostActiveMessage(w, e);

  void* payload_request = nullptr;
  bool needs_flush = false;
  if (w.length > 0) M2N_RETURN_IF_ERROR(PostPayload(w, tx, &payload_request, &needs_flush));

  uint32_t slot = 0;
  const RingEntry entry = e.NextEntry(w.lane, w.imm, static_cast<uint32_t>(w.length), &slot);
  if (!needs_flush && !tx.has_deferred()) {
    M2N_ASSIGN_OR_RETURN(const bool entry_done, PutEntryNow(w, tx, entry, slot, payload_request));
    if (entry_done) return TrackPayload(w, e, payload_request);
  }
  return DeferEntry(w, e, entry, slot, payload_request, needs_flush);
}

Status UcxTransport::PostPayload(const Write& w, Endpoint::TxLane& tx, void** payload_request,
                                 bool* needs_flush) {
  const auto* local = static_cast<const UcxRegion*>(w.local);
  const auto* remote = static_cast<const UcxRemoteRegion*>(w.remote);
  std::byte* const mapped = direct_stores_ ? remote->mapped(w.lane) : nullptr;
  if (mapped != nullptr) {
    // The peer's pages are mapped here (UCX's shared-memory transport attached them for the
    // rkey), and UCX's own put to them would be this memcpy under a few call layers. Complete at
    // the peer on return, so no fence or flush beyond the CPU's.
    std::memcpy(mapped + w.remote_offset, local->data() + w.local_offset, w.length);
    FenceAfterCopy(w.length);
    return OkStatus();
  }
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH;
  param.memh = local->memh();
  ucs_status_ptr_t put =
      ucp_put_nbx(tx.ep, local->data() + w.local_offset, w.length,
                  remote->address() + w.remote_offset, remote->rkey(w.lane), &param);
  if (UCS_PTR_IS_ERR(put)) {
    return UnavailableError(
        PeerText(w.peer, "put of " + std::to_string(w.length) + " bytes", UCS_PTR_STATUS(put)));
  }
  *payload_request = RequestOrNull(put);
  // UCX 1.13's ucp_worker_fence only orders operations on one transport lane. Payload and
  // entry take the same lane, or both complete at the peer on return, when both targets are
  // mapped here (shared memory) or neither is (one network lane serves both rkeys). When only
  // one is mapped (e.g. payload by active-message emulation of RMA, entry by memcpy), the
  // payload must be complete at the peer before the entry goes: flush the ep first.
  *needs_flush = remote->direct(w.lane) != (tx.ring_mapped != nullptr);
  if (*needs_flush) return OkStatus();
  const ucs_status_t status = ucp_worker_fence(ctx_->worker(w.lane));
  if (status != UCS_OK) {
    if (*payload_request != nullptr) ucp_request_free(*payload_request);
    return InternalError(PeerText(w.peer, "ucp_worker_fence", status));
  }
  return OkStatus();
}

StatusOr<bool> UcxTransport::PutEntryNow(const Write& w, Endpoint::TxLane& tx,
                                         const RingEntry& entry, uint32_t slot,
                                         void* payload_request) {
  RingEntry* const ring = direct_stores_ ? tx.ring_mapped : nullptr;
  if (ring != nullptr) {
    StoreEntry(ring + slot, entry);
    return true;
  }
  // The entry goes out from the stack if UCX can send it inline; otherwise it needs a record
  // whose staging copy outlives the request.
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FLAG_FORCE_IMM_CMPL;
  ucs_status_ptr_t put =
      ucp_put_nbx(tx.ep, &entry, sizeof(entry),
                  tx.ring_address + uint64_t{slot} * sizeof(RingEntry), tx.ring_rkey, &param);
  if (put == nullptr) return true;
  if (UCS_PTR_STATUS(put) != UCS_ERR_NO_RESOURCE) {
    if (payload_request != nullptr) ucp_request_free(payload_request);
    return UnavailableError(PeerText(w.peer, "put of a ring entry", UCS_PTR_STATUS(put)));
  }
  return false;
}

UcxTransport::PendingWrite* UcxTransport::Track(const Write& w, Endpoint& e,
                                                void* payload_request) {
  PendingWrite* pw = NewPending();
  pw->endpoint = &e;
  pw->lane = w.lane;
  pw->cookie = w.cookie;
  pw->payload_request = payload_request;
  AddInflight(pw);
  return pw;
}

Status UcxTransport::TrackPayload(const Write& w, Endpoint& e, void* payload_request) {
  if (payload_request == nullptr) {
    done_.push_back({w.cookie, w.peer, w.lane});
    return OkStatus();
  }
  Track(w, e, payload_request)->entry_posted = true;
  return OkStatus();
}

Status UcxTransport::DeferEntry(const Write& w, Endpoint& e, const RingEntry& entry, uint32_t slot,
                                void* payload_request, bool needs_flush) {
  Endpoint::TxLane& tx = e.tx(w.lane);
  PendingWrite* pw = Track(w, e, payload_request);
  pw->slot = slot;
  pw->staging = entry;
  if (needs_flush) {
    ucp_request_param_t param{};
    ucs_status_ptr_t flush = ucp_ep_flush_nbx(tx.ep, &param);
    if (UCS_PTR_IS_ERR(flush)) {
      pw->error = UCS_PTR_STATUS(flush);
      pw->failed_step = "flush before a ring entry";
    }
    pw->flush_request = RequestOrNull(flush);
  }
  if (needs_flush || tx.has_deferred()) {
    pw->ticket = tx.deferred_issued++;
    Advance(pw);  // goes at once when the flush finished inline and nothing waits ahead
    return OkStatus();
  }
  return PostEntry(pw);
}

Status UcxTransport::PostActiveMessage(const Write& w, Endpoint& e) {
  Endpoint::TxLane& tx = e.tx(w.lane);
  const auto length = static_cast<uint32_t>(w.length);
  uint32_t ring_slot = 0;  // the receiver places the entry itself, by seq
  const RingEntry entry = e.NextEntry(w.lane, w.imm, length, &ring_slot);
  PendingWrite* pw = NewPending();
  pw->header.imm = w.imm;
  pw->header.length = length;
  pw->header.seq = entry.seq;
  pw->header.src_rank = config_.rank;
  const void* payload = nullptr;
  ucp_request_param_t param{};
  if (w.length > 0) {
    const auto* local = static_cast<const UcxRegion*>(w.local);
    const auto* remote = static_cast<const UcxRemoteRegion*>(w.remote);
    pw->header.address = remote->address() + w.remote_offset;
    payload = local->data() + w.local_offset;
    // A source-only memh has no remote access, which a rendezvous that the receiver reads (RDMA
    // read on InfiniBand) needs: UCX then registers the buffer for that read itself.
    if (local->access() != Access::kSource) {
      param.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH;
      param.memh = local->memh();
    }
    if (w.length <= tx.eager_max) param.flags |= UCP_AM_SEND_FLAG_EAGER;
  }
  // The receiver knows us by the endpoint this arrives on (the reply endpoint UCX hands it).
  param.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
  param.flags |= UCP_AM_SEND_FLAG_REPLY;
  // Eager: the payload travels with the header and the receiver copies it into the target; the
  // request usually completes here (UCX copied it out), so the source is free at once and writes
  // overlap. Rendezvous: the receiver's handler has UCX move the payload straight into the target
  // (an RDMA read on InfiniBand); complete when it has landed. UCX picks by size unless this peer's
  // eager_max says otherwise (see Connect).
  ucs_status_ptr_t sent =
      ucp_am_send_nbx(tx.ep, kAmWriteId, &pw->header, sizeof(AmHeader), payload, w.length, &param);
  if (sent == nullptr) {
    ReleasePending(pw);
    done_.push_back({w.cookie, w.peer, w.lane});
    return OkStatus();
  }
  if (UCS_PTR_IS_ERR(sent)) {
    ReleasePending(pw);
    return UnavailableError(PeerText(
        w.peer, "active message of " + std::to_string(w.length) + " bytes", UCS_PTR_STATUS(sent)));
  }
  pw->endpoint = &e;
  pw->lane = w.lane;
  pw->cookie = w.cookie;
  pw->payload_request = sent;
  pw->entry_posted = true;
  pw->failed_step = "active message";  // named only if it fails
  AddInflight(pw);
  return OkStatus();
}

Status UcxTransport::PostEntry(PendingWrite* pw) {
  Endpoint::TxLane& tx = pw->endpoint->tx(pw->lane);
  pw->entry_posted = true;
  if (direct_stores_ && tx.ring_mapped != nullptr) {
    StoreEntry(tx.ring_mapped + pw->slot, pw->staging);
    return OkStatus();
  }
  ucp_request_param_t param{};
  ucs_status_ptr_t put =
      ucp_put_nbx(tx.ep, &pw->staging, sizeof(RingEntry),
                  tx.ring_address + uint64_t{pw->slot} * sizeof(RingEntry), tx.ring_rkey, &param);
  if (UCS_PTR_IS_ERR(put)) {
    pw->error = UCS_PTR_STATUS(put);
    pw->failed_step = "put of a ring entry";
    return UnavailableError(PeerText(pw->endpoint->peer(), pw->failed_step, pw->error));
  }
  pw->entry_request = RequestOrNull(put);
  return OkStatus();
}

bool UcxTransport::Advance(PendingWrite* pw) {
  if (!pw->entry_posted) {
    Endpoint::TxLane& tx = pw->endpoint->tx(pw->lane);
    if (pw->ticket != tx.deferred_posted) return false;
    if (!Reap(&pw->flush_request, &pw->error)) return false;
    ++tx.deferred_posted;
    if (pw->error == UCS_OK) {
      // An error here is kept in pw->error and reported as this write's kError completion.
      (void)PostEntry(pw);
    } else {
      // The payload may not have landed: never announce it. The ep has failed anyway.
      if (pw->failed_step == nullptr) pw->failed_step = "flush before a ring entry";
      pw->entry_posted = true;
    }
  }
  const bool payload_done = Reap(&pw->payload_request, &pw->error);
  const bool entry_done = Reap(&pw->entry_request, &pw->error);
  if (pw->error != UCS_OK && pw->failed_step == nullptr) pw->failed_step = "put";
  return payload_done && entry_done;
}

UcxTransport::PendingWrite* UcxTransport::NewPending() {
  if (pending_free_.empty()) {
    pending_chunks_.push_back(std::make_unique<PendingWrite[]>(kPendingChunk));
    PendingWrite* chunk = pending_chunks_.back().get();
    pending_free_.reserve(pending_chunks_.size() * kPendingChunk);
    inflight_.reserve(pending_chunks_.size() * kPendingChunk);
    for (size_t i = kPendingChunk; i-- > 0;) pending_free_.push_back(&chunk[i]);
  }
  PendingWrite* pw = pending_free_.back();
  pending_free_.pop_back();
  *pw = PendingWrite{};
  return pw;
}

void UcxTransport::ReleasePending(PendingWrite* pw) { pending_free_.push_back(pw); }

void UcxTransport::AddInflight(PendingWrite* pw) {
  inflight_.push_back(pw);
  ++progress_[static_cast<int>(pw->lane)].outstanding;
}

}  // namespace m2n::transport::ucx

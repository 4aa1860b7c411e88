#include "transports/ucx/transport.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <typeinfo>
#include <utility>

#include "transports/validate.h"

namespace m2n::transport::ucx {
namespace {

// Room for any reasonable credit window; keeps the ring region's size arithmetic far from overflow.
constexpr int kMaxUnpolledLimit = 1 << 20;
// Pending-write records come in chunks of this many (stable addresses: UCX reads `staging`).
constexpr size_t kPendingChunk = 64;

// True when the request is finished (and released); the first failure lands in *error.
bool Reap(void** request, ucs_status_t* error) {
  if (*request == nullptr) return true;
  const ucs_status_t status = ucp_request_check_status(*request);
  if (status == UCS_INPROGRESS) return false;
  if (status != UCS_OK && *error == UCS_OK) *error = status;
  ucp_request_free(*request);
  *request = nullptr;
  return true;
}

void* RequestOrNull(ucs_status_ptr_t request) {
  return UCS_PTR_IS_PTR(request) ? request : nullptr;
}

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

Status Probe() {
  ucp_config_t* config = nullptr;
  ucs_status_t status = ucp_config_read(nullptr, nullptr, &config);
  if (status != UCS_OK) return UnavailableError(ErrorText("ucp_config_read", status));
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_RMA;
  ucp_context_h context = nullptr;
  status = ucp_init(&params, config, &context);
  ucp_config_release(config);
  if (status != UCS_OK) return UnavailableError(ErrorText("ucp_init", status));
  ucp_cleanup(context);
  return OkStatus();
}

StatusOr<std::unique_ptr<Transport>> UcxTransport::Create(const Config& config) {
  const std::string who = "ucx: rank " + std::to_string(config.rank);
  if (config.world_size <= 0 || config.rank < 0 || config.rank >= config.world_size) {
    return InvalidArgumentError(who + ": rank outside a world of " +
                                std::to_string(config.world_size));
  }
  if (config.max_unpolled < 1 || config.max_unpolled > kMaxUnpolledLimit) {
    return InvalidArgumentError(who + ": max_unpolled " + std::to_string(config.max_unpolled) +
                                " outside [1, " + std::to_string(kMaxUnpolledLimit) + "]");
  }
  std::unique_ptr<UcxTransport> t(new UcxTransport(config));
  M2N_ASSIGN_OR_RETURN(t->err_mode_, ErrModeFromEnv());
  M2N_ASSIGN_OR_RETURN(t->eager_setting_, EagerMaxFromEnv());
  if (const char* env = std::getenv("M2N_UCX_DIRECT"))
    t->direct_stores_ = std::string_view(env) != "0";
  t->peer_index_.assign(config.world_size, -1);
  for (size_t i = 0; i < config.peers.size(); ++i) {
    const int peer = config.peers[i];
    if (peer < 0 || peer >= config.world_size) {
      return InvalidArgumentError(who + ": peer rank " + std::to_string(peer) +
                                  " outside a world of " + std::to_string(config.world_size));
    }
    if (t->peer_index_[peer] >= 0) {
      return InvalidArgumentError(who + ": peer rank " + std::to_string(peer) + " listed twice");
    }
    t->peer_index_[peer] = static_cast<int>(i);
  }
  t->endpoints_.resize(config.peers.size());
  t->connected_.reserve(config.peers.size());
  t->failed_.reserve(config.peers.size());

  M2N_ASSIGN_OR_RETURN(t->ctx_, Context::Create(config.rank, config.peers.size() * kNumLanes));
  M2N_RETURN_IF_ERROR(t->SetAmHandlers(/*enable=*/true));

  // One ring per (peer, lane), in UCX-allocated memory so that a shared-memory transport writes
  // entries with a plain store.
  const size_t ring_bytes = std::max<size_t>(1, config.peers.size() * kNumLanes) *
                            config.max_unpolled * sizeof(RingEntry);
  M2N_ASSIGN_OR_RETURN(t->rings_, UcxRegion::Map(t->ctx_, nullptr, ring_bytes, /*allocate=*/true,
                                                 /*peer_writable=*/false));
  M2N_ASSIGN_OR_RETURN(t->ring_rkey_, t->rings_->PackRkey());
  t->inboxes_.reserve(config.peers.size());
  t->scanned_.reserve(config.peers.size());
  for (size_t i = 0; i < config.peers.size(); ++i) {
    std::array<RingEntry*, kNumLanes> rings{};
    for (int lane = 0; lane < kNumLanes; ++lane) {
      rings[lane] = reinterpret_cast<RingEntry*>(t->rings_->data()) +
                    (i * kNumLanes + lane) * static_cast<size_t>(config.max_unpolled);
    }
    t->inboxes_.emplace_back(config.peers[i], rings, static_cast<uint32_t>(config.max_unpolled));
  }
  return std::unique_ptr<Transport>(std::move(t));
}

UcxTransport::~UcxTransport() {
  if (ctx_ == nullptr) return;  // Create failed before UCX was up
  if (!closed_) (void)Teardown(/*graceful=*/false, Deadline::After(config_.timeout));
}

Capabilities UcxTransport::capabilities() const {
  Capabilities caps;
  caps.host_memory = true;
  caps.cuda_memory = false;
  caps.native_write_with_imm = false;
  caps.max_write_bytes = UINT32_MAX;  // RingEntry::length
  return caps;
}

StatusOr<std::unique_ptr<Region>> UcxTransport::Register(void* data, size_t size, MemoryKind kind) {
  if (kind == MemoryKind::kCuda) {
    return UnimplementedError("ucx transport: CUDA memory is not supported in this build");
  }
  if (kind != MemoryKind::kHost) {
    return InvalidArgumentError("ucx: rank " + std::to_string(config_.rank) +
                                ": unknown memory kind " + std::to_string(static_cast<int>(kind)));
  }
  M2N_ASSIGN_OR_RETURN(auto region, UcxRegion::Map(ctx_, data, size, /*allocate=*/false,
                                                   /*peer_writable=*/true));
  return std::unique_ptr<Region>(std::move(region));
}

StatusOr<std::unique_ptr<Region>> UcxTransport::Allocate(size_t size, MemoryKind kind) {
  if (kind == MemoryKind::kCuda) {
    return UnimplementedError("ucx transport: CUDA memory is not supported in this build");
  }
  if (kind != MemoryKind::kHost) {
    return InvalidArgumentError("ucx: rank " + std::to_string(config_.rank) +
                                ": unknown memory kind " + std::to_string(static_cast<int>(kind)));
  }
  M2N_ASSIGN_OR_RETURN(auto region, UcxRegion::Map(ctx_, nullptr, size, /*allocate=*/true,
                                                   /*peer_writable=*/true));
  return std::unique_ptr<Region>(std::move(region));
}

StatusOr<Bytes> UcxTransport::LocalAddress(int peer) {
  if (peer < 0 || peer >= config_.world_size || peer_index_[peer] < 0) {
    return InvalidArgumentError("ucx: rank " + std::to_string(config_.rank) +
                                ": LocalAddress for rank " + std::to_string(peer) +
                                ", which is not in Config::peers");
  }
  PeerAddress a;
  a.src_rank = config_.rank;
  a.dst_rank = peer;
  a.max_unpolled = static_cast<uint32_t>(config_.max_unpolled);
  a.err_mode = err_mode_;
  a.host = HostId();
  for (int lane = 0; lane < kNumLanes; ++lane) {
    a.worker_address[lane] = ctx_->worker_address(static_cast<Lane>(lane));
    const size_t ring = static_cast<size_t>(peer_index_[peer]) * kNumLanes + lane;
    a.ring_address[lane] = reinterpret_cast<uintptr_t>(rings_->data()) +
                           ring * config_.max_unpolled * sizeof(RingEntry);
  }
  a.ring_rkey = ring_rkey_;
  return EncodePeerAddress(a);
}

Status UcxTransport::Connect(int peer, std::span<const std::byte> remote_address) {
  const std::string who = "ucx: rank " + std::to_string(config_.rank);
  if (closed_) return FailedPreconditionError(who + ": Connect after Close");
  if (peer < 0 || peer >= config_.world_size || peer_index_[peer] < 0) {
    return InvalidArgumentError(who + ": Connect to rank " + std::to_string(peer) +
                                ", which is not in Config::peers");
  }
  const int index = peer_index_[peer];
  if (endpoints_[index] != nullptr)
    return FailedPreconditionError(PeerText(peer, "connected twice"));

  M2N_ASSIGN_OR_RETURN(PeerAddress a, DecodePeerAddress(peer, remote_address));
  if (a.src_rank != peer || a.dst_rank != config_.rank) {
    return InvalidArgumentError(PeerText(
        peer, "connection address was made by rank " + std::to_string(a.src_rank) + " for rank " +
                  std::to_string(a.dst_rank) + ", not for rank " + std::to_string(config_.rank)));
  }
  if (a.max_unpolled != static_cast<uint32_t>(config_.max_unpolled)) {
    return FailedPreconditionError(
        PeerText(peer, "max_unpolled " + std::to_string(a.max_unpolled) + " there, " +
                           std::to_string(config_.max_unpolled) + " here"));
  }
  if (a.err_mode != err_mode_) {
    return FailedPreconditionError(
        PeerText(peer, "M2N_UCX_ERR_MODE differs between the ranks (" +
                           std::to_string(static_cast<int>(a.err_mode)) + " there, " +
                           std::to_string(static_cast<int>(err_mode_)) + " here)"));
  }
  const bool same_host = std::ranges::equal(a.host, HostId());
  M2N_ASSIGN_OR_RETURN(endpoints_[index],
                       Endpoint::Connect(ctx_, peer, a, static_cast<uint32_t>(config_.max_unpolled),
                                         ResolveErrMode(err_mode_, same_host), &failed_));
  Endpoint::TxLane& data = endpoints_[index]->tx(Lane::kData);
  if (eager_setting_.has_value()) {
    data.eager_max = *eager_setting_;
  } else if (std::getenv("UCX_RNDV_THRESH") == nullptr && EpUsesOnlyTcp(data.ep)) {
    // UCX 1.13 switches to rendezvous at 8-32 KiB over TCP, where the handshake costs two more
    // trips through the sockets than eager, and an eager write completes at once, so a sender's
    // writes overlap. Measured on loopback (README.md): eager is up to 2x faster up to 128 KiB;
    // from 256 KiB on, rendezvous wins (it receives straight into the slot, eager copies once
    // more at the receiver, and that copy costs most when ranks share cores).
    data.eager_max = kTcpEagerMax;
  }
  connected_.push_back(endpoints_[index].get());
  // While every peer is on this host, its writes land in our rings by plain stores and UCX has
  // little to do on an idle poll; progress it less often then (see Poll).
  bool all_mapped = true;
  for (Endpoint* e : connected_) {
    all_mapped = all_mapped && e->tx(Lane::kData).ring_mapped != nullptr && e->tx(Lane::kAck).ring_mapped != nullptr;
  }
  idle_progress_period_ = all_mapped && direct_stores_ ? kIdleProgressPeriodMapped : kIdleProgressPeriod;
  scanned_.push_back(&inboxes_[index]);
  return OkStatus();
}

Endpoint* UcxTransport::FindEndpoint(int peer) const {
  if (peer < 0 || peer >= config_.world_size || peer_index_[peer] < 0) return nullptr;
  return endpoints_[peer_index_[peer]].get();
}

StatusOr<std::unique_ptr<RemoteRegion>> UcxTransport::UnpackRemoteKey(
    int peer, std::span<const std::byte> packed) {
  Endpoint* e = FindEndpoint(peer);
  if (e == nullptr || closed_) {
    return FailedPreconditionError(PeerText(peer, "UnpackRemoteKey before Connect or after Close"));
  }
  M2N_ASSIGN_OR_RETURN(auto region, UcxRemoteRegion::Unpack(ctx_, peer, e->eps(), packed));
  return std::unique_ptr<RemoteRegion>(std::move(region));
}

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

  M2N_RETURN_IF_ERROR(
      ValidateWriteRegions(w, "ucx", typeid(UcxRegion), typeid(UcxRemoteRegion)));
  // Messages are built only on failure: this runs for every write.
  auto refuse = [&w](const std::string& why) { return InvalidArgumentError(WriteText(w, "ucx", why)); };
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
  RingEntry* const ring = direct_stores_ ? tx.ring_mapped : nullptr;

  void* payload_request = nullptr;
  bool needs_flush = false;
  if (w.length > 0) {
    const auto* local = static_cast<const UcxRegion*>(w.local);
    const auto* remote = static_cast<const UcxRemoteRegion*>(w.remote);
    std::byte* const mapped = direct_stores_ ? remote->mapped(w.lane) : nullptr;
    if (mapped != nullptr) {
      // The peer's pages are mapped here (UCX's shared-memory transport attached them for the
      // rkey), and UCX's own put to them would be this memcpy under a few call layers. Complete at
      // the peer on return, so no fence or flush beyond the CPU's.
      std::memcpy(mapped + w.remote_offset, local->data() + w.local_offset, w.length);
      FenceAfterCopy(w.length);
    } else {
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
      payload_request = RequestOrNull(put);
      // UCX 1.13's ucp_worker_fence only orders operations on one transport lane. Payload and
      // entry take the same lane, or both complete at the peer on return, when both targets are
      // mapped here (shared memory) or neither is (one network lane serves both rkeys). When only
      // one is mapped (e.g. payload by active-message emulation of RMA, entry by memcpy), the
      // payload must be complete at the peer before the entry goes: flush the ep first.
      needs_flush = remote->direct(w.lane) != (tx.ring_mapped != nullptr);
      if (!needs_flush) {
        const ucs_status_t status = ucp_worker_fence(ctx_->worker(w.lane));
        if (status != UCS_OK) {
          if (payload_request != nullptr) ucp_request_free(payload_request);
          return InternalError(PeerText(w.peer, "ucp_worker_fence", status));
        }
      }
    }
  }

  uint32_t slot = 0;
  const RingEntry entry = e.NextEntry(w.lane, w.imm, static_cast<uint32_t>(w.length), &slot);

  if (!needs_flush && !tx.has_deferred()) {
    bool entry_done = false;
    if (ring != nullptr) {
      StoreEntry(ring + slot, entry);
      entry_done = true;
    } else {
      // The entry goes out from the stack if UCX can send it inline; otherwise it needs a record
      // whose staging copy outlives the request.
      ucp_request_param_t param{};
      param.op_attr_mask = UCP_OP_ATTR_FLAG_FORCE_IMM_CMPL;
      ucs_status_ptr_t put =
          ucp_put_nbx(tx.ep, &entry, sizeof(entry),
                      tx.ring_address + uint64_t{slot} * sizeof(RingEntry), tx.ring_rkey, &param);
      entry_done = put == nullptr;
      if (!entry_done && UCS_PTR_STATUS(put) != UCS_ERR_NO_RESOURCE) {
        if (payload_request != nullptr) ucp_request_free(payload_request);
        return UnavailableError(PeerText(w.peer, "put of a ring entry", UCS_PTR_STATUS(put)));
      }
    }
    if (entry_done && payload_request == nullptr) {
      done_.push_back({w.cookie, w.peer, w.lane});
      return OkStatus();
    }
    if (entry_done) {
      PendingWrite* pw = NewPending();
      pw->endpoint = &e;
      pw->lane = w.lane;
      pw->cookie = w.cookie;
      pw->payload_request = payload_request;
      pw->entry_posted = true;
      AddInflight(pw);
      return OkStatus();
    }
  }

  PendingWrite* pw = NewPending();
  pw->endpoint = &e;
  pw->lane = w.lane;
  pw->cookie = w.cookie;
  pw->payload_request = payload_request;
  pw->slot = slot;
  pw->staging = entry;
  AddInflight(pw);
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
    param.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH;
    param.memh = local->memh();
    if (w.length <= tx.eager_max) {
      param.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
      param.flags = UCP_AM_SEND_FLAG_EAGER;
    }
  }
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

Status UcxTransport::SetAmHandlers(bool enable) {
  for (int lane = 0; lane < kNumLanes; ++lane) {
    am_lanes_[lane] = {this, static_cast<Lane>(lane)};
    ucp_am_handler_param_t param{};
    param.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                       UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
    param.id = kAmWriteId;
    param.flags = UCP_AM_FLAG_WHOLE_MSG;
    param.cb = enable ? &UcxTransport::OnActiveMessage : nullptr;
    param.arg = &am_lanes_[lane];
    const ucs_status_t status =
        ucp_worker_set_am_recv_handler(ctx_->worker(static_cast<Lane>(lane)), &param);
    if (status != UCS_OK) {
      return InternalError(ErrorText(
          "rank " + std::to_string(config_.rank) + ": ucp_worker_set_am_recv_handler", status));
    }
  }
  return OkStatus();
}

ucs_status_t UcxTransport::OnActiveMessage(void* arg, const void* header, size_t header_length,
                                           void* data, size_t length,
                                           const ucp_am_recv_param_t* param) {
  const auto* am = static_cast<const AmLane*>(arg);
  am->transport->Deliver(am->lane, header, header_length, data, length, param->recv_attr);
  // Eager data was copied; a rendezvous receive was started (UCX keeps its descriptor) or refused
  // (UCX then completes the sender's request without the data).
  return UCS_OK;
}

void UcxTransport::Refuse(Inbox* inbox, Status why) {
  if (inbox != nullptr ? inbox->refused() : refused_stranger_) return;
  if (inbox != nullptr) {
    inbox->set_refused();
  } else {
    refused_stranger_ = true;
  }
  refused_.emplace_back(inbox != nullptr ? inbox->peer() : -1, std::move(why));
}

void UcxTransport::Deliver(Lane lane, const void* header, size_t header_length, void* data,
                           size_t length, uint64_t recv_attr) {
  if (closed_) return;  // nobody will poll for it
  AmHeader h;
  if (header_length != sizeof(h)) {
    Refuse(nullptr,
           DataLossError("ucx: rank " + std::to_string(config_.rank) +
                         ": refused an active message with a " + std::to_string(header_length) +
                         "-byte header, not an m2n write"));
    return;
  }
  std::memcpy(&h, header, sizeof(h));
  if (h.src_rank < 0 || h.src_rank >= config_.world_size || peer_index_[h.src_rank] < 0) {
    Refuse(nullptr, DataLossError("ucx: rank " + std::to_string(config_.rank) +
                                  ": refused a write from rank " + std::to_string(h.src_rank) +
                                  ", which is not in Config::peers"));
    return;
  }
  Inbox& inbox = inboxes_[peer_index_[h.src_rank]];
  if (inbox.refused()) return;
  auto refuse = [&](const std::string& why) {
    Refuse(&inbox, DataLossError(PeerText(inbox.peer(), "refused a write: " + why)));
  };
  if (h.length != length) {
    refuse("its header says " + std::to_string(h.length) + " bytes, it carries " +
           std::to_string(length));
    return;
  }
  RingEntry* slot = inbox.SlotFor(lane, h.seq);
  if (slot == nullptr) {
    refuse("write number " + std::to_string(h.seq) +
           (lane == Lane::kAck ? " on the ack lane" : " on the data lane") +
           " is not among the next " + std::to_string(config_.max_unpolled) + " (next is " +
           std::to_string(inbox.expected_seq(lane)) + ")");
    return;
  }
  const RingEntry entry{h.imm, h.length, h.seq, RingCheck(h.imm, h.length, h.seq)};
  if (length > 0) {
    const Context::TrackedRegion* region = ctx_->FindRegion(h.address, length);
    if (region == nullptr) {
      char text[96];
      std::snprintf(text, sizeof(text), "%zu bytes to [0x%llx, +%zu)", length,
                    static_cast<unsigned long long>(h.address), length);
      refuse(std::string(text) + ", which is not inside memory registered here");
      return;
    }
    auto* target = reinterpret_cast<std::byte*>(static_cast<uintptr_t>(h.address));
    if ((recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
      // Rendezvous: UCX moves the payload straight into the target (an RDMA read where the wire
      // has one); the entry waits until it has landed.
      ucp_request_param_t param{};
      param.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH;
      param.memh = region->memh;
      ucs_status_ptr_t received =
          ucp_am_recv_data_nbx(ctx_->worker(lane), data, target, length, &param);
      if (UCS_PTR_IS_ERR(received)) {
        Refuse(&inbox, UnavailableError(PeerText(
                           inbox.peer(), "receive of a " + std::to_string(length) + "-byte write",
                           UCS_PTR_STATUS(received))));
        return;
      }
      if (received != nullptr) {
        receiving_.push_back({received, &inbox, lane, slot, entry});
        ++progress_[static_cast<int>(lane)].outstanding;
        return;
      }
    } else {
      std::memcpy(target, data, length);
    }
  }
  StoreEntry(slot, entry);
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

StatusOr<size_t> UcxTransport::Poll(std::span<Completion> out) {
  if (closed_) return size_t{0};
  // UCX progress costs more than a ring scan (on TCP a system call per worker), and writes
  // between processes on one host land by plain stores that need none. So a lane's worker is
  // progressed on every poll only while it has work (requests of ours in flight on it, or its last
  // progress did something); otherwise every idle_progress_period_-th poll, which keeps active
  // messages, RMA emulation and wireup moving at a delay of a few ring scans. Per lane: a sender
  // mostly hears on the ACK lane and a receiver on the data lane, and neither pays for the other.
  for (Lane lane : {Lane::kAck, Lane::kData}) {
    LaneProgress& p = progress_[static_cast<int>(lane)];
    if (p.outstanding > 0 || p.busy || ++p.idle_polls >= idle_progress_period_) {
      p.idle_polls = 0;
      p.busy = ucp_worker_progress(ctx_->worker(lane)) > 0;
    }
  }

  size_t n = 0;
  auto emit = [&](Completion::Type type, int peer, Lane lane) -> Completion& {
    Completion& c = out[n++];
    c.type = type;
    c.peer = peer;
    c.lane = lane;
    c.imm = 0;
    c.length = 0;
    c.cookie = 0;
    c.error = Status();
    return c;
  };

  while (done_head_ < done_.size() && n < out.size()) {
    const DoneWrite& d = done_[done_head_++];
    emit(Completion::Type::kWriteDone, d.peer, d.lane).cookie = d.cookie;
  }
  if (done_head_ == done_.size()) {
    done_.clear();
    done_head_ = 0;
  }

  size_t kept = 0;
  for (size_t i = 0; i < inflight_.size(); ++i) {
    PendingWrite* pw = inflight_[i];
    // Advance even when `out` is full: a deferred ring entry should not wait for room here.
    const bool finished = Advance(pw);
    if (finished && n < out.size()) {
      const int peer = pw->endpoint->peer();
      if (pw->error == UCS_OK) {
        emit(Completion::Type::kWriteDone, peer, pw->lane).cookie = pw->cookie;
      } else {
        Completion& c = emit(Completion::Type::kError, peer, pw->lane);
        c.cookie = pw->cookie;
        c.error = UnavailableError(PeerText(peer, pw->failed_step, pw->error));
      }
      --progress_[static_cast<int>(pw->lane)].outstanding;
      ReleasePending(pw);
    } else {
      inflight_[kept++] = pw;
    }
  }
  inflight_.resize(kept);

  while (failed_reported_ < failed_.size() && n < out.size()) {
    Endpoint* e = failed_[failed_reported_++];
    emit(Completion::Type::kError, e->peer(), Lane::kData).error = e->FailureStatus();
  }

  // Rendezvous payloads that have landed get their entries now, before the ring scan.
  size_t still_receiving = 0;
  for (const PendingReceive& pr : receiving_) {
    const ucs_status_t status = ucp_request_check_status(pr.request);
    if (status == UCS_INPROGRESS) {
      receiving_[still_receiving++] = pr;
      continue;
    }
    ucp_request_free(pr.request);
    --progress_[static_cast<int>(pr.lane)].outstanding;
    if (status == UCS_OK) {
      StoreEntry(pr.slot, pr.entry);
    } else {
      // The payload did not land: never announce it (the ep has failed, or will).
      Refuse(pr.inbox,
             UnavailableError(PeerText(
                 pr.inbox->peer(),
                 "receive of a " + std::to_string(pr.entry.length) + "-byte write", status)));
    }
  }
  receiving_.resize(still_receiving);

  while (refused_reported_ < refused_.size() && n < out.size()) {
    auto& [peer, why] = refused_[refused_reported_++];
    emit(Completion::Type::kError, peer, Lane::kData).error = std::move(why);
  }

  // ACK rings first: a credit return unblocks a sender, data only feeds a consumer. The start peer
  // rotates so a small `out` does not starve the last peers.
  const size_t peers = scanned_.size();
  for (Lane lane : {Lane::kAck, Lane::kData}) {
    for (size_t k = 0; k < peers && n < out.size(); ++k) {
      // No modulo here: a 64-bit division costs more than the rest of an idle poll.
      size_t i = scan_start_ + k;
      if (i >= peers) i -= peers;
      Inbox* inbox = scanned_[i];
      RingEntry entry;
      while (n < out.size() && inbox->TakeEntry(lane, &entry)) {
        Completion& c = emit(Completion::Type::kImmediate, inbox->peer(), lane);
        c.imm = entry.imm;
        c.length = entry.length;
      }
    }
  }
  if (peers > 0 && ++scan_start_ >= peers) scan_start_ = 0;
  return n;
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

ucs_status_t UcxTransport::WaitAll(std::vector<void*>& requests, Deadline deadline) {
  ucs_status_t first_error = UCS_OK;
  for (;;) {
    bool pending = false;
    for (void*& request : requests) pending |= !Reap(&request, &first_error);
    if (!pending) break;
    if (deadline.Expired()) {
      // Released requests finish inside UCX (on later progress or worker destruction).
      for (void*& request : requests) {
        if (request != nullptr) ucp_request_free(request);
        request = nullptr;
      }
      if (first_error == UCS_OK) first_error = UCS_ERR_TIMED_OUT;
      break;
    }
    ucp_worker_progress(ctx_->worker(Lane::kAck));
    ucp_worker_progress(ctx_->worker(Lane::kData));
  }
  requests.clear();
  return first_error;
}

Status UcxTransport::Teardown(bool graceful, Deadline deadline) {
  closed_ = true;
  std::vector<void*> requests;
  ucs_status_t flush_status = UCS_OK;
  if (graceful) {
    // Flush every healthy ep first, together, so one slow peer costs the deadline once.
    for (Endpoint* e : connected_) {
      if (e->failure() != UCS_OK) continue;
      for (int lane = 0; lane < kNumLanes; ++lane) {
        if (void* r = e->StartFlush(static_cast<Lane>(lane))) requests.push_back(r);
      }
    }
    flush_status = WaitAll(requests, deadline);
  }
  // Writes not reported yet stay unreported; their requests go back to UCX.
  const size_t unconfirmed = inflight_.size();
  for (PendingWrite* pw : inflight_) {
    for (void* r : {pw->payload_request, pw->flush_request, pw->entry_request}) {
      if (r != nullptr) ucp_request_free(r);
    }
    ReleasePending(pw);
  }
  inflight_.clear();
  for (LaneProgress& p : progress_) p.outstanding = 0;
  done_.clear();
  done_head_ = 0;

  // rkeys before their eps (StartClose does both); a flush that did not finish means force.
  const bool force = !graceful || flush_status != UCS_OK;
  for (Endpoint* e : connected_) {
    for (int lane = 0; lane < kNumLanes; ++lane) {
      if (void* r = e->StartClose(static_cast<Lane>(lane), force || e->failure() != UCS_OK)) {
        requests.push_back(r);
      }
    }
  }
  // Closing must not be cut short by an already-spent deadline: a force close only needs local
  // progress, so it gets a short grace of its own. Its errors are not reported: a peer that closed
  // first resets the connection under our close, which is the normal end of a group.
  const Deadline close_deadline =
      deadline.Expired() ? Deadline::After(std::chrono::milliseconds(100)) : deadline;
  (void)WaitAll(requests, close_deadline);

  // Receives still under way were purged with their eps; their requests go back to UCX.
  for (const PendingReceive& pr : receiving_) ucp_request_free(pr.request);
  receiving_.clear();
  refused_.clear();
  refused_reported_ = 0;
  // No handler may run once this transport is gone (the workers live on with the Context).
  (void)SetAmHandlers(/*enable=*/false);

  connected_.clear();
  scanned_.clear();
  endpoints_.clear();
  inboxes_.clear();
  rings_.reset();

  const std::string who = "rank " + std::to_string(config_.rank) + ": close";
  if (flush_status == UCS_ERR_TIMED_OUT) {
    return DeadlineExceededError("ucx: " + who + ": endpoints did not flush before the deadline (" +
                                 std::to_string(unconfirmed) + " writes unconfirmed)");
  }
  // A failed flush matters only if it left writes of ours unconfirmed; otherwise the peer merely
  // went away first.
  if (flush_status != UCS_OK && unconfirmed > 0) {
    return UnavailableError(ErrorText(
        who + ": " + std::to_string(unconfirmed) + " writes unconfirmed, flush", flush_status));
  }
  return OkStatus();
}

Status UcxTransport::Close(Deadline deadline) {
  if (closed_) return OkStatus();
  return Teardown(/*graceful=*/true, deadline);
}

}  // namespace m2n::transport::ucx

namespace m2n::transport {

const TransportInfo& ucxTransportInfo() {
  // Preference 50: a portable fallback; transports on a NIC's verbs or a GPU fabric rank higher.
  // UCX does not place receive slots in CUDA memory, so the slots' kind does not change its probe.
  static const TransportInfo info{"ucx", 50, [](MemoryKind) { return ucx::Probe(); }, &ucx::UcxTransport::Create};
  return info;
}

}  // namespace m2n::transport

// UcxTransport's receive side and completions: the active-message handler that lands a network
// peer's write in place (its sender known by the endpoint it came on, its target checked against
// the blocks granted to that sender; a write before our Connect parked until then) and stores its
// ring entry, and Poll, which progresses the workers, finishes pending writes and scans the rings
// for immediates.
#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "transports/ucx/transport.h"

namespace m2n::transport::ucx {

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
  am->transport->Deliver(am->lane, header, header_length, data, length, *param);
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

Inbox* UcxTransport::CheckSender(const void* header, size_t header_length,
                                 const ucp_am_recv_param_t& param, AmHeader* h, bool* park) {
  *park = false;
  const std::string who = "ucx: rank " + std::to_string(config_.rank);
  if (header_length != sizeof(*h)) {
    Refuse(nullptr,
           DataLossError(who + ": refused an active message with a " +
                         std::to_string(header_length) + "-byte header, not an m2n write"));
    return nullptr;
  }
  std::memcpy(h, header, sizeof(*h));
  // Who sent it is the endpoint it came on: a peer cannot write as another by naming its rank.
  auto from = (param.recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0
                  ? ep_peer_.find(param.reply_ep)
                  : ep_peer_.end();
  if (from == ep_peer_.end()) {
    // Possibly the peer it names, before our Connect to it: known for sure only then.
    const int claimed = h->src_rank;
    *park = (param.recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0 && claimed >= 0 &&
            claimed < config_.world_size && peer_index_[claimed] >= 0 &&
            endpoints_[peer_index_[claimed]] == nullptr;
    if (*park) return nullptr;
    Refuse(nullptr,
           DataLossError(who + ": refused a write claiming rank " + std::to_string(h->src_rank) +
                         " on an endpoint of no connected peer"));
    return nullptr;
  }
  Inbox* inbox = &inboxes_[peer_index_[from->second]];
  if (h->src_rank != from->second) {
    Refuse(inbox,
           DataLossError(PeerText(from->second, "refused a write claiming to come from rank " +
                                                    std::to_string(h->src_rank))));
    return nullptr;
  }
  return inbox;
}

void UcxTransport::Deliver(Lane lane, const void* header, size_t header_length, void* data,
                           size_t length, const ucp_am_recv_param_t& param) {
  if (closed_) return;  // nobody will poll for it
  const uint64_t recv_attr = param.recv_attr;
  AmHeader h;
  bool park = false;
  Inbox* const sender = CheckSender(header, header_length, param, &h, &park);
  if (park) {
    Park(lane, h, data, length, param);
    return;
  }
  if (sender == nullptr || sender->refused()) return;
  Inbox& inbox = *sender;
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
    const Context::TrackedRegion* region = ctx_->FindRegion(inbox.peer(), h.address, length);
    if (region == nullptr) {
      char text[96];
      std::snprintf(text, sizeof(text), "%zu bytes to [0x%llx, +%zu)", length,
                    static_cast<unsigned long long>(h.address), length);
      refuse(std::string(text) + ", which is not inside memory registered here for this peer");
      return;
    }
    if (!LandPayload(inbox, lane, *region, h.address, data, length, recv_attr, slot, entry)) return;
  }
  StoreEntry(slot, entry);
}

void UcxTransport::Park(Lane lane, const AmHeader& h, void* data, size_t length,
                        const ucp_am_recv_param_t& param) {
  const std::string who = "ucx: rank " + std::to_string(config_.rank) +
                          ": refused a write claiming rank " + std::to_string(h.src_rank) +
                          " before this rank connected to it: ";
  const auto waiting = std::ranges::count_if(
      parked_, [&](const ParkedMessage& m) { return m.header.src_rank == h.src_rank; });
  if (waiting >= static_cast<long>(config_.max_unpolled) * kNumLanes) {
    Refuse(nullptr, DataLossError(who + "more writes than its credit"));
    return;
  }
  if (h.length != length ||
      (length > 0 && ctx_->FindRegion(h.src_rank, h.address, length) == nullptr)) {
    Refuse(nullptr, DataLossError(who + "its target is not inside memory registered here for it"));
    return;
  }
  ParkedMessage& m = parked_.emplace_back(ParkedMessage{lane, param.reply_ep, h, {}, nullptr});
  const auto* bytes = static_cast<const std::byte*>(data);
  if ((param.recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) == 0) {
    m.bytes.assign(bytes, bytes + length);
    return;
  }
  m.bytes.resize(length);
  ucp_request_param_t none{};
  ucs_status_ptr_t received =
      ucp_am_recv_data_nbx(ctx_->worker(lane), data, m.bytes.data(), length, &none);
  if (UCS_PTR_IS_ERR(received)) {
    parked_.pop_back();
    Refuse(nullptr, UnavailableError(ErrorText(who + "receive", UCS_PTR_STATUS(received))));
    return;
  }
  m.request = RequestOrNull(received);
  if (m.request != nullptr) ++progress_[static_cast<int>(lane)].outstanding;
}

void UcxTransport::Unpark() {
  std::vector<ParkedMessage> now;
  std::erase_if(parked_, [&](ParkedMessage& m) {
    if (m.request != nullptr) {
      const ucs_status_t status = ucp_request_check_status(m.request);
      if (status == UCS_INPROGRESS) return false;
      ucp_request_free(m.request);
      m.request = nullptr;
      --progress_[static_cast<int>(m.lane)].outstanding;
      if (status != UCS_OK) {
        Refuse(nullptr, UnavailableError(ErrorText("ucx: rank " + std::to_string(config_.rank) +
                                                       ": receive of a write before connecting",
                                                   status)));
        return true;
      }
    }
    if (!ep_peer_.contains(m.ep)) return false;
    now.push_back(std::move(m));
    return true;
  });
  for (ParkedMessage& m : now) {
    ucp_am_recv_param_t param{};
    param.recv_attr = UCP_AM_RECV_ATTR_FIELD_REPLY_EP;
    param.reply_ep = m.ep;
    Deliver(m.lane, &m.header, sizeof(m.header), m.bytes.data(), m.bytes.size(), param);
  }
}

void UcxTransport::DropParked() {
  for (const ParkedMessage& m : parked_) {
    if (m.request != nullptr) ucp_request_free(m.request);
  }
  parked_.clear();
}

bool UcxTransport::LandPayload(Inbox& inbox, Lane lane, const Context::TrackedRegion& region,
                               uint64_t address, void* data, size_t length, uint64_t recv_attr,
                               RingEntry* slot, const RingEntry& entry) {
  auto* target = reinterpret_cast<std::byte*>(static_cast<uintptr_t>(address));
  if ((recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) == 0) {
    std::memcpy(target, data, length);
    return true;
  }
  // Rendezvous: UCX moves the payload straight into the target (an RDMA read where the wire
  // has one); the entry waits until it has landed.
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH;
  param.memh = region.memh;
  ucs_status_ptr_t received =
      ucp_am_recv_data_nbx(ctx_->worker(lane), data, target, length, &param);
  if (UCS_PTR_IS_ERR(received)) {
    Refuse(&inbox, UnavailableError(PeerText(
                       inbox.peer(), "receive of a " + std::to_string(length) + "-byte write",
                       UCS_PTR_STATUS(received))));
    return false;
  }
  if (received == nullptr) return true;
  receiving_.push_back({received, &inbox, lane, slot, entry});
  ++progress_[static_cast<int>(lane)].outstanding;
  return false;
}

Completion& UcxTransport::Sink::Emit(Completion::Type type, int peer, Lane lane) {
  Completion& c = out[n++];
  c.type = type;
  c.peer = peer;
  c.lane = lane;
  c.imm = 0;
  c.length = 0;
  c.cookie = 0;
  c.error = Status();
  return c;
}

StatusOr<size_t> UcxTransport::Poll(std::span<Completion> out) {
  if (closed_) return size_t{0};
  ProgressWorkers();
  if (!parked_.empty()) Unpark();
  Sink sink{out};
  EmitFinishedWrites(sink);
  while (failed_reported_ < failed_.size() && !sink.full()) {
    Endpoint* e = failed_[failed_reported_++];
    sink.Emit(Completion::Type::kError, e->peer(), Lane::kData).error = e->FailureStatus();
  }
  // Rendezvous payloads that have landed get their entries now, before the ring scan.
  FinishReceives();
  while (refused_reported_ < refused_.size() && !sink.full()) {
    auto& [peer, why] = refused_[refused_reported_++];
    sink.Emit(Completion::Type::kError, peer, Lane::kData).error = std::move(why);
  }
  ScanRings(sink);
  return sink.n;
}

void UcxTransport::ProgressWorkers() {
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
}

void UcxTransport::EmitFinishedWrites(Sink& sink) {
  while (done_head_ < done_.size() && !sink.full()) {
    const DoneWrite& d = done_[done_head_++];
    sink.Emit(Completion::Type::kWriteDone, d.peer, d.lane).cookie = d.cookie;
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
    if (finished && !sink.full()) {
      const int peer = pw->endpoint->peer();
      if (pw->error == UCS_OK) {
        sink.Emit(Completion::Type::kWriteDone, peer, pw->lane).cookie = pw->cookie;
      } else {
        Completion& c = sink.Emit(Completion::Type::kError, peer, pw->lane);
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
}

void UcxTransport::FinishReceives() {
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
}

void UcxTransport::ScanRings(Sink& sink) {
  // ACK rings first: a credit return unblocks a sender, data only feeds a consumer. The start peer
  // rotates so a small `out` does not starve the last peers.
  const size_t peers = scanned_.size();
  for (Lane lane : {Lane::kAck, Lane::kData}) {
    for (size_t k = 0; k < peers && !sink.full(); ++k) {
      // No modulo here: a 64-bit division costs more than the rest of an idle poll.
      size_t i = scan_start_ + k;
      if (i >= peers) i -= peers;
      Inbox* inbox = scanned_[i];
      RingEntry entry;
      while (!sink.full() && inbox->TakeEntry(lane, &entry)) {
        Completion& c = sink.Emit(Completion::Type::kImmediate, inbox->peer(), lane);
        c.imm = entry.imm;
        c.length = entry.length;
      }
    }
  }
  if (peers > 0 && ++scan_start_ >= peers) scan_start_ = 0;
}

}  // namespace m2n::transport::ucx

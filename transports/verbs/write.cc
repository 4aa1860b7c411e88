// VerbsTransport's write path: Post checks a batch (validate.h), then chains the writes per queue
// pair into IBV_WR_RDMA_WRITE_WITH_IMM work requests (inlined and mostly unsignalled when small),
// waiting for room in a full send queue.
#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <typeinfo>
#include <utility>

#include "transports/validate.h"
#include "transports/verbs/transport.h"

namespace m2n::transport::verbs {

Status VerbsTransport::Validate(const Write& w) const {
  auto refuse = [&](const std::string& why) {
    return InvalidArgumentError(
        PeerText(w.peer, std::string("write on the ") + LaneName(w.lane) + why));
  };
  Endpoint* e = FindEndpoint(w.peer);
  if (e == nullptr || !e->connected()) {
    return InvalidArgumentError(Who() + ": write to rank " + std::to_string(w.peer) +
                                ", which is not connected");
  }
  if (!e->failure().ok()) return e->failure();
  if (w.lane != Lane::kData && w.lane != Lane::kAck) return refuse(": unknown lane");
  if (w.length == 0) return OkStatus();
  M2N_RETURN_IF_ERROR(
      ValidateWriteRegions(w, "verbs", typeid(VerbsRegion), typeid(VerbsRemoteRegion)));
  // A region of another VerbsTransport (another protection domain) is not ours either.
  if (static_cast<const VerbsRegion*>(w.local)->owner() != ctx_.get())
    return refuse(": local region not registered here");
  const auto* remote = static_cast<const VerbsRemoteRegion*>(w.remote);
  if (remote->owner() != ctx_.get()) return refuse(": remote region not unpacked here");
  if (remote->peer() != w.peer)
    return refuse(": remote region belongs to peer rank " + std::to_string(remote->peer()));
  if (w.length > ctx_->port_attr().max_msg_sz || w.length > UINT32_MAX) {
    return refuse(" of " + std::to_string(w.length) +
                  " bytes exceeds the port's largest message (" +
                  std::to_string(ctx_->port_attr().max_msg_sz) + " bytes)");
  }
  return OkStatus();
}

Status VerbsTransport::Post(std::span<const Write> writes) {
  if (closed_) return FailedPreconditionError(Who() + ": Post after Close");
  // All or nothing for bad arguments: nothing is posted unless every write is valid.
  for (const Write& w : writes) M2N_RETURN_IF_ERROR(Validate(w));
  if (wrs_.size() < writes.size()) {
    wrs_.resize(writes.size());
    sges_.resize(writes.size());
  }
  // One WR chain per QP, in post order; a chain that would overfill its send queue goes out early
  // and waits for room.
  Status result;
  for (uint32_t i = 0; i < writes.size() && result.ok(); ++i) {
    Endpoint* e = FindEndpoint(writes[i].peer);
    QueuePair& q = e->qp(writes[i].lane);
    if (q.batch < 0) {
      q.batch = static_cast<int>(touched_.size());
      touched_.push_back(&q);
      if (chains_.size() < touched_.size()) chains_.emplace_back();
      chains_[q.batch].clear();
    }
    std::vector<uint32_t>& chain = chains_[q.batch];
    if (q.outstanding() + chain.size() >= q.sq_depth) {
      result = PostChain(q, writes);
      if (result.ok()) result = WaitForRoom(q);
    }
    chain.push_back(i);
  }
  for (QueuePair* q : touched_) {
    if (result.ok()) result = PostChain(*q, writes);
    q->batch = -1;
  }
  touched_.clear();
  return result;
}

namespace {

// Small host payloads go inline: copied into the WQE by ibv_post_send, so no CQE is needed.
bool Inlined(const QueuePair& q, const Write& w) {
  return w.length == 0 || (w.length <= q.max_inline && w.local->kind() == MemoryKind::kHost);
}

// The work request of write number `seq` on its QP (wr_id): a write with immediate, one SGE.
void FillWr(const Write& w, uint64_t seq, ibv_send_wr* wr, ibv_sge* sge) {
  *wr = ibv_send_wr{};
  wr->wr_id = seq;
  wr->opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
  wr->imm_data = htonl(w.imm);
  if (w.length == 0) return;
  const auto* local = static_cast<const VerbsRegion*>(w.local);
  const auto* remote = static_cast<const VerbsRemoteRegion*>(w.remote);
  sge->addr = reinterpret_cast<uintptr_t>(local->data()) + w.local_offset;
  sge->length = static_cast<uint32_t>(w.length);
  sge->lkey = local->lkey();
  wr->sg_list = sge;
  wr->num_sge = 1;
  wr->wr.rdma.remote_addr = remote->address() + w.remote_offset;
  wr->wr.rdma.rkey = remote->rkey();
}

}  // namespace

Status VerbsTransport::PostChain(QueuePair& q, std::span<const Write> writes) {
  std::vector<uint32_t>& chain = chains_[q.batch];
  if (chain.empty()) return OkStatus();
  // The last write whose kWriteDone waits for a CQE is signalled, so that it comes.
  size_t last_needing_cqe = chain.size();
  for (size_t k = 0; k < chain.size(); ++k) {
    if (!Inlined(q, writes[chain[k]])) last_needing_cqe = k;
  }
  ibv_send_wr* head = nullptr;
  ibv_send_wr* tail = nullptr;
  uint64_t seq = q.posted;
  for (size_t k = 0; k < chain.size(); ++k, ++seq) {
    const Write& w = writes[chain[k]];
    ibv_send_wr& wr = wrs_[chain[k]];
    FillWr(w, seq, &wr, &sges_[chain[k]]);
    const bool inlined = Inlined(q, w);
    if (inlined && w.length > 0) wr.send_flags |= IBV_SEND_INLINE;
    ++q.unsignaled;
    if (k == last_needing_cqe || q.unsignaled >= signal_every_) {
      wr.send_flags |= IBV_SEND_SIGNALED;
      q.unsignaled = 0;
      q.last_signaled = seq + 1;
    }
    // An inlined payload was copied into the WQE by ibv_post_send: its source is free at once.
    if (inlined) {
      Emit(Completion::Type::kWriteDone, w.peer, w.lane).cookie = w.cookie;
    } else {
      q.pending.push_back({seq, w.cookie});
    }
    if (tail != nullptr)
      tail->next = &wr;
    else
      head = &wr;
    tail = &wr;
  }
  ibv_send_wr* bad = nullptr;
  const int err = ibv_post_send(q.qp, head, &bad);
  const int peer = q.endpoint->peer();
  if (err != 0) {
    Status s = UnavailableError(PeerText(peer, std::string("ibv_post_send (") + LaneName(q.lane) +
                                                   ", " + std::to_string(chain.size()) +
                                                   " WRs): " + std::strerror(err) + " (errno " +
                                                   std::to_string(err) + ")"));
    q.endpoint->set_failure(s);
    chain.clear();
    return s;
  }
  q.posted = seq;
  chain.clear();
  return OkStatus();
}

// A full send queue waits for the NIC (a peer not ready for receives, a congested link), bounded by
// Config::timeout and ended early by the owner's Abort (Config::aborted).
Status VerbsTransport::WaitForRoom(QueuePair& q) {
  const Deadline deadline = Deadline::After(config_.timeout);
  while (q.outstanding() >= q.sq_depth) {
    DrainCq(kPollBatch);
    if (!q.endpoint->failure().ok()) return q.endpoint->failure();
    if (config_.aborted && config_.aborted()) {
      return AbortedError(PeerText(
          q.endpoint->peer(),
          std::string(LaneName(q.lane)) + ": aborted while waiting for room in the send queue"));
    }
    if (deadline.Expired()) {
      return UnavailableError(
          PeerText(q.endpoint->peer(), std::string(LaneName(q.lane)) + ": send queue of " +
                                           std::to_string(q.sq_depth) + " WRs still full after " +
                                           std::to_string(config_.timeout.count()) + " ms"));
    }
  }
  return OkStatus();
}

}  // namespace m2n::transport::verbs

// VerbsTransport's completions: the one completion queue drained into kWriteDone (a signalled send
// completes every unsignalled one before it), kImmediate (receive WRs reposted in batches) and
// kError naming the peer and the ibv_wc status; Poll hands them out.
#include <arpa/inet.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>

#include "transports/verbs/transport.h"

namespace m2n::transport::verbs {
namespace {

// Receive WRs reposted at once; below the receive queue's slack over max_unpolled (16).
constexpr uint32_t kRepostBatch = 8;

std::string WcText(const ibv_wc& wc) {
  char vendor[32];
  std::snprintf(vendor, sizeof vendor, "0x%x", wc.vendor_err);
  return std::string(ibv_wc_status_str(wc.status)) + " (status " + std::to_string(wc.status) +
         ", vendor_err " + vendor + ")";
}

}  // namespace

Completion& VerbsTransport::Emit(Completion::Type type, int peer, Lane lane) {
  Completion& c = backlog_.emplace_back();
  c.type = type;
  c.peer = peer;
  c.lane = lane;
  return c;
}

void VerbsTransport::CompleteSends(QueuePair& q, uint64_t through_seq) {
  if (through_seq + 1 > q.completed) q.completed = through_seq + 1;
  while (!q.pending.empty() && q.pending.front().seq <= through_seq) {
    Emit(Completion::Type::kWriteDone, q.endpoint->peer(), q.lane).cookie =
        q.pending.front().cookie;
    q.pending.pop_front();
  }
}

void VerbsTransport::DrainCq(int budget) {
  ibv_wc wcs[kPollBatch];
  while (budget > 0) {
    const int n = ibv_poll_cq(cq_, std::min(budget, kPollBatch), wcs);
    if (n <= 0) {
      if (n < 0) {
        // The CQ itself failed (overrun, device gone): every peer is lost.
        for (auto& e : endpoints_) {
          if (e == nullptr || !e->failure().ok()) continue;
          e->set_failure(UnavailableError(
              PeerText(e->peer(), "ibv_poll_cq failed (CQ overrun or device error)")));
          Emit(Completion::Type::kError, e->peer(), Lane::kData).error = e->failure();
        }
      }
      break;
    }
    budget -= n;
    for (int i = 0; i < n; ++i) TakeCompletion(wcs[i]);
    if (n < kPollBatch) break;
  }
  // Receive WRs go back before the immediates are handed out, so the peer never finds none.
  for (QueuePair* q : repost_) {
    Status s = q->endpoint->PostReceives(q->lane, q->consumed_recvs);
    q->consumed_recvs = 0;
    if (!s.ok() && q->endpoint->failure().ok()) {
      q->endpoint->set_failure(s);
      Emit(Completion::Type::kError, q->endpoint->peer(), q->lane).error = s;
    }
  }
  repost_.clear();
}

void VerbsTransport::TakeCompletion(const ibv_wc& wc) {
  QueuePair* q = FindQp(wc.qp_num);
  if (q == nullptr) return;  // a QP already destroyed
  Endpoint& e = *q->endpoint;
  const bool recv = (wc.wr_id & kRecvWrId) != 0;
  if (wc.status != IBV_WC_SUCCESS) {
    // The pending writes through the failed one have left their source buffers (kWriteDone means
    // just that: nothing will read them any more), so they are handed back; what went wrong is
    // reported once per peer by the kError below, and later CQEs of a failed QP are flushes of
    // the same failure.
    if (!recv) CompleteSends(*q, wc.wr_id);
    if (e.failure().ok()) {
      e.set_failure(UnavailableError(PeerText(e.peer(), std::string(LaneName(q->lane)) + ": " +
                                                            (recv ? "receive" : "write-with-imm") +
                                                            " completion: " + WcText(wc))));
      Emit(Completion::Type::kError, e.peer(), q->lane).error = e.failure();
    }
    return;
  }
  if (!recv) {
    CompleteSends(*q, wc.wr_id);
    return;
  }
  if (wc.opcode != IBV_WC_RECV_RDMA_WITH_IMM || (wc.wc_flags & IBV_WC_WITH_IMM) == 0) {
    if (e.failure().ok()) {
      e.set_failure(
          DataLossError(PeerText(e.peer(), std::string(LaneName(q->lane)) +
                                               ": a receive completion that is not a write with "
                                               "immediate (opcode " +
                                               std::to_string(wc.opcode) + ")")));
      Emit(Completion::Type::kError, e.peer(), q->lane).error = e.failure();
    }
    return;
  }
  Completion& c = Emit(Completion::Type::kImmediate, e.peer(), q->lane);
  c.imm = ntohl(wc.imm_data);
  c.length = wc.byte_len;
  // Reposted in batches: the queue holds max_unpolled + 16 receive WRs, so up to
  // kRepostBatch - 1 held back still leaves more than the caller can have unpolled.
  if (++q->consumed_recvs == kRepostBatch) repost_.push_back(q);
}

StatusOr<size_t> VerbsTransport::Poll(std::span<Completion> out) {
  if (closed_) return size_t{0};
  if (backlog_.size() - backlog_head_ < out.size()) DrainCq(static_cast<int>(out.size()));
  size_t n = 0;
  while (n < out.size() && backlog_head_ < backlog_.size())
    out[n++] = std::move(backlog_[backlog_head_++]);
  if (backlog_head_ == backlog_.size()) {
    backlog_.clear();
    backlog_head_ = 0;
  }
  return n;
}

}  // namespace m2n::transport::verbs

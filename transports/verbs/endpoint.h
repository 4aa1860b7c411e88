// Per-peer connection state of the verbs transport: two RC queue pairs, one per Lane (data, ACK),
// each with its own traffic class and service level, both on the transport's one CQ; with the
// stream-ordered path (stream.h) two more, the proxy thread's, on its own CQ; and the connection
// address a peer needs to reach them (QPN, PSN, GID, LID, MTU), exchanged through the bootstrap
// store by Transport::LocalAddress / Connect.
#pragma once

#include <infiniband/verbs.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>

#include "m2n/status.h"
#include "transports/transport.h"
#include "transports/verbs/context.h"

namespace m2n::transport::verbs {

// QPs per peer: host-driven data and ACK (index = Lane), then the stream path's data and ACK.
inline constexpr int kStreamQpBase = kNumLanes;
inline constexpr int kMaxQps = 2 * kNumLanes;

// What LocalAddress(peer) says, parsed.
struct PeerAddress {
  int src_rank = -1;  // who made it
  int dst_rank = -1;  // for whom
  uint32_t max_unpolled = 0;
  uint8_t link_layer = 0;  // IBV_LINK_LAYER_*
  uint8_t mtu = 0;  // ibv_mtu: the sender's active (or configured) MTU
  uint16_t lid = 0;
  ibv_gid gid{};
  int num_qps = kNumLanes;  // kNumLanes, or kMaxQps with the stream path
  std::array<uint32_t, kMaxQps> qpn{};
  std::array<uint32_t, kMaxQps> psn{};
};

Bytes EncodePeerAddress(const PeerAddress& address);
// DataLoss on bad framing or a different format version; names the peer.
StatusOr<PeerAddress> DecodePeerAddress(int peer, std::span<const std::byte> bytes);

// "verbs: peer rank 3: <what>".
std::string PeerText(int peer, std::string_view what);
const char* LaneName(Lane lane);

class Endpoint;
struct QueuePair;
// "data QP", "ACK QP", "stream data QP", "stream ACK QP".
const char* QpName(const QueuePair& q);

// The wr_id of every receive WR; a send's wr_id is its sequence number on its QP, far below it.
inline constexpr uint64_t kRecvWrId = uint64_t{1} << 63;

// One RC queue pair and its send / receive bookkeeping. A send's wr_id is its sequence number on
// the QP; a CQE for a signalled send completes every send posted before it (RC completes in order).
struct QueuePair {
  struct PendingSend {
    uint64_t seq;
    uint64_t cookie;
  };
  ibv_qp* qp = nullptr;
  Endpoint* endpoint = nullptr;
  Lane lane = Lane::kData;
  bool stream = false;  // the stream path's (its CQ is the proxy thread's)
  uint32_t psn = 0;
  uint32_t sq_depth = 0;
  uint32_t rq_depth = 0;
  uint32_t max_inline = 0;
  uint64_t posted = 0;  // sends posted; the next one's wr_id
  uint64_t completed = 0;  // sends known complete (through a signalled CQE)
  uint64_t last_signaled = 0;  // seq + 1 of the last signalled send; 0: none
  uint32_t unsignaled = 0;  // sends since the last signalled one
  std::deque<PendingSend> pending;  // kWriteDone not yet reported, in post order
  uint32_t consumed_recvs = 0;  // receive WRs used up since the last repost
  int batch = -1;  // index of its chain in the Post being built, or -1

  uint64_t outstanding() const { return posted - completed; }
};

class Endpoint {
 public:
  // Creates the QPs in INIT with their receive WRs posted: two on `cq`, and two more on
  // `stream_cq` unless it is null; `inline_bytes` is a request, capped by what the device accepts.
  static StatusOr<std::unique_ptr<Endpoint>> Create(Context* ctx, ibv_cq* cq, ibv_cq* stream_cq,
                                                    int peer, const VerbsOptions& options,
                                                    uint32_t sq_depth, uint32_t rq_depth);
  ~Endpoint();
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  // Our half of the connection, for `peer`.
  PeerAddress Address(int rank, uint32_t max_unpolled) const;
  // Moves every QP to RTR and RTS towards the peer's `remote` half.
  Status Connect(const PeerAddress& remote, const VerbsOptions& options);
  // Connect's steps per queue pair: RTR and RTS; the data QP's rate limit
  // (M2N_VERBS_RATE_LIMIT_MBPS).
  Status ConnectQp(QueuePair& q, int lane, const PeerAddress& remote, ibv_mtu path_mtu,
                   const VerbsOptions& options);
  Status LimitRate(QueuePair& q, const VerbsOptions& options);

  int peer() const { return peer_; }
  bool connected() const { return connected_; }
  QueuePair& qp(Lane lane) { return qps_[static_cast<int>(lane)]; }
  const QueuePair& qp(Lane lane) const { return qps_[static_cast<int>(lane)]; }
  // The stream path's QPs (only when created with a stream CQ).
  QueuePair& stream_qp(Lane lane) { return qps_[kStreamQpBase + static_cast<int>(lane)]; }
  int num_qps() const { return num_qps_; }

  // The first failure seen on this peer (a bad CQE, a failed post); OK while healthy.
  const Status& failure() const { return failure_; }
  void set_failure(Status s) {
    if (failure_.ok()) failure_ = std::move(s);
  }

  // Posts `count` zero-SGE receive WRs on the lane's QP (or on `q`, any of ours).
  Status PostReceives(Lane lane, uint32_t count) { return PostReceives(qp(lane), count); }
  Status PostReceives(QueuePair& q, uint32_t count);

 private:
  Endpoint(Context* ctx, int peer) : ctx_(ctx), peer_(peer) {}
  Context* ctx_;
  int peer_;
  bool connected_ = false;
  int num_qps_ = kNumLanes;
  std::array<QueuePair, kMaxQps> qps_{};
  Status failure_;
};

}  // namespace m2n::transport::verbs

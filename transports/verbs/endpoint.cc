#include "transports/verbs/endpoint.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>
#include <string>

#include "transports/wire.h"

namespace m2n::transport::verbs {
namespace {

constexpr uint32_t kAddressMagic = 0x564E324D;  // "M2NV"
constexpr uint16_t kAddressVersion = 2;
// magic, version, QPs, src, dst, max_unpolled, link layer, mtu, lid, gid, (qpn, psn) per QP
constexpr size_t AddressBytes(int qps) {
  return 4 + 2 + 2 + 4 + 4 + 4 + 1 + 1 + 2 + 16 + static_cast<size_t>(qps) * 8;
}

uint32_t RandomPsn() {
  static std::mt19937 rng(std::random_device{}());
  return rng() & 0xFFFFFF;
}

}  // namespace

std::string PeerText(int peer, std::string_view what) {
  return "verbs: peer rank " + std::to_string(peer) + ": " + std::string(what);
}

const char* LaneName(Lane lane) { return lane == Lane::kData ? "data QP" : "ACK QP"; }

const char* QpName(const QueuePair& q) {
  if (q.stream) return q.lane == Lane::kData ? "stream data QP" : "stream ACK QP";
  return LaneName(q.lane);
}

Bytes EncodePeerAddress(const PeerAddress& a) {
  Bytes out;
  out.reserve(AddressBytes(a.num_qps));
  WireWriter w(out);
  w.Put<uint32_t>(kAddressMagic);
  w.Put<uint16_t>(kAddressVersion);
  w.Put<uint16_t>(static_cast<uint16_t>(a.num_qps));
  w.Put<int32_t>(a.src_rank);
  w.Put<int32_t>(a.dst_rank);
  w.Put<uint32_t>(a.max_unpolled);
  w.Put<uint8_t>(a.link_layer);
  w.Put<uint8_t>(a.mtu);
  w.Put<uint16_t>(a.lid);
  w.Put(a.gid);
  for (int i = 0; i < a.num_qps; ++i) {
    w.Put<uint32_t>(a.qpn[i]);
    w.Put<uint32_t>(a.psn[i]);
  }
  return out;
}

StatusOr<PeerAddress> DecodePeerAddress(int peer, std::span<const std::byte> bytes) {
  WireReader r(bytes);
  const auto magic = r.Get<uint32_t>();
  const auto version = r.Get<uint16_t>();
  const auto lanes = r.Get<uint16_t>();
  if (!r.ok() || magic != kAddressMagic) {
    return DataLossError(PeerText(peer, "connection address of " + std::to_string(bytes.size()) +
                                            " bytes is not a verbs address"));
  }
  if (version != kAddressVersion || (lanes != kNumLanes && lanes != kMaxQps)) {
    return DataLossError(
        PeerText(peer, "connection address has format version " + std::to_string(version) +
                           " with " + std::to_string(lanes) + " QPs; this build reads version " +
                           std::to_string(kAddressVersion) + " with " + std::to_string(kNumLanes) +
                           " or " + std::to_string(kMaxQps)));
  }
  if (bytes.size() != AddressBytes(lanes)) {
    return DataLossError(PeerText(peer, "connection address is " + std::to_string(bytes.size()) +
                                            " bytes, expected " +
                                            std::to_string(AddressBytes(lanes))));
  }
  PeerAddress a;
  a.src_rank = r.Get<int32_t>();
  a.dst_rank = r.Get<int32_t>();
  a.max_unpolled = r.Get<uint32_t>();
  a.link_layer = r.Get<uint8_t>();
  a.mtu = r.Get<uint8_t>();
  a.lid = r.Get<uint16_t>();
  a.gid = r.Get<ibv_gid>();
  a.num_qps = lanes;
  for (int i = 0; i < a.num_qps; ++i) {
    a.qpn[i] = r.Get<uint32_t>();
    a.psn[i] = r.Get<uint32_t>();
  }
  if (!r.ok()) return DataLossError(PeerText(peer, "connection address is truncated"));
  // A range check, not MtuBytes(): a byte outside ibv_mtu's values must not be cast to it.
  if (a.mtu < IBV_MTU_256 || a.mtu > IBV_MTU_4096) {
    return DataLossError(
        PeerText(peer, "connection address has MTU code " + std::to_string(a.mtu)));
  }
  return a;
}

StatusOr<std::unique_ptr<Endpoint>> Endpoint::Create(Context* ctx, ibv_cq* cq, ibv_cq* stream_cq,
                                                     int peer, const VerbsOptions& options,
                                                     uint32_t sq_depth, uint32_t rq_depth) {
  std::unique_ptr<Endpoint> e(new Endpoint(ctx, peer));
  e->num_qps_ = stream_cq != nullptr ? kMaxQps : kNumLanes;
  for (int index = 0; index < e->num_qps_; ++index) {
    QueuePair& q = e->qps_[index];
    q.endpoint = e.get();
    q.lane = static_cast<Lane>(index % kNumLanes);
    q.stream = index >= kStreamQpBase;
    if (q.stream) cq = stream_cq;
    q.psn = RandomPsn();
    q.sq_depth = sq_depth;
    q.rq_depth = rq_depth;
    // Ask for the inline size wanted; a device that refuses gets a smaller one, down to none.
    uint32_t want_inline = static_cast<uint32_t>(options.inline_bytes);
    for (;;) {
      ibv_qp_init_attr init{};
      init.send_cq = cq;
      init.recv_cq = cq;
      init.qp_type = IBV_QPT_RC;
      init.sq_sig_all = 0;
      init.cap.max_send_wr = sq_depth;
      init.cap.max_recv_wr = rq_depth;
      init.cap.max_send_sge = 1;
      init.cap.max_recv_sge = 1;
      init.cap.max_inline_data = want_inline;
      q.qp = ibv_create_qp(ctx->pd(), &init);
      if (q.qp != nullptr) {
        q.max_inline = init.cap.max_inline_data;
        break;
      }
      const int err = errno;
      if (want_inline == 0) {
        return UnavailableError(PeerText(
            peer, std::string("ibv_create_qp (") + QpName(q) + ", " + std::to_string(sq_depth) +
                      " send / " + std::to_string(rq_depth) + " receive WRs): " +
                      std::strerror(err) + " (errno " + std::to_string(err) + ")"));
      }
      want_inline /= 2;
      if (want_inline < 16) want_inline = 0;
    }
    ibv_qp_attr attr{};
    attr.qp_state = IBV_QPS_INIT;
    attr.pkey_index = 0;
    attr.port_num = static_cast<uint8_t>(ctx->port());
    attr.qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE;
    if (int err = ibv_modify_qp(
            q.qp, &attr, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
        err != 0) {
      return UnavailableError(PeerText(peer, std::string("ibv_modify_qp(") + QpName(q) +
                                                 " to INIT): " + std::strerror(err) + " (errno " +
                                                 std::to_string(err) + ")"));
    }
    // Receives go up before the peer can write: a write-with-imm consumes one.
    M2N_RETURN_IF_ERROR(e->PostReceives(q, rq_depth));
  }
  return e;
}

Endpoint::~Endpoint() {
  for (QueuePair& q : qps_) {
    if (q.qp != nullptr) ibv_destroy_qp(q.qp);
  }
}

PeerAddress Endpoint::Address(int rank, uint32_t max_unpolled) const {
  PeerAddress a;
  a.src_rank = rank;
  a.dst_rank = peer_;
  a.max_unpolled = max_unpolled;
  a.link_layer = ctx_->port_attr().link_layer;
  a.mtu = static_cast<uint8_t>(ctx_->port_attr().active_mtu);
  a.lid = ctx_->port_attr().lid;
  a.gid = ctx_->gid();
  a.num_qps = num_qps_;
  for (int i = 0; i < num_qps_; ++i) {
    a.qpn[i] = qps_[i].qp->qp_num;
    a.psn[i] = qps_[i].psn;
  }
  return a;
}

Status Endpoint::PostReceives(QueuePair& q, uint32_t count) {
  constexpr uint32_t kChunk = 32;
  ibv_recv_wr wrs[kChunk];
  while (count > 0) {
    const uint32_t n = count < kChunk ? count : kChunk;
    for (uint32_t i = 0; i < n; ++i) {
      wrs[i] = ibv_recv_wr{};
      wrs[i].wr_id = kRecvWrId;
      wrs[i].sg_list = nullptr;  // write-with-imm: the payload goes where the writer says
      wrs[i].num_sge = 0;
      wrs[i].next = i + 1 < n ? &wrs[i + 1] : nullptr;
    }
    ibv_recv_wr* bad = nullptr;
    if (int err = ibv_post_recv(q.qp, wrs, &bad); err != 0) {
      return UnavailableError(PeerText(
          peer_, std::string("ibv_post_recv (") + QpName(q) + ", " + std::to_string(n) +
                     " WRs): " + std::strerror(err) + " (errno " + std::to_string(err) + ")"));
    }
    count -= n;
  }
  return OkStatus();
}

Status Endpoint::Connect(const PeerAddress& remote, const VerbsOptions& options) {
  if (remote.link_layer != ctx_->port_attr().link_layer) {
    return FailedPreconditionError(PeerText(
        peer_,
        std::string("its port is ") +
            (remote.link_layer == IBV_LINK_LAYER_ETHERNET ? "Ethernet (RoCE)" : "InfiniBand") +
            ", ours (" + ctx_->Describe() + ") is not: both sides must be on one fabric"));
  }
  int mtu_bytes =
      std::min(MtuBytes(ctx_->port_attr().active_mtu), MtuBytes(static_cast<ibv_mtu>(remote.mtu)));
  if (options.mtu != 0) mtu_bytes = std::min(mtu_bytes, options.mtu);
  M2N_ASSIGN_OR_RETURN(ibv_mtu path_mtu, MtuFromBytes(mtu_bytes));
  if (remote.num_qps != num_qps_) {
    return FailedPreconditionError(
        PeerText(peer_, std::string("the stream-ordered path (GPU slots) is set up on ") +
                            (num_qps_ > remote.num_qps ? "this side" : "its side") +
                            " only: every rank needs Options::slot_memory = kCuda, or none"));
  }

  for (int lane = 0; lane < num_qps_; ++lane) {
    M2N_RETURN_IF_ERROR(ConnectQp(qps_[lane], lane, remote, path_mtu, options));
  }
  connected_ = true;
  return OkStatus();
}

// One queue pair to RTR (the peer's QP number, PSN and path) and then RTS.
Status Endpoint::ConnectQp(QueuePair& q, int lane, const PeerAddress& remote, ibv_mtu path_mtu,
                           const VerbsOptions& options) {
  const bool ack = q.lane == Lane::kAck;
  const int traffic_class =
      ack && options.ack_traffic_class >= 0 ? options.ack_traffic_class : options.traffic_class;
  const int sl =
      ack && options.ack_service_level >= 0 ? options.ack_service_level : options.service_level;
  auto fail = [&](const char* step, int err) {
    return UnavailableError(PeerText(peer_, std::string("ibv_modify_qp(") + QpName(q) + " to " +
                                                step + "): " + std::strerror(err) + " (errno " +
                                                std::to_string(err) + ")"));
  };

  ibv_qp_attr attr{};
  attr.qp_state = IBV_QPS_RTR;
  attr.path_mtu = path_mtu;
  attr.dest_qp_num = remote.qpn[lane];
  attr.rq_psn = remote.psn[lane];
  attr.max_dest_rd_atomic = static_cast<uint8_t>(std::max(1, options.max_rd_atomic));
  attr.min_rnr_timer = static_cast<uint8_t>(options.min_rnr_timer);
  attr.ah_attr.dlid = remote.lid;
  attr.ah_attr.sl = static_cast<uint8_t>(sl);
  attr.ah_attr.src_path_bits = 0;
  attr.ah_attr.port_num = static_cast<uint8_t>(ctx_->port());
  if (ctx_->global_routing()) {
    attr.ah_attr.is_global = 1;
    attr.ah_attr.grh.dgid = remote.gid;
    attr.ah_attr.grh.sgid_index = static_cast<uint8_t>(ctx_->gid_index());
    attr.ah_attr.grh.hop_limit = 64;
    attr.ah_attr.grh.traffic_class = static_cast<uint8_t>(traffic_class);
    attr.ah_attr.grh.flow_label = 0;
  }
  if (int err = ibv_modify_qp(q.qp, &attr,
                              IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                                  IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
      err != 0) {
    return fail("RTR", err);
  }

  attr = ibv_qp_attr{};
  attr.qp_state = IBV_QPS_RTS;
  attr.timeout = static_cast<uint8_t>(options.timeout);
  attr.retry_cnt = static_cast<uint8_t>(options.retry_count);
  attr.rnr_retry = static_cast<uint8_t>(options.rnr_retry);
  attr.sq_psn = q.psn;
  attr.max_rd_atomic = static_cast<uint8_t>(options.max_rd_atomic);
  if (int err = ibv_modify_qp(q.qp, &attr,
                              IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                                  IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC);
      err != 0) {
    return fail("RTS", err);
  }
  // A per-QP rate limit applies to data only: ACKs are tiny and must never be held back.
  if (options.rate_limit_mbps > 0 && !ack) return LimitRate(q, options);
  return OkStatus();
}

Status Endpoint::LimitRate(QueuePair& q, const VerbsOptions& options) {
  ibv_qp_rate_limit_attr rate{};
  rate.rate_limit = static_cast<uint32_t>(options.rate_limit_mbps) * 1000u;  // kbps
  if (int err = ibv_modify_qp_rate_limit(q.qp, &rate); err != 0) {
    const std::string text = PeerText(
        peer_, std::string("ibv_modify_qp_rate_limit(") + std::to_string(options.rate_limit_mbps) +
                   " Mb/s, M2N_VERBS_RATE_LIMIT_MBPS): " + std::strerror(err) + " (errno " +
                   std::to_string(err) + ")");
    if (err == EOPNOTSUPP || err == ENOTSUP || err == EINVAL) {
      return UnimplementedError(text + "; " + ctx_->device_name() + " has no per-QP rate limit");
    }
    return UnavailableError(text);
  }
  return OkStatus();
}

}  // namespace m2n::transport::verbs

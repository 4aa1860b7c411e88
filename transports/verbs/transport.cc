#include "transports/verbs/transport.h"

#include <arpa/inet.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <typeinfo>
#include <utility>

#include "transports/validate.h"

#if M2N_VERBS_WITH_CUDA
#include "transports/verbs/cuda_driver.h"
#endif

namespace m2n::transport::verbs {
namespace {

constexpr int kMaxUnpolledLimit = 1 << 16;
// CQEs taken per ibv_poll_cq.
constexpr int kPollBatch = 32;
// Receive WRs reposted at once; below the receive queue's slack over max_unpolled (16).
constexpr uint32_t kRepostBatch = 8;

std::string WcText(const ibv_wc& wc) {
  char vendor[32];
  std::snprintf(vendor, sizeof vendor, "0x%x", wc.vendor_err);
  return std::string(ibv_wc_status_str(wc.status)) + " (status " + std::to_string(wc.status) + ", vendor_err " +
         vendor + ")";
}

}  // namespace

StatusOr<std::unique_ptr<Transport>> VerbsTransport::Create(const Config& config) {
  const std::string who = "verbs: rank " + std::to_string(config.rank);
  if (config.world_size <= 0 || config.rank < 0 || config.rank >= config.world_size) {
    return InvalidArgumentError(who + ": rank outside a world of " + std::to_string(config.world_size));
  }
  if (config.max_unpolled < 1 || config.max_unpolled > kMaxUnpolledLimit) {
    return InvalidArgumentError(who + ": max_unpolled " + std::to_string(config.max_unpolled) + " outside [1, " +
                                std::to_string(kMaxUnpolledLimit) + "]");
  }
  std::unique_ptr<VerbsTransport> t(new VerbsTransport(config));
  t->peer_index_.assign(config.world_size, -1);
  for (size_t i = 0; i < config.peers.size(); ++i) {
    const int peer = config.peers[i];
    if (peer < 0 || peer >= config.world_size) {
      return InvalidArgumentError(who + ": peer rank " + std::to_string(peer) + " outside a world of " +
                                  std::to_string(config.world_size));
    }
    if (t->peer_index_[peer] >= 0) {
      return InvalidArgumentError(who + ": peer rank " + std::to_string(peer) + " listed twice");
    }
    t->peer_index_[peer] = static_cast<int>(i);
  }
  t->endpoints_.resize(config.peers.size());
  M2N_ASSIGN_OR_RETURN(t->options_, VerbsOptionsFromEnv());
  // M2N_VERBS_DEVICE wins; else the group's NIC (named by the operator: a must; from the topology:
  // tried first).
  if (t->options_.device.empty() && !config.nic.empty()) {
    (config.nic_required ? t->options_.device : t->options_.preferred_device) = config.nic;
  }
  {
    auto ctx = Context::Open(t->options_);
    if (!ctx.ok()) return ctx.status().WithContext(who);
    t->ctx_ = std::move(ctx).value();
  }

  // Queue sizes. Receives: the caller keeps at most max_unpolled immediates unpolled per (peer,
  // lane) and Poll reposts what it consumed, so max_unpolled WRs would do; the rest is slack.
  // Sends: room for a few credit windows, with a signalled WR at least every signal_every so that
  // a full send queue always has a completion coming. The CQ holds every CQE that can be
  // outstanding: one per receive WR and per signalled send.
  const auto& dev = t->ctx_->device_attr();
  const uint32_t max_wr = static_cast<uint32_t>(std::max(dev.max_qp_wr, 16));
  const uint32_t unpolled = static_cast<uint32_t>(config.max_unpolled);
  t->rq_depth_ = std::min(max_wr, unpolled + 16);
  t->sq_depth_ = std::min(max_wr, std::max<uint32_t>(64, 2 * unpolled + 16));
  t->signal_every_ = t->options_.signal_every > 0
                         ? std::min<uint32_t>(t->options_.signal_every, t->sq_depth_ / 2)
                         : std::max<uint32_t>(1, t->sq_depth_ / 4);
  t->signal_every_ = std::max<uint32_t>(1, t->signal_every_);
  const uint64_t cqes = std::max<uint64_t>(1, config.peers.size()) * kNumLanes * (t->sq_depth_ + t->rq_depth_) + 16;
  if (cqes > static_cast<uint64_t>(dev.max_cqe)) {
    return InvalidArgumentError(who + ": " + std::to_string(config.peers.size()) + " peers with " +
                                std::to_string(config.max_unpolled) + " slots each need a CQ of " +
                                std::to_string(cqes) + " entries; " + t->ctx_->device_name() + " allows " +
                                std::to_string(dev.max_cqe));
  }
  t->cq_ = ibv_create_cq(t->ctx_->device(), static_cast<int>(cqes), nullptr, nullptr, 0);
  if (t->cq_ == nullptr) {
    return UnavailableError(who + ": " + VerbError("ibv_create_cq(" + std::to_string(cqes) + " entries)", errno));
  }
  t->backlog_.reserve(256);
  if (config.slot_memory == MemoryKind::kCuda) M2N_RETURN_IF_ERROR(t->InitStreamPath());
  return std::unique_ptr<Transport>(std::move(t));
}

VerbsTransport::~VerbsTransport() {
  if (!closed_) Teardown();
}

Capabilities VerbsTransport::capabilities() const {
  Capabilities caps;
  caps.host_memory = true;
  caps.cuda_memory = CudaRegistrationBuilt();
  caps.native_write_with_imm = true;
  caps.max_write_bytes = std::min<size_t>(ctx_->port_attr().max_msg_sz, UINT32_MAX);
  caps.stream_ordered = stream_cq_ != nullptr;
  return caps;
}

StatusOr<std::unique_ptr<Region>> VerbsTransport::Register(void* data, size_t size, MemoryKind kind) {
  auto region = VerbsRegion::Register(ctx_, data, size, kind);
  if (!region.ok()) return region.status().WithContext(Who());
  return std::unique_ptr<Region>(std::move(region).value());
}

StatusOr<std::unique_ptr<Region>> VerbsTransport::Allocate(size_t size, MemoryKind kind) {
  auto region = VerbsRegion::Allocate(ctx_, size, kind);
  if (!region.ok()) return region.status().WithContext(Who());
  return std::unique_ptr<Region>(std::move(region).value());
}

Endpoint* VerbsTransport::FindEndpoint(int peer) const {
  if (peer < 0 || peer >= config_.world_size || peer_index_[peer] < 0) return nullptr;
  return endpoints_[peer_index_[peer]].get();
}

QueuePair* VerbsTransport::FindQp(uint32_t qp_num) const {
  auto it = std::lower_bound(qp_by_num_.begin(), qp_by_num_.end(), qp_num,
                             [](const auto& entry, uint32_t n) { return entry.first < n; });
  return it != qp_by_num_.end() && it->first == qp_num ? it->second : nullptr;
}

StatusOr<Bytes> VerbsTransport::LocalAddress(int peer) {
  if (closed_) return FailedPreconditionError(Who() + ": LocalAddress after Close");
  if (peer < 0 || peer >= config_.world_size || peer_index_[peer] < 0) {
    return InvalidArgumentError(Who() + ": LocalAddress for rank " + std::to_string(peer) +
                                ", which is not in Config::peers");
  }
  auto& endpoint = endpoints_[peer_index_[peer]];
  if (endpoint == nullptr) {
    // The QPs exist from here on: their numbers are what the peer needs.
    M2N_ASSIGN_OR_RETURN(endpoint, Endpoint::Create(ctx_.get(), cq_, stream_cq_, peer, options_, sq_depth_,
                                                    rq_depth_));
    for (int lane = 0; lane < kNumLanes; ++lane) {
      QueuePair& q = endpoint->qp(static_cast<Lane>(lane));
      qp_by_num_.emplace_back(q.qp->qp_num, &q);
    }
    std::sort(qp_by_num_.begin(), qp_by_num_.end());
  }
  return EncodePeerAddress(endpoint->Address(config_.rank, static_cast<uint32_t>(config_.max_unpolled)));
}

Status VerbsTransport::Connect(int peer, std::span<const std::byte> remote_address) {
  if (closed_) return FailedPreconditionError(Who() + ": Connect after Close");
  if (peer < 0 || peer >= config_.world_size || peer_index_[peer] < 0) {
    return InvalidArgumentError(Who() + ": Connect to rank " + std::to_string(peer) +
                                ", which is not in Config::peers");
  }
  Endpoint* e = FindEndpoint(peer);
  if (e == nullptr) {
    return FailedPreconditionError(PeerText(peer, "Connect before LocalAddress: the peer cannot know our QPs"));
  }
  if (e->connected()) return FailedPreconditionError(PeerText(peer, "connected twice"));
  M2N_ASSIGN_OR_RETURN(PeerAddress a, DecodePeerAddress(peer, remote_address));
  if (a.src_rank != peer || a.dst_rank != config_.rank) {
    return InvalidArgumentError(PeerText(peer, "connection address was made by rank " + std::to_string(a.src_rank) +
                                                   " for rank " + std::to_string(a.dst_rank) + ", not for rank " +
                                                   std::to_string(config_.rank)));
  }
  if (a.max_unpolled != static_cast<uint32_t>(config_.max_unpolled)) {
    return FailedPreconditionError(PeerText(peer, "max_unpolled " + std::to_string(a.max_unpolled) + " there, " +
                                                      std::to_string(config_.max_unpolled) + " here"));
  }
  return e->Connect(a, options_);
}

StatusOr<std::unique_ptr<RemoteRegion>> VerbsTransport::UnpackRemoteKey(int peer, std::span<const std::byte> packed) {
  if (peer < 0 || peer >= config_.world_size || peer_index_[peer] < 0) {
    return InvalidArgumentError(Who() + ": remote key of rank " + std::to_string(peer) +
                                ", which is not in Config::peers");
  }
  M2N_ASSIGN_OR_RETURN(auto remote, VerbsRemoteRegion::Unpack(ctx_.get(), peer, packed));
  return std::unique_ptr<RemoteRegion>(std::move(remote));
}

Status VerbsTransport::Validate(const Write& w) const {
  auto refuse = [&](const std::string& why) {
    return InvalidArgumentError(PeerText(w.peer, std::string("write on the ") + LaneName(w.lane) + why));
  };
  Endpoint* e = FindEndpoint(w.peer);
  if (e == nullptr || !e->connected()) {
    return InvalidArgumentError(Who() + ": write to rank " + std::to_string(w.peer) + ", which is not connected");
  }
  if (!e->failure().ok()) return e->failure();
  if (w.lane != Lane::kData && w.lane != Lane::kAck) return refuse(": unknown lane");
  if (w.length == 0) return OkStatus();
  M2N_RETURN_IF_ERROR(ValidateWriteRegions(w, "verbs", typeid(VerbsRegion), typeid(VerbsRemoteRegion)));
  // A region of another VerbsTransport (another protection domain) is not ours either.
  if (static_cast<const VerbsRegion*>(w.local)->owner() != ctx_.get()) return refuse(": local region not registered here");
  const auto* remote = static_cast<const VerbsRemoteRegion*>(w.remote);
  if (remote->owner() != ctx_.get()) return refuse(": remote region not unpacked here");
  if (remote->peer() != w.peer) return refuse(": remote region belongs to peer rank " + std::to_string(remote->peer()));
  if (w.length > ctx_->port_attr().max_msg_sz || w.length > UINT32_MAX) {
    return refuse(" of " + std::to_string(w.length) + " bytes exceeds the port's largest message (" +
                  std::to_string(ctx_->port_attr().max_msg_sz) + " bytes)");
  }
  return OkStatus();
}

Completion& VerbsTransport::Emit(Completion::Type type, int peer, Lane lane) {
  Completion& c = backlog_.emplace_back();
  c.type = type;
  c.peer = peer;
  c.lane = lane;
  return c;
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

Status VerbsTransport::PostChain(QueuePair& q, std::span<const Write> writes) {
  std::vector<uint32_t>& chain = chains_[q.batch];
  if (chain.empty()) return OkStatus();
  // The last write whose kWriteDone waits for a CQE is signalled, so that it comes.
  size_t last_needing_cqe = chain.size();
  for (size_t k = 0; k < chain.size(); ++k) {
    const Write& w = writes[chain[k]];
    const bool inlined = w.length == 0 || (w.length <= q.max_inline && w.local->kind() == MemoryKind::kHost);
    if (!inlined) last_needing_cqe = k;
  }
  ibv_send_wr* head = nullptr;
  ibv_send_wr* tail = nullptr;
  uint64_t seq = q.posted;
  for (size_t k = 0; k < chain.size(); ++k, ++seq) {
    const Write& w = writes[chain[k]];
    ibv_send_wr& wr = wrs_[chain[k]];
    ibv_sge& sge = sges_[chain[k]];
    wr = ibv_send_wr{};
    wr.wr_id = seq;
    wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
    wr.imm_data = htonl(w.imm);
    if (w.length > 0) {
      const auto* local = static_cast<const VerbsRegion*>(w.local);
      const auto* remote = static_cast<const VerbsRemoteRegion*>(w.remote);
      sge.addr = reinterpret_cast<uintptr_t>(local->data()) + w.local_offset;
      sge.length = static_cast<uint32_t>(w.length);
      sge.lkey = local->lkey();
      wr.sg_list = &sge;
      wr.num_sge = 1;
      wr.wr.rdma.remote_addr = remote->address() + w.remote_offset;
      wr.wr.rdma.rkey = remote->rkey();
    }
    const bool inlined = w.length == 0 || (w.length <= q.max_inline && w.local->kind() == MemoryKind::kHost);
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
    if (tail != nullptr) tail->next = &wr;
    else head = &wr;
    tail = &wr;
  }
  ibv_send_wr* bad = nullptr;
  const int err = ibv_post_send(q.qp, head, &bad);
  const int peer = q.endpoint->peer();
  if (err != 0) {
    Status s = UnavailableError(PeerText(peer, std::string("ibv_post_send (") + LaneName(q.lane) + ", " +
                                                   std::to_string(chain.size()) + " WRs): " + std::strerror(err) +
                                                   " (errno " + std::to_string(err) + ")"));
    q.endpoint->set_failure(s);
    chain.clear();
    return s;
  }
  q.posted = seq;
  chain.clear();
  return OkStatus();
}

Status VerbsTransport::WaitForRoom(QueuePair& q) {
  const Deadline deadline = Deadline::After(config_.timeout);
  while (q.outstanding() >= q.sq_depth) {
    DrainCq(kPollBatch);
    if (!q.endpoint->failure().ok()) return q.endpoint->failure();
    if (deadline.Expired()) {
      return UnavailableError(PeerText(q.endpoint->peer(), std::string(LaneName(q.lane)) + ": send queue of " +
                                                               std::to_string(q.sq_depth) +
                                                               " WRs still full after " +
                                                               std::to_string(config_.timeout.count()) + " ms"));
    }
  }
  return OkStatus();
}

void VerbsTransport::CompleteSends(QueuePair& q, uint64_t through_seq) {
  if (through_seq + 1 > q.completed) q.completed = through_seq + 1;
  while (!q.pending.empty() && q.pending.front().seq <= through_seq) {
    Emit(Completion::Type::kWriteDone, q.endpoint->peer(), q.lane).cookie = q.pending.front().cookie;
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
          e->set_failure(UnavailableError(PeerText(e->peer(), "ibv_poll_cq failed (CQ overrun or device error)")));
          Emit(Completion::Type::kError, e->peer(), Lane::kData).error = e->failure();
        }
      }
      break;
    }
    budget -= n;
    for (int i = 0; i < n; ++i) {
      const ibv_wc& wc = wcs[i];
      QueuePair* q = FindQp(wc.qp_num);
      if (q == nullptr) continue;  // a QP already destroyed
      Endpoint& e = *q->endpoint;
      const bool recv = (wc.wr_id & kRecvWrId) != 0;
      if (wc.status != IBV_WC_SUCCESS) {
        if (!recv) CompleteSends(*q, wc.wr_id);  // the pending writes are not reported as done...
        // ...but as one error per peer; later CQEs of a failed QP are flushes of the same failure.
        if (e.failure().ok()) {
          e.set_failure(UnavailableError(PeerText(e.peer(), std::string(LaneName(q->lane)) + ": " +
                                                                (recv ? "receive" : "write-with-imm") +
                                                                " completion: " + WcText(wc))));
          Emit(Completion::Type::kError, e.peer(), q->lane).error = e.failure();
        }
        continue;
      }
      if (!recv) {
        CompleteSends(*q, wc.wr_id);
        continue;
      }
      if (wc.opcode != IBV_WC_RECV_RDMA_WITH_IMM || (wc.wc_flags & IBV_WC_WITH_IMM) == 0) {
        if (e.failure().ok()) {
          e.set_failure(DataLossError(PeerText(e.peer(), std::string(LaneName(q->lane)) +
                                                             ": a receive completion that is not a write with "
                                                             "immediate (opcode " +
                                                             std::to_string(wc.opcode) + ")")));
          Emit(Completion::Type::kError, e.peer(), q->lane).error = e.failure();
        }
        continue;
      }
      Completion& c = Emit(Completion::Type::kImmediate, e.peer(), q->lane);
      c.imm = ntohl(wc.imm_data);
      c.length = wc.byte_len;
      // Reposted in batches: the queue holds max_unpolled + 16 receive WRs, so up to
      // kRepostBatch - 1 held back still leaves more than the caller can have unpolled.
      if (++q->consumed_recvs == kRepostBatch) repost_.push_back(q);
    }
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

StatusOr<size_t> VerbsTransport::Poll(std::span<Completion> out) {
  if (closed_) return size_t{0};
  if (backlog_.size() - backlog_head_ < out.size()) DrainCq(static_cast<int>(out.size()));
  size_t n = 0;
  while (n < out.size() && backlog_head_ < backlog_.size()) out[n++] = std::move(backlog_[backlog_head_++]);
  if (backlog_head_ == backlog_.size()) {
    backlog_.clear();
    backlog_head_ = 0;
  }
  return n;
}

void VerbsTransport::Teardown() {
  closed_ = true;
  proxy_.reset();  // the proxy thread uses the stream QPs: it stops first
  qp_by_num_.clear();
  endpoints_.clear();  // destroys the QPs, then the CQ they used can go
  if (cq_ != nullptr) {
    ibv_destroy_cq(cq_);
    cq_ = nullptr;
  }
  if (stream_cq_ != nullptr) {
    ibv_destroy_cq(stream_cq_);
    stream_cq_ = nullptr;
  }
  if (stream_words_ != nullptr) {
#if M2N_VERBS_WITH_CUDA
    if (auto cuda = CudaDriver::Get(); cuda.ok()) (*cuda)->mem_host_unregister(stream_words_);
#endif
    std::free(stream_words_);
    stream_words_ = nullptr;
  }
  backlog_.clear();
  backlog_head_ = 0;
}

Status VerbsTransport::Close(Deadline deadline) {
  if (closed_) return OkStatus();
  // Wait for every signalled send of a healthy peer: after that, nothing of ours is in flight
  // (unsignalled sends before a signalled one completed with it; the Group's close barrier covers
  // the trailing inlined ones, which were reported done at post).
  auto unconfirmed = [&] {
    uint64_t count = 0;
    for (auto& e : endpoints_) {
      if (e == nullptr || !e->failure().ok()) continue;
      for (int lane = 0; lane < kNumLanes; ++lane) {
        const QueuePair& q = e->qp(static_cast<Lane>(lane));
        if (q.last_signaled > q.completed) count += q.pending.size() + 1;
      }
    }
    return count;
  };
  uint64_t left = unconfirmed();
  while (left > 0 && !deadline.Expired()) {
    DrainCq(kPollBatch);
    left = unconfirmed();
    if (left > 0) sched_yield();
  }
  Teardown();
  if (left > 0) {
    return DeadlineExceededError(Who() + ": close: " + std::to_string(left) +
                                 " writes unconfirmed by the deadline");
  }
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Stream-ordered path (stream.h).

Status VerbsTransport::InitStreamPath() {
#if M2N_VERBS_WITH_CUDA
  auto driver = CudaDriver::Get();
  if (!driver.ok()) return driver.status().WithContext(Who() + ": GPU slots");
  const CudaDriver* cuda = *driver;
  CUcontext context = nullptr;
  if (cuda->ctx_get_current(&context) != CUDA_SUCCESS || context == nullptr) {
    return FailedPreconditionError(Who() + ": GPU slots: no CUDA context is current on this thread "
                                           "(cudaSetDevice before Group::Create)");
  }
  cuda_context_ = context;
  CUdevice device = 0;
  if (CUresult r = cuda->ctx_get_device(&device); r != CUDA_SUCCESS) {
    return UnavailableError(cuda->Error("cuCtxGetDevice", r));
  }
  // Making the NIC's writes visible to the GPU: at the stream's wait where the GPU can flush remote
  // writes itself, else from the proxy (cuFlushGPUDirectRDMAWrites), else not needed or not possible
  // (the platform orders them; README.md says which).
  int can_flush = 0;
  int flush_options = 0;
  (void)cuda->device_get_attribute(&can_flush, CU_DEVICE_ATTRIBUTE_CAN_FLUSH_REMOTE_WRITES, device);
  (void)cuda->device_get_attribute(&flush_options, CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_FLUSH_WRITES_OPTIONS, device);
  if (can_flush != 0) {
    stream_wait_flags_ = CU_STREAM_WAIT_VALUE_FLUSH;
  } else if ((flush_options & CU_FLUSH_GPU_DIRECT_RDMA_WRITES_OPTION_HOST) != 0 &&
             cuda->flush_gpudirect_rdma_writes != nullptr) {
    host_flush_ = true;
  }
  if (config_.slot_depth <= 0) config_.slot_depth = config_.max_unpolled;
  const uint64_t cqes =
      std::max<uint64_t>(1, config_.peers.size()) * kNumLanes * (sq_depth_ + rq_depth_) + 16;
  stream_cq_ = ibv_create_cq(ctx_->device(), static_cast<int>(cqes), nullptr, nullptr, 0);
  if (stream_cq_ == nullptr) {
    return UnavailableError(Who() + ": " + VerbError("ibv_create_cq(stream path, " + std::to_string(cqes) + " entries)", errno));
  }
  stream_word_count_ = StreamProxy::WordCount(config_.peers.size(), config_.slot_depth);
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t bytes = (stream_word_count_ * sizeof(uint32_t) + page - 1) / page * page;
  stream_words_ = static_cast<uint32_t*>(std::aligned_alloc(page, bytes));
  if (stream_words_ == nullptr) return UnavailableError(Who() + ": allocating the stream path's words failed");
  std::memset(stream_words_, 0, bytes);
  if (CUresult r = cuda->mem_host_register(stream_words_, bytes, CU_MEMHOSTREGISTER_DEVICEMAP | CU_MEMHOSTREGISTER_PORTABLE);
      r != CUDA_SUCCESS) {
    std::free(stream_words_);
    stream_words_ = nullptr;
    return UnavailableError(cuda->Error("cuMemHostRegister of the stream path's words", r));
  }
  CUdeviceptr device_words = 0;
  if (CUresult r = cuda->mem_host_get_device_pointer(&device_words, stream_words_, 0); r != CUDA_SUCCESS) {
    return UnavailableError(cuda->Error("cuMemHostGetDevicePointer of the stream path's words", r));
  }
  stream_words_device_ = device_words;
  return OkStatus();
#else
  return UnimplementedError(Who() + ": GPU slots need a build with the CUDA toolkit found");
#endif
}

Status VerbsTransport::StartProxy() {
  if (proxy_ != nullptr) return OkStatus();
#if M2N_VERBS_WITH_CUDA
  M2N_ASSIGN_OR_RETURN(const CudaDriver* cuda, CudaDriver::Get());
  std::vector<StreamProxy::Peer> peers;
  for (size_t i = 0; i < config_.peers.size(); ++i) peers.push_back({config_.peers[i], endpoints_[i].get()});
  StreamProxy::Settings settings;
  settings.slot_depth = config_.slot_depth;
  settings.timeout = config_.timeout;
  settings.proxy_core = config_.proxy_core;
  CUcontext context = static_cast<CUcontext>(cuda_context_);
  settings.on_start = [cuda, context] { (void)cuda->ctx_set_current(context); };
  if (host_flush_) {
    settings.flush = [cuda] {
      (void)cuda->flush_gpudirect_rdma_writes(CU_FLUSH_GPU_DIRECT_RDMA_WRITES_TARGET_CURRENT_CTX,
                                              CU_FLUSH_GPU_DIRECT_RDMA_WRITES_TO_OWNER);
    };
  }
  auto proxy = StreamProxy::Start(stream_cq_, std::move(peers), stream_words_, std::move(settings));
  if (!proxy.ok()) return proxy.status().WithContext(Who());
  proxy_ = std::move(proxy).value();
  return OkStatus();
#else
  return UnimplementedError(Who() + ": the stream path needs a build with the CUDA toolkit found");
#endif
}

Status VerbsTransport::CheckStreamSlot(int peer, int slot, std::string_view call) const {
  if (closed_) return FailedPreconditionError(Who() + ": " + std::string(call) + " after Close");
  if (stream_cq_ == nullptr) {
    return FailedPreconditionError(Who() + ": " + std::string(call) + " needs GPU slots (Config::slot_memory)");
  }
  Endpoint* e = FindEndpoint(peer);
  if (e == nullptr || !e->connected()) {
    return InvalidArgumentError(Who() + ": " + std::string(call) + " to rank " + std::to_string(peer) +
                                ", which is not connected");
  }
  if (slot < 0 || slot >= config_.slot_depth) {
    return InvalidArgumentError(PeerText(peer, std::string(call) + ": slot " + std::to_string(slot) + " outside [0, " +
                                                   std::to_string(config_.slot_depth) + ")"));
  }
  return OkStatus();
}

uint64_t VerbsTransport::DeviceWord(StreamWord kind, int peer, int slot) const {
  return stream_words_device_ + sizeof(uint32_t) * StreamProxy::WordIndex(kind, config_.peers.size(),
                                                                          config_.slot_depth, peer_index_[peer], slot);
}

Status VerbsTransport::SendOnStream(std::span<const StreamWrite> writes, void* stream) {
  for (const StreamWrite& w : writes) {
    M2N_RETURN_IF_ERROR(CheckStreamSlot(w.peer, w.slot, "SendOnStream"));
    // The same checks as a host-driven write of the same bytes.
    Write as_write;
    as_write.peer = w.peer;
    as_write.local = w.local;
    as_write.local_offset = w.local_offset;
    as_write.remote = w.remote;
    as_write.remote_offset = w.remote_offset;
    as_write.length = w.length;
    M2N_RETURN_IF_ERROR(Validate(as_write));
    if (w.remote == nullptr) return InvalidArgumentError(PeerText(w.peer, "SendOnStream without the peer's slots"));
  }
#if M2N_VERBS_WITH_CUDA
  M2N_RETURN_IF_ERROR(StartProxy());
  M2N_ASSIGN_OR_RETURN(const CudaDriver* cuda, CudaDriver::Get());
  CUstream s = static_cast<CUstream>(stream);
  // All the ready marks first, then the waits: the proxy posts every write of the batch at once.
  std::vector<uint32_t> generations(writes.size());
  for (size_t i = 0; i < writes.size(); ++i) {
    const StreamWrite& w = writes[i];
    const auto* remote = static_cast<const VerbsRemoteRegion*>(w.remote);
    StreamDescriptor d;
    if (w.length > 0) {
      const auto* local = static_cast<const VerbsRegion*>(w.local);
      d.local_address = reinterpret_cast<uintptr_t>(local->data()) + w.local_offset;
      d.lkey = local->lkey();
    }
    d.remote_address = remote->address() + w.remote_offset;
    d.rkey = remote->rkey();
    d.length = static_cast<uint32_t>(w.length);
    generations[i] = proxy_->QueueSend(peer_index_[w.peer], w.slot, d);
    if (CUresult r = cuda->stream_write_value32(s, DeviceWord(kReady, w.peer, w.slot), generations[i], 0);
        r != CUDA_SUCCESS) {
      return InternalError(cuda->Error("cuStreamWriteValue32 (SendOnStream to rank " + std::to_string(w.peer) + ")", r));
    }
  }
  for (size_t i = 0; i < writes.size(); ++i) {
    const StreamWrite& w = writes[i];
    if (CUresult r = cuda->stream_wait_value32(s, DeviceWord(kSent, w.peer, w.slot), generations[i],
                                               CU_STREAM_WAIT_VALUE_GEQ);
        r != CUDA_SUCCESS) {
      return InternalError(cuda->Error("cuStreamWaitValue32 (SendOnStream to rank " + std::to_string(w.peer) + ")", r));
    }
  }
  return OkStatus();
#else
  return UnimplementedError(Who() + ": SendOnStream needs a build with the CUDA toolkit found");
#endif
}

Status VerbsTransport::WaitOnStream(std::span<const StreamSlot> slots, void* stream) {
  for (const StreamSlot& slot : slots) M2N_RETURN_IF_ERROR(CheckStreamSlot(slot.peer, slot.slot, "WaitOnStream"));
#if M2N_VERBS_WITH_CUDA
  M2N_RETURN_IF_ERROR(StartProxy());
  M2N_ASSIGN_OR_RETURN(const CudaDriver* cuda, CudaDriver::Get());
  CUstream s = static_cast<CUstream>(stream);
  for (const StreamSlot& slot : slots) {
    const uint32_t generation = proxy_->NextWait(peer_index_[slot.peer], slot.slot);
    // kWaiting tells the proxy since when the stream waits (its bound); then the wait itself.
    CUresult r = cuda->stream_write_value32(s, DeviceWord(kWaiting, slot.peer, slot.slot), generation,
                                            CU_STREAM_WRITE_VALUE_NO_MEMORY_BARRIER);
    if (r == CUDA_SUCCESS) {
      r = cuda->stream_wait_value32(s, DeviceWord(kArrived, slot.peer, slot.slot), generation,
                                    CU_STREAM_WAIT_VALUE_GEQ | stream_wait_flags_);
    }
    if (r != CUDA_SUCCESS) {
      return InternalError(cuda->Error("stream wait (WaitOnStream from rank " + std::to_string(slot.peer) + ")", r));
    }
  }
  return OkStatus();
#else
  return UnimplementedError(Who() + ": WaitOnStream needs a build with the CUDA toolkit found");
#endif
}

Status VerbsTransport::ReleaseOnStream(std::span<const StreamSlot> slots, void* stream) {
  for (const StreamSlot& slot : slots) M2N_RETURN_IF_ERROR(CheckStreamSlot(slot.peer, slot.slot, "ReleaseOnStream"));
#if M2N_VERBS_WITH_CUDA
  M2N_RETURN_IF_ERROR(StartProxy());
  M2N_ASSIGN_OR_RETURN(const CudaDriver* cuda, CudaDriver::Get());
  CUstream s = static_cast<CUstream>(stream);
  for (const StreamSlot& slot : slots) {
    const uint32_t generation = proxy_->NextRelease(peer_index_[slot.peer], slot.slot);
    // With a memory barrier (the default): the consumer's reads of the slot are done first.
    if (CUresult r = cuda->stream_write_value32(s, DeviceWord(kFreed, slot.peer, slot.slot), generation, 0);
        r != CUDA_SUCCESS) {
      return InternalError(cuda->Error("cuStreamWriteValue32 (ReleaseOnStream to rank " + std::to_string(slot.peer) + ")", r));
    }
  }
  return OkStatus();
#else
  return UnimplementedError(Who() + ": ReleaseOnStream needs a build with the CUDA toolkit found");
#endif
}

const uint32_t* VerbsTransport::ArrivedLength(int peer, int slot) const {
  if (stream_cq_ == nullptr || FindEndpoint(peer) == nullptr || slot < 0 || slot >= config_.slot_depth) return nullptr;
  return reinterpret_cast<const uint32_t*>(DeviceWord(kLength, peer, slot));
}

Status VerbsTransport::StreamError() {
  if (proxy_ == nullptr) return OkStatus();
  return proxy_->error();
}

}  // namespace m2n::transport::verbs

namespace m2n::transport {

const TransportInfo& verbsTransportInfo() {
  // Preference 80: above ucx (50), the portable fallback: this is the native RDMA path. Probe
  // fails on a machine without an RDMA device, so "auto" goes on to ucx there. cuda_memory is
  // false although GPU slots work: "auto" with GPU slots should pick cuda_ipc on one host.
  // The device and port decide; the slots' kind is checked when they are allocated.
  static const TransportInfo info{"verbs", 80, [](MemoryKind) { return verbs::Probe(); },
                                  &verbs::VerbsTransport::Create,
                                  /*cuda_memory=*/false, /*uses_nic=*/true};
  return info;
}

}  // namespace m2n::transport

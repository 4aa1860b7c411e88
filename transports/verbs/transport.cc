// VerbsTransport's life: creation, memory, connecting peers, Close; and verbsTransportInfo(). The
// write path is in write.cc, completions in poll.cc, the stream-ordered operations in
// stream_ops.cc.
#include "transports/verbs/transport.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "transports/validate.h"

#if M2N_VERBS_WITH_CUDA
#include "transports/verbs/cuda_driver.h"
#endif

namespace m2n::transport::verbs {
namespace {

constexpr int kMaxUnpolledLimit = 1 << 16;

}  // namespace

StatusOr<std::unique_ptr<Transport>> VerbsTransport::Create(const Config& config) {
  M2N_ASSIGN_OR_RETURN(std::vector<int> peer_index,
                       CheckConfig(config, "verbs", kMaxUnpolledLimit));
  const std::string who = "verbs: rank " + std::to_string(config.rank);
  std::unique_ptr<VerbsTransport> t(new VerbsTransport(config));
  t->peer_index_ = std::move(peer_index);
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

  M2N_RETURN_IF_ERROR(t->CreateQueues());
  t->backlog_.reserve(256);
  if (config.slot_memory == MemoryKind::kCuda) M2N_RETURN_IF_ERROR(t->InitStreamPath());
  return std::unique_ptr<Transport>(std::move(t));
}

Status VerbsTransport::CreateQueues() {
  // Queue sizes. Receives: the caller keeps at most max_unpolled immediates unpolled per (peer,
  // lane) and Poll reposts what it consumed, so max_unpolled WRs would do; the rest is slack.
  // Sends: room for a few credit windows, with a signalled WR at least every signal_every so that
  // a full send queue always has a completion coming. The CQ holds every CQE that can be
  // outstanding: one per receive WR and per signalled send.
  const auto& dev = ctx_->device_attr();
  const uint32_t max_wr = static_cast<uint32_t>(std::max(dev.max_qp_wr, 16));
  const uint32_t unpolled = static_cast<uint32_t>(config_.max_unpolled);
  rq_depth_ = std::min(max_wr, unpolled + 16);
  sq_depth_ = std::min(max_wr, std::max<uint32_t>(64, 2 * unpolled + 16));
  signal_every_ = options_.signal_every > 0
                      ? std::min<uint32_t>(options_.signal_every, sq_depth_ / 2)
                      : std::max<uint32_t>(1, sq_depth_ / 4);
  signal_every_ = std::max<uint32_t>(1, signal_every_);
  const uint64_t cqes =
      std::max<uint64_t>(1, config_.peers.size()) * kNumLanes * (sq_depth_ + rq_depth_) + 16;
  if (cqes > static_cast<uint64_t>(dev.max_cqe)) {
    return InvalidArgumentError(Who() + ": " + std::to_string(config_.peers.size()) +
                                " peers with " + std::to_string(config_.max_unpolled) +
                                " slots each need a CQ of " + std::to_string(cqes) + " entries; " +
                                ctx_->device_name() + " allows " + std::to_string(dev.max_cqe));
  }
  cq_ = ibv_create_cq(ctx_->device(), static_cast<int>(cqes), nullptr, nullptr, 0);
  if (cq_ == nullptr) {
    return UnavailableError(
        Who() + ": " + VerbError("ibv_create_cq(" + std::to_string(cqes) + " entries)", errno));
  }
  return OkStatus();
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

StatusOr<std::unique_ptr<Region>> VerbsTransport::Register(void* data, size_t size,
                                                           MemoryKind kind) {
  auto region = VerbsRegion::Register(ctx_, data, size, kind, /*source=*/false);
  if (!region.ok()) return region.status().WithContext(Who());
  return std::unique_ptr<Region>(std::move(region).value());
}

StatusOr<std::unique_ptr<Region>> VerbsTransport::RegisterSource(void* data, size_t size,
                                                                 MemoryKind kind) {
  auto region = VerbsRegion::Register(ctx_, data, size, kind, /*source=*/true);
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
    M2N_ASSIGN_OR_RETURN(endpoint, Endpoint::Create(ctx_.get(), cq_, stream_cq_, peer, options_,
                                                    sq_depth_, rq_depth_));
    for (int lane = 0; lane < kNumLanes; ++lane) {
      QueuePair& q = endpoint->qp(static_cast<Lane>(lane));
      qp_by_num_.emplace_back(q.qp->qp_num, &q);
    }
    std::sort(qp_by_num_.begin(), qp_by_num_.end());
  }
  return EncodePeerAddress(
      endpoint->Address(config_.rank, static_cast<uint32_t>(config_.max_unpolled)));
}

Status VerbsTransport::Connect(int peer, std::span<const std::byte> remote_address) {
  if (closed_) return FailedPreconditionError(Who() + ": Connect after Close");
  if (peer < 0 || peer >= config_.world_size || peer_index_[peer] < 0) {
    return InvalidArgumentError(Who() + ": Connect to rank " + std::to_string(peer) +
                                ", which is not in Config::peers");
  }
  Endpoint* e = FindEndpoint(peer);
  if (e == nullptr) {
    return FailedPreconditionError(
        PeerText(peer, "Connect before LocalAddress: the peer cannot know our QPs"));
  }
  if (e->connected()) return FailedPreconditionError(PeerText(peer, "connected twice"));
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
  return e->Connect(a, options_);
}

StatusOr<std::unique_ptr<RemoteRegion>> VerbsTransport::UnpackRemoteKey(
    int peer, std::span<const std::byte> packed) {
  if (peer < 0 || peer >= config_.world_size || peer_index_[peer] < 0) {
    return InvalidArgumentError(Who() + ": remote key of rank " + std::to_string(peer) +
                                ", which is not in Config::peers");
  }
  M2N_ASSIGN_OR_RETURN(auto remote, VerbsRemoteRegion::Unpack(ctx_.get(), peer, packed));
  return std::unique_ptr<RemoteRegion>(std::move(remote));
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
  device_api_.counters.reset();
  if (device_api_.host != nullptr) {
#if M2N_VERBS_WITH_CUDA
    if (auto cuda = CudaDriver::Get(); cuda.ok()) (*cuda)->mem_host_unregister(device_api_.host);
#endif
    std::free(device_api_.host);
    device_api_.host = nullptr;
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

}  // namespace m2n::transport::verbs

namespace m2n::transport {

const TransportInfo& verbsTransportInfo() {
  // Preference 80: above ucx (50), the portable fallback: this is the native RDMA path. Probe
  // fails on a machine without an RDMA device, so "auto" goes on to ucx there. cuda_memory is
  // false although GPU slots work: "auto" with GPU slots should pick cuda_ipc on one host.
  // The device and port decide; the slots' kind is checked when they are allocated.
  static const TransportInfo info{"verbs",
                                  80,
                                  [](MemoryKind) { return verbs::Probe(); },
                                  &verbs::VerbsTransport::Create,
                                  /*cuda_memory=*/false,
                                  /*uses_nic=*/true};
  return info;
}

}  // namespace m2n::transport

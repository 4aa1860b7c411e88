// UcxTransport's life: creation, memory, connecting peers, Close; and ucxTransportInfo(). The write
// path is in write.cc, completions and the receive side in poll.cc.
#include "transports/ucx/transport.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "transports/validate.h"

namespace m2n::transport::ucx {
namespace {

// Room for any reasonable credit window; keeps the ring region's size arithmetic far from overflow.
constexpr int kMaxUnpolledLimit = 1 << 20;

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
  M2N_ASSIGN_OR_RETURN(std::vector<int> peer_index, CheckConfig(config, "ucx", kMaxUnpolledLimit));
  std::unique_ptr<UcxTransport> t(new UcxTransport(config));
  M2N_ASSIGN_OR_RETURN(t->err_mode_, ErrModeFromEnv());
  M2N_ASSIGN_OR_RETURN(t->eager_setting_, EagerMaxFromEnv());
  M2N_ASSIGN_OR_RETURN(t->direct_stores_, DirectStoresFromEnv());
  t->peer_index_ = std::move(peer_index);
  t->endpoints_.resize(config.peers.size());
  t->connected_.reserve(config.peers.size());
  t->failed_.reserve(config.peers.size());

  M2N_ASSIGN_OR_RETURN(t->ctx_, Context::Create(config.rank, config.peers.size() * kNumLanes));
  M2N_RETURN_IF_ERROR(t->SetAmHandlers(/*enable=*/true));

  // One ring per (peer, lane), in UCX-allocated memory so that a shared-memory transport writes
  // entries with a plain store.
  const size_t ring_bytes = std::max<size_t>(1, config.peers.size() * kNumLanes) *
                            config.max_unpolled * sizeof(RingEntry);
  M2N_ASSIGN_OR_RETURN(
      t->rings_, UcxRegion::Map(t->ctx_, nullptr, ring_bytes, /*allocate=*/true, Access::kRing));
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
  return MapCaller(data, size, kind, Access::kTarget);
}

StatusOr<std::unique_ptr<Region>> UcxTransport::RegisterSource(void* data, size_t size,
                                                               MemoryKind kind) {
  return MapCaller(data, size, kind, Access::kSource);
}

StatusOr<std::unique_ptr<Region>> UcxTransport::MapCaller(void* data, size_t size, MemoryKind kind,
                                                          Access access) {
  if (kind == MemoryKind::kCuda) {
    return UnimplementedError("ucx transport: CUDA memory is not supported in this build");
  }
  if (kind != MemoryKind::kHost) {
    return InvalidArgumentError("ucx: rank " + std::to_string(config_.rank) +
                                ": unknown memory kind " + std::to_string(static_cast<int>(kind)));
  }
  M2N_ASSIGN_OR_RETURN(auto region, UcxRegion::Map(ctx_, data, size, /*allocate=*/false, access));
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
  M2N_ASSIGN_OR_RETURN(auto region,
                       UcxRegion::Map(ctx_, nullptr, size, /*allocate=*/true, Access::kTarget));
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
  // Active messages name their sender by the endpoint they arrive on (UCX hands the handler our
  // endpoint to the peer as reply_ep); UCX matches the peer's wire-up to the ep created here.
  for (ucp_ep_h ep : endpoints_[index]->eps()) ep_peer_[ep] = peer;
  Unpark();
  // While every peer is on this host, its writes land in our rings by plain stores and UCX has
  // little to do on an idle poll; progress it less often then (see Poll).
  bool all_mapped = true;
  for (Endpoint* e : connected_) {
    all_mapped = all_mapped && e->tx(Lane::kData).ring_mapped != nullptr &&
                 e->tx(Lane::kAck).ring_mapped != nullptr;
  }
  idle_progress_period_ =
      all_mapped && direct_stores_ ? kIdleProgressPeriodMapped : kIdleProgressPeriod;
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

size_t UcxTransport::DropUnreportedWrites() {
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
  return unconfirmed;
}

// A screen and a line: the teardown steps in their one valid order (flush, close endpoints, release
// memory, the workers last), each bounded by `deadline`.
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
  const size_t unconfirmed = DropUnreportedWrites();

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
  DropParked();
  for (const PendingReceive& pr : receiving_) ucp_request_free(pr.request);
  receiving_.clear();
  refused_.clear();
  refused_reported_ = 0;
  // No handler may run once this transport is gone (the workers live on with the Context).
  (void)SetAmHandlers(/*enable=*/false);

  connected_.clear();
  ep_peer_.clear();
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
  static const TransportInfo info{"ucx", 50, [](MemoryKind) { return ucx::Probe(); },
                                  &ucx::UcxTransport::Create};
  return info;
}

}  // namespace m2n::transport

#include "transports/ucx/endpoint.h"

#include <string>

#include "transports/ucx/memory.h"
#include "transports/ucx/wire.h"

namespace m2n::transport::ucx {
namespace {

constexpr uint32_t kAddressMagic = 0x414E324D;  // "M2NA"
constexpr uint16_t kAddressVersion = 1;

}  // namespace

Bytes EncodePeerAddress(const PeerAddress& a) {
  Bytes out;
  WireWriter w(out);
  w.Put<uint32_t>(kAddressMagic);
  w.Put<uint16_t>(kAddressVersion);
  w.Put<uint16_t>(kNumLanes);
  w.Put<int32_t>(a.src_rank);
  w.Put<int32_t>(a.dst_rank);
  w.Put<uint32_t>(a.max_unpolled);
  w.Put<uint32_t>(0);
  for (uint64_t ring : a.ring_address) w.Put<uint64_t>(ring);
  w.Put<uint64_t>(a.ring_rkey.size());
  for (auto worker : a.worker_address) w.Put<uint64_t>(worker.size());
  w.PutBytes(a.ring_rkey);
  for (auto worker : a.worker_address) w.PutBytes(worker);
  return out;
}

StatusOr<PeerAddress> DecodePeerAddress(int peer, std::span<const std::byte> bytes) {
  WireReader r(bytes);
  const auto magic = r.Get<uint32_t>();
  const auto version = r.Get<uint16_t>();
  const auto lanes = r.Get<uint16_t>();
  if (!r.ok() || magic != kAddressMagic) {
    return DataLossError(PeerText(peer, "connection address is not an m2n ucx address (" +
                                            std::to_string(bytes.size()) + " bytes)"));
  }
  if (version != kAddressVersion || lanes != kNumLanes) {
    return DataLossError(PeerText(peer, "connection address version " + std::to_string(version) +
                                            " with " + std::to_string(lanes) +
                                            " lanes; this build reads version " +
                                            std::to_string(kAddressVersion) + " with " +
                                            std::to_string(kNumLanes)));
  }
  PeerAddress a;
  a.src_rank = r.Get<int32_t>();
  a.dst_rank = r.Get<int32_t>();
  a.max_unpolled = r.Get<uint32_t>();
  r.Get<uint32_t>();
  for (uint64_t& ring : a.ring_address) ring = r.Get<uint64_t>();
  const auto rkey_size = r.Get<uint64_t>();
  std::array<uint64_t, kNumLanes> worker_size{};
  for (uint64_t& size : worker_size) size = r.Get<uint64_t>();
  a.ring_rkey = r.GetBytes(rkey_size);
  for (int lane = 0; lane < kNumLanes; ++lane) a.worker_address[lane] = r.GetBytes(worker_size[lane]);
  if (!r.ok() || r.consumed() != r.size()) {
    return DataLossError(PeerText(peer, "connection address truncated or padded (" +
                                            std::to_string(bytes.size()) + " bytes)"));
  }
  return a;
}

StatusOr<std::unique_ptr<Endpoint>> Endpoint::Connect(std::shared_ptr<Context> ctx, int peer,
                                                      const PeerAddress& address,
                                                      std::array<RingEntry*, kNumLanes> rx_rings,
                                                      uint32_t ring_entries,
                                                      std::vector<Endpoint*>* failed) {
  std::unique_ptr<Endpoint> e(new Endpoint(ctx, peer, ring_entries, failed));
  for (int lane = 0; lane < kNumLanes; ++lane) {
    ucp_ep_params_t params{};
    params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.address = reinterpret_cast<const ucp_address_t*>(address.worker_address[lane].data());
    // PEER mode: a dead peer fails the ep (and its requests) instead of hanging them; it also limits
    // UCX to transports that can detect that.
    params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    params.err_handler.cb = &Endpoint::OnError;
    params.err_handler.arg = e.get();
    TxLane& t = e->tx_[lane];
    ucs_status_t status = ucp_ep_create(ctx->worker(static_cast<Lane>(lane)), &params, &t.ep);
    if (status != UCS_OK) {
      t.ep = nullptr;
      return UnavailableError(PeerText(peer, lane == 0 ? "ucp_ep_create (data lane)"
                                                       : "ucp_ep_create (ack lane)",
                                       status));
    }
    M2N_RETURN_IF_ERROR(UnpackRkey(peer, t.ep, address.ring_rkey, address.ring_address[lane],
                                   &t.ring_rkey, &t.ring_direct));
    t.ring_address = address.ring_address[lane];
    e->rx_[lane].ring = rx_rings[lane];
  }
  return e;
}

void Endpoint::OnError(void* arg, ucp_ep_h ep, ucs_status_t status) {
  auto* e = static_cast<Endpoint*>(arg);
  if (e->failure_ != UCS_OK) return;  // the other lane's ep already reported this peer
  e->failure_ = status;
  e->failed_->push_back(e);
}

Status Endpoint::FailureStatus() const {
  return UnavailableError(PeerText(peer_, ucs_status_string(failure_)));
}

void* Endpoint::StartFlush(Lane lane) {
  TxLane& t = tx(lane);
  if (t.ep == nullptr) return nullptr;
  ucp_request_param_t param{};
  ucs_status_ptr_t request = ucp_ep_flush_nbx(t.ep, &param);
  return UCS_PTR_IS_PTR(request) ? request : nullptr;
}

void* Endpoint::StartClose(Lane lane, bool force) {
  TxLane& t = tx(lane);
  if (t.ring_rkey != nullptr) {
    ucp_rkey_destroy(t.ring_rkey);
    t.ring_rkey = nullptr;
  }
  if (t.ep == nullptr) return nullptr;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  ucs_status_ptr_t request = ucp_ep_close_nbx(t.ep, &param);
  t.ep = nullptr;
  return UCS_PTR_IS_PTR(request) ? request : nullptr;
}

Endpoint::~Endpoint() {
  for (int lane = 0; lane < kNumLanes; ++lane) {
    // Nobody is left to wait on it: UCX finishes a released close request on later progress or
    // when the worker is destroyed.
    if (void* request = StartClose(static_cast<Lane>(lane), /*force=*/true)) ucp_request_free(request);
  }
}

}  // namespace m2n::transport::ucx

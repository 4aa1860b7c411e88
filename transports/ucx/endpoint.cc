#include "transports/ucx/endpoint.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <string_view>

#include "src/base/env.h"
#include "transports/ucx/memory.h"
#include "transports/wire.h"

namespace m2n::transport::ucx {
namespace {

constexpr uint32_t kAddressMagic = 0x414E324D;  // "M2NA"
constexpr uint16_t kAddressVersion = 1;

}  // namespace

StatusOr<ErrMode> ErrModeFromEnv() {
  const std::string value = env::String("M2N_UCX_ERR_MODE", "auto");
  if (value == "auto") return ErrMode::kAuto;
  if (value == "peer") return ErrMode::kPeer;
  if (value == "none") return ErrMode::kNone;
  return InvalidArgumentError("ucx: M2N_UCX_ERR_MODE=" + value + " is not one of auto, peer, none");
}

StatusOr<std::optional<size_t>> EagerMaxFromEnv() {
  if (env::String("M2N_UCX_EAGER_MAX", "auto") == "auto") return std::optional<size_t>();
  constexpr uint64_t kLimit = uint64_t{1} << 40;  // far above any slot; keeps the arithmetic exact
  auto bytes = env::Size("M2N_UCX_EAGER_MAX", 0, kLimit, 0);
  if (!bytes.ok()) return bytes.status().WithContext("ucx");
  return std::optional<size_t>(*bytes);
}

StatusOr<bool> DirectStoresFromEnv() {
  auto direct = env::Bool("M2N_UCX_DIRECT", true);
  if (!direct.ok()) return direct.status().WithContext("ucx");
  return *direct;
}

bool EpUsesOnlyTcp(ucp_ep_h ep) {
  // UCX 1.13 has no query for an ep's transports (ucp_ep_query learned them in 1.14), so this reads
  // the lane lines of ucp_ep_print_info ("lane[0]:  1:tcp/lo.0 md[1] -> ..."). Anything it does not
  // recognize counts as "not TCP", which leaves the protocol choice to UCX.
  char* text = nullptr;
  size_t size = 0;
  FILE* stream = open_memstream(&text, &size);
  if (stream == nullptr) return false;
  ucp_ep_print_info(ep, stream);
  std::fclose(stream);
  const std::string_view info(text, size);
  bool lanes = false;
  bool only_tcp = true;
  for (size_t at = info.find("lane["); at != std::string_view::npos;
       at = info.find("lane[", at + 1)) {
    const size_t colon = info.find("]:", at);
    if (colon == std::string_view::npos) {
      only_tcp = false;
      break;
    }
    // "  1:tcp/lo.0": skip blanks and the resource index, up to the transport name's '/'.
    size_t name = info.find_first_not_of(' ', colon + 2);
    if (name != std::string_view::npos) name = info.find(':', name);
    const size_t slash = name == std::string_view::npos ? name : info.find('/', name);
    if (slash == std::string_view::npos || slash - name > 32) {
      only_tcp = false;
      break;
    }
    const std::string_view transport = info.substr(name + 1, slash - name - 1);
    lanes = true;
    if (transport != "tcp" && transport != "self") only_tcp = false;
  }
  std::free(text);
  return lanes && only_tcp;
}

ucp_err_handling_mode_t ResolveErrMode(ErrMode setting, bool same_host) {
  switch (setting) {
    case ErrMode::kPeer:
      return UCP_ERR_HANDLING_MODE_PEER;
    case ErrMode::kNone:
      return UCP_ERR_HANDLING_MODE_NONE;
    case ErrMode::kAuto:
      break;
  }
  // UCX 1.13's shared-memory transports (posix, sysv) cannot detect a dead peer, so PEER mode
  // would exclude them and move a same-host pair onto cma/tcp, many times slower. Off-host
  // transports (tcp, rc, ud) detect failures, and there PEER mode costs little.
  return same_host ? UCP_ERR_HANDLING_MODE_NONE : UCP_ERR_HANDLING_MODE_PEER;
}

const Bytes& HostId() {
  static const Bytes id = [] {
    std::string text;
    char name[256] = {};
    if (gethostname(name, sizeof(name) - 1) == 0) text = name;
    std::ifstream boot("/proc/sys/kernel/random/boot_id");
    std::string boot_id;
    if (boot >> boot_id) text += "/" + boot_id;
    const auto* p = reinterpret_cast<const std::byte*>(text.data());
    return Bytes(p, p + text.size());
  }();
  return id;
}

Bytes EncodePeerAddress(const PeerAddress& a) {
  Bytes out;
  WireWriter w(out);
  w.Put<uint32_t>(kAddressMagic);
  w.Put<uint16_t>(kAddressVersion);
  w.Put<uint16_t>(kNumLanes);
  w.Put<int32_t>(a.src_rank);
  w.Put<int32_t>(a.dst_rank);
  w.Put<uint32_t>(a.max_unpolled);
  w.Put<uint8_t>(static_cast<uint8_t>(a.err_mode));
  w.Put<uint8_t>(0);
  w.Put<uint16_t>(static_cast<uint16_t>(a.host.size()));
  for (uint64_t ring : a.ring_address) w.Put<uint64_t>(ring);
  w.Put<uint64_t>(a.ring_rkey.size());
  for (auto worker : a.worker_address) w.Put<uint64_t>(worker.size());
  w.PutBytes(a.host);
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
    return DataLossError(
        PeerText(peer, "connection address version " + std::to_string(version) + " with " +
                           std::to_string(lanes) + " lanes; this build reads version " +
                           std::to_string(kAddressVersion) + " with " + std::to_string(kNumLanes)));
  }
  PeerAddress a;
  a.src_rank = r.Get<int32_t>();
  a.dst_rank = r.Get<int32_t>();
  a.max_unpolled = r.Get<uint32_t>();
  const auto err_mode = r.Get<uint8_t>();
  r.Get<uint8_t>();
  const auto host_size = r.Get<uint16_t>();
  for (uint64_t& ring : a.ring_address) ring = r.Get<uint64_t>();
  const auto rkey_size = r.Get<uint64_t>();
  std::array<uint64_t, kNumLanes> worker_size{};
  for (uint64_t& size : worker_size) size = r.Get<uint64_t>();
  a.host = r.GetBytes(host_size);
  a.ring_rkey = r.GetBytes(rkey_size);
  for (int lane = 0; lane < kNumLanes; ++lane)
    a.worker_address[lane] = r.GetBytes(worker_size[lane]);
  if (!r.ok() || r.consumed() != r.size()) {
    return DataLossError(PeerText(peer, "connection address truncated or padded (" +
                                            std::to_string(bytes.size()) + " bytes)"));
  }
  if (err_mode > static_cast<uint8_t>(ErrMode::kNone)) {
    return DataLossError(
        PeerText(peer, "connection address with error mode " + std::to_string(err_mode)));
  }
  a.err_mode = static_cast<ErrMode>(err_mode);
  return a;
}

StatusOr<std::unique_ptr<Endpoint>> Endpoint::Connect(std::shared_ptr<Context> ctx, int peer,
                                                      const PeerAddress& address,
                                                      uint32_t ring_entries,
                                                      ucp_err_handling_mode_t err_mode,
                                                      std::vector<Endpoint*>* failed) {
  std::unique_ptr<Endpoint> e(new Endpoint(ctx, peer, ring_entries, failed));
  for (int lane = 0; lane < kNumLanes; ++lane) {
    ucp_ep_params_t params{};
    params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.address = reinterpret_cast<const ucp_address_t*>(address.worker_address[lane].data());
    // The handler is installed in either mode: in NONE mode UCX still calls it for the failures a
    // transport does notice (a TCP reset), it just does not promise to notice them all.
    params.err_mode = err_mode;
    params.err_handler.cb = &Endpoint::OnError;
    params.err_handler.arg = e.get();
    TxLane& t = e->tx_[lane];
    ucs_status_t status = ucp_ep_create(ctx->worker(static_cast<Lane>(lane)), &params, &t.ep);
    if (status != UCS_OK) {
      t.ep = nullptr;
      std::string what = lane == 0 ? "ucp_ep_create (data lane" : "ucp_ep_create (ack lane";
      what += err_mode == UCP_ERR_HANDLING_MODE_PEER ? ", error mode peer" : ", error mode none";
      what += ")";
      if (status == UCS_ERR_UNREACHABLE && err_mode == UCP_ERR_HANDLING_MODE_PEER) {
        what +=
            "; the enabled transports may not detect peer failure, M2N_UCX_ERR_MODE=none allows "
            "them";
      }
      return UnavailableError(PeerText(peer, what, status));
    }
    M2N_RETURN_IF_ERROR(UnpackRkey(peer, t.ep, address.ring_rkey, address.ring_address[lane],
                                   &t.ring_rkey, reinterpret_cast<std::byte**>(&t.ring_mapped)));
    t.ring_address = address.ring_address[lane];
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
    if (void* request = StartClose(static_cast<Lane>(lane), /*force=*/true))
      ucp_request_free(request);
  }
}

}  // namespace m2n::transport::ucx

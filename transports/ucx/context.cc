#include "transports/ucx/context.h"

#include <algorithm>
#include <cstdlib>
#include <string>

namespace m2n::transport::ucx {

std::string ErrorText(std::string_view what, ucs_status_t status) {
  std::string text = "ucx: ";
  text += what;
  text += ": ";
  text += ucs_status_string(status);
  return text;
}

std::string PeerText(int peer, std::string_view what) {
  std::string text = "ucx: peer rank " + std::to_string(peer);
  if (!what.empty()) {
    text += ": ";
    text += what;
  }
  return text;
}

std::string PeerText(int peer, std::string_view what, ucs_status_t status) {
  std::string text = PeerText(peer, what);
  text += ": ";
  text += ucs_status_string(status);
  return text;
}

bool Reap(void** request, ucs_status_t* error) {
  if (*request == nullptr) return true;
  const ucs_status_t status = ucp_request_check_status(*request);
  if (status == UCS_INPROGRESS) return false;
  if (status != UCS_OK && *error == UCS_OK) *error = status;
  ucp_request_free(*request);
  *request = nullptr;
  return true;
}

void* RequestOrNull(ucs_status_ptr_t request) {
  return UCS_PTR_IS_PTR(request) ? request : nullptr;
}

// UCX 1.13 allocates shared memory from System V first, mode 0660: every user of the group could
// read and write the slots and rings. POSIX shared memory is 0600. Unless the user chose the
// transports or the allocation order, leave System V out of both.
ucs_status_t PreferPrivateSharedMemory(ucp_config_t* config) {
  if (std::getenv("UCX_TLS") == nullptr) {
    if (ucs_status_t s = ucp_config_modify(config, "TLS", "^sysv"); s != UCS_OK) return s;
  }
  if (std::getenv("UCX_ALLOC_PRIO") == nullptr) {
    return ucp_config_modify(config, "ALLOC_PRIO", "md:posix,huge,thp,mmap,heap");
  }
  return UCS_OK;
}

StatusOr<std::shared_ptr<Context>> Context::Create(int rank, size_t estimated_eps) {
  std::shared_ptr<Context> ctx(new Context(rank));
  const std::string who = "rank " + std::to_string(rank);

  // NULL env prefix and file: UCX's own UCX_* variables apply exactly as for any UCX program.
  ucp_config_t* config = nullptr;
  ucs_status_t status = ucp_config_read(nullptr, nullptr, &config);
  if (status != UCS_OK) return UnavailableError(ErrorText(who + ": ucp_config_read", status));
  status = PreferPrivateSharedMemory(config);
  if (status != UCS_OK) {
    ucp_config_release(config);
    return UnavailableError(ErrorText(who + ": ucp_config_modify", status));
  }

  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED |
                      UCP_PARAM_FIELD_ESTIMATED_NUM_EPS;
  // RMA for the shared-memory path (stores into mapped peer memory, puts), AM for every other
  // path (the write travels as one active message; see transport.cc).
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM;
  params.mt_workers_shared = 0;  // one thread at a time per Transport: no locks on the fast path
  params.estimated_num_eps = estimated_eps;
  status = ucp_init(&params, config, &ctx->context_);
  ucp_config_release(config);
  if (status != UCS_OK) {
    ctx->context_ = nullptr;
    return UnavailableError(ErrorText(who + ": ucp_init", status));
  }

  for (int lane = 0; lane < kNumLanes; ++lane) {
    ucp_worker_params_t wparams{};
    wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wparams.thread_mode = UCS_THREAD_MODE_SINGLE;
    status = ucp_worker_create(ctx->context_, &wparams, &ctx->workers_[lane]);
    if (status != UCS_OK) {
      ctx->workers_[lane] = nullptr;
      return UnavailableError(ErrorText(who + ": ucp_worker_create", status));
    }
    ucp_address_t* address = nullptr;
    size_t length = 0;
    status = ucp_worker_get_address(ctx->workers_[lane], &address, &length);
    if (status != UCS_OK) return InternalError(ErrorText(who + ": ucp_worker_get_address", status));
    const auto* bytes = reinterpret_cast<const std::byte*>(address);
    ctx->addresses_[lane].assign(bytes, bytes + length);
    ucp_worker_release_address(ctx->workers_[lane], address);
  }
  return ctx;
}

void Context::Grant(const TrackedRegion& block) {
  for (const TrackedRegion& r : regions_) {
    if (r.owner == block.owner && r.peer == block.peer && r.base == block.base &&
        r.size == block.size)
      return;
  }
  auto at = std::upper_bound(regions_.begin(), regions_.end(), block.base,
                             [](uintptr_t base, const TrackedRegion& r) { return base < r.base; });
  regions_.insert(at, block);
}

void Context::Revoke(const void* owner) {
  std::erase_if(regions_, [owner](const TrackedRegion& r) { return r.owner == owner; });
}

const Context::TrackedRegion* Context::FindRegion(int peer, uint64_t address, size_t length) const {
  // The last block starting at or below `address` is the candidate; blocks of other peers, and
  // regions the caller registered twice or nested, may overlap or sit between, so look further
  // down when it does not hold the whole target or is not the sender's.
  auto it = std::upper_bound(regions_.begin(), regions_.end(), address,
                             [](uint64_t a, const TrackedRegion& r) { return a < r.base; });
  while (it != regions_.begin()) {
    --it;
    if (it->peer != kAnyPeer && it->peer != peer) continue;
    const uint64_t offset = address - it->base;
    if (offset <= it->size && length <= it->size - offset) return &*it;
  }
  return nullptr;
}

Context::~Context() {
  for (ucp_worker_h worker : workers_) {
    if (worker != nullptr) ucp_worker_destroy(worker);
  }
  if (context_ != nullptr) ucp_cleanup(context_);
}

}  // namespace m2n::transport::ucx

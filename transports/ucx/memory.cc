#include "transports/ucx/memory.h"

#include <cstring>
#include <string>

#include "transports/wire.h"

namespace m2n::transport::ucx {
namespace {

constexpr uint32_t kKeyMagic = 0x4B4E324D;  // "M2NK"
constexpr uint16_t kKeyVersion = 1;

}  // namespace

StatusOr<std::unique_ptr<UcxRegion>> UcxRegion::Map(std::shared_ptr<Context> ctx, void* data,
                                                    size_t size, bool allocate, Access access) {
  const std::string who = "rank " + std::to_string(ctx->rank());
  if (size == 0) return InvalidArgumentError("ucx: " + who + ": cannot register 0 bytes");
  if (!allocate && data == nullptr) {
    return InvalidArgumentError("ucx: " + who + ": cannot register a null pointer");
  }

  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_FLAGS | UCP_MEM_MAP_PARAM_FIELD_PROT;
  params.address = allocate ? nullptr : data;
  params.length = size;
  params.flags = allocate ? UCP_MEM_MAP_ALLOCATE : 0;
  // Without `prot` UCX grants remote read and write. No region here is ever read remotely; only
  // receive targets and rings are written remotely.
  params.prot = UCP_MEM_MAP_PROT_LOCAL_READ | UCP_MEM_MAP_PROT_LOCAL_WRITE |
                (access == Access::kSource ? 0 : UCP_MEM_MAP_PROT_REMOTE_WRITE);
  ucp_mem_h memh = nullptr;
  ucs_status_t status = ucp_mem_map(ctx->context(), &params, &memh);
  if (status != UCS_OK) {
    return InternalError(
        ErrorText(who + (allocate ? ": ucp_mem_map(ALLOCATE) of " : ": ucp_mem_map of ") +
                      std::to_string(size) + " bytes",
                  status));
  }

  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
  status = ucp_mem_query(memh, &attr);
  if (status != UCS_OK) {
    ucp_mem_unmap(ctx->context(), memh);
    return InternalError(ErrorText(who + ": ucp_mem_query", status));
  }
  auto* base = static_cast<std::byte*>(allocate ? attr.address : data);
  // UCX gives fresh shared memory, which is zero; heap fallbacks are not, and ring scans and tests
  // rely on a known start.
  if (allocate) std::memset(base, 0, size);
  return std::unique_ptr<UcxRegion>(new UcxRegion(std::move(ctx), memh, base, size, access));
}

UcxRegion::~UcxRegion() {
  if (granted_) ctx_->Revoke(this);
  ucp_mem_unmap(ctx_->context(), memh_);
}

StatusOr<Bytes> UcxRegion::PackRkey() const {
  void* buffer = nullptr;
  size_t size = 0;
  ucs_status_t status = ucp_rkey_pack(ctx_->context(), memh_, &buffer, &size);
  if (status != UCS_OK) {
    return InternalError(
        ErrorText("rank " + std::to_string(ctx_->rank()) + ": ucp_rkey_pack", status));
  }
  const auto* bytes = static_cast<const std::byte*>(buffer);
  Bytes out(bytes, bytes + size);
  ucp_rkey_buffer_release(buffer);
  return out;
}

StatusOr<Bytes> UcxRegion::PackRemoteKey() const {
  if (access_ != Access::kTarget) {
    return FailedPreconditionError("ucx: rank " + std::to_string(ctx_->rank()) +
                                   ": a region registered as a local source has no remote key");
  }
  ctx_->Grant({this, Context::kAnyPeer, reinterpret_cast<uintptr_t>(data_), size_, memh_});
  granted_ = true;
  return PackKey(reinterpret_cast<uintptr_t>(data_), size_);
}

StatusOr<BlockKey> UcxRegion::PackRemoteKeyFor(int peer, size_t offset, size_t length) {
  const std::string who = "ucx: rank " + std::to_string(ctx_->rank());
  if (access_ != Access::kTarget) {
    return FailedPreconditionError(who +
                                   ": a region registered as a local source has no remote key");
  }
  if (peer < 0 || length == 0 || offset > size_ || length > size_ - offset) {
    return InvalidArgumentError(who + ": a key for rank " + std::to_string(peer) + " to [" +
                                std::to_string(offset) + ", +" + std::to_string(length) +
                                ") of a " + std::to_string(size_) + "-byte region");
  }
  const uintptr_t block = reinterpret_cast<uintptr_t>(data_) + offset;
  ctx_->Grant({this, peer, block, length, memh_});
  granted_ = true;
  M2N_ASSIGN_OR_RETURN(Bytes key, PackKey(block, length));
  return BlockKey{std::move(key), 0};
}

StatusOr<Bytes> UcxRegion::PackKey(uint64_t address, size_t size) const {
  M2N_ASSIGN_OR_RETURN(Bytes rkey, PackRkey());
  Bytes out;
  out.reserve(32 + rkey.size());
  WireWriter w(out);
  w.Put<uint32_t>(kKeyMagic);
  w.Put<uint16_t>(kKeyVersion);
  w.Put<uint16_t>(0);
  w.Put<uint64_t>(address);
  w.Put<uint64_t>(size);
  w.Put<uint64_t>(rkey.size());
  w.PutBytes(rkey);
  return out;
}

Status UnpackRkey(int peer, ucp_ep_h ep, std::span<const std::byte> rkey_buffer, uint64_t address,
                  ucp_rkey_h* rkey, std::byte** mapped) {
  ucs_status_t status = ucp_ep_rkey_unpack(ep, rkey_buffer.data(), rkey);
  if (status != UCS_OK) {
    *rkey = nullptr;
    return DataLossError(PeerText(peer, "ucp_ep_rkey_unpack", status));
  }
  void* local = nullptr;
  *mapped =
      ucp_rkey_ptr(*rkey, address, &local) == UCS_OK ? static_cast<std::byte*>(local) : nullptr;
  return OkStatus();
}

StatusOr<std::unique_ptr<UcxRemoteRegion>> UcxRemoteRegion::Unpack(
    std::shared_ptr<Context> ctx, int peer, const std::array<ucp_ep_h, kNumLanes>& eps,
    std::span<const std::byte> packed) {
  WireReader r(packed);
  const auto magic = r.Get<uint32_t>();
  const auto version = r.Get<uint16_t>();
  r.Get<uint16_t>();
  const auto address = r.Get<uint64_t>();
  const auto size = r.Get<uint64_t>();
  const auto rkey_size = r.Get<uint64_t>();
  if (!r.ok() || magic != kKeyMagic) {
    return DataLossError(PeerText(
        peer, "remote key is not an m2n ucx key (" + std::to_string(packed.size()) + " bytes)"));
  }
  if (version != kKeyVersion) {
    return DataLossError(PeerText(peer, "remote key version " + std::to_string(version) +
                                            ", this build reads " + std::to_string(kKeyVersion)));
  }
  auto rkey_buffer = r.GetBytes(rkey_size);
  if (!r.ok() || r.consumed() != r.size()) {
    return DataLossError(
        PeerText(peer, "remote key truncated or padded: " + std::to_string(packed.size()) +
                           " bytes for a " + std::to_string(rkey_size) + "-byte rkey"));
  }

  std::unique_ptr<UcxRemoteRegion> region(new UcxRemoteRegion(std::move(ctx), peer, address, size));
  for (int lane = 0; lane < kNumLanes; ++lane) {
    M2N_RETURN_IF_ERROR(UnpackRkey(peer, eps[lane], rkey_buffer, address, &region->rkeys_[lane],
                                   &region->mapped_[lane]));
  }
  return region;
}

UcxRemoteRegion::~UcxRemoteRegion() {
  for (ucp_rkey_h rkey : rkeys_) {
    if (rkey != nullptr) ucp_rkey_destroy(rkey);
  }
}

}  // namespace m2n::transport::ucx

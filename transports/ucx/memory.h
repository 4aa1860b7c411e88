// Registered memory for the UCX transport: a Region is a ucp_mem_h, a RemoteRegion is the peer's
// packed key unpacked once per endpoint (an rkey is only valid on the ep it was unpacked for, and
// this transport has one ep per Lane).
#pragma once

#include <ucp/api/ucp.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "m2n/memory.h"
#include "m2n/status.h"
#include "transports/transport.h"
#include "transports/ucx/context.h"

namespace m2n::transport::ucx {

// What peers may do with a region. kSource: nothing (mapped LOCAL_READ|LOCAL_WRITE, no key).
// kTarget: peers may write what a key packed from it reaches (REMOTE_WRITE; never REMOTE_READ);
// an active-message write is accepted only inside a block granted to its sender
// (Context::Grant). kRing: the transport's own rings, written by RMA and by its handler only.
enum class Access : uint8_t { kSource, kTarget, kRing };

class UcxRegion final : public Region {
 public:
  // allocate=false maps the caller's [data, data+size). allocate=true lets UCX allocate (data is
  // ignored) and zeroes it: UCX takes it from a shared-memory MD (posix/sysv) when one is enabled,
  // so a peer on this host writes it with a plain memcpy instead of a copy through the kernel or an
  // active message. The memory protection UCX grants follows `access`.
  static StatusOr<std::unique_ptr<UcxRegion>> Map(std::shared_ptr<Context> ctx, void* data,
                                                  size_t size, bool allocate, Access access);
  ~UcxRegion() override;
  UcxRegion(const UcxRegion&) = delete;
  UcxRegion& operator=(const UcxRegion&) = delete;

  std::byte* data() const override { return data_; }
  size_t size() const override { return size_; }
  MemoryKind kind() const override { return MemoryKind::kHost; }
  // Grants every peer the whole region (Access::kTarget only).
  StatusOr<Bytes> PackRemoteKey() const override;
  // Grants `peer` [offset, offset + length): its active-message writes land only there. The key
  // says that block's address and size; its UCX rkey is the whole mapping's (a shared-memory MD
  // maps whole segments), which on one host reaches no more than the peer, a process of the same
  // user, could reach anyway (README.md, "Access").
  StatusOr<BlockKey> PackRemoteKeyFor(int peer, size_t offset, size_t length) override;
  // The bare ucp_rkey_pack bytes, as UnpackRkey takes them.
  StatusOr<Bytes> PackRkey() const;

  ucp_mem_h memh() const { return memh_; }
  Access access() const { return access_; }
  const Context* owner() const { return ctx_.get(); }

 private:
  UcxRegion(std::shared_ptr<Context> ctx, ucp_mem_h memh, std::byte* data, size_t size,
            Access access)
      : ctx_(std::move(ctx)), memh_(memh), data_(data), size_(size), access_(access) {}
  StatusOr<Bytes> PackKey(uint64_t address, size_t size) const;

  std::shared_ptr<Context> ctx_;
  ucp_mem_h memh_;
  std::byte* data_;
  size_t size_;
  Access access_;
  mutable bool granted_ = false;  // some block was granted (Context::Grant): revoke when destroyed
};

class UcxRemoteRegion final : public RemoteRegion {
 public:
  // Unpacks `packed` (from UcxRegion::PackRemoteKey on `peer`) for each of the peer's endpoints.
  static StatusOr<std::unique_ptr<UcxRemoteRegion>> Unpack(
      std::shared_ptr<Context> ctx, int peer, const std::array<ucp_ep_h, kNumLanes>& eps,
      std::span<const std::byte> packed);
  ~UcxRemoteRegion() override;
  UcxRemoteRegion(const UcxRemoteRegion&) = delete;
  UcxRemoteRegion& operator=(const UcxRemoteRegion&) = delete;

  size_t size() const override { return size_; }

  int peer() const { return peer_; }
  const Context* owner() const { return ctx_.get(); }
  uint64_t address() const { return address_; }
  ucp_rkey_h rkey(Lane lane) const { return rkeys_[static_cast<int>(lane)]; }
  // Where the peer's region is mapped into this process (ucp_rkey_ptr works: a shared-memory
  // transport is enabled and reaches it), or null. Mapped memory is written with plain stores.
  std::byte* mapped(Lane lane) const { return mapped_[static_cast<int>(lane)]; }
  bool direct(Lane lane) const { return mapped(lane) != nullptr; }

 private:
  UcxRemoteRegion(std::shared_ptr<Context> ctx, int peer, uint64_t address, size_t size)
      : ctx_(std::move(ctx)), peer_(peer), address_(address), size_(size) {}

  std::shared_ptr<Context> ctx_;
  int peer_;
  uint64_t address_;
  size_t size_;
  std::array<ucp_rkey_h, kNumLanes> rkeys_{};
  std::array<std::byte*, kNumLanes> mapped_{};
};

// Unpacks a bare UCX rkey buffer for `ep`; *mapped is where the memory at `address` is mapped into
// this process, or null.
Status UnpackRkey(int peer, ucp_ep_h ep, std::span<const std::byte> rkey_buffer, uint64_t address,
                  ucp_rkey_h* rkey, std::byte** mapped);

}  // namespace m2n::transport::ucx

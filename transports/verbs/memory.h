// Registered memory for the verbs transport: a Region is an ibv_mr (host memory by ibv_reg_mr,
// CUDA memory by ibv_reg_dmabuf_mr on a dma-buf of the range); its packed key is (address, size,
// rkey), which a peer's VerbsRemoteRegion holds for its writes.
//
// Access: the region's own MR grants local access only (IBV_ACCESS_LOCAL_WRITE), so a send buffer
// or a staging copy can never be written by a peer. Remote write is granted by a second MR made
// when a key is packed: over the whole region (PackRemoteKey) or over one peer's block
// (PackRemoteKeyFor), so the NIC refuses a write through that key anywhere outside the block.
#pragma once

#include <infiniband/verbs.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "m2n/memory.h"
#include "m2n/status.h"
#include "transports/transport.h"
#include "transports/verbs/context.h"

namespace m2n::transport::verbs {

class VerbsRegion final : public Region {
 public:
  // Registers caller-owned memory; a `source` region has no remote key.
  static StatusOr<std::unique_ptr<VerbsRegion>> Register(std::shared_ptr<Context> ctx, void* data,
                                                         size_t size, MemoryKind kind,
                                                         bool source = false);
  // Allocates zeroed memory and registers it; freed with the region. Host: page-aligned;
  // CUDA: cuMemAlloc in the current context, registered as Register does.
  static StatusOr<std::unique_ptr<VerbsRegion>> Allocate(std::shared_ptr<Context> ctx, size_t size,
                                                         MemoryKind kind);
  ~VerbsRegion() override;
  VerbsRegion(const VerbsRegion&) = delete;
  VerbsRegion& operator=(const VerbsRegion&) = delete;

  std::byte* data() const override { return data_; }
  size_t size() const override { return size_; }
  MemoryKind kind() const override { return kind_; }
  StatusOr<Bytes> PackRemoteKey() const override;
  StatusOr<BlockKey> PackRemoteKeyFor(int peer, size_t offset, size_t length) override;

  uint32_t lkey() const { return mr_->lkey; }
  const Context* owner() const { return ctx_.get(); }

 private:
  VerbsRegion(std::shared_ptr<Context> ctx, ibv_mr* mr, std::byte* data, size_t size,
              MemoryKind kind, bool owned)
      : ctx_(std::move(ctx)), mr_(mr), data_(data), size_(size), kind_(kind), owned_(owned) {}

  // An MR over [data_ + offset, +length) that peers may write, made once and kept until destroyed.
  StatusOr<const ibv_mr*> RemoteMr(size_t offset, size_t length) const;

  std::shared_ptr<Context> ctx_;
  ibv_mr* mr_;
  std::byte* data_;
  size_t size_;
  MemoryKind kind_;
  bool owned_;  // data_ was allocated here
  bool source_ = false;
  mutable std::vector<ibv_mr*> remote_mrs_;
};

class VerbsRemoteRegion final : public RemoteRegion {
 public:
  // Unpacks `packed` (VerbsRegion::PackRemoteKey on `peer`). DataLoss on bad framing.
  static StatusOr<std::unique_ptr<VerbsRemoteRegion>> Unpack(const Context* owner, int peer,
                                                             std::span<const std::byte> packed);
  size_t size() const override { return size_; }

  int peer() const { return peer_; }
  const Context* owner() const { return owner_; }
  uint64_t address() const { return address_; }
  uint32_t rkey() const { return rkey_; }

 private:
  VerbsRemoteRegion(const Context* owner, int peer, uint64_t address, size_t size, uint32_t rkey)
      : owner_(owner), peer_(peer), address_(address), size_(size), rkey_(rkey) {}
  const Context* owner_;
  int peer_;
  uint64_t address_;
  size_t size_;
  uint32_t rkey_;
};

// Whether this build can register CUDA memory (CUDA was found at configure time).
bool CudaRegistrationBuilt();

}  // namespace m2n::transport::verbs

// The cuda_ipc transport: every rank on one host, GPUs joined by NVLink (or PCIe peer to peer).
//
// Receive slots in device memory are exported once by CUDA IPC handles and mapped by every peer;
// host-memory slots and the immediate rings live in POSIX shared memory (endpoint.h). Two paths:
//   host-driven (Transport::Post / Poll): a write is a copy into the peer's mapped slot (memcpy, or
//     cudaMemcpy when device memory is involved), then an entry in the peer's immediate ring; this
//     carries the group's ACKs and control traffic, and host-memory groups, with no UCX at all;
//   stream-ordered (StreamOps): kernels on the caller's stream copy into the peer's slot and raise
//     the slot's arrival word in the peer's signal block; credits are signal words too, all on the
//     device (kernels.h).
// README.md has the design and the figures.
#pragma once

#include <cuda_runtime.h>

#include <deque>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "m2n/deadline.h"
#include "m2n/status.h"
#include "transports/cuda_ipc/endpoint.h"
#include "transports/cuda_ipc/kernels.h"
#include "transports/cuda_ipc/memory.h"
#include "transports/cuda_ipc/proxy.h"
#include "transports/transport.h"

namespace m2n::transport::cuda_ipc {

// A CUDA device is there and the runtime starts.
Status FindCudaDevice();
// Whether a group with receive slots in `slot_memory` can run here: host slots need only POSIX
// shared memory, device slots a CUDA device (FindCudaDevice).
Status Probe(MemoryKind slot_memory);

struct Address;  // a rank's connection address (transport.cc)

class CudaIpcTransport final : public Transport, public StreamOps {
 public:
  static StatusOr<std::unique_ptr<Transport>> Create(const Config& config);
  ~CudaIpcTransport() override;

  std::string_view name() const override { return "cuda_ipc"; }
  Capabilities capabilities() const override;

  StatusOr<std::unique_ptr<Region>> Register(void* data, size_t size, MemoryKind kind) override;
  StatusOr<std::unique_ptr<Region>> Allocate(size_t size, MemoryKind kind) override;

  StatusOr<Bytes> LocalAddress(int peer) override;
  Status Connect(int peer, std::span<const std::byte> remote_address) override;
  StatusOr<std::unique_ptr<RemoteRegion>> UnpackRemoteKey(
      int peer, std::span<const std::byte> packed) override;

  Status Post(std::span<const Write> writes) override;
  StatusOr<size_t> Poll(std::span<Completion> out) override;
  Status Close(Deadline deadline) override;
  // None without a CUDA device (a host-slot group): the stream-ordered path needs the signal block.
  StreamOps* stream_ops() override { return no_cuda_.ok() ? this : nullptr; }

  // StreamOps
  Status SendOnStream(std::span<const StreamWrite> writes, void* stream) override;
  Status WaitOnStream(std::span<const StreamSlot> slots, void* stream) override;
  Status ReleaseOnStream(std::span<const StreamSlot> slots, void* stream) override;
  const uint32_t* ArrivedLength(int peer, int slot) const override;
  Status StreamError() override;
  // The device-side API (m2n/device.h): the same signal words, used by the user's kernels.
  StatusOr<DevicePeerWords> DeviceWords(int peer) override;
  StatusOr<DeviceWaitLimit> DeviceWaits() override;
  StatusOr<std::byte*> MappedAddress(const RemoteRegion& remote, size_t offset) override;
  StatusOr<std::unique_ptr<Region>> AllocateDeviceCopy(
      std::span<const std::byte> contents) override;

 private:
  explicit CudaIpcTransport(const Config& config) : config_(config) {}
  Status Init();
  // The device, the signal block, the error word, the copy stream and the copy proxy.
  Status InitCuda();
  std::string PeerName(int peer) const;
  // Signal word (peer, kind, slot) in our block, and in the peer's block the word of (us, kind,
  // slot).
  unsigned long long* LocalSignal(int peer, SignalKind kind, int slot) const;
  unsigned long long* RemoteSignal(int peer, SignalKind kind, int slot) const;
  Status CheckPeer(int peer, std::string_view what) const;
  Status CheckAddress(int peer, const Address& a) const;
  Status MapRingForProxy(int peer);
  // InvalidArgument for a write that must not go out (validate.h); checked for a whole batch first.
  Status Validate(const Write& w) const;
  Status PostOne(const Write& w);
  Status ValidateStreamWrite(const StreamWrite& w) const;
  // A connected peer and a slot inside [0, slot_depth), before LocalSignal / RemoteSignal index by
  // them; and, before RemoteSignal, the peer's signal block mapped (it has none without a GPU).
  Status CheckStreamSlot(int peer, int slot, std::string_view what) const;
  Status CheckRemoteSignals(int peer, std::string_view what) const;

  Config config_;
  // Why this host-slot transport runs without CUDA (no device here); OK when CUDA is started.
  Status no_cuda_;
  int device_ = -1;
  MailboxLayout layout_;
  std::unique_ptr<Mailbox> mailbox_;
  std::vector<std::unique_ptr<Outbox>> outboxes_;  // by rank
  std::unique_ptr<DeviceAllocation> signals_;  // ours
  std::vector<std::unique_ptr<DeviceMapping>> remote_signals_;  // by rank
  unsigned long long* error_host_ = nullptr;  // host-mapped error word
  unsigned long long* error_device_ = nullptr;
  Status stream_error_;
  std::deque<Completion> done_;
  cudaStream_t copy_stream_ = nullptr;  // host-driven writes of device memory
  // M2N_CUDA_IPC_PROXY=1: host-driven writes of device memory go through the copy proxy (proxy.h),
  // which raises the immediate in the peer's ring itself; the rings are registered with CUDA.
  std::unique_ptr<CopyProxy> proxy_;
  std::vector<std::byte*> outbox_device_;  // by rank: the device address of the peer's mapped ring
  struct Proxied {
    uint64_t index;  // the proxy's descriptor
    Completion done;
  };
  std::deque<Proxied> proxied_;
  Status PostThroughProxy(const Write& w, const std::byte* src, std::byte* dst);
  void UnregisterOutboxes();
  int max_blocks_ = 32;  // M2N_CUDA_IPC_MAX_BLOCKS: blocks per message at most
  size_t block_bytes_ = 64 << 10;  // M2N_CUDA_IPC_BLOCK_BYTES: bytes per block before another
  bool closed_ = false;
  bool device_api_ = false;  // DeviceWords was called: a give-up is the device API's
};

}  // namespace m2n::transport::cuda_ipc

// The transport boundary: the only thing src/ knows about a transport.
//
// A transport moves bytes by one operation, a one-sided write with an immediate: `length` bytes
// from a local registered region into a remote registered region, followed by a 32-bit immediate
// that the peer sees as a Completion only after the written bytes are visible to it (RDMA
// IBV_WR_RDMA_WRITE_WITH_IMM semantics; emulated where the hardware lacks it). A zero-length write
// carries only its immediate. Writes go on a Lane: kData for payload, kAck for credit returns,
// which a transport must keep from queueing behind data (its own endpoint, QP or service level).
//
// Ordering: on one (peer, lane), immediates are delivered in the order they were posted.
// Progress: nothing moves unless the owner calls Poll(); Poll never blocks.
// Threading: one thread at a time per Transport.
// Flow control is the caller's: a transport may assume that at most Config::max_unpolled
// immediates per (peer, lane) are posted and not yet polled by the peer.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "m2n/deadline.h"
#include "m2n/device.h"
#include "m2n/memory.h"
#include "m2n/status.h"

namespace m2n::transport {

using Bytes = std::vector<std::byte>;

enum class Lane : uint8_t { kData = 0, kAck = 1 };
inline constexpr int kNumLanes = 2;

struct Capabilities {
  bool host_memory = true;
  bool cuda_memory = false;
  bool native_write_with_imm = false;  // true: the NIC does it; false: emulated
  size_t max_write_bytes = SIZE_MAX;
  // SendOnStream / WaitOnStream / ReleaseOnStream work (see "Stream-ordered operations" below).
  bool stream_ordered = false;
};

struct Config {
  int rank = -1;
  int world_size = 0;
  // Ranks this transport will connect to (the other side of the group).
  std::vector<int> peers;
  // Upper bound on immediates posted to one (peer, lane) and not yet polled by that peer.
  int max_unpolled = 0;
  // Bound on every internal wait (connect, flush, close), and on every wait a stream-ordered
  // operation makes on the device.
  std::chrono::milliseconds timeout{30000};
  // Receive slots per peer (Options::slot_depth): the slot numbers stream-ordered operations use.
  int slot_depth = 0;
  // Where the receive slots live (Options::slot_memory); kCuda: the group uses StreamOps.
  MemoryKind slot_memory = MemoryKind::kHost;
  // The RDMA NIC for transports that use one (m2n/topology.h): a must when nic_required (the
  // operator named it), else the nearest one, to be preferred; empty: the transport's own choice.
  std::string nic;
  bool nic_required = false;
  // The CPU a proxy thread is pinned to; -1: not pinned.
  int proxy_core = -1;
  // Whether the owner aborted (Group::Abort, from any thread; cheap, safe to call at any time
  // while the transport lives). A transport's own waits inside a call (room in a send queue or a
  // proxy's ring) poll it and return kAborted; empty: nothing aborts them but their timeout.
  std::function<bool()> aborted;
};

// A key that one peer alone may use, and where the block it was made for starts in the region the
// key describes (UnpackRemoteKey there): 0 where the key reaches only the block.
struct BlockKey {
  Bytes key;
  size_t offset = 0;
};

// Registered local memory. Destroying it deregisters it.
//
// Access: a peer may reach a region only through a key this side handed out. A region registered
// as a local source (RegisterSource) has no key. PackRemoteKey grants every connected peer the
// whole region; PackRemoteKeyFor grants one peer one block (the receive slots give each sender its
// own), and a transport refuses that peer's writes anywhere else.
class Region {
 public:
  virtual ~Region() = default;
  virtual std::byte* data() const = 0;
  virtual size_t size() const = 0;
  virtual MemoryKind kind() const = 0;
  // What a peer needs to write into this region (UnpackRemoteKey there).
  virtual StatusOr<Bytes> PackRemoteKey() const = 0;
  // What `peer` alone needs to write into [offset, offset + length) of this region, and nothing
  // else of it. The default, for a transport that cannot narrow a key (cuda_ipc: an IPC handle
  // maps the whole allocation), is the whole region's key, with the block at `offset` in it.
  virtual StatusOr<BlockKey> PackRemoteKeyFor(int peer, size_t offset, size_t length) {
    (void)peer;
    (void)length;
    M2N_ASSIGN_OR_RETURN(Bytes key, PackRemoteKey());
    return BlockKey{std::move(key), offset};
  }
};

// A peer's region, unpacked for writing into it.
class RemoteRegion {
 public:
  virtual ~RemoteRegion() = default;
  virtual size_t size() const = 0;
};

struct Write {
  int peer = -1;
  Lane lane = Lane::kData;
  const Region* local = nullptr;  // may be null when length == 0
  size_t local_offset = 0;
  const RemoteRegion* remote = nullptr;  // may be null when length == 0
  size_t remote_offset = 0;
  size_t length = 0;
  uint32_t imm = 0;
  uint64_t cookie = 0;  // handed back in the kWriteDone completion
};

struct Completion {
  enum class Type : uint8_t {
    kWriteDone,  // a Write of ours left its source buffer: `cookie`, `peer`, `lane`
    kImmediate,  // a peer's write landed: `peer`, `lane`, `imm`, `length` (bytes written)
    kError,  // `peer` (or -1) failed: `error` says how
  };
  Type type = Type::kWriteDone;
  int peer = -1;
  Lane lane = Lane::kData;
  uint32_t imm = 0;
  size_t length = 0;
  uint64_t cookie = 0;
  Status error;
};

class StreamOps;  // below

class Transport {
 public:
  virtual ~Transport() = default;

  virtual std::string_view name() const = 0;
  virtual Capabilities capabilities() const = 0;

  // Registers caller-owned memory, which peers may write once this side packs them a key.
  virtual StatusOr<std::unique_ptr<Region>> Register(void* data, size_t size, MemoryKind kind) = 0;
  // Registers caller-owned memory that is only ever the local source of writes (send buffers, a
  // staging copy): no peer may read or write it, and its PackRemoteKey fails. The default, for a
  // transport whose registrations give peers nothing until a key is packed, is Register.
  virtual StatusOr<std::unique_ptr<Region>> RegisterSource(void* data, size_t size,
                                                           MemoryKind kind) {
    return Register(data, size, kind);
  }
  // Allocates and registers memory the transport can write into fastest (receive slots).
  virtual StatusOr<std::unique_ptr<Region>> Allocate(size_t size, MemoryKind kind) = 0;

  // Everything `peer` needs to connect to us, on every lane. Called once per peer before Connect.
  virtual StatusOr<Bytes> LocalAddress(int peer) = 0;
  // Connects to `peer` with the bytes its LocalAddress(our rank) returned.
  virtual Status Connect(int peer, std::span<const std::byte> remote_address) = 0;
  // Makes a peer's packed key usable for writes to that peer (after Connect).
  virtual StatusOr<std::unique_ptr<RemoteRegion>> UnpackRemoteKey(
      int peer, std::span<const std::byte> packed) = 0;

  // Posts writes in order. Returns at once; each Write later yields one kWriteDone.
  virtual Status Post(std::span<const Write> writes) = 0;
  // Makes progress and moves up to out.size() completions into `out`; returns how many.
  virtual StatusOr<size_t> Poll(std::span<Completion> out) = 0;

  // Flushes outstanding writes and disconnects every peer, bounded by `deadline`.
  virtual Status Close(Deadline deadline) = 0;

  // Stream-ordered operations, or null when capabilities().stream_ordered is false.
  virtual StreamOps* stream_ops() { return nullptr; }
};

// What the build knows about one transport.
struct TransportInfo {
  std::string_view name;
  int preference;  // higher is better for "auto"
  // Whether it can run here and now for a group whose receive slots are in `slot_memory` (libraries
  // load, devices exist); a reason when not. cuda_ipc with host slots needs no GPU, with device
  // slots it does.
  Status (*probe)(MemoryKind slot_memory);
  StatusOr<std::unique_ptr<Transport>> (*create)(const Config& config);
  // Whether it can place receive slots in CUDA device memory (for "auto" with such slots).
  bool cuda_memory = false;
  // Whether it drives an RDMA NIC itself: the group then finds, from the machine's topology, the
  // NIC nearest to the rank's GPU and a proxy core (Config::nic, Config::proxy_core).
  bool uses_nic = false;
};

// ---------------------------------------------------------------------------------------------
// Stream-ordered operations (Capabilities::stream_ordered; device memory only).
//
// Enqueued on a CUDA stream (a cudaStream_t passed as void*), they run after the work already on it
// and the call returns at once: no host thread waits for the device. The caller picks the slot (the
// same slot sequence on both sides of a (sender, receiver) pair); the transport keeps, per
// (peer, slot), a generation count in device memory on both sides, so that captured CUDA graphs
// stay right when replayed: a replay advances the device counts, not the host's.
//   SendOnStream: on the device, waits until the peer released the slot's previous message (the
//     credit), writes the payload into the slot, then raises the slot's arrival word at the peer,
//     which the peer sees only after the payload.
//   WaitOnStream: the stream waits until the slot's next message has arrived.
//   ReleaseOnStream: hands the slot back to the peer (raises its credit word there).
// A wait that lasts longer than Config::timeout gives up on the device; the transport then reports
// kDeadlineExceeded from its next call (StreamError).
struct StreamWrite {
  int peer = -1;
  const Region* local = nullptr;  // device memory; may be null when length == 0
  size_t local_offset = 0;
  const RemoteRegion* remote = nullptr;
  size_t remote_offset = 0;
  size_t length = 0;
  int slot = 0;  // in [0, Config::slot_depth)
};
struct StreamSlot {
  int peer = -1;
  int slot = 0;
};

// One peer's signal words for the device-side API (StreamOps::DeviceWords): device addresses of
// slot_depth words each, contiguous over slots, with the meaning the stream-ordered kernels give
// them: arrival (generation << 32) | length, released generation, and so on.
struct DevicePeerWords {
  // Ours, for (peer, slot).
  unsigned long long* arrival = nullptr;  // written by the peer
  unsigned long long* released = nullptr;  // written by the peer
  unsigned long long* generation_sent = nullptr;
  unsigned long long* generation_received = nullptr;
  unsigned long long* arrived_blocks = nullptr;
  // The peer's, for (us, slot), mapped here.
  unsigned long long* remote_arrival = nullptr;
  unsigned long long* remote_released = nullptr;
};
// Where a device wait writes (reason << 56) | (peer << 24) | slot when it gives up, after how long.
struct DeviceWaitLimit {
  unsigned long long* error_word = nullptr;  // device address
  unsigned long long timeout_ns = 0;
};

// A peer a kernel reaches through the transport's proxy (StreamOps::ProxyDevicePeers): message k
// goes from byte staging_offset + (k mod slot_depth) * stride of `staging` (device memory this side
// registered) to the same place past remote_offset in `remote` (the peer's slots for us).
struct ProxiedPeer {
  int peer = -1;
  const Region* staging = nullptr;
  size_t staging_offset = 0;
  const RemoteRegion* remote = nullptr;
  size_t remote_offset = 0;
};

class StreamOps {
 public:
  virtual ~StreamOps() = default;
  // At most one entry per (peer, slot) in one call.
  virtual Status SendOnStream(std::span<const StreamWrite> writes, void* stream) = 0;
  virtual Status WaitOnStream(std::span<const StreamSlot> slots, void* stream) = 0;
  virtual Status ReleaseOnStream(std::span<const StreamSlot> slots, void* stream) = 0;
  // Device address of the length of the message in (peer, slot), valid in stream order after a
  // WaitOnStream of that slot.
  virtual const uint32_t* ArrivedLength(int peer, int slot) const = 0;
  // A wait on the device that gave up, or a CUDA error of earlier enqueued work; OK otherwise.
  virtual Status StreamError() = 0;

  // ---- The device-side API (m2n/device.h): user kernels use the signal words themselves ----
  // The defaults say that this transport cannot serve it (kUnimplemented); a transport whose signal
  // words a kernel may touch directly (cuda_ipc) overrides the first four; a transport whose proxy
  // thread moves the kernels' messages (verbs) overrides all but MappedAddress, and the last two.
  // Once DeviceWords was called, StreamError words a give-up as the device API's.
  //
  // `peer`'s signal words, as device addresses, slot_depth words each, contiguous over slots.
  virtual StatusOr<DevicePeerWords> DeviceWords(int peer) {
    (void)peer;
    return UnimplementedError(DeviceApiMissing());
  }
  // Where a device wait reports that it gave up, and how long it may spin.
  virtual StatusOr<DeviceWaitLimit> DeviceWaits() { return UnimplementedError(DeviceApiMissing()); }
  // The device address, as mapped here, of byte `offset` of a peer's region.
  virtual StatusOr<std::byte*> MappedAddress(const RemoteRegion& remote, size_t offset) {
    (void)remote;
    (void)offset;
    return UnimplementedError(DeviceApiMissing());
  }
  // Device memory of contents.size() bytes holding `contents` (copied before this returns): the
  // device API's cursors and peer table. Never exported to a peer.
  virtual StatusOr<std::unique_ptr<Region>> AllocateDeviceCopy(
      std::span<const std::byte> contents) {
    (void)contents;
    return UnimplementedError(DeviceApiMissing());
  }
  // Whether kernels reach peers through this transport's proxy (m2n/device.h: proxied peers): the
  // group then stages messages (ProxyDevicePeers) instead of mapping the peers' slots.
  virtual bool DeviceProxied() const { return false; }
  // Proxied: starts the proxy thread on these routes, one per peer (each peer's slot stride is the
  // group's slot_bytes); returns the descriptor ring the kernels fill. Once per transport, before
  // any stream-ordered call.
  virtual StatusOr<DeviceRing> ProxyDevicePeers(std::span<const ProxiedPeer> peers,
                                                size_t slot_bytes) {
    (void)peers;
    (void)slot_bytes;
    return UnimplementedError(DeviceApiMissing());
  }

 protected:
  virtual std::string DeviceApiMissing() const {
    return "this transport's signal words cannot be used by a kernel: no device-side API";
  }
};

// The transports compiled in (generated by CMake into transports/registry.cc), best first.
std::span<const TransportInfo> RegisteredTransports();

}  // namespace m2n::transport

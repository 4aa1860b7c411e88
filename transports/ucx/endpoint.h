// Per-peer connection state of the UCX transport, and the emulated immediate.
//
// UCX has no write-with-immediate. Every immediate ends up as a 16-byte RingEntry in a ring the
// receiver owns for (writer, lane), at the slot of its sequence number; the receiver's Poll scans
// its rings at the next expected sequence number. An entry counts only when its seq is the expected
// one and its check matches, so a torn or stale entry is never taken. Rings hold
// Config::max_unpolled entries, which the caller's credit scheme guarantees is enough.
//
// How the entry gets there depends on whether the ring is mapped at the writer (transport.cc):
// shared memory: the writer stores payload and entry itself (or puts them); otherwise the whole
// write travels as one active message (AmHeader + payload) and the receiver's handler puts the
// payload into place and then stores the entry, so entries may be stored out of order and the
// sequence number puts them back in order.
#pragma once

#include <ucp/api/ucp.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "m2n/status.h"
#include "transports/transport.h"
#include "transports/ucx/context.h"

namespace m2n::transport::ucx {

struct RingEntry {
  uint32_t imm;
  uint32_t length;
  uint32_t seq;  // 1, 2, ... per (writer, lane); 0 never matches, so zeroed memory is empty
  uint32_t check;
};
static_assert(sizeof(RingEntry) == 16);

// A mix of all three fields: an entry whose 16 bytes did not all land (or land from two different
// writes) fails it with probability 2^-32.
inline uint32_t RingCheck(uint32_t imm, uint32_t length, uint32_t seq) {
  uint64_t x = ((uint64_t{imm} << 32) | length) ^ (uint64_t{seq} * 0x9E3779B97F4A7C15ull) ^
               0x6D326E75636B31ull;
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return static_cast<uint32_t>(x) ^ static_cast<uint32_t>(x >> 32);
}

// The header of a write sent as an active message (the path for peers whose ring is not mapped
// here). The receiver checks every field before it writes anything.
struct AmHeader {
  uint64_t address;  // where the payload goes in the receiver's memory (unused when length is 0)
  uint32_t imm;
  uint32_t length;  // must equal the active message's payload length
  uint32_t seq;  // the write's place on (writer, lane), as RingEntry::seq
  int32_t src_rank;
};
static_assert(sizeof(AmHeader) == 24);

// The active-message id of m2n writes, registered on both workers (each worker is one lane).
inline constexpr unsigned kAmWriteId = 0;

// How endpoints treat a failed peer (M2N_UCX_ERR_MODE); both sides must agree, UCX refuses
// asymmetric endpoints.
enum class ErrMode : uint8_t {
  kAuto = 0,  // kNone to a peer on this host, kPeer to one on another host
  kPeer = 1,  // UCP_ERR_HANDLING_MODE_PEER: failures reported; only transports that detect them
  kNone =
      2,  // UCP_ERR_HANDLING_MODE_NONE: every transport (shared memory too); failures best effort
};
StatusOr<ErrMode> ErrModeFromEnv();
// The mode an ep to a peer gets; symmetric in the two sides' (equal) settings.
ucp_err_handling_mode_t ResolveErrMode(ErrMode setting, bool same_host);

// M2N_UCX_EAGER_MAX (bytes, K/M/G suffixes: powers of 2): active-message writes up to this size
// go eager to every peer; unset or "auto": nullopt (UCX decides, except on TCP, see transport.cc).
StatusOr<std::optional<size_t>> EagerMaxFromEnv();
// M2N_UCX_DIRECT (a boolean, default on): plain stores into a peer's mapped memory (transport.cc).
StatusOr<bool> DirectStoresFromEnv();
// The eager limit on endpoints whose every lane is TCP.
inline constexpr size_t kTcpEagerMax = size_t{128} << 10;
// Whether every transport lane UCX chose for `ep` is TCP (or `self`).
bool EpUsesOnlyTcp(ucp_ep_h ep);

// What LocalAddress(peer) says, parsed.
struct PeerAddress {
  int src_rank = -1;  // who made it
  int dst_rank = -1;  // for whom
  uint32_t max_unpolled = 0;
  ErrMode err_mode = ErrMode::kAuto;
  std::span<const std::byte> host;  // HostId() of src_rank
  std::array<std::span<const std::byte>, kNumLanes> worker_address;
  // The rings at src_rank that dst_rank writes into, one per lane, all under one rkey.
  std::array<uint64_t, kNumLanes> ring_address{};
  std::span<const std::byte> ring_rkey;
};

// Names this machine (hostname and kernel boot id): equal on two ranks iff they can share memory,
// short of containers with separate IPC namespaces (UCX then just picks another transport).
const Bytes& HostId();

Bytes EncodePeerAddress(const PeerAddress& address);
// `bytes` must outlive the result (its spans point into it). DataLoss on bad framing.
StatusOr<PeerAddress> DecodePeerAddress(int peer, std::span<const std::byte> bytes);

// One connected peer: an ep per lane on that lane's worker, the rkey of our rings at the peer (per
// ep), the sequence state of both directions, and what failed.
class Endpoint {
 public:
  struct TxLane {
    ucp_ep_h ep = nullptr;
    ucp_rkey_h ring_rkey = nullptr;
    uint64_t ring_address = 0;  // entry 0 of our ring at the peer
    RingEntry* ring_mapped = nullptr;  // our ring at the peer, where mapped here (shared memory)
    uint32_t next_seq = 1;
    uint32_t next_slot = 0;
    // Active-message writes up to this many bytes go eager; larger ones as UCX decides (by size:
    // rendezvous for large ones). 0: UCX decides for every size.
    size_t eager_max = 0;
    // Tickets of writes whose ring entry waits behind a flush: entries go out in ticket order, and
    // while any waits, every later entry of this lane queues behind it (imm order per lane).
    uint64_t deferred_issued = 0;
    uint64_t deferred_posted = 0;
    bool has_deferred() const { return deferred_issued != deferred_posted; }
  };

  // Creates both eps from the peer's worker addresses and unpacks its ring rkey on each. `failed`
  // collects endpoints whose ep failed (the UCX error callback runs inside ucp_worker_progress).
  static StatusOr<std::unique_ptr<Endpoint>> Connect(std::shared_ptr<Context> ctx, int peer,
                                                     const PeerAddress& address,
                                                     uint32_t ring_entries,
                                                     ucp_err_handling_mode_t err_mode,
                                                     std::vector<Endpoint*>* failed);
  // Force-closes what is still open (Close() should have closed it gracefully already).
  ~Endpoint();
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  int peer() const { return peer_; }
  TxLane& tx(Lane lane) { return tx_[static_cast<int>(lane)]; }
  std::array<ucp_ep_h, kNumLanes> eps() const { return {tx_[0].ep, tx_[1].ep}; }

  // The next ring entry of `lane` and its slot in the ring; advances the sequence.
  RingEntry NextEntry(Lane lane, uint32_t imm, uint32_t length, uint32_t* slot);

  // UCS_OK while healthy; the first error UCX reported on either ep otherwise.
  ucs_status_t failure() const { return failure_; }
  Status FailureStatus() const;

  // Closing, in the order UCX wants: rkeys before their ep. Each returns a request to wait on
  // (ucp_request_check_status / ucp_request_free) or nullptr when done at once.
  void* StartFlush(Lane lane);
  void* StartClose(Lane lane, bool force);

 private:
  Endpoint(std::shared_ptr<Context> ctx, int peer, uint32_t ring_entries,
           std::vector<Endpoint*>* failed)
      : ctx_(std::move(ctx)), peer_(peer), ring_entries_(ring_entries), failed_(failed) {}
  static void OnError(void* arg, ucp_ep_h ep, ucs_status_t status);

  std::shared_ptr<Context> ctx_;
  int peer_;
  uint32_t ring_entries_;
  std::vector<Endpoint*>* failed_;
  ucs_status_t failure_ = UCS_OK;
  std::array<TxLane, kNumLanes> tx_;
};

// What one peer writes to us: its ring per lane in our memory, where the next entry of each is,
// and whether its writes are refused. One per peer in Config::peers from Create on, independent of
// the Endpoint, so that a peer that connected first may write at once: its entries wait in the
// ring until our Connect adds the peer to the scan.
class Inbox {
 public:
  Inbox(int peer, std::array<RingEntry*, kNumLanes> rings, uint32_t ring_entries)
      : peer_(peer), ring_entries_(ring_entries) {
    for (int lane = 0; lane < kNumLanes; ++lane) lanes_[lane].ring = rings[lane];
  }

  int peer() const { return peer_; }
  uint32_t expected_seq(Lane lane) const { return lanes_[static_cast<int>(lane)].expected_seq; }
  // Takes the next entry of the ring of `lane` if it has fully landed.
  bool TakeEntry(Lane lane, RingEntry* entry);
  // Where the entry with sequence number `seq` goes in the ring of `lane`, or null when `seq` is
  // not among the next ring-size entries (an honest peer never gets that far ahead).
  RingEntry* SlotFor(Lane lane, uint32_t seq);

  // Set once a write of this peer was refused: later ones are dropped unread.
  bool refused() const { return refused_; }
  void set_refused() { refused_ = true; }

 private:
  struct RxLane {
    RingEntry* ring = nullptr;
    uint32_t expected_seq = 1;
    uint32_t slot = 0;
  };
  int peer_;
  uint32_t ring_entries_;
  bool refused_ = false;
  std::array<RxLane, kNumLanes> lanes_;
};

// Stores `entry` into a mapped ring slot; seq goes last (release), so a reader that sees it sees
// the rest and everything stored before.
inline void StoreEntry(RingEntry* slot, const RingEntry& entry) {
  std::atomic_ref<uint32_t>(slot->imm).store(entry.imm, std::memory_order_relaxed);
  std::atomic_ref<uint32_t>(slot->length).store(entry.length, std::memory_order_relaxed);
  std::atomic_ref<uint32_t>(slot->check).store(entry.check, std::memory_order_relaxed);
  std::atomic_ref<uint32_t>(slot->seq).store(entry.seq, std::memory_order_release);
}

inline RingEntry Endpoint::NextEntry(Lane lane, uint32_t imm, uint32_t length, uint32_t* slot) {
  TxLane& t = tx(lane);
  RingEntry entry{imm, length, t.next_seq, RingCheck(imm, length, t.next_seq)};
  *slot = t.next_slot;
  ++t.next_seq;
  if (++t.next_slot == ring_entries_) t.next_slot = 0;
  return entry;
}

inline bool Inbox::TakeEntry(Lane lane, RingEntry* entry) {
  RxLane& r = lanes_[static_cast<int>(lane)];
  RingEntry& slot = r.ring[r.slot];
  // Acquire on seq: the fields and the payload the writer fenced before this entry are read after.
  const uint32_t seq = std::atomic_ref<uint32_t>(slot.seq).load(std::memory_order_acquire);
  if (seq != r.expected_seq) return false;
  entry->imm = std::atomic_ref<uint32_t>(slot.imm).load(std::memory_order_relaxed);
  entry->length = std::atomic_ref<uint32_t>(slot.length).load(std::memory_order_relaxed);
  entry->check = std::atomic_ref<uint32_t>(slot.check).load(std::memory_order_relaxed);
  entry->seq = seq;
  // A mismatch is an entry still landing (its bytes arrive in any order): look again next Poll.
  if (entry->check != RingCheck(entry->imm, entry->length, seq)) return false;
  ++r.expected_seq;
  if (++r.slot == ring_entries_) r.slot = 0;
  return true;
}

inline RingEntry* Inbox::SlotFor(Lane lane, uint32_t seq) {
  RxLane& r = lanes_[static_cast<int>(lane)];
  const uint32_t ahead = seq - r.expected_seq;  // wraps with seq
  if (ahead >= ring_entries_) return nullptr;
  return r.ring + (r.slot + ahead) % ring_entries_;
}

}  // namespace m2n::transport::ucx

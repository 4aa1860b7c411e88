// Per-peer connection state of the UCX transport, and the emulated immediate.
//
// UCX has no write-with-immediate, so a Write is two puts on the lane's endpoint: the payload into
// the peer's region, a worker fence, then a 16-byte RingEntry into a ring the peer owns for
// (our rank, lane). The peer's Poll scans its rings at the next expected sequence number; an entry
// counts only when its seq is the expected one and its check matches, so a torn or stale entry is
// never taken. Rings hold Config::max_unpolled entries, which the caller's credit scheme guarantees
// is enough.
#pragma once

#include <ucp/api/ucp.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
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
    uint64_t ring_address = 0;         // entry 0 of our ring at the peer
    RingEntry* ring_mapped = nullptr;  // our ring at the peer, where mapped here (shared memory)
    uint32_t next_seq = 1;
    uint32_t next_slot = 0;
    // Tickets of writes whose ring entry waits behind a flush: entries go out in ticket order, and
    // while any waits, every later entry of this lane queues behind it (imm order per lane).
    uint64_t deferred_issued = 0;
    uint64_t deferred_posted = 0;
    bool has_deferred() const { return deferred_issued != deferred_posted; }
  };
  struct RxLane {
    RingEntry* ring = nullptr;  // the peer's ring in our memory
    uint32_t expected_seq = 1;
    uint32_t slot = 0;
  };

  // Creates both eps from the peer's worker addresses and unpacks its ring rkey on each. `rx_rings`
  // are the rings in our memory this peer writes into; `failed` collects endpoints whose ep failed
  // (the UCX error callback runs inside ucp_worker_progress).
  static StatusOr<std::unique_ptr<Endpoint>> Connect(std::shared_ptr<Context> ctx, int peer,
                                                     const PeerAddress& address,
                                                     std::array<RingEntry*, kNumLanes> rx_rings,
                                                     uint32_t ring_entries,
                                                     ucp_err_handling_mode_t err_mode,
                                                     std::vector<Endpoint*>* failed);
  // Force-closes what is still open (Close() should have closed it gracefully already).
  ~Endpoint();
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  int peer() const { return peer_; }
  TxLane& tx(Lane lane) { return tx_[static_cast<int>(lane)]; }
  RxLane& rx(Lane lane) { return rx_[static_cast<int>(lane)]; }
  std::array<ucp_ep_h, kNumLanes> eps() const { return {tx_[0].ep, tx_[1].ep}; }

  // The next ring entry of `lane` and its slot in the ring; advances the sequence.
  RingEntry NextEntry(Lane lane, uint32_t imm, uint32_t length, uint32_t* slot);
  // Takes the next entry of the peer's ring on `lane` if it has fully landed.
  bool TakeEntry(Lane lane, RingEntry* entry);

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
  std::array<RxLane, kNumLanes> rx_;
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

inline bool Endpoint::TakeEntry(Lane lane, RingEntry* entry) {
  RxLane& r = rx(lane);
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

}  // namespace m2n::transport::ucx

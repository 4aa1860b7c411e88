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

// What LocalAddress(peer) says, parsed.
struct PeerAddress {
  int src_rank = -1;  // who made it
  int dst_rank = -1;  // for whom
  uint32_t max_unpolled = 0;
  std::array<std::span<const std::byte>, kNumLanes> worker_address;
  // The rings at src_rank that dst_rank writes into, one per lane, all under one rkey.
  std::array<uint64_t, kNumLanes> ring_address{};
  std::span<const std::byte> ring_rkey;
};

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
    bool ring_direct = false;   // ring mapped here: the entry put completes at the peer on return
    uint32_t next_seq = 1;
    uint32_t next_slot = 0;
    // Writes whose ring entry waits behind a flush; later entries of this lane wait behind them.
    uint32_t deferred = 0;
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
                                                     std::vector<Endpoint*>* failed);
  // Force-closes what is still open (Close() should have closed it gracefully already).
  ~Endpoint();
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  int peer() const { return peer_; }
  TxLane& tx(Lane lane) { return tx_[static_cast<int>(lane)]; }
  RxLane& rx(Lane lane) { return rx_[static_cast<int>(lane)]; }
  std::array<ucp_ep_h, kNumLanes> eps() const { return {tx_[0].ep, tx_[1].ep}; }

  // The next ring entry of `lane` and the remote address it goes to; advances the sequence.
  RingEntry NextEntry(Lane lane, uint32_t imm, uint32_t length, uint64_t* remote_address);
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
  Endpoint(std::shared_ptr<Context> ctx, int peer, uint32_t ring_entries, std::vector<Endpoint*>* failed)
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

inline RingEntry Endpoint::NextEntry(Lane lane, uint32_t imm, uint32_t length,
                                     uint64_t* remote_address) {
  TxLane& t = tx(lane);
  RingEntry entry{imm, length, t.next_seq, RingCheck(imm, length, t.next_seq)};
  *remote_address = t.ring_address + uint64_t{t.next_slot} * sizeof(RingEntry);
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

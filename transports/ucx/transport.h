// The UCX (UCP) transport: write-with-immediate emulated on UCP.
//
// One ucp_context, one worker per Lane (data, ack), one ep per (peer, lane). Every immediate ends
// as a 16-byte ring entry that the peer's Poll picks up (see endpoint.h). To a peer whose memory is
// mapped here (shared memory) a Write is a payload store (or put) and an entry store; to any other
// peer (TCP, InfiniBand, ...) it is one active message that the peer's handler lands in place.
// UCX picks the wires itself (UCX_TLS, UCX_NET_DEVICES, ... apply); README.md lists what matters.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <unordered_map>
#include <vector>

#include "m2n/deadline.h"
#include "m2n/status.h"
#include "transports/transport.h"
#include "transports/ucx/context.h"
#include "transports/ucx/endpoint.h"
#include "transports/ucx/memory.h"

namespace m2n::transport::ucx {

// Whether UCX initialises here (a context is created and destroyed).
Status Probe();

class UcxTransport final : public Transport {
 public:
  static StatusOr<std::unique_ptr<Transport>> Create(const Config& config);
  // Force-closes whatever Close() did not close, bounded by Config::timeout.
  ~UcxTransport() override;

  std::string_view name() const override { return "ucx"; }
  Capabilities capabilities() const override;

  StatusOr<std::unique_ptr<Region>> Register(void* data, size_t size, MemoryKind kind) override;
  StatusOr<std::unique_ptr<Region>> RegisterSource(void* data, size_t size,
                                                   MemoryKind kind) override;
  StatusOr<std::unique_ptr<Region>> Allocate(size_t size, MemoryKind kind) override;

  StatusOr<Bytes> LocalAddress(int peer) override;
  Status Connect(int peer, std::span<const std::byte> remote_address) override;
  StatusOr<std::unique_ptr<RemoteRegion>> UnpackRemoteKey(
      int peer, std::span<const std::byte> packed) override;

  Status Post(std::span<const Write> writes) override;
  StatusOr<size_t> Poll(std::span<Completion> out) override;

  Status Close(Deadline deadline) override;

 private:
  // A Write that did not complete inside Post: some request is outstanding, or its ring entry
  // waits for a flush. Pooled: Post and Poll allocate nothing in steady state.
  struct PendingWrite {
    Endpoint* endpoint = nullptr;
    Lane lane = Lane::kData;
    uint64_t cookie = 0;
    void* payload_request = nullptr;
    void* flush_request = nullptr;
    void* entry_request = nullptr;
    bool entry_posted = false;
    uint64_t ticket = 0;  // place among the lane's deferred entries
    ucs_status_t error = UCS_OK;
    const char* failed_step = nullptr;
    uint32_t slot = 0;  // of the entry in our ring at the peer
    RingEntry staging{};  // the entry's source buffer: UCX may read it until entry_request is done
    AmHeader header{};  // an active-message write's header: UCX reads it until it completes
  };
  // A rendezvous payload on its way into our memory; its entry is stored once it has landed.
  struct PendingReceive {
    void* request;
    Inbox* inbox;
    Lane lane;
    RingEntry* slot;
    RingEntry entry;
  };
  // An active message that came, before our Connect to the peer it names, on an endpoint not yet
  // known to be that peer's. Its payload waits here (eager bytes copied, a rendezvous payload
  // received into `bytes`) until Connect says whose endpoint it is; it is then delivered, or
  // refused, as if it had come then.
  struct ParkedMessage {
    Lane lane;
    ucp_ep_h ep;
    AmHeader header;
    Bytes bytes;
    void* request = nullptr;  // the rendezvous receive into `bytes`, while under way
  };
  // What the active-message handler of one worker needs.
  struct AmLane {
    UcxTransport* transport;
    Lane lane;
  };
  // A Write that completed inside Post, reported by the next Poll.
  struct DoneWrite {
    uint64_t cookie;
    int peer;
    Lane lane;
  };

  explicit UcxTransport(const Config& config) : config_(config) {}
  Endpoint* FindEndpoint(int peer) const;
  Status Validate(const Write& w) const;
  Status PostOne(const Write& w);
  // PostOne's steps to a peer whose ring is mapped here: the payload (a memcpy into the mapped
  // target, or a put: then whether the entry must wait for a flush); the entry at once when nothing
  // waits ahead of it (false: UCX could not send it inline); the write finished or tracked until
  // its payload request is; or the entry deferred behind a flush or earlier deferred entries.
  Status PostPayload(const Write& w, Endpoint::TxLane& tx, void** payload_request,
                     bool* needs_flush);
  StatusOr<bool> PutEntryNow(const Write& w, Endpoint::TxLane& tx, const RingEntry& entry,
                             uint32_t slot, void* payload_request);
  Status TrackPayload(const Write& w, Endpoint& e, void* payload_request);
  // A pending record for `w`, in flight from here on; the caller fills in the entry's part.
  PendingWrite* Track(const Write& w, Endpoint& e, void* payload_request);
  Status DeferEntry(const Write& w, Endpoint& e, const RingEntry& entry, uint32_t slot,
                    void* payload_request, bool needs_flush);
  // A write to a peer whose ring is not mapped here: header and payload in one active message.
  Status PostActiveMessage(const Write& w, Endpoint& e);
  Status PostEntry(PendingWrite* pw);
  static ucs_status_t OnActiveMessage(void* arg, const void* header, size_t header_length,
                                      void* data, size_t length, const ucp_am_recv_param_t* param);
  // Lands one active-message write: checks it, puts its payload in place, stores its entry (or
  // starts the rendezvous receive that will).
  void Deliver(Lane lane, const void* header, size_t header_length, void* data, size_t length,
               const ucp_am_recv_param_t& param);
  // Keeps a message from a peer not connected yet (CheckSender), within what that peer could
  // honestly send: its credit, and targets inside blocks granted to it.
  void Park(Lane lane, const AmHeader& h, void* data, size_t length,
            const ucp_am_recv_param_t& param);
  // Delivers the parked messages whose payload is here and whose endpoint is now a connected
  // peer's (Connect, Poll); DropParked releases them all (Close, after the eps).
  void Unpark();
  void DropParked();
  // Deliver's steps: the header and its sender (null: refused); the payload in place (memcpy), or
  // a rendezvous receive started (false: the entry waits for it, or the write was refused).
  // The sender is the peer whose endpoint the message arrived on (UCX's reply endpoint), never
  // the rank the header names; a header naming another rank is refused.
  // *park: it may come from the peer it names, which is not connected yet (Park).
  Inbox* CheckSender(const void* header, size_t header_length, const ucp_am_recv_param_t& param,
                     AmHeader* h, bool* park);
  bool LandPayload(Inbox& inbox, Lane lane, const Context::TrackedRegion& region, uint64_t address,
                   void* data, size_t length, uint64_t recv_attr, RingEntry* slot,
                   const RingEntry& entry);
  // Records that a peer (null: a sender that names no peer) sent a write that is refused: kError
  // from the next Poll, once per peer.
  void Refuse(Inbox* inbox, Status why);
  Status SetAmHandlers(bool enable);
  StatusOr<std::unique_ptr<Region>> MapCaller(void* data, size_t size, MemoryKind kind,
                                              Access access);
  // Where Poll writes completions: the caller's span and how much of it is used.
  struct Sink {
    std::span<Completion> out;
    size_t n = 0;
    bool full() const { return n == out.size(); }
    Completion& Emit(Completion::Type type, int peer, Lane lane);
  };
  // Poll's steps: progress the workers that have work; report finished writes; land finished
  // rendezvous receives; take immediates from the rings.
  void ProgressWorkers();
  void EmitFinishedWrites(Sink& sink);
  void FinishReceives();
  void ScanRings(Sink& sink);
  // Posts a deferred ring entry once its flush is done; true when the write is finished.
  bool Advance(PendingWrite* pw);
  PendingWrite* NewPending();
  void ReleasePending(PendingWrite* pw);
  // Queues a write for Poll to finish (its lane's worker then progresses on every poll).
  void AddInflight(PendingWrite* pw);
  // Runs the workers until no request in `requests` is outstanding or `deadline` passes; frees
  // them. Returns the first error status of a request or UCS_ERR_TIMED_OUT.
  ucs_status_t WaitAll(std::vector<void*>& requests, Deadline deadline);
  // Flushes (graceful) and closes every ep, frees every request, then drops endpoints and rings.
  // Returns the writes in flight, unreported, to their pool (Close); how many there were.
  size_t DropUnreportedWrites();
  Status Teardown(bool graceful, Deadline deadline);

  Config config_;
  ErrMode err_mode_ = ErrMode::kAuto;
  // M2N_UCX_EAGER_MAX: the eager limit of every active-message peer; unset: see Connect.
  std::optional<size_t> eager_setting_;
  // Store straight into peer memory that UCX mapped for an rkey (M2N_UCX_DIRECT=0: always put).
  bool direct_stores_ = true;
  std::shared_ptr<Context> ctx_;  // first member: destroyed last
  std::unique_ptr<UcxRegion> rings_;
  std::vector<int> peer_index_;  // rank -> index into config_.peers, or -1
  std::vector<std::unique_ptr<Endpoint>> endpoints_;  // by peer index; null until Connect
  std::vector<Endpoint*> connected_;  // in Connect order
  std::vector<Inbox> inboxes_;  // by peer index, from Create on
  std::vector<Inbox*> scanned_;  // connected peers' inboxes, for the ring scan
  std::unordered_map<ucp_ep_h, int> ep_peer_;  // each connected peer's eps -> its rank
  std::vector<ParkedMessage> parked_;
  std::vector<Endpoint*> failed_;  // appended by UCX error callbacks
  size_t failed_reported_ = 0;
  Bytes ring_rkey_;

  std::vector<DoneWrite> done_;
  size_t done_head_ = 0;
  std::vector<PendingWrite*> inflight_;  // in Post order
  std::vector<std::unique_ptr<PendingWrite[]>> pending_chunks_;
  std::vector<PendingWrite*> pending_free_;
  size_t scan_start_ = 0;
  std::array<AmLane, kNumLanes> am_lanes_{};
  std::vector<PendingReceive> receiving_;
  std::vector<std::pair<int, Status>> refused_;  // (peer or -1, why), reported by Poll
  size_t refused_reported_ = 0;
  bool refused_stranger_ = false;  // a write naming no peer was reported
  // Idle-progress throttle, per lane's worker (see Poll).
  static constexpr int kIdleProgressPeriod = 8;
  static constexpr int kIdleProgressPeriodMapped = 64;  // every peer on shared memory
  int idle_progress_period_ = kIdleProgressPeriod;
  struct LaneProgress {
    uint32_t outstanding = 0;  // inflight_ and receiving_ entries of this lane
    int idle_polls = 0;
    bool busy = true;
  };
  std::array<LaneProgress, kNumLanes> progress_{};
  bool closed_ = false;
};

}  // namespace m2n::transport::ucx

namespace m2n::transport {
const TransportInfo& ucxTransportInfo();
}  // namespace m2n::transport

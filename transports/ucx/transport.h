// The UCX (UCP) transport: write-with-immediate emulated over ucp_put_nbx.
//
// One ucp_context, one worker per Lane (data, ack), one ep per (peer, lane). A Write is a payload
// put, a fence, and a 16-byte ring-entry put that the peer's Poll picks up (see endpoint.h).
// UCX picks the wires itself (UCX_TLS, UCX_NET_DEVICES, ... apply); README.md lists what matters.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
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
    uint32_t slot = 0;    // of the entry in our ring at the peer
    RingEntry staging{};  // the entry's source buffer: UCX may read it until entry_request is done
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
  Status PostEntry(PendingWrite* pw);
  // Posts a deferred ring entry once its flush is done; true when the write is finished.
  bool Advance(PendingWrite* pw);
  PendingWrite* NewPending();
  void ReleasePending(PendingWrite* pw);
  // Runs the workers until no request in `requests` is outstanding or `deadline` passes; frees
  // them. Returns the first error status of a request or UCS_ERR_TIMED_OUT.
  ucs_status_t WaitAll(std::vector<void*>& requests, Deadline deadline);
  // Flushes (graceful) and closes every ep, frees every request, then drops endpoints and rings.
  Status Teardown(bool graceful, Deadline deadline);

  Config config_;
  ErrMode err_mode_ = ErrMode::kAuto;
  // Store straight into peer memory that UCX mapped for an rkey (M2N_UCX_DIRECT=0: always put).
  bool direct_stores_ = true;
  std::shared_ptr<Context> ctx_;  // first member: destroyed last
  std::unique_ptr<UcxRegion> rings_;
  std::vector<int> peer_index_;                       // rank -> index into config_.peers, or -1
  std::vector<std::unique_ptr<Endpoint>> endpoints_;  // by peer index; null until Connect
  std::vector<Endpoint*> connected_;                  // in Connect order, for the ring scan
  std::vector<Endpoint*> failed_;                     // appended by UCX error callbacks
  size_t failed_reported_ = 0;
  Bytes ring_rkey_;

  std::vector<DoneWrite> done_;
  size_t done_head_ = 0;
  std::vector<PendingWrite*> inflight_;  // in Post order
  std::vector<std::unique_ptr<PendingWrite[]>> pending_chunks_;
  std::vector<PendingWrite*> pending_free_;
  size_t scan_start_ = 0;
  // Idle-progress throttle (see Poll).
  static constexpr int kIdleProgressPeriod = 8;
  int idle_polls_ = 0;
  bool progress_busy_ = true;
  bool closed_ = false;
};

}  // namespace m2n::transport::ucx

namespace m2n::transport {
const TransportInfo& ucxTransportInfo();
}  // namespace m2n::transport

// The UCP objects every other object of this transport hangs off: one ucp_context and one worker
// per Lane. A worker per lane is what keeps ACKs from queueing behind data: each worker has its own
// endpoints, its own transport resources (FIFOs, sockets) and its own fence and flush scope.
#pragma once

#include <ucp/api/ucp.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "m2n/status.h"
#include "transports/transport.h"

namespace m2n::transport::ucx {

// Shared by the Transport, its Regions and RemoteRegions, so that a region the caller still holds
// can always be deregistered (ucp_mem_unmap, ucp_rkey_destroy need the context and worker alive),
// whatever order the caller destroys things in.
class Context {
 public:
  // Reads UCX's own configuration (UCX_TLS, UCX_NET_DEVICES, ...) from the environment.
  static StatusOr<std::shared_ptr<Context>> Create(int rank, size_t estimated_eps);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int rank() const { return rank_; }
  ucp_context_h context() const { return context_; }
  ucp_worker_h worker(Lane lane) const { return workers_[static_cast<int>(lane)]; }
  // The worker's address as ucp_ep_create takes it on the peer.
  const Bytes& worker_address(Lane lane) const { return addresses_[static_cast<int>(lane)]; }

  // Local memory that peers may write into: the blocks of registered regions that a key packed
  // here reaches (UcxRegion::PackRemoteKey, PackRemoteKeyFor), for as long as the region lives.
  // An active-message write names its target by address; the receiver copies or receives into it
  // only when a block granted to the write's sender (or to every peer) holds the whole target, so
  // a peer cannot make this process write outside the memory offered to it: not another sender's
  // slots, not a send buffer.
  static constexpr int kAnyPeer = -1;
  struct TrackedRegion {
    const void* owner;  // the UcxRegion, which revokes its grants when destroyed
    int peer;  // the rank the block was granted to, or kAnyPeer
    uintptr_t base;
    size_t size;
    ucp_mem_h memh;
  };
  void Grant(const TrackedRegion& block);
  void Revoke(const void* owner);
  // A block granted to `peer` holding all of [address, address + length) (length > 0), or null.
  const TrackedRegion* FindRegion(int peer, uint64_t address, size_t length) const;

 private:
  explicit Context(int rank) : rank_(rank) {}

  int rank_;
  ucp_context_h context_ = nullptr;
  std::array<ucp_worker_h, kNumLanes> workers_{};
  std::array<Bytes, kNumLanes> addresses_;
  std::vector<TrackedRegion> regions_;  // sorted by base; an entry per granted block
};

// Makes UCX's shared memory private to the user (POSIX, 0600) unless UCX_TLS or UCX_ALLOC_PRIO
// say otherwise; Context::Create applies it before ucp_init.
ucs_status_t PreferPrivateSharedMemory(ucp_config_t* config);

// "ucx: <what>: <ucs_status_string>", the shape of every message this transport writes; `what`
// names the rank or peer rank and the operation.
std::string ErrorText(std::string_view what, ucs_status_t status);
// "ucx: peer rank 3: <what>", and ": <ucs_status_string>" when a status is given.
std::string PeerText(int peer, std::string_view what);
std::string PeerText(int peer, std::string_view what, ucs_status_t status);

// UCX requests (the write path and Close): true when *request is finished (and released); the
// first failure lands in *error.
bool Reap(void** request, ucs_status_t* error);
// The request of a non-blocking call, or null when it finished (or failed) at once.
void* RequestOrNull(ucs_status_ptr_t request);

}  // namespace m2n::transport::ucx

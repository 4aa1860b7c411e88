// The server half of the TCP store, for a process that serves without being a rank (e.g. a
// launcher) and for tests. ConnectTcpStore(serve = true) runs one inside rank 0's store; most code
// needs nothing from this header.
//
// One thread polls every connection (non-blocking sockets, a read and a write buffer each); no
// request ever blocks that thread. A GET or WAIT whose keys are missing is held, per connection,
// until the keys appear or its timeout passes. A connection sends HELLO first (job id, rank, world
// size, a nonce) and is refused unless all three fit the job; it is then challenged, and becomes
// its rank only once its PROOF shows it holds the job key (handshake.h) and the rank is not
// connected already. A stranger's refusal is generic: it never echoes the job id or world size. A
// connection that ends without GOODBYE makes its rank dead (DEAD_RANKS); once dead, a rank stays
// listed even if it reconnects, so every peer sees the same monotone set. A peer that sends bytes
// that fail a check gets an ERROR naming the check and is closed; no other connection notices.
// A stranger (no accepted PROOF yet) may send only a HELLO, then a PROOF: the server buffers at
// most one HELLO frame of it, refuses any other type from its header, closes it if the handshake
// is not done within TcpStoreOptions::hello_timeout, and closes a new stranger at once while
// TcpStoreOptions::max_unauthenticated others are still in their handshake. A stranger that
// drops mid-handshake leaves no trace: no rank is marked dead for it. An accepted rank may SET
// only its own keys (CheckWriter, store_rules.h). A connection that does not read its answers stops
// being read once one largest frame of answers waits for it. So each connection costs at most one
// largest frame each way, and none can stall the others.
#pragma once

#include <memory>

#include "bootstrap/store.h"
#include "m2n/status.h"

namespace m2n::bootstrap {

class TcpStoreServer {
 public:
  // Stops the thread and closes every socket; takes no longer than one pass of the poll loop.
  virtual ~TcpStoreServer() = default;
  // The port it listens on: options.port, or the one the kernel chose for port 0.
  virtual int port() const = 0;
};

// Binds options.host:options.port (SO_REUSEADDR; an empty host or "0.0.0.0" means every interface)
// and starts serving; with no job key and a host other than loopback it warns once on stderr,
// naming the risk and M2N_JOB_KEY. Serves the job options.job_id of options.world_size ranks.
// options.rank and options.serve are not used. kUnavailable when the address cannot be bound.
StatusOr<std::unique_ptr<TcpStoreServer>> StartTcpStoreServer(const TcpStoreOptions& options);

}  // namespace m2n::bootstrap

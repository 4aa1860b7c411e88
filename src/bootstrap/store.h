// A small key-value store for bootstrap: set / get / wait / add, every wait bounded.
// TcpStore for real jobs (rank 0 serves, every rank is a client), InMemoryStore for tests.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "m2n/deadline.h"
#include "m2n/status.h"

namespace m2n::bootstrap {

using Bytes = std::vector<std::byte>;

// Keys are 1 to 1024 bytes, values at most 64 MiB, a Wait at most 4096 keys (wire.h has the
// limits); anything larger is kInvalidArgument in every implementation.
class Store {
 public:
  virtual ~Store() = default;
  virtual Status Set(const std::string& key, std::span<const std::byte> value) = 0;
  // Waits until `key` exists, then returns its value. With a deadline already passed it still
  // returns a value that is there.
  virtual StatusOr<Bytes> Get(const std::string& key, Deadline deadline) = 0;
  // Atomically adds `delta` to the integer at `key` (absent = 0); returns the new value. The
  // counter is stored as decimal text, so GetString reads "42"; Add on a key Set to anything else
  // is kInvalidArgument. Add(key, 0) reads a counter.
  virtual StatusOr<int64_t> Add(const std::string& key, int64_t delta) = 0;
  // Waits until every key exists.
  virtual Status Wait(std::span<const std::string> keys, Deadline deadline) = 0;
  // Ranks whose connection to the store ended without a goodbye (TcpStore); empty for others.
  // kDeadlineExceeded when the store has not answered by `deadline` (a stopped rank 0): the
  // answer, when it comes, is dropped, and the connection stays usable.
  virtual StatusOr<std::vector<int>> DeadRanks(Deadline deadline) = 0;
  // The same, bounded by the store's own request timeout only.
  StatusOr<std::vector<int>> DeadRanks() {
    return DeadRanks(Deadline::At(Clock::time_point::max()));
  }
  // Says goodbye: a clean exit, so this rank is not reported dead. On the rank that serves the TCP
  // store it then waits (bounded by TcpStoreOptions::request_timeout) until every other connected
  // rank has said goodbye or gone, so destroying that store next cuts nobody off mid-request.
  virtual Status Goodbye() = 0;

  // Helpers on top of the primitives.
  Status SetString(const std::string& key, const std::string& value);
  StatusOr<std::string> GetString(const std::string& key, Deadline deadline);
  // All `world_size` ranks arrive at barrier `name` (each name used once per job).
  Status Barrier(const std::string& name, int world_size, Deadline deadline);
};

struct TcpStoreOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // rank 0 listens here (0: any free port; see TcpStorePort())
  bool serve = false;  // true on rank 0: run the server in a thread of this process
  int rank = -1;
  int world_size = 0;
  std::string job_id;  // a client of another job is refused
  // The job's secret (at least kMinJobKeyBytes, handshake.h), the same on every rank and never
  // sent: the store and each rank prove they hold it in the HELLO handshake. Empty: no key; then
  // only the job id is checked, and a store bound beyond loopback warns once (docs/security.md).
  std::string job_key;
  // Serving side: connections that have not finished the handshake, at most; one more is closed
  // as soon as it is accepted, so strangers cannot use up the store's file descriptors. The
  // store allows at least world_size of them, so a whole job can connect at once.
  int max_unauthenticated = 64;
  // Bounds the calls that take no deadline (Set, Add, DeadRanks, Goodbye): the store answers them
  // at once, so running out of this means the store or the network is stuck.
  std::chrono::milliseconds request_timeout{30000};
  // Serving side: a connection that has not sent its HELLO this long after connecting is refused
  // and closed, so a stranger that connects and says nothing holds a socket no longer than this.
  // A real client sends HELLO at once.
  std::chrono::milliseconds hello_timeout{10000};
};

// Connects (and on rank 0 first serves), retrying until `deadline`. An unreachable master is
// kDeadlineExceeded naming host:port and the last connect() error. A refused HELLO (another job,
// a rank out of range, a different world size, a rank already connected) is kFailedPrecondition or
// kInvalidArgument with the store's reason. Once connected, a store that is gone makes every call
// kUnavailable. Get and Wait return by their deadline plus at most kStoreReplyGraceMs, the time the
// store's own timeout answer (which names the keys still missing) takes to arrive.
// The serving store stops serving when it is destroyed; its Goodbye() first waits for the others
// to say goodbye, so call that before destroying it.
// Calls on one store are serialized (a mutex), so it may be shared by threads.
StatusOr<std::unique_ptr<Store>> ConnectTcpStore(const TcpStoreOptions& options, Deadline deadline);

inline constexpr int64_t kStoreReplyGraceMs = 200;

// The port a store returned by ConnectTcpStore with serve = true listens on (the kernel's choice
// when options.port was 0); -1 for any other store.
int TcpStorePort(const Store& store);

std::unique_ptr<Store> NewInMemoryStore();

}  // namespace m2n::bootstrap

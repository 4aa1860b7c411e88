// Helpers shared by the bootstrap tests (bootstrap_*_test.cc, one file per suite): byte and frame
// builders, TCP store ranks and raw sockets that play strangers, the workload every rank runs, and
// a fake store that follows a script. Every wait here is bounded.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>

#include <gtest/gtest.h>

#include "bootstrap/store.h"
#include "bootstrap/wire.h"

#define ASSERT_OK(expr)                                    \
  do {                                                     \
    const ::m2n::Status assert_ok_ = (expr);               \
    ASSERT_TRUE(assert_ok_.ok()) << assert_ok_.ToString(); \
  } while (0)
#define EXPECT_OK(expr)                                    \
  do {                                                     \
    const ::m2n::Status expect_ok_ = (expr);               \
    EXPECT_TRUE(expect_ok_.ok()) << expect_ok_.ToString(); \
  } while (0)

namespace m2n::bootstrap {

Bytes ToBytes(std::string_view s);
int64_t MsSince(Clock::time_point start);
bool Contains(const std::string& haystack, const std::string& needle);

// An encoded frame of `message` (empty, and a test failure, if it does not encode).
Bytes ValidFrame(const wire::Message& message);
// Overwrites 4 bytes of `frame` at `at` with `v`, little-endian (to forge a header field).
void PutU32At(Bytes& frame, size_t at, uint32_t v);

inline constexpr char kJob[] = "test-job";

// A handshake nonce of the right size (a test's HELLO needs one; the store does not check it is
// random, only the rank's own handshake makes it so).
Bytes TestNonce();
// The whole handshake over a raw socket to 127.0.0.1:port as `rank` with `key`: HELLO, the store's
// CHALLENGE checked, PROOF. The socket on HELLO_OK, else -1 (and `*refusal` holds what the store
// said, if it said anything).
int RawJoin(int port, int rank, int world_size, const std::string& key = "", std::string job = kJob,
            std::string* refusal = nullptr);

TcpStoreOptions RankOptions(int port, int rank, int world_size, std::string job = kJob);
StatusOr<std::unique_ptr<Store>> ConnectRank(int port, int rank, int world_size,
                                             int64_t timeout_ms = 5000);

// A plain blocking socket to 127.0.0.1:port, to play a stranger; -1 on failure.
int RawConnect(int port);
bool SendAll(int fd, std::span<const std::byte> bytes);

// Reads from `fd` until the peer closes or `timeout` passes.
// Reads from `fd` until the peer closes or `timeout` passes.
struct Drained {
  Bytes bytes;
  bool closed = false;
};
Drained ReadUntilClosed(int fd, std::chrono::milliseconds timeout);

// Reads exactly one frame from a blocking socket within `timeout`; nullopt on close, timeout or a
// bad frame.
std::optional<wire::Message> ReadOneFrame(int fd, std::chrono::milliseconds timeout);

// What every rank of the set/get/add/wait/barrier tests does, in a thread or a process.
// Returns 0 on success, else the number of the step that failed.
int RankWorkload(Store& store, int rank, int world_size);

// A FakeStore script's side of the handshake with no key: reads the HELLO, answers a CHALLENGE
// whose MAC checks, reads the PROOF. False if either did not come within 2 s.
bool FakeHandshake(int fd);

// A store on 127.0.0.1 that accepts one connection (within 5 s) and runs `script` on it, on a
// thread of its own; the destructor waits for the script.
class FakeStore {
 public:
  explicit FakeStore(std::function<void(int fd)> script);
  ~FakeStore();
  int port() const { return port_; }

 private:
  int listen_fd_ = -1;
  int port_ = 0;
  std::thread thread_;
};

}  // namespace m2n::bootstrap

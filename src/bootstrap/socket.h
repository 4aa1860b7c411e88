// Sockets for the TCP store (server and client): an owning descriptor, address text, name
// resolution and a deadline-bounded non-blocking connect. Nothing here knows the store's protocol.
#pragma once

#include <netdb.h>
#include <unistd.h>

#include <cstddef>
#include <memory>
#include <string>
#include <utility>

#include "m2n/deadline.h"
#include "m2n/status.h"

namespace m2n::bootstrap {

// How much one read() asks for, on either side.
inline constexpr size_t kReadChunk = size_t{256} << 10;

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// strerror_r's text for `err` (thread-safe, unlike strerror).
std::string ErrnoText(int err);
// "host:port", with brackets around an IPv6 literal.
std::string FormatAddress(const std::string& host, int port);
// An empty host, "0.0.0.0" or "::": every interface.
bool IsWildcard(const std::string& host);
// Where rank 0's own client connects to reach a server bound to `host`.
std::string LocalHostFor(const std::string& host);
// Milliseconds until `at`, rounded up so a poll() never wakes just before its deadline and spins;
// clamped to poll()'s int.
int PollTimeoutMs(Clock::time_point at);
// Latency matters more than throughput for small request/answer messages.
void SetNoDelay(int fd);

struct AddrInfoDeleter {
  void operator()(addrinfo* info) const { freeaddrinfo(info); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoDeleter>;

// getaddrinfo for a stream socket; `passive`: for bind(), where a wildcard host means every
// interface.
StatusOr<AddrInfoPtr> Resolve(const std::string& host, int port, bool passive);

// One non-blocking connect() to each address of `host`, bounded by `deadline`. On failure,
// `last_error` says why ("Connection refused").
StatusOr<UniqueFd> TryConnect(const std::string& host, int port, Deadline deadline,
                              std::string* last_error);

// A non-blocking listening socket on the first address of host:port that binds (SO_REUSEADDR);
// kUnavailable naming the address and the last error when none does.
StatusOr<UniqueFd> Listen(const std::string& host, int port);
// The port `fd` is bound to (the kernel's choice after binding port 0).
StatusOr<int> BoundPort(int fd);

}  // namespace m2n::bootstrap

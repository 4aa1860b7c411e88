// Sockets for the TCP store: see socket.h.
#include "bootstrap/socket.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>

namespace m2n::bootstrap {

std::string ErrnoText(int err) {
  char buf[256];
  // The GNU strerror_r: returns a pointer that may or may not be `buf`. Thread-safe, unlike
  // strerror.
  return strerror_r(err, buf, sizeof(buf));
}

std::string FormatAddress(const std::string& host, int port) {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

bool IsWildcard(const std::string& host) {
  return host.empty() || host == "0.0.0.0" || host == "::";
}

std::string LocalHostFor(const std::string& host) {
  if (host == "::") return "::1";
  return IsWildcard(host) ? "127.0.0.1" : host;
}

int PollTimeoutMs(Clock::time_point at) {
  auto left = std::chrono::ceil<std::chrono::milliseconds>(at - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, INT_MAX));
}

void SetNoDelay(int fd) {
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

StatusOr<AddrInfoPtr> Resolve(const std::string& host, int port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  const std::string service = std::to_string(port);
  addrinfo* result = nullptr;
  int rc =
      getaddrinfo(passive && IsWildcard(host) ? (host == "::" ? "::" : "0.0.0.0") : host.c_str(),
                  service.c_str(), &hints, &result);
  if (rc != 0) {
    return UnavailableError(std::string("cannot resolve '") + host +
                            "': " + (rc == EAI_SYSTEM ? ErrnoText(errno) : gai_strerror(rc)));
  }
  return AddrInfoPtr(result);
}

StatusOr<UniqueFd> TryConnect(const std::string& host, int port, Deadline deadline,
                              std::string* last_error) {
  StatusOr<AddrInfoPtr> resolved = Resolve(host, port, /*passive=*/false);
  if (!resolved.ok()) {
    *last_error = resolved.status().message();
    return resolved.status();
  }
  for (addrinfo* ai = resolved->get(); ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(
        socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) {
      *last_error = "socket: " + ErrnoText(errno);
      continue;
    }
    int err = 0;
    if (connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        pollfd p{fd.get(), POLLOUT, 0};
        int n = poll(&p, 1, PollTimeoutMs(deadline.time()));
        if (n == 0) {
          *last_error = "connect timed out";
          continue;
        }
        socklen_t len = sizeof(err);
        if (n < 0) {
          err = errno;
        } else if (getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
          err = errno;
        }
      }
    }
    if (err == 0) {
      SetNoDelay(fd.get());
      return fd;
    }
    *last_error = ErrnoText(err);
  }
  return UnavailableError(*last_error);
}

StatusOr<UniqueFd> Listen(const std::string& host, int port) {
  const std::string where = FormatAddress(host, port);
  StatusOr<AddrInfoPtr> resolved = Resolve(host, port, /*passive=*/true);
  if (!resolved.ok())
    return resolved.status().WithContext("bootstrap: cannot serve the store on " + where);
  std::string last_error = "no address";
  for (addrinfo* ai = resolved->get(); ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(
        socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) {
      last_error = "socket: " + ErrnoText(errno);
      continue;
    }
    // A store restarted on the same port must not wait out the old one's TIME_WAIT connections.
    int one = 1;
    (void)setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      last_error = "bind: " + ErrnoText(errno);
      continue;
    }
    if (listen(fd.get(), SOMAXCONN) != 0) {
      last_error = "listen: " + ErrnoText(errno);
      continue;
    }
    return fd;
  }
  return UnavailableError("bootstrap: cannot serve the store on " + where + ": " + last_error);
}

StatusOr<int> BoundPort(int fd) {
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
    return InternalError("bootstrap: getsockname on the store's socket: " + ErrnoText(errno));
  }
  return ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                           : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
}

}  // namespace m2n::bootstrap

// The TCP store: a poll()-driven server thread on rank 0 and a blocking, deadline-bounded client on
// every rank. The wire format is wire.h; the server's behaviour is described in tcp_store.h.
#include "bootstrap/tcp_store.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bootstrap/store_rules.h"
#include "bootstrap/wire.h"

namespace m2n::bootstrap {
namespace {

using namespace std::chrono_literals;
using wire::Message;
using wire::MessageType;

constexpr std::chrono::milliseconds kConnectBackoffMin = 10ms;
constexpr std::chrono::milliseconds kConnectBackoffMax = 200ms;
// A connection being dropped gets this long to take its ERROR before the socket is closed anyway.
constexpr std::chrono::milliseconds kCloseLinger = 1000ms;
// The server holds no request longer than this, whatever timeout it asks for (and the clock
// arithmetic cannot overflow).
constexpr int64_t kMaxHeldRequestMs = int64_t{7} * 24 * 3600 * 1000;
// While accept() fails for lack of descriptors, the listener is left alone this long, so the
// loop does not spin on a socket that stays readable.
constexpr std::chrono::milliseconds kAcceptPause = 100ms;
constexpr size_t kReadChunk = size_t{256} << 10;
// Answers a connection has not read yet. Past this the server stops handling (and reading) its
// requests until it reads, so a client that pipelines GETs of a large value and never reads
// cannot make the server buffer without bound.
constexpr size_t kMaxUnsentBytes = wire::kMaxFrameBytes;

// ---- Sockets ----

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

std::string ErrnoText(int err) {
  char buf[256];
  // The GNU strerror_r: returns a pointer that may or may not be `buf`. Thread-safe, unlike strerror.
  return strerror_r(err, buf, sizeof(buf));
}

// "host:port", with brackets around an IPv6 literal.
std::string FormatAddress(const std::string& host, int port) {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

bool IsWildcard(const std::string& host) { return host.empty() || host == "0.0.0.0" || host == "::"; }

// Where rank 0's own client connects to reach a server bound to `host`.
std::string LocalHostFor(const std::string& host) {
  if (host == "::") return "::1";
  return IsWildcard(host) ? "127.0.0.1" : host;
}

// Milliseconds until `at`, rounded up so a poll() never wakes just before its deadline and spins;
// clamped to poll()'s int.
int PollTimeoutMs(Clock::time_point at) {
  auto left = std::chrono::ceil<std::chrono::milliseconds>(at - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, INT_MAX));
}

// Latency matters more than throughput for small request/answer messages.
void SetNoDelay(int fd) {
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

struct AddrInfoDeleter {
  void operator()(addrinfo* info) const { freeaddrinfo(info); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoDeleter>;

StatusOr<AddrInfoPtr> Resolve(const std::string& host, int port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  const std::string service = std::to_string(port);
  addrinfo* result = nullptr;
  int rc = getaddrinfo(passive && IsWildcard(host) ? (host == "::" ? "::" : "0.0.0.0") : host.c_str(),
                       service.c_str(), &hints, &result);
  if (rc != 0) {
    return UnavailableError(std::string("cannot resolve '") + host +
                            "': " + (rc == EAI_SYSTEM ? ErrnoText(errno) : gai_strerror(rc)));
  }
  return AddrInfoPtr(result);
}

// One non-blocking connect() to each address of `host`, bounded by `deadline`. On failure,
// `last_error` says why ("Connection refused").
StatusOr<UniqueFd> TryConnect(const std::string& host, int port, Deadline deadline, std::string* last_error) {
  StatusOr<AddrInfoPtr> resolved = Resolve(host, port, /*passive=*/false);
  if (!resolved.ok()) {
    *last_error = resolved.status().message();
    return resolved.status();
  }
  for (addrinfo* ai = resolved->get(); ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
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

// ---- Server ----

class StoreServer final : public TcpStoreServer {
 public:
  static StatusOr<std::unique_ptr<StoreServer>> Start(const TcpStoreOptions& options);
  ~StoreServer() override;
  int port() const override { return port_; }

  // Blocks until every connected rank but `self` has said goodbye or gone, or until `deadline`;
  // then the caller may stop serving without cutting anyone off. kDeadlineExceeded lists the ranks
  // still there.
  Status WaitForOthersToLeave(int self, Deadline deadline);

 private:
  // A GET or WAIT whose keys were missing when it arrived.
  struct HeldRequest {
    MessageType type = MessageType::kGet;
    std::vector<std::string> keys;
    Clock::time_point deadline;
  };

  struct Connection {
    explicit Connection(UniqueFd f) : fd(std::move(f)) {}
    UniqueFd fd;
    Bytes in;   // bytes read and not yet consumed as frames
    Bytes out;  // bytes to write, from out_pos on
    size_t out_pos = 0;
    int rank = -1;  // set by an accepted HELLO
    Clock::time_point hello_by;  // a stranger still without a HELLO by then is refused
    bool said_goodbye = false;
    bool peer_closed = false;  // EOF or a read error: handle what is buffered, then close
    bool closing = false;      // refused: close once `out` is written or at close_by
    Clock::time_point close_by;
    bool dead = false;                // to be closed at the end of this pass of the loop
    std::optional<HeldRequest> held;  // at most one: a connection's requests are answered in order
  };

  StoreServer(std::string job_id, int world_size, std::chrono::milliseconds hello_timeout)
      : job_id_(std::move(job_id)), world_size_(world_size), hello_timeout_(hello_timeout) {}

  // How many bytes of `c` may sit unhandled: one HELLO for a stranger, one largest frame for a rank.
  static size_t ReadLimit(const Connection& c) {
    // Before its HELLO is accepted, a connection is a stranger: no more than one HELLO frame of it
    // is buffered, and any other type is refused from the header alone (HandleFrames), so a
    // stranger cannot make the server hold a large body.
    return c.rank < 0 ? wire::kHeaderBytes + wire::MaxBodyBytes(MessageType::kHello) : wire::kMaxFrameBytes;
  }
  static size_t Unsent(const Connection& c) { return c.out.size() - c.out_pos; }

  void Run();
  void AcceptAll();
  void ReadSome(Connection& c);
  void Flush(Connection& c);
  bool HandleFrames(Connection& c);
  void Handle(Connection& c, Message message);
  void HandleHello(Connection& c, const wire::Hello& hello);
  bool TryAnswer(Connection& c);
  void Send(Connection& c, const Message& message);
  void SendError(Connection& c, const Status& status);
  void Refuse(Connection& c, const Status& status);
  void CloseDead();
  void SetActive(int rank, bool active);

  const std::string job_id_;
  const int world_size_;
  const std::chrono::milliseconds hello_timeout_;
  int port_ = 0;
  UniqueFd listen_fd_;
  UniqueFd wake_read_;  // a byte written to wake_write_ stops the thread
  UniqueFd wake_write_;
  std::thread thread_;

  // Touched by the serving thread only.
  std::map<std::string, Bytes> values_;
  std::vector<std::unique_ptr<Connection>> connections_;
  std::set<int> connected_ranks_;
  std::set<int> dead_ranks_;
  Clock::time_point accept_paused_until_;

  // Ranks connected and not yet gone or said goodbye; written by the serving thread, read by
  // WaitForOthersToLeave on the serving rank's own thread.
  std::mutex active_mu_;
  std::condition_variable active_changed_;
  std::set<int> active_ranks_;
};

StatusOr<std::unique_ptr<StoreServer>> StoreServer::Start(const TcpStoreOptions& options) {
  if (options.world_size < 1) {
    return InvalidArgumentError("bootstrap: the store needs a world size of at least 1, not " +
                                std::to_string(options.world_size));
  }
  if (options.port < 0 || options.port > 65535) {
    return InvalidArgumentError("bootstrap: store port " + std::to_string(options.port) +
                                " is not in [0, 65535]");
  }
  if (options.job_id.size() > wire::kMaxJobIdBytes) {
    return InvalidArgumentError("bootstrap: a job id of " + std::to_string(options.job_id.size()) +
                                " bytes exceeds the maximum of " + std::to_string(wire::kMaxJobIdBytes));
  }
  if (options.hello_timeout <= std::chrono::milliseconds::zero()) {
    return InvalidArgumentError("bootstrap: the store's hello_timeout must be positive, not " +
                                std::to_string(options.hello_timeout.count()) + " ms");
  }
  const std::string where = FormatAddress(options.host, options.port);
  StatusOr<AddrInfoPtr> resolved = Resolve(options.host, options.port, /*passive=*/true);
  if (!resolved.ok()) return resolved.status().WithContext("bootstrap: cannot serve the store on " + where);

  std::unique_ptr<StoreServer> server(new StoreServer(options.job_id, options.world_size, options.hello_timeout));
  std::string last_error = "no address";
  for (addrinfo* ai = resolved->get(); ai != nullptr && !server->listen_fd_.valid(); ai = ai->ai_next) {
    UniqueFd fd(socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
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
    server->listen_fd_ = std::move(fd);
  }
  if (!server->listen_fd_.valid()) {
    return UnavailableError("bootstrap: cannot serve the store on " + where + ": " + last_error);
  }

  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  if (getsockname(server->listen_fd_.get(), reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
    return InternalError("bootstrap: getsockname on the store's socket: " + ErrnoText(errno));
  }
  server->port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                                    : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);

  int pipe_fds[2];
  if (pipe2(pipe_fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    return InternalError("bootstrap: pipe2 for the store's thread: " + ErrnoText(errno));
  }
  server->wake_read_ = UniqueFd(pipe_fds[0]);
  server->wake_write_ = UniqueFd(pipe_fds[1]);

  try {
    server->thread_ = std::thread([s = server.get()] { s->Run(); });
  } catch (const std::system_error& e) {
    return InternalError(std::string("bootstrap: cannot start the store's thread: ") + e.what());
  }
  return server;
}

Status StoreServer::WaitForOthersToLeave(int self, Deadline deadline) {
  std::unique_lock lock(active_mu_);
  auto only_self = [&] {
    return active_ranks_.empty() || (active_ranks_.size() == 1 && active_ranks_.contains(self));
  };
  if (active_changed_.wait_until(lock, deadline.time(), only_self)) return OkStatus();
  std::string ranks;
  for (int rank : active_ranks_) {
    if (rank == self) continue;
    ranks += (ranks.empty() ? "" : ", ") + std::to_string(rank);
  }
  return DeadlineExceededError(
      "bootstrap: rank " + std::to_string(self) +
      " serves the store and waited in vain for these ranks to say goodbye: " + ranks);
}

void StoreServer::SetActive(int rank, bool active) {
  {
    std::lock_guard lock(active_mu_);
    if (active) {
      active_ranks_.insert(rank);
    } else {
      active_ranks_.erase(rank);
    }
  }
  active_changed_.notify_all();
}

StoreServer::~StoreServer() {
  if (thread_.joinable()) {
    const char byte = 1;
    // The pipe is empty or already holds a byte; either way the thread wakes.
    (void)!write(wake_write_.get(), &byte, 1);
    thread_.join();
  }
}

void StoreServer::Run() {
  std::vector<pollfd> fds;
  for (;;) {
    Clock::time_point now = Clock::now();
    Clock::time_point wake_at = Clock::time_point::max();
    const bool accepting = now >= accept_paused_until_;
    if (!accepting) wake_at = accept_paused_until_;

    fds.clear();
    fds.push_back({wake_read_.get(), POLLIN, 0});
    fds.push_back({accepting ? listen_fd_.get() : -1, POLLIN, 0});  // poll() skips a negative fd
    for (const auto& c : connections_) {
      short events = 0;
      // A full buffer is not read further until its frames are handled, nor is a connection that
      // does not read its answers; that bounds the memory a connection can take to one largest
      // frame each way (one HELLO in, for a stranger).
      if (!c->closing && !c->peer_closed && c->in.size() < ReadLimit(*c) && Unsent(*c) <= kMaxUnsentBytes) {
        events |= POLLIN;
      }
      if (c->out_pos < c->out.size()) events |= POLLOUT;
      fds.push_back({c->fd.get(), events, 0});
      if (c->held) wake_at = std::min(wake_at, c->held->deadline);
      if (c->closing) wake_at = std::min(wake_at, c->close_by);
      if (c->rank < 0 && !c->closing) wake_at = std::min(wake_at, c->hello_by);
    }

    int timeout = wake_at == Clock::time_point::max() ? -1 : PollTimeoutMs(wake_at);
    if (poll(fds.data(), fds.size(), timeout) < 0) {
      if (errno == EINTR) continue;
      std::fprintf(stderr, "m2n bootstrap: the store on port %d stops: poll: %s\n", port_,
                   ErrnoText(errno).c_str());
      break;
    }
    if (fds[0].revents != 0) break;  // asked to stop
    if (fds[1].revents != 0) AcceptAll();

    // Only connections that existed before AcceptAll() have a pollfd.
    for (size_t i = 0; i + 2 < fds.size(); ++i) {
      Connection& c = *connections_[i];
      const short revents = fds[i + 2].revents;
      if (revents & POLLOUT) Flush(c);
      if (fds[i + 2].events & POLLIN) {
        if (revents & (POLLIN | POLLHUP | POLLERR)) ReadSome(c);
      } else if (revents & (POLLHUP | POLLERR)) {
        c.dead = true;  // not reading it, and it is gone: nothing left to do for it
      }
    }

    // Connections their peer closed are finished first: their last frames (a GOODBYE, say) count,
    // and their rank is free again before any new HELLO is handled, so a rank that reconnects at
    // once after closing is not refused as a duplicate of itself.
    for (const auto& c : connections_) {
      if (!c->peer_closed) continue;
      HandleFrames(*c);
      c->dead = true;
    }
    CloseDead();

    // A frame may set a key that answers a request held on another connection, and an answered
    // request frees its connection to handle the next frame: go on until nothing moves.
    bool moved = true;
    while (moved) {
      moved = false;
      for (const auto& c : connections_) {
        moved |= HandleFrames(*c);
        if (c->held && !c->dead) moved |= TryAnswer(*c);
      }
    }

    now = Clock::now();
    for (const auto& c : connections_) {
      if (c->dead) continue;
      // A stranger that connects and says nothing (or too little) holds a socket until now only.
      if (c->rank < 0 && !c->closing && now >= c->hello_by) {
        Refuse(*c, DeadlineExceededError("no HELLO within " + std::to_string(hello_timeout_.count()) +
                                         " ms of connecting (" + std::to_string(c->in.size()) +
                                         " bytes received)"));
      }
      Flush(*c);
      if (c->closing && (c->out_pos == c->out.size() || now >= c->close_by)) c->dead = true;
    }
    CloseDead();
  }
  // Stopping: closing every socket tells each client the store is gone.
  connections_.clear();
}

void StoreServer::AcceptAll() {
  for (;;) {
    int fd = accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      if (err == EINTR || err == ECONNABORTED) continue;
      if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        accept_paused_until_ = Clock::now() + kAcceptPause;
      }
      return;  // EAGAIN: no more waiting
    }
    SetNoDelay(fd);
    connections_.push_back(std::make_unique<Connection>(UniqueFd(fd)));
    connections_.back()->hello_by = Clock::now() + hello_timeout_;
  }
}

void StoreServer::ReadSome(Connection& c) {
  const size_t limit = ReadLimit(c);
  while (c.in.size() < limit) {
    const size_t old_size = c.in.size();
    const size_t chunk = std::min(kReadChunk, limit - old_size);
    c.in.resize(old_size + chunk);
    ssize_t n = recv(c.fd.get(), c.in.data() + old_size, chunk, 0);
    c.in.resize(old_size + std::max<ssize_t>(n, 0));
    if (n > 0) continue;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    // EOF or a reset: the frames already buffered (a GOODBYE, say) are still handled.
    c.peer_closed = true;
    return;
  }
}

void StoreServer::Flush(Connection& c) {
  while (c.out_pos < c.out.size()) {
    ssize_t n = send(c.fd.get(), c.out.data() + c.out_pos, c.out.size() - c.out_pos, MSG_NOSIGNAL);
    if (n > 0) {
      c.out_pos += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;  // POLLOUT takes over
    c.dead = true;                                                   // EPIPE / ECONNRESET: the peer is gone
    return;
  }
  c.out.clear();
  c.out_pos = 0;
}

// Handles the complete frames buffered on `c`, in order, until one is held. Returns whether any
// frame was consumed.
bool StoreServer::HandleFrames(Connection& c) {
  bool consumed = false;
  while (!c.closing && !c.dead && c.in.size() >= wire::kHeaderBytes) {
    // The header is checked as soon as it is here, so an absurd length, or a stranger's request
    // that is not a HELLO, is refused before its body is waited for.
    StatusOr<wire::FrameHeader> header = wire::DecodeHeader(c.in);
    if (!header.ok()) {
      Refuse(c, header.status());
      break;
    }
    if (c.rank < 0 && header->type != MessageType::kHello) {
      Refuse(c, FailedPreconditionError("expected HELLO first, got " + wire::MessageTypeName(header->type)));
      break;
    }
    const size_t frame_bytes = wire::kHeaderBytes + header->body_bytes;
    if (c.in.size() < frame_bytes || c.held || Unsent(c) > kMaxUnsentBytes) break;
    StatusOr<Message> message = wire::DecodeBody(
        header->type, std::span<const std::byte>(c.in).subspan(wire::kHeaderBytes, header->body_bytes));
    c.in.erase(c.in.begin(), c.in.begin() + static_cast<ptrdiff_t>(frame_bytes));
    consumed = true;
    if (!message.ok()) {
      Refuse(c, message.status());
      break;
    }
    Handle(c, std::move(*message));
  }
  return consumed;
}

void StoreServer::Handle(Connection& c, Message message) {
  const MessageType type = wire::TypeOf(message);
  if (c.rank < 0) {
    if (type != MessageType::kHello) {
      Refuse(c, FailedPreconditionError("expected HELLO first, got " + wire::MessageTypeName(type)));
      return;
    }
    HandleHello(c, std::get<wire::Hello>(message));
    return;
  }
  switch (type) {
    case MessageType::kSet: {
      auto& m = std::get<wire::SetRequest>(message);
      if (Status s = CheckKey(m.key); !s.ok()) return SendError(c, s);
      values_[m.key] = std::move(m.value);
      return Send(c, wire::OkReply{});
    }
    case MessageType::kGet:
    case MessageType::kWait: {
      HeldRequest held;
      held.type = type;
      int64_t timeout_ms = 0;
      if (type == MessageType::kGet) {
        auto& m = std::get<wire::GetRequest>(message);
        held.keys.push_back(std::move(m.key));
        timeout_ms = m.timeout_ms;
      } else {
        auto& m = std::get<wire::WaitRequest>(message);
        held.keys = std::move(m.keys);
        timeout_ms = m.timeout_ms;
      }
      for (const std::string& key : held.keys) {
        if (Status s = CheckKey(key); !s.ok()) return SendError(c, s);
      }
      held.deadline =
          Clock::now() + std::chrono::milliseconds(std::clamp<int64_t>(timeout_ms, 0, kMaxHeldRequestMs));
      c.held = std::move(held);
      TryAnswer(c);  // most requests find their keys at once
      return;
    }
    case MessageType::kAdd: {
      const auto& m = std::get<wire::AddRequest>(message);
      if (Status s = CheckKey(m.key); !s.ok()) return SendError(c, s);
      auto it = values_.find(m.key);
      StatusOr<int64_t> count = AddToCounter(m.key, it == values_.end() ? nullptr : &it->second, m.delta);
      if (!count.ok()) return SendError(c, count.status());
      values_[m.key] = CounterBytes(*count);
      return Send(c, wire::IntReply{*count});
    }
    case MessageType::kDeadRanks:
      return Send(c, wire::RanksReply{std::vector<int32_t>(dead_ranks_.begin(), dead_ranks_.end())});
    case MessageType::kGoodbye:
      if (!c.said_goodbye) SetActive(c.rank, false);
      c.said_goodbye = true;
      return Send(c, wire::OkReply{});
    case MessageType::kHello:
      return Refuse(c, FailedPreconditionError("rank " + std::to_string(c.rank) + " sent a second HELLO"));
    case MessageType::kHelloOk:
    case MessageType::kError:
    case MessageType::kOk:
    case MessageType::kValue:
    case MessageType::kInt:
    case MessageType::kRanks:
      return Refuse(c, InvalidArgumentError("a client sent " + wire::MessageTypeName(type) +
                                            ", which only the store sends"));
  }
}

void StoreServer::HandleHello(Connection& c, const wire::Hello& hello) {
  const std::string who = "rank " + std::to_string(hello.rank) + " of job '" + hello.job_id + "'";
  if (hello.job_id != job_id_) {
    return Refuse(c, FailedPreconditionError(who + " is not part of job '" + job_id_ + "'"));
  }
  if (hello.world_size != world_size_) {
    return Refuse(
        c, FailedPreconditionError(who + " says the world size is " + std::to_string(hello.world_size) +
                                   ", but the store serves a world of " + std::to_string(world_size_)));
  }
  if (hello.rank < 0 || hello.rank >= world_size_) {
    return Refuse(c, InvalidArgumentError(who + " is outside [0, " + std::to_string(world_size_) + ")"));
  }
  if (connected_ranks_.contains(hello.rank)) {
    return Refuse(c, FailedPreconditionError(
                         who + " is already connected to the store (two processes with one rank?)"));
  }
  c.rank = hello.rank;
  connected_ranks_.insert(hello.rank);
  SetActive(hello.rank, true);
  Send(c, wire::HelloOk{});
}

// Answers the request held on `c` if its keys are all there, or if its time is up. Returns whether
// it answered.
bool StoreServer::TryAnswer(Connection& c) {
  const HeldRequest& held = *c.held;
  std::vector<std::string> missing;
  for (const std::string& key : held.keys) {
    if (!values_.contains(key)) missing.push_back(key);
  }
  if (missing.empty()) {
    if (held.type == MessageType::kGet) {
      Send(c, wire::ValueReply{values_.at(held.keys.front())});
    } else {
      Send(c, wire::OkReply{});
    }
  } else if (Clock::now() >= held.deadline) {
    SendError(c, DeadlineExceededError("timed out; still missing: " + QuoteKeys(missing)));
  } else {
    return false;
  }
  c.held.reset();
  return true;
}

void StoreServer::Send(Connection& c, const Message& message) {
  StatusOr<Bytes> frame = wire::EncodeFrame(message);
  if (!frame.ok()) {
    // Only a bug can get here: every field was checked on the way in.
    return Refuse(c, InternalError("the store could not encode its answer: " + frame.status().message()));
  }
  if (c.out.empty()) {
    c.out = std::move(*frame);
  } else {
    c.out.insert(c.out.end(), frame->begin(), frame->end());
  }
}

// An answer that fails the request but keeps the connection.
void StoreServer::SendError(Connection& c, const Status& status) {
  Send(c, wire::ErrorReply{status.code(), status.message()});
}

// An answer that ends the connection: the ERROR is written, then the socket closed.
void StoreServer::Refuse(Connection& c, const Status& status) {
  SendError(c, status);
  c.closing = true;
  c.close_by = Clock::now() + kCloseLinger;
  c.held.reset();
}

void StoreServer::CloseDead() {
  std::erase_if(connections_, [this](const std::unique_ptr<Connection>& c) {
    if (!c->dead) return false;
    if (c->rank >= 0) {
      connected_ranks_.erase(c->rank);
      if (!c->said_goodbye) {
        dead_ranks_.insert(c->rank);
        SetActive(c->rank, false);
      }
    }
    return true;
  });
}

// ---- Client ----

class TcpStore final : public Store {
 public:
  static StatusOr<std::unique_ptr<TcpStore>> Connect(const TcpStoreOptions& options, Deadline deadline);

  Status Set(const std::string& key, std::span<const std::byte> value) override;
  StatusOr<Bytes> Get(const std::string& key, Deadline deadline) override;
  StatusOr<int64_t> Add(const std::string& key, int64_t delta) override;
  Status Wait(std::span<const std::string> keys, Deadline deadline) override;
  using Store::DeadRanks;
  StatusOr<std::vector<int>> DeadRanks(Deadline deadline) override;
  Status Goodbye() override;

  int serving_port() const { return server_ ? server_->port() : -1; }

 private:
  TcpStore(const TcpStoreOptions& options, std::string address)
      : address_(std::move(address)), rank_(options.rank), request_timeout_(options.request_timeout) {}

  // Sends `request` and returns the store's answer (an ERROR answer included), all by `deadline`.
  // `what` names the request in messages ("SET 'key'").
  StatusOr<Message> Call(const Message& request, Deadline deadline, const std::string& what);
  Status SendFrame(const Bytes& frame, Deadline deadline, const std::string& what);
  // The next whole frame from the store. Bytes of a frame not yet complete at the deadline stay
  // buffered, so the stream stays in step for the next call.
  StatusOr<Message> ReadFrame(Deadline deadline, const std::string& what);
  // The connection cannot be used again; every later call returns `why`.
  Status Break(Status why);
  Status StoreClosed(const std::string& detail) {
    return UnavailableError("bootstrap: the store at " + address_ + " (rank 0) closed the connection" +
                            detail);
  }
  // The failure that `answer`, which is not the one `what` expects, stands for: the store's ERROR,
  // or a protocol violation that ends the connection.
  Status Unexpected(const Message& answer, const std::string& what);
  std::string Prefix() const { return "bootstrap: rank " + std::to_string(rank_) + ": "; }

  std::unique_ptr<StoreServer> server_;  // first member: destroyed after the connection below
  const std::string address_;            // "host:port" of the store
  const int rank_;
  const std::chrono::milliseconds request_timeout_;

  std::mutex mu_;  // serializes calls: one request on the wire at a time
  UniqueFd fd_;
  Bytes in_;
  // Requests whose caller stopped waiting before the answer came; their answers are read and
  // dropped before the next request.
  int unanswered_ = 0;
  Status broken_;
};

StatusOr<std::unique_ptr<TcpStore>> TcpStore::Connect(const TcpStoreOptions& options, Deadline deadline) {
  // Rounded up, so a deadline made "500 ms from now" a moment ago still reads as 500 ms.
  const int64_t timeout_ms = std::max<int64_t>(
      0, std::chrono::ceil<std::chrono::milliseconds>(deadline.time() - Clock::now()).count());
  if (options.world_size < 1) {
    return InvalidArgumentError("bootstrap: world size " + std::to_string(options.world_size) +
                                " (it must be at least 1)");
  }
  if (options.rank < 0 || options.rank >= options.world_size) {
    return InvalidArgumentError("bootstrap: rank " + std::to_string(options.rank) + " is outside [0, " +
                                std::to_string(options.world_size) + ")");
  }
  if (options.serve && options.rank != 0) {
    return InvalidArgumentError("bootstrap: rank " + std::to_string(options.rank) +
                                " asked to serve the store; only rank 0 serves");
  }
  if (!options.serve && (options.port < 1 || options.port > 65535)) {
    return InvalidArgumentError("bootstrap: store port " + std::to_string(options.port) +
                                " is not in [1, 65535] (only a serving rank may ask for port 0)");
  }
  if (!options.serve && options.host.empty()) {
    return InvalidArgumentError("bootstrap: no store host given");
  }
  if (options.job_id.size() > wire::kMaxJobIdBytes) {
    return InvalidArgumentError("bootstrap: a job id of " + std::to_string(options.job_id.size()) +
                                " bytes exceeds the maximum of " + std::to_string(wire::kMaxJobIdBytes));
  }

  std::unique_ptr<StoreServer> server;
  std::string host = options.host;
  int port = options.port;
  if (options.serve) {
    M2N_ASSIGN_OR_RETURN(server, StoreServer::Start(options));
    host = LocalHostFor(options.host);
    port = server->port();
  }
  std::unique_ptr<TcpStore> store(new TcpStore(options, FormatAddress(host, port)));
  store->server_ = std::move(server);

  // The master may not be up yet: retry, backing off, until the deadline.
  std::string last_error = "none";
  std::chrono::milliseconds backoff = kConnectBackoffMin;
  for (;;) {
    StatusOr<UniqueFd> fd = TryConnect(host, port, deadline, &last_error);
    if (fd.ok()) {
      store->fd_ = std::move(*fd);
      break;
    }
    const auto left = deadline.time() - Clock::now();
    if (left <= Clock::duration::zero()) {
      return DeadlineExceededError("bootstrap: could not reach the store at " + store->address_ + " within " +
                                   std::to_string(timeout_ms) + " ms (last error: " + last_error + ")");
    }
    std::this_thread::sleep_for(std::min<Clock::duration>(backoff, left));
    backoff = std::min(backoff * 2, kConnectBackoffMax);
  }

  const std::string what = "HELLO";
  M2N_ASSIGN_OR_RETURN(
      Message answer,
      store->Call(wire::Hello{options.job_id, options.rank, options.world_size}, deadline, what));
  if (std::holds_alternative<wire::ErrorReply>(answer)) {
    const auto& error = std::get<wire::ErrorReply>(answer);
    return Status(error.code, "bootstrap: the store at " + store->address_ + " refused rank " +
                                  std::to_string(options.rank) + ": " + error.text);
  }
  if (!std::holds_alternative<wire::HelloOk>(answer)) return store->Unexpected(answer, what);
  return store;
}

StatusOr<Message> TcpStore::Call(const Message& request, Deadline deadline, const std::string& what) {
  if (!broken_.ok()) return broken_;
  // Answers owed to earlier callers who gave up come first on the stream.
  while (unanswered_ > 0) {
    StatusOr<Message> stale = ReadFrame(deadline, "an earlier request that timed out");
    if (!stale.ok()) return stale.status();
    --unanswered_;
  }
  M2N_ASSIGN_OR_RETURN(Bytes frame, wire::EncodeFrame(request));
  M2N_RETURN_IF_ERROR(SendFrame(frame, deadline, what));
  StatusOr<Message> answer = ReadFrame(deadline, what);
  if (!answer.ok() && answer.status().code() == StatusCode::kDeadlineExceeded && broken_.ok()) {
    ++unanswered_;  // the request went out whole; its answer will come
  }
  return answer;
}

Status TcpStore::SendFrame(const Bytes& frame, Deadline deadline, const std::string& what) {
  size_t sent = 0;
  while (sent < frame.size()) {
    ssize_t n = send(fd_.get(), frame.data() + sent, frame.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    const int err = n < 0 ? errno : EPIPE;
    if (err == EINTR) continue;
    if (err != EAGAIN && err != EWOULDBLOCK) return Break(StoreClosed(" (send: " + ErrnoText(err) + ")"));
    pollfd p{fd_.get(), POLLOUT, 0};
    int ready = poll(&p, 1, PollTimeoutMs(deadline.time()));
    if (ready < 0 && errno != EINTR) return Break(InternalError(Prefix() + "poll: " + ErrnoText(errno)));
    if (ready == 0) {
      Status late =
          DeadlineExceededError(Prefix() + "the store at " + address_ + " did not take " + what + " in time");
      if (sent == 0) return late;
      // Half a frame is on the wire: the stream cannot be put back in step.
      (void)Break(UnavailableError(Prefix() + "the connection to the store at " + address_ +
                                   " was left unusable by a send that timed out half-way"));
      return late;
    }
  }
  return OkStatus();
}

StatusOr<Message> TcpStore::ReadFrame(Deadline deadline, const std::string& what) {
  for (;;) {
    if (in_.size() >= wire::kHeaderBytes) {
      StatusOr<wire::FrameHeader> header = wire::DecodeHeader(in_);
      if (!header.ok()) {
        return Break(header.status().WithContext(Prefix() + "bad answer from the store at " + address_));
      }
      const size_t frame_bytes = wire::kHeaderBytes + header->body_bytes;
      if (in_.size() >= frame_bytes) {
        StatusOr<Message> message = wire::DecodeBody(
            header->type, std::span<const std::byte>(in_).subspan(wire::kHeaderBytes, header->body_bytes));
        in_.erase(in_.begin(), in_.begin() + static_cast<ptrdiff_t>(frame_bytes));
        if (!message.ok()) {
          return Break(message.status().WithContext(Prefix() + "bad answer from the store at " + address_));
        }
        return message;
      }
    }
    pollfd p{fd_.get(), POLLIN, 0};
    int ready = poll(&p, 1, PollTimeoutMs(deadline.time()));
    if (ready < 0) {
      if (errno == EINTR) continue;
      return Break(InternalError(Prefix() + "poll: " + ErrnoText(errno)));
    }
    if (ready == 0) {
      return DeadlineExceededError(Prefix() + "no answer from the store at " + address_ + " to " + what +
                                   " by the deadline");
    }
    const size_t old_size = in_.size();
    in_.resize(old_size + kReadChunk);
    ssize_t n = recv(fd_.get(), in_.data() + old_size, kReadChunk, 0);
    in_.resize(old_size + std::max<ssize_t>(n, 0));
    if (n == 0) return Break(StoreClosed(""));
    if (n < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
      return Break(StoreClosed(" (recv: " + ErrnoText(errno) + ")"));
    }
  }
}

Status TcpStore::Break(Status why) {
  if (broken_.ok()) broken_ = why;
  fd_.Reset();
  in_.clear();
  return why;
}

Status TcpStore::Unexpected(const Message& answer, const std::string& what) {
  if (std::holds_alternative<wire::ErrorReply>(answer)) {
    const auto& error = std::get<wire::ErrorReply>(answer);
    return Status(error.code, Prefix() + what + " failed at the store at " + address_ + ": " + error.text);
  }
  return Break(DataLossError(Prefix() + "the store at " + address_ + " answered " + what + " with " +
                             wire::MessageTypeName(wire::TypeOf(answer))));
}

Status TcpStore::Set(const std::string& key, std::span<const std::byte> value) {
  M2N_RETURN_IF_ERROR(CheckKey(key));
  M2N_RETURN_IF_ERROR(CheckValue(value));
  std::lock_guard lock(mu_);
  const std::string what = "SET '" + key + "'";
  M2N_ASSIGN_OR_RETURN(Message answer, Call(wire::SetRequest{key, Bytes(value.begin(), value.end())},
                                            Deadline::After(request_timeout_), what));
  if (!std::holds_alternative<wire::OkReply>(answer)) return Unexpected(answer, what);
  return OkStatus();
}

StatusOr<Bytes> TcpStore::Get(const std::string& key, Deadline deadline) {
  M2N_RETURN_IF_ERROR(CheckKey(key));
  std::lock_guard lock(mu_);
  const std::string what = "GET '" + key + "'";
  // The store times the request out itself at `deadline` and says so; the grace lets that answer
  // (which names the missing key) arrive instead of a bare local timeout.
  const Deadline answer_by = Deadline::At(deadline.time() + std::chrono::milliseconds(kStoreReplyGraceMs));
  M2N_ASSIGN_OR_RETURN(Message answer, Call(wire::GetRequest{key, deadline.RemainingMs()}, answer_by, what));
  if (auto* value = std::get_if<wire::ValueReply>(&answer)) return std::move(value->value);
  return Unexpected(answer, what);
}

StatusOr<int64_t> TcpStore::Add(const std::string& key, int64_t delta) {
  M2N_RETURN_IF_ERROR(CheckKey(key));
  std::lock_guard lock(mu_);
  const std::string what = "ADD '" + key + "'";
  M2N_ASSIGN_OR_RETURN(Message answer,
                       Call(wire::AddRequest{key, delta}, Deadline::After(request_timeout_), what));
  if (auto* count = std::get_if<wire::IntReply>(&answer)) return count->value;
  return Unexpected(answer, what);
}

Status TcpStore::Wait(std::span<const std::string> keys, Deadline deadline) {
  M2N_RETURN_IF_ERROR(CheckWaitKeys(keys));
  std::lock_guard lock(mu_);
  const std::string what = "WAIT for " + QuoteKeys(keys);
  const Deadline answer_by = Deadline::At(deadline.time() + std::chrono::milliseconds(kStoreReplyGraceMs));
  M2N_ASSIGN_OR_RETURN(
      Message answer,
      Call(wire::WaitRequest{std::vector<std::string>(keys.begin(), keys.end()), deadline.RemainingMs()},
           answer_by, what));
  if (!std::holds_alternative<wire::OkReply>(answer)) return Unexpected(answer, what);
  return OkStatus();
}

StatusOr<std::vector<int>> TcpStore::DeadRanks(Deadline deadline) {
  std::lock_guard lock(mu_);
  const std::string what = "DEAD_RANKS";
  const Deadline bound = Deadline::At(std::min(deadline.time(), Clock::now() + request_timeout_));
  M2N_ASSIGN_OR_RETURN(Message answer, Call(wire::DeadRanksRequest{}, bound, what));
  if (auto* ranks = std::get_if<wire::RanksReply>(&answer)) {
    return std::vector<int>(ranks->ranks.begin(), ranks->ranks.end());
  }
  return Unexpected(answer, what);
}

Status TcpStore::Goodbye() {
  std::lock_guard lock(mu_);
  const std::string what = "GOODBYE";
  const Deadline deadline = Deadline::After(request_timeout_);
  M2N_ASSIGN_OR_RETURN(Message answer, Call(wire::Goodbye{}, deadline, what));
  if (!std::holds_alternative<wire::OkReply>(answer)) return Unexpected(answer, what);
  // The serving rank leaves last: a rank still waiting for an answer must get it.
  if (server_) return server_->WaitForOthersToLeave(rank_, deadline);
  return OkStatus();
}

}  // namespace

StatusOr<std::unique_ptr<TcpStoreServer>> StartTcpStoreServer(const TcpStoreOptions& options) {
  M2N_ASSIGN_OR_RETURN(std::unique_ptr<StoreServer> server, StoreServer::Start(options));
  return std::unique_ptr<TcpStoreServer>(std::move(server));
}

StatusOr<std::unique_ptr<Store>> ConnectTcpStore(const TcpStoreOptions& options, Deadline deadline) {
  M2N_ASSIGN_OR_RETURN(std::unique_ptr<TcpStore> store, TcpStore::Connect(options, deadline));
  return std::unique_ptr<Store>(std::move(store));
}

int TcpStorePort(const Store& store) {
  const auto* tcp = dynamic_cast<const TcpStore*>(&store);
  return tcp != nullptr ? tcp->serving_port() : -1;
}

}  // namespace m2n::bootstrap

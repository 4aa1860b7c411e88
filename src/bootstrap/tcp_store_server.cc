// The TCP store's server: a poll()-driven thread on rank 0 (or in a launcher) that holds the
// job's keys, answers every rank, holds GETs and WAITs until their keys appear and keeps the set
// of dead ranks. Behaviour: tcp_store.h; wire format: wire.h; the server's side of the HELLO
// handshake: tcp_store_server_handshake.cc.
#include "bootstrap/tcp_store_server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "bootstrap/handshake.h"
#include "bootstrap/store_rules.h"

namespace m2n::bootstrap {
namespace {

using namespace std::chrono_literals;

// A connection being dropped gets this long to take its ERROR before the socket is closed anyway.
constexpr std::chrono::milliseconds kCloseLinger = 1000ms;
// The server holds no request longer than this, whatever timeout it asks for (and the clock
// arithmetic cannot overflow).
constexpr int64_t kMaxHeldRequestMs = int64_t{7} * 24 * 3600 * 1000;
// While accept() fails for lack of descriptors, the listener is left alone this long, so the
// loop does not spin on a socket that stays readable.
constexpr std::chrono::milliseconds kAcceptPause = 100ms;
// Answers a connection has not read yet. Past this the server stops handling (and reading) its
// requests until it reads, so a client that pipelines GETs of a large value and never reads
// cannot make the server buffer without bound.
constexpr size_t kMaxUnsentBytes = wire::kMaxFrameBytes;

}  // namespace

using wire::Message;
using wire::MessageType;

namespace {

Status CheckServerOptions(const TcpStoreOptions& options) {
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
                                " bytes exceeds the maximum of " +
                                std::to_string(wire::kMaxJobIdBytes));
  }
  if (options.max_unauthenticated < 1) {
    return InvalidArgumentError(
        "bootstrap: the store's max_unauthenticated must be at least 1, not " +
        std::to_string(options.max_unauthenticated));
  }
  M2N_RETURN_IF_ERROR(CheckJobKey(options.job_key, "TcpStoreOptions::job_key"));
  if (options.hello_timeout <= std::chrono::milliseconds::zero()) {
    return InvalidArgumentError("bootstrap: the store's hello_timeout must be positive, not " +
                                std::to_string(options.hello_timeout.count()) + " ms");
  }
  return OkStatus();
}

}  // namespace

StatusOr<std::unique_ptr<StoreServer>> StoreServer::Start(const TcpStoreOptions& options) {
  M2N_RETURN_IF_ERROR(CheckServerOptions(options));
  std::unique_ptr<StoreServer> server(new StoreServer(options));
  M2N_ASSIGN_OR_RETURN(server->listen_fd_, Listen(options.host, options.port));
  M2N_ASSIGN_OR_RETURN(server->port_, BoundPort(server->listen_fd_.get()));
  if (options.job_key.empty() && !IsLoopbackHost(options.host)) {
    std::fprintf(
        stderr,
        "m2n bootstrap: WARNING: the store listens on %s without a job key: anyone who can reach "
        "that address and knows the job id (by default m2n@<master>:<port>) can join as a rank, "
        "read and overwrite the job's connection addresses and memory keys. Set the same "
        "M2N_JOB_KEY (or M2N_JOB_KEY_FILE) on every rank; see docs/security.md.\n",
        FormatAddress(options.host.empty() ? "0.0.0.0" : options.host, server->port_).c_str());
  }

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

// The serving thread: poll, accept, read and write, handle what came in, expire what waited.
void StoreServer::Run() {
  std::vector<pollfd> fds;
  for (;;) {
    const Clock::time_point wake_at = FillPollSet(fds);
    int timeout = wake_at == Clock::time_point::max() ? -1 : PollTimeoutMs(wake_at);
    if (poll(fds.data(), fds.size(), timeout) < 0) {
      if (errno == EINTR) continue;
      std::fprintf(stderr, "m2n bootstrap: the store on port %d stops: poll: %s\n", port_,
                   ErrnoText(errno).c_str());
      break;
    }
    if (fds[0].revents != 0) break;  // asked to stop
    if (fds[1].revents != 0) AcceptAll();
    ReadAndWrite(fds);
    HandleAll();
    ExpireAndFlush();
  }
  // Stopping: closing every socket tells each client the store is gone.
  connections_.clear();
}

// fds: the wake pipe, the listener (while accepting) and every connection, with the events wanted
// of each. Returns when poll() must return at the latest (max: no limit).
Clock::time_point StoreServer::FillPollSet(std::vector<pollfd>& fds) {
  const Clock::time_point now = Clock::now();
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
    if (!c->closing && !c->peer_closed && c->in.size() < ReadLimit(*c) &&
        Unsent(*c) <= kMaxUnsentBytes) {
      events |= POLLIN;
    }
    if (c->out_pos < c->out.size()) events |= POLLOUT;
    fds.push_back({c->fd.get(), events, 0});
    if (c->held) wake_at = std::min(wake_at, c->held->deadline);
    if (c->closing) wake_at = std::min(wake_at, c->close_by);
    if (c->rank < 0 && !c->closing) wake_at = std::min(wake_at, c->hello_by);
  }
  return wake_at;
}

void StoreServer::ReadAndWrite(const std::vector<pollfd>& fds) {
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
}

void StoreServer::HandleAll() {
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
}

void StoreServer::ExpireAndFlush() {
  const Clock::time_point now = Clock::now();
  for (const auto& c : connections_) {
    if (c->dead) continue;
    // A stranger that connects and says nothing (or too little) holds a socket until now only.
    if (c->rank < 0 && !c->closing && now >= c->hello_by) {
      Refuse(*c, DeadlineExceededError(std::string(c->challenged ? "no PROOF" : "no HELLO") +
                                       " within " + std::to_string(hello_timeout_.count()) +
                                       " ms of connecting (" + std::to_string(c->in.size()) +
                                       " bytes received)"));
    }
    Flush(*c);
    if (c->closing && (c->out_pos == c->out.size() || now >= c->close_by)) c->dead = true;
  }
  CloseDead();
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
    // Over the bound, closed at once: strangers cannot use up the descriptors the ranks need.
    if (CountStrangers() >= max_unauthenticated_) {
      close(fd);
      continue;
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
    c.dead = true;  // EPIPE / ECONNRESET: the peer is gone
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
    const MessageType expected = c.challenged ? MessageType::kProof : MessageType::kHello;
    if (c.rank < 0 && header->type != expected) {
      Refuse(c, FailedPreconditionError("expected " + wire::MessageTypeName(expected) +
                                        (c.challenged ? "" : " first") + ", got " +
                                        wire::MessageTypeName(header->type)));
      break;
    }
    const size_t frame_bytes = wire::kHeaderBytes + header->body_bytes;
    if (c.in.size() < frame_bytes || c.held || Unsent(c) > kMaxUnsentBytes) break;
    StatusOr<Message> message = wire::DecodeBody(
        header->type,
        std::span<const std::byte>(c.in).subspan(wire::kHeaderBytes, header->body_bytes));
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
  if (c.rank < 0) return HandleStranger(c, std::move(message));
  if (HandleRequest(c, message)) return;
  const MessageType type = wire::TypeOf(message);
  if (type == MessageType::kHello || type == MessageType::kProof) {
    return Refuse(c, FailedPreconditionError("rank " + std::to_string(c.rank) + " sent a second " +
                                             wire::MessageTypeName(type)));
  }
  Refuse(c, InvalidArgumentError("a client sent " + wire::MessageTypeName(type) +
                                 ", which only the store sends"));
}

// The requests of an accepted rank. Returns false for a type a rank may not send.
bool StoreServer::HandleRequest(Connection& c, Message& message) {
  switch (wire::TypeOf(message)) {
    case MessageType::kSet:
      HandleSet(c, std::get<wire::SetRequest>(message));
      return true;
    case MessageType::kGet:
    case MessageType::kWait:
      Hold(c, std::move(message));
      return true;
    case MessageType::kAdd:
      HandleAdd(c, std::get<wire::AddRequest>(message));
      return true;
    case MessageType::kDeadRanks:
      Send(c, wire::RanksReply{std::vector<int32_t>(dead_ranks_.begin(), dead_ranks_.end())});
      return true;
    case MessageType::kGoodbye:
      if (!c.said_goodbye) SetActive(c.rank, false);
      c.said_goodbye = true;
      Send(c, wire::OkReply{});
      return true;
    default:
      return false;
  }
}

// A GET or WAIT: held until its keys are there or its timeout passes.
void StoreServer::Hold(Connection& c, Message message) {
  HeldRequest held;
  held.type = wire::TypeOf(message);
  int64_t timeout_ms = 0;
  if (held.type == MessageType::kGet) {
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
  held.deadline = Clock::now() +
                  std::chrono::milliseconds(std::clamp<int64_t>(timeout_ms, 0, kMaxHeldRequestMs));
  c.held = std::move(held);
  TryAnswer(c);  // most requests find their keys at once
}

void StoreServer::HandleSet(Connection& c, wire::SetRequest& m) {
  if (Status s = CheckKey(m.key); !s.ok()) return SendError(c, s);
  if (Status w = CheckWriter(c.rank, m.key, /*is_set=*/true); !w.ok()) return SendError(c, w);
  values_[m.key] = std::move(m.value);
  Send(c, wire::OkReply{});
}

void StoreServer::HandleAdd(Connection& c, const wire::AddRequest& m) {
  if (Status s = CheckKey(m.key); !s.ok()) return SendError(c, s);
  if (Status w = CheckWriter(c.rank, m.key, /*is_set=*/false); !w.ok()) return SendError(c, w);
  auto it = values_.find(m.key);
  StatusOr<int64_t> count =
      AddToCounter(m.key, it == values_.end() ? nullptr : &it->second, m.delta);
  if (!count.ok()) return SendError(c, count.status());
  values_[m.key] = CounterBytes(*count);
  Send(c, wire::IntReply{*count});
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
    return Refuse(
        c, InternalError("the store could not encode its answer: " + frame.status().message()));
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

StatusOr<std::unique_ptr<TcpStoreServer>> StartTcpStoreServer(const TcpStoreOptions& options) {
  M2N_ASSIGN_OR_RETURN(std::unique_ptr<StoreServer> server, StoreServer::Start(options));
  return std::unique_ptr<TcpStoreServer>(std::move(server));
}

}  // namespace m2n::bootstrap

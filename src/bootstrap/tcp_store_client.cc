// The TCP store's client: every rank's blocking, deadline-bounded connection to the store on
// rank 0 (rank 0's client also owns the server, tcp_store_server.h). Wire format: wire.h.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bootstrap/handshake.h"
#include "bootstrap/socket.h"
#include "bootstrap/store_rules.h"
#include "bootstrap/tcp_store.h"
#include "bootstrap/tcp_store_server.h"
#include "bootstrap/wire.h"

namespace m2n::bootstrap {
namespace {

using namespace std::chrono_literals;
using wire::Message;
using wire::MessageType;

constexpr std::chrono::milliseconds kConnectBackoffMin = 10ms;
constexpr std::chrono::milliseconds kConnectBackoffMax = 200ms;

class TcpStore final : public Store {
 public:
  static StatusOr<std::unique_ptr<TcpStore>> Connect(const TcpStoreOptions& options,
                                                     Deadline deadline);

  Status Set(const std::string& key, std::span<const std::byte> value) override;
  StatusOr<Bytes> Get(const std::string& key, Deadline deadline) override;
  StatusOr<int64_t> Add(const std::string& key, int64_t delta) override;
  Status Wait(std::span<const std::string> keys, Deadline deadline) override;
  using Store::DeadRanks;
  StatusOr<std::vector<int>> DeadRanks(Deadline deadline) override;
  Status Goodbye() override;

  int serving_port() const { return server_ ? server_->port() : -1; }

 private:
  // Connects and runs the handshake (handshake.h), again while the store closes the connection
  // unanswered (it does so while too many strangers are in their handshake), until `deadline`.
  Status Join(const TcpStoreOptions& options, Deadline deadline, int64_t timeout_ms);
  // HELLO, the store's CHALLENGE checked, PROOF, HELLO_OK.
  Status Handshake(const TcpStoreOptions& options, Deadline deadline);
  // Forgets a connection the store closed, so Join may try again.
  void Reset() {
    broken_ = OkStatus();
    fd_.Reset();
    in_.clear();
    unanswered_ = 0;
  }

  TcpStore(const TcpStoreOptions& options, std::string address)
      : address_(std::move(address)),
        rank_(options.rank),
        request_timeout_(options.request_timeout) {}

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
    return UnavailableError("bootstrap: the store at " + address_ +
                            " (rank 0) closed the connection" + detail);
  }
  // The failure that `answer`, which is not the one `what` expects, stands for: the store's ERROR,
  // or a protocol violation that ends the connection.
  Status Unexpected(const Message& answer, const std::string& what);
  std::string Prefix() const { return "bootstrap: rank " + std::to_string(rank_) + ": "; }

  std::unique_ptr<StoreServer> server_;  // first member: destroyed after the connection below
  const std::string address_;  // "host:port" of the store
  std::string host_;
  int port_ = 0;
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

Status CheckClientOptions(const TcpStoreOptions& options) {
  if (options.world_size < 1) {
    return InvalidArgumentError("bootstrap: world size " + std::to_string(options.world_size) +
                                " (it must be at least 1)");
  }
  if (options.rank < 0 || options.rank >= options.world_size) {
    return InvalidArgumentError("bootstrap: rank " + std::to_string(options.rank) +
                                " is outside [0, " + std::to_string(options.world_size) + ")");
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
                                " bytes exceeds the maximum of " +
                                std::to_string(wire::kMaxJobIdBytes));
  }
  return CheckJobKey(options.job_key, "TcpStoreOptions::job_key");
}

// The master may not be up yet: retry, backing off, until the deadline (`timeout_ms` from the
// caller's start, for the message).
StatusOr<UniqueFd> ConnectWithRetries(const std::string& host, int port, Deadline deadline,
                                      int64_t timeout_ms) {
  std::string last_error = "none";
  std::chrono::milliseconds backoff = kConnectBackoffMin;
  for (;;) {
    StatusOr<UniqueFd> fd = TryConnect(host, port, deadline, &last_error);
    if (fd.ok()) return fd;
    const auto left = deadline.time() - Clock::now();
    if (left <= Clock::duration::zero()) {
      return DeadlineExceededError(
          "bootstrap: could not reach the store at " + FormatAddress(host, port) + " within " +
          std::to_string(timeout_ms) + " ms (last error: " + last_error + ")");
    }
    std::this_thread::sleep_for(std::min<Clock::duration>(backoff, left));
    backoff = std::min(backoff * 2, kConnectBackoffMax);
  }
}

StatusOr<std::unique_ptr<TcpStore>> TcpStore::Connect(const TcpStoreOptions& options,
                                                      Deadline deadline) {
  // Rounded up, so a deadline made "500 ms from now" a moment ago still reads as 500 ms.
  const int64_t timeout_ms = std::max<int64_t>(
      0, std::chrono::ceil<std::chrono::milliseconds>(deadline.time() - Clock::now()).count());
  M2N_RETURN_IF_ERROR(CheckClientOptions(options));

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
  store->host_ = host;
  store->port_ = port;
  M2N_RETURN_IF_ERROR(store->Join(options, deadline, timeout_ms));
  return store;
}

Status TcpStore::Join(const TcpStoreOptions& options, Deadline deadline, int64_t timeout_ms) {
  std::chrono::milliseconds backoff = kConnectBackoffMin;
  for (;;) {
    M2N_ASSIGN_OR_RETURN(fd_, ConnectWithRetries(host_, port_, deadline, timeout_ms));
    Status joined = Handshake(options, deadline);
    if (joined.code() != StatusCode::kUnavailable || deadline.Expired()) return joined;
    Reset();
    std::this_thread::sleep_for(std::min<Clock::duration>(backoff, deadline.time() - Clock::now()));
    backoff = std::min(backoff * 2, kConnectBackoffMax);
  }
}

Status TcpStore::Handshake(const TcpStoreOptions& options, Deadline deadline) {
  const std::string who = "rank " + std::to_string(options.rank) + " of job '" + options.job_id +
                          "' (world size is " + std::to_string(options.world_size) + ")";
  auto refused = [&](const wire::ErrorReply& error) {
    return Break(Status(
        error.code, "bootstrap: the store at " + address_ + " refused " + who + ": " + error.text));
  };
  const auto key = std::as_bytes(std::span(options.job_key));
  M2N_ASSIGN_OR_RETURN(Bytes nonce, NewNonce());
  M2N_ASSIGN_OR_RETURN(Message answer,
                       Call(wire::Hello{options.job_id, options.rank, options.world_size, nonce},
                            deadline, "HELLO"));
  if (auto* error = std::get_if<wire::ErrorReply>(&answer)) return refused(*error);
  auto* challenge = std::get_if<wire::Challenge>(&answer);
  if (challenge == nullptr) return Unexpected(answer, "HELLO");
  // The store proves it holds the key first, so a rank never sends its proof to an impostor.
  const Sha256Digest store_mac =
      HandshakeMac(HandshakeRole::kStore, key, options.job_id, options.rank, options.world_size,
                   nonce, challenge->nonce);
  if (!ConstantTimeEqual(store_mac, challenge->mac)) {
    return Break(FailedPreconditionError("bootstrap: the store at " + address_ +
                                         " did not prove it holds the job key of " + who +
                                         ": one of the two has a job key (M2N_JOB_KEY / "
                                         "M2N_JOB_KEY_FILE) the other lacks, or another one"));
  }
  const Sha256Digest mac = HandshakeMac(HandshakeRole::kRank, key, options.job_id, options.rank,
                                        options.world_size, nonce, challenge->nonce);
  M2N_ASSIGN_OR_RETURN(answer, Call(wire::Proof{Bytes(mac.begin(), mac.end())}, deadline, "PROOF"));
  if (auto* error = std::get_if<wire::ErrorReply>(&answer)) return refused(*error);
  if (!std::holds_alternative<wire::HelloOk>(answer)) return Unexpected(answer, "PROOF");
  return OkStatus();
}

StatusOr<Message> TcpStore::Call(const Message& request, Deadline deadline,
                                 const std::string& what) {
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
    if (err != EAGAIN && err != EWOULDBLOCK)
      return Break(StoreClosed(" (send: " + ErrnoText(err) + ")"));
    pollfd p{fd_.get(), POLLOUT, 0};
    int ready = poll(&p, 1, PollTimeoutMs(deadline.time()));
    if (ready < 0 && errno != EINTR)
      return Break(InternalError(Prefix() + "poll: " + ErrnoText(errno)));
    if (ready == 0) {
      Status late = DeadlineExceededError(Prefix() + "the store at " + address_ + " did not take " +
                                          what + " in time");
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
        return Break(
            header.status().WithContext(Prefix() + "bad answer from the store at " + address_));
      }
      const size_t frame_bytes = wire::kHeaderBytes + header->body_bytes;
      if (in_.size() >= frame_bytes) {
        StatusOr<Message> message = wire::DecodeBody(
            header->type,
            std::span<const std::byte>(in_).subspan(wire::kHeaderBytes, header->body_bytes));
        in_.erase(in_.begin(), in_.begin() + static_cast<ptrdiff_t>(frame_bytes));
        if (!message.ok()) {
          return Break(
              message.status().WithContext(Prefix() + "bad answer from the store at " + address_));
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
      return DeadlineExceededError(Prefix() + "no answer from the store at " + address_ + " to " +
                                   what + " by the deadline");
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
    return Status(error.code,
                  Prefix() + what + " failed at the store at " + address_ + ": " + error.text);
  }
  return Break(DataLossError(Prefix() + "the store at " + address_ + " answered " + what +
                             " with " + wire::MessageTypeName(wire::TypeOf(answer))));
}

Status TcpStore::Set(const std::string& key, std::span<const std::byte> value) {
  M2N_RETURN_IF_ERROR(CheckKey(key));
  M2N_RETURN_IF_ERROR(CheckValue(value));
  std::lock_guard lock(mu_);
  const std::string what = "SET '" + key + "'";
  M2N_ASSIGN_OR_RETURN(Message answer,
                       Call(wire::SetRequest{key, Bytes(value.begin(), value.end())},
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
  const Deadline answer_by =
      Deadline::At(deadline.time() + std::chrono::milliseconds(kStoreReplyGraceMs));
  M2N_ASSIGN_OR_RETURN(Message answer,
                       Call(wire::GetRequest{key, deadline.RemainingMs()}, answer_by, what));
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
  const Deadline answer_by =
      Deadline::At(deadline.time() + std::chrono::milliseconds(kStoreReplyGraceMs));
  M2N_ASSIGN_OR_RETURN(Message answer,
                       Call(wire::WaitRequest{std::vector<std::string>(keys.begin(), keys.end()),
                                              deadline.RemainingMs()},
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

StatusOr<std::unique_ptr<Store>> ConnectTcpStore(const TcpStoreOptions& options,
                                                 Deadline deadline) {
  M2N_ASSIGN_OR_RETURN(std::unique_ptr<TcpStore> store, TcpStore::Connect(options, deadline));
  return std::unique_ptr<Store>(std::move(store));
}

int TcpStorePort(const Store& store) {
  const auto* tcp = dynamic_cast<const TcpStore*>(&store);
  return tcp != nullptr ? tcp->serving_port() : -1;
}

}  // namespace m2n::bootstrap

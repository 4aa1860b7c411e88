// The TCP store's server (behaviour: tcp_store.h), as the client on rank 0 owns one: one thread
// polls the listening socket and every connection. Internal to src/bootstrap.
#pragma once

#include <poll.h>

#include <chrono>
#include <condition_variable>
#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "bootstrap/socket.h"
#include "bootstrap/tcp_store.h"
#include "bootstrap/wire.h"

namespace m2n::bootstrap {

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
    wire::MessageType type = wire::MessageType::kGet;
    std::vector<std::string> keys;
    Clock::time_point deadline;
  };

  struct Connection {
    explicit Connection(UniqueFd f) : fd(std::move(f)) {}
    UniqueFd fd;
    Bytes in;  // bytes read and not yet consumed as frames
    Bytes out;  // bytes to write, from out_pos on
    size_t out_pos = 0;
    int rank = -1;  // set by an accepted PROOF: until then the connection is a stranger
    // Between an accepted HELLO and its PROOF: the claimed rank and both nonces.
    bool challenged = false;
    int claimed_rank = -1;
    Bytes rank_nonce;
    Bytes store_nonce;
    Clock::time_point hello_by;  // a stranger still without a handshake by then is refused
    bool said_goodbye = false;
    bool peer_closed = false;  // EOF or a read error: handle what is buffered, then close
    bool closing = false;  // refused: close once `out` is written or at close_by
    Clock::time_point close_by;
    bool dead = false;  // to be closed at the end of this pass of the loop
    std::optional<HeldRequest> held;  // at most one: a connection's requests are answered in order
  };

  explicit StoreServer(const TcpStoreOptions& options)
      : job_id_(options.job_id),
        job_key_(options.job_key),
        world_size_(options.world_size),
        hello_timeout_(options.hello_timeout),
        max_unauthenticated_(
            static_cast<size_t>(std::max(options.max_unauthenticated, options.world_size))) {}

  // How many bytes of `c` may sit unhandled: one HELLO for a stranger, one largest frame for a
  // rank.
  static size_t ReadLimit(const Connection& c) {
    // Before its HELLO is accepted, a connection is a stranger: no more than one HELLO frame of it
    // is buffered, and any other type is refused from the header alone (HandleFrames), so a
    // stranger cannot make the server hold a large body.
    static_assert(wire::kMacBytes <= wire::kNonceBytes, "a PROOF must fit a stranger's read limit");
    return c.rank < 0 ? wire::kHeaderBytes + wire::MaxBodyBytes(wire::MessageType::kHello)
                      : wire::kMaxFrameBytes;
  }
  static size_t Unsent(const Connection& c) { return c.out.size() - c.out_pos; }

  void Run();
  Clock::time_point FillPollSet(std::vector<pollfd>& fds);
  void ReadAndWrite(const std::vector<pollfd>& fds);
  void HandleAll();
  void ExpireAndFlush();
  void AcceptAll();
  void ReadSome(Connection& c);
  void Flush(Connection& c);
  bool HandleFrames(Connection& c);
  void Handle(Connection& c, wire::Message message);
  void HandleHello(Connection& c, const wire::Hello& hello);
  void HandleProof(Connection& c, const wire::Proof& proof);
  void HandleStranger(Connection& c, wire::Message message);
  bool HandleRequest(Connection& c, wire::Message& message);
  size_t CountStrangers() const;
  void Hold(Connection& c, wire::Message message);
  void HandleSet(Connection& c, wire::SetRequest& m);
  void HandleAdd(Connection& c, const wire::AddRequest& m);
  bool TryAnswer(Connection& c);
  void Send(Connection& c, const wire::Message& message);
  void SendError(Connection& c, const Status& status);
  void Refuse(Connection& c, const Status& status);
  void CloseDead();
  void SetActive(int rank, bool active);

  const std::string job_id_;
  const std::string job_key_;
  const int world_size_;
  const std::chrono::milliseconds hello_timeout_;
  const size_t max_unauthenticated_;
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

}  // namespace m2n::bootstrap

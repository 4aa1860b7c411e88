// Helpers shared by the bootstrap tests: see bootstrap_test_util.h.
#include "bootstrap_test_util.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bootstrap/handshake.h"
#include "bootstrap/store.h"
#include "bootstrap/tcp_store.h"
#include "bootstrap/wire.h"

namespace m2n::bootstrap {

using namespace std::chrono_literals;
using wire::Message;

Bytes ToBytes(std::string_view s) {
  auto b = std::as_bytes(std::span<const char>(s.data(), s.size()));
  return Bytes(b.begin(), b.end());
}

int64_t MsSince(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

Bytes ValidFrame(const Message& message) {
  StatusOr<Bytes> frame = wire::EncodeFrame(message);
  EXPECT_TRUE(frame.ok()) << frame.status().ToString();
  return frame.ok() ? *frame : Bytes{};
}

void PutU32At(Bytes& frame, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) frame[at + i] = static_cast<std::byte>(v >> (8 * i));
}

TcpStoreOptions RankOptions(int port, int rank, int world_size, std::string job) {
  TcpStoreOptions options;
  options.host = "127.0.0.1";
  options.port = port;
  options.rank = rank;
  options.world_size = world_size;
  options.job_id = std::move(job);
  options.request_timeout = 5000ms;
  return options;
}

StatusOr<std::unique_ptr<Store>> ConnectRank(int port, int rank, int world_size,
                                             int64_t timeout_ms) {
  return ConnectTcpStore(RankOptions(port, rank, world_size), Deadline::AfterMs(timeout_ms));
}

Bytes TestNonce() { return Bytes(wire::kNonceBytes, std::byte{0x4e}); }

int RawJoin(int port, int rank, int world_size, const std::string& key, std::string job,
            std::string* refusal) {
  int fd = RawConnect(port);
  if (fd < 0) return -1;
  const Bytes nonce = TestNonce();
  auto fail = [&](const std::optional<Message>& answer) {
    if (refusal != nullptr && answer && std::holds_alternative<wire::ErrorReply>(*answer)) {
      *refusal = std::get<wire::ErrorReply>(*answer).text;
    }
    close(fd);
    return -1;
  };
  if (!SendAll(fd, ValidFrame(wire::Hello{job, rank, world_size, nonce})))
    return fail(std::nullopt);
  std::optional<Message> answer = ReadOneFrame(fd, 5000ms);
  if (!answer || !std::holds_alternative<wire::Challenge>(*answer)) return fail(answer);
  const auto& challenge = std::get<wire::Challenge>(*answer);
  const auto key_bytes = std::as_bytes(std::span(key));
  const Sha256Digest mac =
      HandshakeMac(HandshakeRole::kRank, key_bytes, job, rank, world_size, nonce, challenge.nonce);
  if (!SendAll(fd, ValidFrame(wire::Proof{Bytes(mac.begin(), mac.end())})))
    return fail(std::nullopt);
  answer = ReadOneFrame(fd, 5000ms);
  if (!answer || !std::holds_alternative<wire::HelloOk>(*answer)) return fail(answer);
  return fd;
}

bool FakeHandshake(int fd) {
  std::optional<Message> hello = ReadOneFrame(fd, 2000ms);
  if (!hello || !std::holds_alternative<wire::Hello>(*hello)) return false;
  const auto& h = std::get<wire::Hello>(*hello);
  const Bytes store_nonce(wire::kNonceBytes, std::byte{0x53});
  const Sha256Digest mac =
      HandshakeMac(HandshakeRole::kStore, {}, h.job_id, h.rank, h.world_size, h.nonce, store_nonce);
  if (!SendAll(fd, ValidFrame(wire::Challenge{store_nonce, Bytes(mac.begin(), mac.end())})))
    return false;
  std::optional<Message> proof = ReadOneFrame(fd, 2000ms);
  return proof && std::holds_alternative<wire::Proof>(*proof);
}

int RawConnect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, std::span<const std::byte> bytes) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    ssize_t n = send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

Drained ReadUntilClosed(int fd, std::chrono::milliseconds timeout) {
  Drained out;
  Deadline deadline = Deadline::After(timeout);
  while (!deadline.Expired()) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(std::max<int64_t>(1, deadline.RemainingMs()))) <= 0) continue;
    std::byte buf[4096];
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) {
      out.closed = true;
      return out;
    }
    out.bytes.insert(out.bytes.end(), buf, buf + n);
  }
  return out;
}

std::optional<Message> ReadOneFrame(int fd, std::chrono::milliseconds timeout) {
  Deadline deadline = Deadline::After(timeout);
  Bytes in;
  size_t need = wire::kHeaderBytes;
  while (in.size() < need) {
    pollfd p{fd, POLLIN, 0};
    if (deadline.Expired() ||
        poll(&p, 1, static_cast<int>(std::max<int64_t>(1, deadline.RemainingMs()))) <= 0) {
      if (deadline.Expired()) return std::nullopt;
      continue;
    }
    std::byte buf[4096];
    ssize_t n = recv(fd, buf, std::min(sizeof(buf), need - in.size()), 0);
    if (n <= 0) return std::nullopt;
    in.insert(in.end(), buf, buf + n);
    if (in.size() == wire::kHeaderBytes && need == wire::kHeaderBytes) {
      StatusOr<wire::FrameHeader> header = wire::DecodeHeader(in);
      if (!header.ok()) return std::nullopt;
      need += header->body_bytes;
    }
  }
  StatusOr<Message> message = wire::DecodeFrame(in);
  if (!message.ok()) return std::nullopt;
  return *message;
}

int RankWorkload(Store& store, int rank, int world_size) {
  const std::string me = std::to_string(rank);
  if (!store.SetString("addr/" + me, "address-of-" + me).ok()) return 1;
  StatusOr<int64_t> arrived = store.Add("arrivals", 1);
  if (!arrived.ok() || *arrived < 1 || *arrived > world_size) return 2;
  std::vector<std::string> keys;
  for (int r = 0; r < world_size; ++r) keys.push_back("addr/" + std::to_string(r));
  if (!store.Wait(keys, Deadline::AfterMs(10000)).ok()) return 3;
  for (int r = 0; r < world_size; ++r) {
    StatusOr<std::string> address =
        store.GetString("addr/" + std::to_string(r), Deadline::AfterMs(10000));
    if (!address.ok() || *address != "address-of-" + std::to_string(r)) return 4;
  }
  if (!store.Barrier("after-exchange", world_size, Deadline::AfterMs(10000)).ok()) return 5;
  // After the barrier every rank has added.
  StatusOr<int64_t> total = store.Add("arrivals", 0);
  if (!total.ok() || *total != world_size) return 6;
  if (!store.Barrier("before-goodbye", world_size, Deadline::AfterMs(10000)).ok()) return 7;
  return 0;
}

FakeStore::FakeStore(std::function<void(int fd)> script) {
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  listen(listen_fd_, 4);
  socklen_t len = sizeof(addr);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  thread_ = std::thread([this, script = std::move(script)] {
    pollfd p{listen_fd_, POLLIN, 0};
    if (poll(&p, 1, 5000) != 1) return;
    int fd = accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) return;
    script(fd);
    close(fd);
  });
}

FakeStore::~FakeStore() {
  thread_.join();
  close(listen_fd_);
}

}  // namespace m2n::bootstrap

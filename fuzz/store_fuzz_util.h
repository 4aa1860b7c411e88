// What the store's fuzz targets (store_session_fuzz.cc, store_hello_fuzz.cc) share: loopback
// connections that do not run out of ports, bounded reads, the check that every answer is a whole
// valid frame, and a rank's side of the handshake (src/bootstrap/handshake.h).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "bootstrap/handshake.h"
#include "bootstrap/wire.h"
#include "fuzz/fuzz_check.h"

namespace m2n::bootstrap::fuzz {

// Far longer than any input needs; reaching it means the server stalled on this connection.
inline constexpr int kReadBoundMs = 8000;

// A connection to the server. This side closes first, so each connection leaves a TIME_WAIT
// behind: the source address cycles through 127.0.0.0/8 (the port picked at connect, knowing the
// destination), so a long run does not run out of ports; a refused or failed attempt is retried.
inline int Connect(int port) {
  static uint32_t next_source = 0;
  int last_errno = 0;
  for (int attempt = 0; attempt < 200; ++attempt) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    M2N_FUZZ_CHECK(fd >= 0);
    const int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    sockaddr_in source{};
    source.sin_family = AF_INET;
    source.sin_addr.s_addr = htonl(0x7F000001u + (next_source++ % 250) * 256);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, reinterpret_cast<sockaddr*>(&source), sizeof(source)) == 0 &&
        connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      return fd;
    }
    last_errno = errno;
    close(fd);
    usleep(1000);
  }
  std::fprintf(stderr, "store fuzz: cannot connect to the store on port %d: %s\n", port,
               std::strerror(last_errno));
  std::abort();
}

// The server may refuse and close before taking every byte: a failed send just ends the input.
inline void SendAll(int fd, std::span<const std::byte> bytes) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    ssize_t n = send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

// Everything the server sends until it closes; the check fails if it does not close in time.
inline Bytes ReadUntilClosed(int fd) {
  Bytes in;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kReadBoundMs);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    M2N_FUZZ_CHECK(left.count() > 0);  // the server did not close a connection whose peer had
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    std::byte buf[4096];
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) return in;  // EOF, or a reset after a refusal
    in.insert(in.end(), buf, buf + n);
  }
}

// The server's answers: whole, valid frames, possibly cut at the end by a reset.
inline std::vector<wire::Message> CheckAnswers(std::span<const std::byte> in) {
  std::vector<wire::Message> answers;
  while (in.size() >= wire::kHeaderBytes) {
    StatusOr<wire::FrameHeader> header = wire::DecodeHeader(in);
    M2N_FUZZ_CHECK(header.ok());
    const size_t frame_bytes = wire::kHeaderBytes + header->body_bytes;
    if (in.size() < frame_bytes) break;
    StatusOr<wire::Message> m =
        wire::DecodeBody(header->type, in.subspan(wire::kHeaderBytes, header->body_bytes));
    M2N_FUZZ_CHECK(m.ok());
    answers.push_back(std::move(*m));
    in = in.subspan(frame_bytes);
  }
  return answers;
}

// One whole frame from the server within kReadBoundMs; nullopt if it closed first.
inline std::optional<wire::Message> ReadFrame(int fd) {
  Bytes in;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kReadBoundMs);
  for (;;) {
    if (in.size() >= wire::kHeaderBytes) {
      StatusOr<wire::FrameHeader> header = wire::DecodeHeader(in);
      M2N_FUZZ_CHECK(header.ok());
      if (in.size() == wire::kHeaderBytes + header->body_bytes) {
        StatusOr<wire::Message> m = wire::DecodeFrame(in);
        M2N_FUZZ_CHECK(m.ok());
        return std::move(*m);
      }
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    M2N_FUZZ_CHECK(left.count() > 0);
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    // One byte at a time: the server's next frame must stay unread.
    std::byte b;
    if (recv(fd, &b, 1, 0) <= 0) return std::nullopt;
    in.push_back(b);
  }
}

inline Bytes Encode(const wire::Message& m) {
  StatusOr<Bytes> frame = wire::EncodeFrame(m);
  M2N_FUZZ_CHECK(frame.ok());
  return std::move(*frame);
}

// Sends a HELLO of (job, rank, world_size) and returns the store's answer to it, checking that a
// CHALLENGE carries the store's true MAC under `key`.
inline std::optional<wire::Message> SayHello(int fd, const std::string& job, int rank,
                                             int world_size, const std::string& key,
                                             const Bytes& nonce) {
  SendAll(fd, Encode(wire::Hello{job, rank, world_size, nonce}));
  std::optional<wire::Message> answer = ReadFrame(fd);
  if (answer && std::holds_alternative<wire::Challenge>(*answer)) {
    const auto& c = std::get<wire::Challenge>(*answer);
    const Sha256Digest mac = HandshakeMac(HandshakeRole::kStore, std::as_bytes(std::span(key)), job,
                                          rank, world_size, nonce, c.nonce);
    M2N_FUZZ_CHECK(ConstantTimeEqual(mac, c.mac));  // the store proves it holds the key
  }
  return answer;
}

// The rank's PROOF for `challenge`.
inline Bytes ProofFrame(const wire::Challenge& challenge, const std::string& job, int rank,
                        int world_size, const std::string& key, const Bytes& nonce) {
  const Sha256Digest mac = HandshakeMac(HandshakeRole::kRank, std::as_bytes(std::span(key)), job,
                                        rank, world_size, nonce, challenge.nonce);
  return Encode(wire::Proof{Bytes(mac.begin(), mac.end())});
}

}  // namespace m2n::bootstrap::fuzz

// Fuzzes the store server's request handling (src/bootstrap/tcp_store_server.cc) end to end: each
// input is everything one connection sends to a live server, over a real loopback socket. The
// server's own thread parses and answers; this side then closes its half and reads until the
// server closes.
//
// The first input byte picks whether the bytes go after a valid HELLO of the job (so the fuzzer
// reaches SET / GET / ADD / WAIT / DEAD_RANKS / GOODBYE without first finding the job id) or
// bare, as a stranger's; the second picks the rank. Checked: the server survives (no crash, no
// sanitizer finding), answers only well-formed frames, and closes every connection once its peer
// has (a stall would hang here, which libFuzzer's -timeout reports). The server keeps its keys and
// dead ranks across inputs, as it would across connections; a fresh one starts every 2000 inputs.
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
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "bootstrap/tcp_store.h"
#include "bootstrap/wire.h"
#include "fuzz/fuzz_check.h"

namespace m2n::bootstrap {
namespace {

constexpr int kWorld = 4;
constexpr char kJob[] = "fuzz-job";
constexpr int kInputsPerServer = 2000;
// Far longer than any input needs; reaching it means the server stalled on this connection.
constexpr int kReadBoundMs = 8000;

TcpStoreServer& Server() {
  static std::unique_ptr<TcpStoreServer> server;
  static int inputs = 0;
  if (server == nullptr || ++inputs > kInputsPerServer) {
    server.reset();
    inputs = 1;
    TcpStoreOptions options;
    options.host = "127.0.0.1";
    options.port = 0;
    options.world_size = kWorld;
    options.job_id = kJob;
    options.hello_timeout = std::chrono::milliseconds(2000);
    StatusOr<std::unique_ptr<TcpStoreServer>> started = StartTcpStoreServer(options);
    M2N_FUZZ_CHECK(started.ok());
    server = std::move(*started);
  }
  return *server;
}

// A connection to the server. This side closes first, so each connection leaves a TIME_WAIT
// behind: the source address cycles through 127.0.0.0/8 (the port picked at connect, knowing the
// destination), so a long run does not run out of ports; a refused or failed attempt is retried.
int Connect(int port) {
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
  std::fprintf(stderr, "store_session_fuzz: cannot connect to the store on port %d: %s\n", port,
               std::strerror(last_errno));
  std::abort();
}

// The server may refuse and close before taking every byte: a failed send just ends the input.
void SendAll(int fd, std::span<const std::byte> bytes) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    ssize_t n = send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

// Everything the server sends until it closes; the check fails if it does not close in time.
Bytes ReadUntilClosed(int fd) {
  Bytes in;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kReadBoundMs);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
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
void CheckAnswers(std::span<const std::byte> in) {
  while (in.size() >= wire::kHeaderBytes) {
    StatusOr<wire::FrameHeader> header = wire::DecodeHeader(in);
    M2N_FUZZ_CHECK(header.ok());
    const size_t frame_bytes = wire::kHeaderBytes + header->body_bytes;
    if (in.size() < frame_bytes) return;
    M2N_FUZZ_CHECK(wire::DecodeBody(header->type, in.subspan(wire::kHeaderBytes, header->body_bytes)).ok());
    in = in.subspan(frame_bytes);
  }
}

}  // namespace
}  // namespace m2n::bootstrap

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace m2n::bootstrap;
  if (size < 2) return 0;
  Bytes out;
  if (data[0] & 1) {
    m2n::StatusOr<Bytes> hello = wire::EncodeFrame(wire::Hello{kJob, data[1] % kWorld, kWorld});
    M2N_FUZZ_CHECK(hello.ok());
    out = std::move(*hello);
  }
  out.insert(out.end(), reinterpret_cast<const std::byte*>(data) + 2, reinterpret_cast<const std::byte*>(data) + size);
  const int fd = Connect(Server().port());
  SendAll(fd, out);
  shutdown(fd, SHUT_WR);
  CheckAnswers(ReadUntilClosed(fd));
  close(fd);
  return 0;
}

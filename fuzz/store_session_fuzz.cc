// Fuzzes the store server's request handling (src/bootstrap/tcp_store_server.cc) end to end: each
// input is everything one connection sends to a live server, over a real loopback socket. The
// server's own thread parses and answers; this side then closes its half and reads until the
// server closes.
//
// The first input byte picks whether the bytes go after a whole handshake of the job with its
// key (so the fuzzer reaches SET / GET / ADD / WAIT / DEAD_RANKS / GOODBYE without first finding
// the job id and the key) or bare, as a stranger's; the second picks the rank. Checked: the server
// survives (no crash, no sanitizer finding), answers only well-formed frames, and closes every
// connection once its peer has (a stall would hang here, which libFuzzer's -timeout reports). The
// server keeps its keys and dead ranks across inputs, as it would across connections; a fresh one
// starts every 2000 inputs. The handshake itself is fuzzed by store_hello_fuzz.cc.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "bootstrap/tcp_store.h"
#include "bootstrap/wire.h"
#include "fuzz/fuzz_check.h"
#include "fuzz/store_fuzz_util.h"

namespace m2n::bootstrap {
namespace {

constexpr int kWorld = 4;
constexpr char kJob[] = "fuzz-job";
constexpr char kKey[] = "fuzz-job-key-0123456789";
constexpr int kInputsPerServer = 2000;

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
    options.job_key = kKey;
    options.hello_timeout = std::chrono::milliseconds(2000);
    StatusOr<std::unique_ptr<TcpStoreServer>> started = StartTcpStoreServer(options);
    M2N_FUZZ_CHECK(started.ok());
    server = std::move(*started);
  }
  return *server;
}

// The whole handshake as `rank`; the store must accept it (the previous input's connection, if of
// the same rank, was closed and handled before that input ended).
void Join(int fd, int rank) {
  const Bytes nonce(wire::kNonceBytes, std::byte{0x17});
  std::optional<wire::Message> challenge = fuzz::SayHello(fd, kJob, rank, kWorld, kKey, nonce);
  M2N_FUZZ_CHECK(challenge && std::holds_alternative<wire::Challenge>(*challenge));
  fuzz::SendAll(
      fd, fuzz::ProofFrame(std::get<wire::Challenge>(*challenge), kJob, rank, kWorld, kKey, nonce));
  std::optional<wire::Message> ok = fuzz::ReadFrame(fd);
  M2N_FUZZ_CHECK(ok && std::holds_alternative<wire::HelloOk>(*ok));
}

}  // namespace
}  // namespace m2n::bootstrap

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace m2n::bootstrap;
  if (size < 2) return 0;
  const int fd = fuzz::Connect(Server().port());
  if (data[0] & 1) Join(fd, data[1] % kWorld);
  fuzz::SendAll(fd, std::span(reinterpret_cast<const std::byte*>(data) + 2, size - 2));
  shutdown(fd, SHUT_WR);
  fuzz::CheckAnswers(fuzz::ReadUntilClosed(fd));
  close(fd);
  return 0;
}

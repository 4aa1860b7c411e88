// Fuzzes the store's HELLO handshake with a job key (src/bootstrap/handshake.h) end to end, over a
// real loopback socket to a live keyed server. The first input byte picks how the connection
// starts: bare (the fuzzer's bytes are all it says, HELLO and PROOF included), or after a HELLO of
// the job as rank byte 1 (the fuzzer then plays the PROOF and what follows), or after a HELLO of
// another job or world size. Checked, besides the server surviving and answering only valid
// frames: a CHALLENGE always carries the store's true MAC; a HELLO not of this job gets exactly
// the generic refusal; nothing the fuzzer sends is ever accepted (no HELLO_OK: it has no key), no
// answer names the job id, and a rank that really holds the key still joins and finds no rank
// marked dead by all these strangers (checked on the first input and every 64th).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "bootstrap/tcp_store.h"
#include "bootstrap/wire.h"
#include "fuzz/fuzz_check.h"
#include "fuzz/store_fuzz_util.h"

namespace m2n::bootstrap {
namespace {

constexpr int kWorld = 4;
constexpr char kJob[] = "fuzz-hello-job";
constexpr char kKey[] = "fuzz-hello-key-0123456789";
constexpr int kInputsPerServer = 2000;
constexpr int kInputsPerRealRank = 64;

TcpStoreServer& Server() {
  static std::unique_ptr<TcpStoreServer> server;
  static int inputs = 0;
  if (server == nullptr || ++inputs > kInputsPerServer) {
    server.reset();
    inputs = 1;
    TcpStoreOptions options;
    options.host = "127.0.0.1";
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

// A rank with the key joins, sees no dead rank, and leaves cleanly.
void CheckARealRankStillJoins(int port) {
  TcpStoreOptions options;
  options.host = "127.0.0.1";
  options.port = port;
  options.rank = kWorld - 1;
  options.world_size = kWorld;
  options.job_id = kJob;
  options.job_key = kKey;
  StatusOr<std::unique_ptr<Store>> rank =
      ConnectTcpStore(options, Deadline::AfterMs(fuzz::kReadBoundMs));
  M2N_FUZZ_CHECK(rank.ok());
  StatusOr<std::vector<int>> dead = (*rank)->DeadRanks();
  M2N_FUZZ_CHECK(dead.ok() && dead->empty());
  M2N_FUZZ_CHECK((*rank)->Goodbye().ok());
}

// Starts the connection as byte 0 says; false if the server already ended it.
bool Start(int fd, uint8_t how, uint8_t rank_byte) {
  const Bytes nonce(wire::kNonceBytes, std::byte{rank_byte});
  switch (how % 3) {
    case 0:
      return true;  // bare
    case 1: {
      const int rank = rank_byte % (kWorld + 2) - 1;  // -1 and kWorld too: outside the world
      std::optional<wire::Message> answer = fuzz::SayHello(fd, kJob, rank, kWorld, kKey, nonce);
      const bool inside = rank >= 0 && rank < kWorld;
      M2N_FUZZ_CHECK(answer && std::holds_alternative<wire::Challenge>(*answer) == inside);
      return inside;
    }
    default: {
      const bool other_job = rank_byte & 1;
      std::optional<wire::Message> answer = fuzz::SayHello(
          fd, other_job ? "fuzz-other-job" : kJob, 1, other_job ? kWorld : kWorld + 1, kKey, nonce);
      M2N_FUZZ_CHECK(answer && std::holds_alternative<wire::ErrorReply>(*answer));
      M2N_FUZZ_CHECK(std::get<wire::ErrorReply>(*answer).text == kHelloRefused);
      return false;
    }
  }
}

}  // namespace
}  // namespace m2n::bootstrap

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace m2n::bootstrap;
  static int inputs = 0;
  if (size < 2) return 0;
  const int port = Server().port();
  const int fd = fuzz::Connect(port);
  if (Start(fd, data[0], data[1])) {
    fuzz::SendAll(fd, std::span(reinterpret_cast<const std::byte*>(data) + 2, size - 2));
  }
  shutdown(fd, SHUT_WR);
  for (const wire::Message& answer : fuzz::CheckAnswers(fuzz::ReadUntilClosed(fd))) {
    M2N_FUZZ_CHECK(!std::holds_alternative<wire::HelloOk>(answer));  // no key, no entry
    if (const auto* error = std::get_if<wire::ErrorReply>(&answer)) {
      M2N_FUZZ_CHECK(error->text.find(kJob) == std::string::npos);
    }
  }
  close(fd);
  if (inputs++ % kInputsPerRealRank == 0) CheckARealRankStillJoins(port);  // the first input too
  return 0;
}

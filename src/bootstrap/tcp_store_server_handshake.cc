// The store server's side of the HELLO handshake (handshake.h): challenging a HELLO of this job,
// checking a PROOF, the generic refusal of everything else, and the count of connections still in
// their handshake that bounds them. The rest of the server: tcp_store_server.cc.
#include <algorithm>
#include <span>
#include <string>
#include <utility>

#include "bootstrap/handshake.h"
#include "bootstrap/tcp_store_server.h"

namespace m2n::bootstrap {

using wire::Message;
using wire::MessageType;

// The handshake: a HELLO, then (once challenged) a PROOF; anything else ends the connection.
void StoreServer::HandleStranger(Connection& c, Message message) {
  const MessageType type = wire::TypeOf(message);
  if (!c.challenged && type == MessageType::kHello)
    return HandleHello(c, std::get<wire::Hello>(message));
  if (c.challenged && type == MessageType::kProof)
    return HandleProof(c, std::get<wire::Proof>(message));
  Refuse(c,
         FailedPreconditionError("expected " + std::string(c.challenged ? "PROOF" : "HELLO first") +
                                 ", got " + wire::MessageTypeName(type)));
}

// A HELLO of this job is challenged; any other gets the generic refusal, which names nothing of
// this job. A rank outside the world it itself declared is told so (it learns nothing new).
void StoreServer::HandleHello(Connection& c, const wire::Hello& hello) {
  if (hello.job_id != job_id_ || hello.world_size != world_size_) {
    return Refuse(c, FailedPreconditionError(kHelloRefused));
  }
  if (hello.rank < 0 || hello.rank >= world_size_) {
    return Refuse(c, InvalidArgumentError("rank " + std::to_string(hello.rank) +
                                          " is outside [0, " + std::to_string(world_size_) + ")"));
  }
  StatusOr<Bytes> nonce = NewNonce();
  if (!nonce.ok()) return Refuse(c, nonce.status());
  c.challenged = true;
  c.claimed_rank = hello.rank;
  c.rank_nonce = hello.nonce;
  c.store_nonce = std::move(*nonce);
  const Sha256Digest mac =
      HandshakeMac(HandshakeRole::kStore, std::as_bytes(std::span(job_key_)), job_id_, hello.rank,
                   world_size_, c.rank_nonce, c.store_nonce);
  Send(c, wire::Challenge{c.store_nonce, Bytes(mac.begin(), mac.end())});
}

// Only a PROOF that checks makes the connection its rank; until then its end marks nobody dead.
void StoreServer::HandleProof(Connection& c, const wire::Proof& proof) {
  const Sha256Digest expected =
      HandshakeMac(HandshakeRole::kRank, std::as_bytes(std::span(job_key_)), job_id_,
                   c.claimed_rank, world_size_, c.rank_nonce, c.store_nonce);
  if (!ConstantTimeEqual(expected, proof.mac))
    return Refuse(c, FailedPreconditionError(kHelloRefused));
  if (connected_ranks_.contains(c.claimed_rank)) {
    return Refuse(c, FailedPreconditionError(
                         "rank " + std::to_string(c.claimed_rank) +
                         " is already connected to the store (two processes with one rank?)"));
  }
  c.rank = c.claimed_rank;
  connected_ranks_.insert(c.rank);
  SetActive(c.rank, true);
  Send(c, wire::HelloOk{});
}

size_t StoreServer::CountStrangers() const {
  return static_cast<size_t>(
      std::count_if(connections_.begin(), connections_.end(),
                    [](const std::unique_ptr<Connection>& c) { return c->rank < 0; }));
}

}  // namespace m2n::bootstrap

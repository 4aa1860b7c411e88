// The store's HELLO handshake: how a rank and the store prove to each other that they hold the
// same job key without sending it, and the key's sources. Used by both halves of the TCP store.
//
//   rank  -> store  HELLO     job id, rank, world size, nonce_r (fresh, random)
//   store -> rank   CHALLENGE nonce_s (fresh), MAC(key, "m2n store" | fields | nonce_r | nonce_s)
//   rank  -> store  PROOF     MAC(key, "m2n rank"  | fields | nonce_r | nonce_s)
//   store -> rank   HELLO_OK, or ERROR and close
//
// MAC is HMAC-SHA256 (hmac.h); "fields" are the job id, rank and world size of the HELLO. The role
// label keeps one side's MAC from passing as the other's (a reflection), the fresh nonces keep an
// old exchange from being replayed, and the fields bind the proof to one rank of one job. A HELLO
// whose job id or world size differs, and a PROOF that does not check, get the same generic
// refusal (kHelloRefused), so a stranger learns neither the job id nor the world size.
// Without a key the MACs use the empty key: the exchange then checks only the job id, which a
// stranger on the same network may know; that is why a keyless store binds loopback by default.
#pragma once

#include <span>
#include <string>

#include "bootstrap/hmac.h"
#include "bootstrap/store.h"
#include "m2n/status.h"

namespace m2n::bootstrap {

enum class HandshakeRole { kStore, kRank };

// The refusal of a HELLO that is not of this job or of a PROOF that does not check.
inline constexpr char kHelloRefused[] =
    "HELLO refused: the job id, the world size or the job key differs from this store's job";

// A key shorter than this is refused: a guessable key is no key.
inline constexpr size_t kMinJobKeyBytes = 16;

// kNonceBytes from the kernel's random source (getrandom). kInternal if it fails.
StatusOr<Bytes> NewNonce();

Sha256Digest HandshakeMac(HandshakeRole role, std::span<const std::byte> key,
                          const std::string& job_id, int rank, int world_size,
                          std::span<const std::byte> rank_nonce,
                          std::span<const std::byte> store_nonce);

// The key in the file at `path`, trailing newlines dropped. Refused (kFailedPrecondition naming
// the path and the mode) if group or others may read or write the file or it is not this user's,
// and kInvalidArgument if the key is shorter than kMinJobKeyBytes.
StatusOr<std::string> ReadJobKeyFile(const std::string& path);

// kInvalidArgument naming `source` if a non-empty key is shorter than kMinJobKeyBytes.
Status CheckJobKey(const std::string& key, const std::string& source);

// Whether binding `host` reaches this host only (127.0.0.0/8, ::1, "localhost").
bool IsLoopbackHost(const std::string& host);

}  // namespace m2n::bootstrap

// SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), written here because the store's handshake
// (handshake.h) needs a keyed MAC and m2n links no crypto library. Small, portable and checked
// against the standards' test vectors (tests/bootstrap_hmac_test.cc); not tuned for speed: the
// store MACs a few hundred bytes per connection. Also the constant-time compare a MAC check needs.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace m2n::bootstrap {

inline constexpr size_t kSha256Bytes = 32;
using Sha256Digest = std::array<std::byte, kSha256Bytes>;

// An incremental SHA-256: Update any number of times, then Finish once.
class Sha256 {
 public:
  Sha256();
  void Update(std::span<const std::byte> data);
  Sha256Digest Finish();

 private:
  void Compress(const std::byte* block);

  std::array<uint32_t, 8> state_;
  std::array<std::byte, 64> block_{};
  size_t block_used_ = 0;
  uint64_t total_bytes_ = 0;
};

Sha256Digest Sha256Of(std::span<const std::byte> data);

// HMAC-SHA256 of `message` under `key` (any length; longer than a block is hashed first).
Sha256Digest HmacSha256(std::span<const std::byte> key, std::span<const std::byte> message);

// Whether a and b hold the same bytes, taking a time that depends only on their sizes, so a peer
// that guesses a MAC learns nothing from how long the refusal took.
bool ConstantTimeEqual(std::span<const std::byte> a, std::span<const std::byte> b);

}  // namespace m2n::bootstrap

// SHA-256 and HMAC-SHA256 (hmac.h), straight from FIPS 180-4 section 6.2 and RFC 2104.
#include "bootstrap/hmac.h"

#include <algorithm>
#include <cstring>

namespace m2n::bootstrap {
namespace {

// FIPS 180-4 4.2.2: the first 32 bits of the fractional parts of the cube roots of the first 64
// primes.
constexpr uint32_t kRound[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

constexpr uint32_t Rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

constexpr size_t kBlockBytes = 64;

}  // namespace

// FIPS 180-4 5.3.3: the initial hash value.
Sha256::Sha256()
    : state_{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
             0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19} {}

void Sha256::Compress(const std::byte* block) {
  uint32_t w[64];
  for (int t = 0; t < 16; ++t) {
    w[t] = std::to_integer<uint32_t>(block[4 * t]) << 24 |
           std::to_integer<uint32_t>(block[4 * t + 1]) << 16 |
           std::to_integer<uint32_t>(block[4 * t + 2]) << 8 |
           std::to_integer<uint32_t>(block[4 * t + 3]);
  }
  for (int t = 16; t < 64; ++t) {
    const uint32_t s0 = Rotr(w[t - 15], 7) ^ Rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
    const uint32_t s1 = Rotr(w[t - 2], 17) ^ Rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
    w[t] = w[t - 16] + s0 + w[t - 7] + s1;
  }
  uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3];
  uint32_t e = state_[4], f = state_[5], g = state_[6], h = state_[7];
  for (int t = 0; t < 64; ++t) {
    const uint32_t t1 =
        h + (Rotr(e, 6) ^ Rotr(e, 11) ^ Rotr(e, 25)) + ((e & f) ^ (~e & g)) + kRound[t] + w[t];
    const uint32_t t2 = (Rotr(a, 2) ^ Rotr(a, 13) ^ Rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    h = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  state_[0] += a;
  state_[1] += b;
  state_[2] += c;
  state_[3] += d;
  state_[4] += e;
  state_[5] += f;
  state_[6] += g;
  state_[7] += h;
}

void Sha256::Update(std::span<const std::byte> data) {
  total_bytes_ += data.size();
  while (!data.empty()) {
    const size_t take = std::min(kBlockBytes - block_used_, data.size());
    std::memcpy(block_.data() + block_used_, data.data(), take);
    block_used_ += take;
    data = data.subspan(take);
    if (block_used_ == kBlockBytes) {
      Compress(block_.data());
      block_used_ = 0;
    }
  }
}

// FIPS 180-4 5.1.1: a 1 bit, zeros up to 56 bytes mod 64, then the length in bits, big-endian.
Sha256Digest Sha256::Finish() {
  const uint64_t bits = total_bytes_ * 8;
  const std::byte one{0x80};
  Update(std::span<const std::byte>(&one, 1));
  const std::byte zero{0};
  while (block_used_ != kBlockBytes - 8) Update(std::span<const std::byte>(&zero, 1));
  std::byte length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<std::byte>(bits >> (56 - 8 * i));
  Update(length);
  Sha256Digest digest;
  for (int i = 0; i < 8; ++i) {
    for (int j = 0; j < 4; ++j)
      digest[4 * i + j] = static_cast<std::byte>(state_[i] >> (24 - 8 * j));
  }
  return digest;
}

Sha256Digest Sha256Of(std::span<const std::byte> data) {
  Sha256 h;
  h.Update(data);
  return h.Finish();
}

// RFC 2104: H((K ^ opad) | H((K ^ ipad) | message)), K padded (or first hashed) to one block.
Sha256Digest HmacSha256(std::span<const std::byte> key, std::span<const std::byte> message) {
  std::array<std::byte, kBlockBytes> block{};
  if (key.size() > kBlockBytes) {
    const Sha256Digest hashed = Sha256Of(key);
    std::memcpy(block.data(), hashed.data(), hashed.size());
  } else if (!key.empty()) {
    std::memcpy(block.data(), key.data(), key.size());
  }
  std::array<std::byte, kBlockBytes> pad;
  for (size_t i = 0; i < kBlockBytes; ++i) pad[i] = block[i] ^ std::byte{0x36};
  Sha256 inner;
  inner.Update(pad);
  inner.Update(message);
  const Sha256Digest inner_digest = inner.Finish();
  for (size_t i = 0; i < kBlockBytes; ++i) pad[i] = block[i] ^ std::byte{0x5c};
  Sha256 outer;
  outer.Update(pad);
  outer.Update(inner_digest);
  return outer.Finish();
}

bool ConstantTimeEqual(std::span<const std::byte> a, std::span<const std::byte> b) {
  if (a.size() != b.size()) return false;
  // Every byte is looked at, whatever differs; volatile keeps the compiler from stopping early.
  volatile uint8_t diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff = diff | std::to_integer<uint8_t>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace m2n::bootstrap

#include "pattern.h"

#include <cstring>

namespace m2n::perf {
namespace {

constexpr uint64_t kStep = 0x9E3779B97F4A7C15ull;  // odd: j -> seed + j * kStep is injective

// splitmix64's finaliser: a bijection on 64-bit words.
inline uint64_t Mix(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Cheaper than Mix (one xorshift, still a bijection): it runs once per word of every message.
inline uint64_t Word(uint64_t seed, uint64_t index) {
  const uint64_t x = seed + index * kStep;
  return x ^ (x >> 29);
}

// Bytes that differ between two words.
inline int DifferentBytes(uint64_t a, uint64_t b) {
  uint64_t diff = a ^ b;
  int count = 0;
  for (; diff != 0; diff >>= 8) count += (diff & 0xFF) != 0;
  return count;
}

}  // namespace

uint64_t PatternTag(uint32_t size_index, uint32_t phase, uint32_t iteration) {
  return (uint64_t{size_index} << 40) ^ (uint64_t{phase} << 32) ^ iteration;
}

uint64_t PatternSeed(int src_rank, int dst_rank, uint64_t tag) {
  return Mix(Mix(tag) ^ (static_cast<uint64_t>(static_cast<uint32_t>(src_rank)) << 32 |
                         static_cast<uint32_t>(dst_rank)));
}

void FillPattern(std::span<std::byte> out, uint64_t seed) {
  const size_t words = out.size() / 8;
  std::byte* p = out.data();
  for (size_t j = 0; j < words; ++j) {
    const uint64_t w = Word(seed, j);
    std::memcpy(p + j * 8, &w, 8);  // little-endian hosts only; a plain store after inlining
  }
  if (const size_t tail = out.size() % 8; tail != 0) {
    const uint64_t w = Word(seed, words);
    std::memcpy(p + words * 8, &w, tail);
  }
}

uint64_t CountWrongBytes(std::span<const std::byte> data, uint64_t seed) {
  const size_t words = data.size() / 8;
  const std::byte* p = data.data();
  uint64_t wrong = 0;
  for (size_t j = 0; j < words; ++j) {
    uint64_t got;
    std::memcpy(&got, p + j * 8, 8);
    const uint64_t want = Word(seed, j);
    if (got != want) wrong += DifferentBytes(got, want);
  }
  if (const size_t tail = data.size() % 8; tail != 0) {
    uint64_t got = 0;
    uint64_t want = Word(seed, words);
    std::memcpy(&got, p + words * 8, tail);
    want &= (~uint64_t{0}) >> (64 - 8 * tail);
    wrong += DifferentBytes(got, want);
  }
  return wrong;
}

}  // namespace m2n::perf

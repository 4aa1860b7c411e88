// Verifiable data, after nccl-tests' verifiable/: every byte is a function of (source rank,
// destination rank, tag, offset), so a receiver checks what it got without a reference copy.
//
// Word j (8 bytes, little-endian) of a message is Scramble(seed + j * kStep), seed = Seed(src, dst,
// tag). Scramble is a bijection, so two messages with different seeds differ in every word, and a
// shifted or stale message differs from the expected one nearly everywhere.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace m2n::perf {

// Distinguishes the messages of one pair: sizes, phases and iterations each get their own tag.
uint64_t PatternTag(uint32_t size_index, uint32_t phase, uint32_t iteration);

uint64_t PatternSeed(int src_rank, int dst_rank, uint64_t tag);

// Writes the pattern for (src, dst, tag) into `out`.
void FillPattern(std::span<std::byte> out, uint64_t seed);

// The number of bytes of `data` that differ from the pattern for `seed`.
uint64_t CountWrongBytes(std::span<const std::byte> data, uint64_t seed);

}  // namespace m2n::perf

// The 32-bit immediate that signals a write (RDMA imm_data carries exactly 32 bits):
//
//   bits 31..30  kind: data (a message landed in a slot) or ack (a slot was released)
//   bits 29..20  slot index, < 1024 (Options::slot_depth is capped to match)
//   bits 19..8   sequence: how many immediates of this kind this writer sent this reader before,
//                mod 4096
//   bits  7..0   check: CRC-8 of bits 31..8, started from the seed of the (writer, reader) pair
//
// The writer's rank is not carried: the transport says which peer wrote (the connection it came
// on), and the seed binds the check to that (writer, reader) pair, so an immediate that is
// corrupted (every error of up to 3 bits, 255 in 256 others) or attributed to a rank whose seed
// differs fails DecodeImmediate. The seed is never 0 (no immediate encodes to all zeros) and is
// distinct for writers fewer than 255 apart, or 256 apart, writing one reader (ImmediateSeed; what
// 8 bits cannot separate is in docs/reliability.md). The sequence lets the reader see a lost,
// duplicated or reordered immediate: a lost data immediate keeps its slot's credit at the writer,
// and a lost ACK keeps the slot, so at most slot_depth (<= 1024 < 4096) immediates can go missing
// in a row and any gap shows.
//
// The length travels beside the immediate (the verbs byte_len of the completion; the ring entry in
// emulation), so the receiver sees (sender, slot, length) for every message.
#pragma once

#include <cstdint>
#include <string>

#include "m2n/status.h"

namespace m2n::protocol {

enum class ImmKind : uint32_t { kData = 0, kAck = 1 };

inline constexpr int kMaxSlots = 1 << 10;
inline constexpr int kMaxRanks = 1 << 20;
inline constexpr uint32_t kSequenceModulus = 1u << 12;

struct Immediate {
  ImmKind kind = ImmKind::kData;
  int slot = 0;
  uint32_t sequence = 0;  // mod kSequenceModulus
};

// The encoding above, compared between ranks when a group is created (the "immediate_format" of the
// configuration fingerprint, src/group/setup.cc), so builds that encode differently refuse each
// other. 1: the seed was the CRC-8 of the two ranks (0 for some pairs, e.g. writer 0, reader 263);
// 2: the seed below.
inline constexpr int kImmediateFormat = 2;

// The CRC's initial state for the (writer, reader) pair: 1 + (writer + 2 * reader) mod 255. The
// data path computes it once per peer and runs the CRC over 3 bytes per immediate. Never 0; for
// one reader, writers that differ by less than 255 or by 256 get distinct seeds, and for one writer
// readers likewise (2 is invertible mod 255); 0 <= writer, reader < kMaxRanks.
uint8_t ImmediateSeed(int writer, int reader);

// Precondition: 0 <= slot < kMaxSlots; seed == ImmediateSeed(writer, reader). The sequence is
// taken mod kSequenceModulus.
uint32_t EncodeImmediate(const Immediate& imm, uint8_t seed);
// Rejects kinds that do not exist and a check that does not match the pair; range checks against
// the group (slot < slot_depth) and the sequence are the caller's. writer and reader name the pair
// in the error; seed == ImmediateSeed(writer, reader).
StatusOr<Immediate> DecodeImmediate(uint32_t bits, int writer, int reader, uint8_t seed);

inline uint32_t EncodeImmediate(const Immediate& imm, int writer, int reader) {
  return EncodeImmediate(imm, ImmediateSeed(writer, reader));
}
inline StatusOr<Immediate> DecodeImmediate(uint32_t bits, int writer, int reader) {
  return DecodeImmediate(bits, writer, reader, ImmediateSeed(writer, reader));
}

std::string ToString(const Immediate& imm);

}  // namespace m2n::protocol

// The 32-bit immediate that signals a write (RDMA imm_data carries exactly 32 bits):
//
//   bits 31..30  kind: data (a message landed in a slot) or ack (a slot was released)
//   bits 29..20  slot index, < 1024 (Options::slot_depth is capped to match)
//   bits 19..8   sequence: how many immediates of this kind this writer sent this reader before,
//                mod 4096
//   bits  7..0   check: CRC-8 of bits 31..8, the writer's rank and the reader's rank
//
// The writer's rank is not carried: the transport says which peer wrote (the connection it came
// on), and the check binds the immediate to that (writer, reader) pair, so an immediate that is
// corrupted (every error of up to 3 bits, 255 in 256 others) or attributed to the wrong rank fails
// DecodeImmediate. The sequence lets the reader see a lost, duplicated or reordered immediate: a
// lost data immediate keeps its slot's credit at the writer, and a lost ACK keeps the slot, so at
// most slot_depth (<= 1024 < 4096) immediates can go missing in a row and any gap shows.
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

// Precondition: 0 <= slot < kMaxSlots. The sequence is taken mod kSequenceModulus.
uint32_t EncodeImmediate(const Immediate& imm, int writer, int reader);
// Rejects kinds that do not exist and a check that does not match (writer, reader); range checks
// against the group (slot < slot_depth) and the sequence are the caller's.
StatusOr<Immediate> DecodeImmediate(uint32_t bits, int writer, int reader);

std::string ToString(const Immediate& imm);

}  // namespace m2n::protocol

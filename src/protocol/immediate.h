// The 32-bit immediate that signals a write (RDMA imm_data carries exactly 32 bits):
//
//   bits 31..30  kind: data (a message landed in a slot) or ack (a slot was released)
//   bits 29..20  slot index, < 1024 (Options::slot_depth is capped to match)
//   bits 19..0   rank of the writer, < 2^20
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

struct Immediate {
  ImmKind kind = ImmKind::kData;
  int slot = 0;
  int rank = 0;  // the writer
};

// Precondition: 0 <= slot < kMaxSlots, 0 <= rank < kMaxRanks (checked by the Group at creation).
uint32_t EncodeImmediate(const Immediate& imm);
// Rejects kinds that do not exist; range checks against the group are the caller's.
StatusOr<Immediate> DecodeImmediate(uint32_t bits);

std::string ToString(const Immediate& imm);

}  // namespace m2n::protocol

#include "protocol/immediate.h"

namespace m2n::protocol {
namespace {
constexpr uint32_t kKindShift = 30;
constexpr uint32_t kSlotShift = 20;
constexpr uint32_t kSlotMask = (1u << 10) - 1;
constexpr uint32_t kRankMask = (1u << 20) - 1;
}  // namespace

uint32_t EncodeImmediate(const Immediate& imm) {
  return (static_cast<uint32_t>(imm.kind) << kKindShift) |
         ((static_cast<uint32_t>(imm.slot) & kSlotMask) << kSlotShift) |
         (static_cast<uint32_t>(imm.rank) & kRankMask);
}

StatusOr<Immediate> DecodeImmediate(uint32_t bits) {
  uint32_t kind = bits >> kKindShift;
  if (kind > static_cast<uint32_t>(ImmKind::kAck)) {
    return DataLossError("immediate 0x" + [&] {
      char buf[9];
      snprintf(buf, sizeof buf, "%08x", bits);
      return std::string(buf);
    }() + " has unknown kind " + std::to_string(kind));
  }
  Immediate imm;
  imm.kind = static_cast<ImmKind>(kind);
  imm.slot = static_cast<int>((bits >> kSlotShift) & kSlotMask);
  imm.rank = static_cast<int>(bits & kRankMask);
  return imm;
}

std::string ToString(const Immediate& imm) {
  return std::string(imm.kind == ImmKind::kData ? "data" : "ack") + "(rank " +
         std::to_string(imm.rank) + ", slot " + std::to_string(imm.slot) + ")";
}

}  // namespace m2n::protocol

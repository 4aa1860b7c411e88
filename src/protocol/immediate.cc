#include "protocol/immediate.h"

#include <array>
#include <cstdio>

namespace m2n::protocol {
namespace {
constexpr uint32_t kKindShift = 30;
constexpr uint32_t kSlotShift = 20;
constexpr uint32_t kSequenceShift = 8;
constexpr uint32_t kSlotMask = (1u << 10) - 1;
constexpr uint32_t kSequenceMask = kSequenceModulus - 1;
constexpr uint32_t kCheckMask = 0xff;

// CRC-8 with polynomial x^8 + x^2 + x + 1 (0x07): Hamming distance 4 up to 119 data bits, and the
// (x + 1) factor catches every odd number of flipped bits. Here the data is 88 bits.
constexpr std::array<uint8_t, 256> kCrc8Table = [] {
  std::array<uint8_t, 256> table{};
  for (int i = 0; i < 256; ++i) {
    uint8_t crc = static_cast<uint8_t>(i);
    for (int bit = 0; bit < 8; ++bit)
      crc = static_cast<uint8_t>((crc & 0x80) ? (crc << 1) ^ 0x07 : crc << 1);
    table[i] = crc;
  }
  return table;
}();

uint8_t Crc8(uint8_t crc, uint32_t word, int bytes) {
  for (int b = bytes - 1; b >= 0; --b)
    crc = kCrc8Table[crc ^ static_cast<uint8_t>(word >> (8 * b))];
  return crc;
}

std::string Hex(uint32_t bits) {
  char buf[11];
  snprintf(buf, sizeof buf, "0x%08x", bits);
  return buf;
}
}  // namespace

// A CRC's initial state s ends up in the check as s * x^24 mod the polynomial, which is invertible
// (the polynomial's constant term is 1): distinct seeds give distinct checks of the same bits, and
// a non-zero seed a non-zero check of zero bits. Hence a seed in [1, 255] spread arithmetically
// rather than the CRC of the ranks, which is 0 whenever the reader's rank, as a polynomial, is a
// multiple of the CRC's (263 = 0x107) and repeats in ways no one can state.
uint8_t ImmediateSeed(int writer, int reader) {
  const uint32_t spread = static_cast<uint32_t>(writer) + 2 * static_cast<uint32_t>(reader);
  return static_cast<uint8_t>(1 + spread % 255);
}

uint32_t EncodeImmediate(const Immediate& imm, uint8_t seed) {
  const uint32_t upper =
      (static_cast<uint32_t>(imm.kind) << (kKindShift - kSequenceShift)) |
      ((static_cast<uint32_t>(imm.slot) & kSlotMask) << (kSlotShift - kSequenceShift)) |
      (imm.sequence & kSequenceMask);
  return (upper << kSequenceShift) | Crc8(seed, upper, 3);
}

StatusOr<Immediate> DecodeImmediate(uint32_t bits, int writer, int reader, uint8_t seed) {
  const uint32_t upper = bits >> kSequenceShift;
  if ((bits & kCheckMask) != Crc8(seed, upper, 3)) {
    return DataLossError("immediate " + Hex(bits) + " from rank " + std::to_string(writer) +
                         " fails its check: corrupted on the way, or not written by rank " +
                         std::to_string(writer) + " for rank " + std::to_string(reader));
  }
  const uint32_t kind = bits >> kKindShift;
  if (kind > static_cast<uint32_t>(ImmKind::kAck)) {
    return DataLossError("immediate " + Hex(bits) + " from rank " + std::to_string(writer) +
                         " has unknown kind " + std::to_string(kind));
  }
  Immediate imm;
  imm.kind = static_cast<ImmKind>(kind);
  imm.slot = static_cast<int>((bits >> kSlotShift) & kSlotMask);
  imm.sequence = upper & kSequenceMask;
  return imm;
}

std::string ToString(const Immediate& imm) {
  return std::string(imm.kind == ImmKind::kData ? "data" : "ack") + "(slot " +
         std::to_string(imm.slot) + ", sequence " + std::to_string(imm.sequence) + ")";
}

}  // namespace m2n::protocol

// The expert-parallel message format's constants, header and section offsets, shared by the host
// path (layout.h / layout.cc) and the device path (kernels.cu): plain structs and constexpr
// functions that nvcc compiles for both sides, so that both write the same bytes. layout.h draws
// the format; src/ep/README.md explains it.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define M2N_EP_HD __host__ __device__
#else
#define M2N_EP_HD
#endif

namespace m2n::ep {

inline constexpr uint32_t kMagic = 0x3150454D;  // "MEP1"
inline constexpr size_t kSectionAlign =
    64;  // rows start on a cache line (and a GPU's 128-bit loads)

enum class MessageKind : uint16_t { kDispatch = 1, kCombine = 2 };

struct Header {
  uint32_t magic = kMagic;
  uint16_t kind = 0;
  uint16_t dtype = 0;
  uint32_t config = 0;  // Format::config of the writer
  uint32_t call = 0;  // the call number, mod 2^32
  uint32_t rows = 0;
  uint32_t hidden = 0;
  uint16_t top_k = 0;
  uint16_t reserved = 0;
  uint32_t reserved2 = 0;
};
static_assert(sizeof(Header) == 32);

M2N_EP_HD constexpr size_t AlignUp(size_t n) {
  return (n + kSectionAlign - 1) / kSectionAlign * kSectionAlign;
}

// Byte offsets of a dispatch message's sections: rows tokens, each with top_k (expert, weight)
// entries and a row of row_bytes.
struct DispatchOffsets {
  size_t token = 0, expert = 0, weight = 0, x = 0, bytes = 0;
};
M2N_EP_HD constexpr DispatchOffsets DispatchSections(size_t rows, size_t top_k, size_t row_bytes) {
  DispatchOffsets o;
  o.token = sizeof(Header);
  o.expert = o.token + rows * 4;
  o.weight = o.expert + rows * top_k * 4;
  o.x = AlignUp(o.weight + rows * top_k * 4);
  o.bytes = o.x + rows * row_bytes;
  return o;
}

// A combine message: the header, then `pairs` rows of row_bytes from the first aligned offset.
M2N_EP_HD constexpr size_t CombineRowsOffset() { return AlignUp(sizeof(Header)); }
M2N_EP_HD constexpr size_t CombineBytes(size_t pairs, size_t row_bytes) {
  return CombineRowsOffset() + pairs * row_bytes;
}

}  // namespace m2n::ep

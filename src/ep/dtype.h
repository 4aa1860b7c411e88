// Element conversions of the expert-parallel layer (m2n/ep.h DataType): bf16 <-> fp32 on the host.
// The CUDA version will use __nv_bfloat16 with the same rounding (round to nearest, ties to even),
// so that both paths give the same bits.
#pragma once

#include <cstdint>
#include <cstring>

#include "m2n/ep.h"

namespace m2n::ep {

inline float BFloat16ToFloat(uint16_t value) {
  const uint32_t bits = uint32_t{value} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Round to nearest, ties to even; a NaN stays a (quiet) NaN.
inline uint16_t FloatToBFloat16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x007FFFFFu) != 0)
    return uint16_t((bits >> 16) | 0x0040u);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

// Element i of a row of `dtype` as a float.
inline float LoadElement(const std::byte* row, int i, DataType dtype) {
  if (dtype == DataType::kFloat32) {
    float f;
    std::memcpy(&f, row + size_t(i) * 4, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, row + size_t(i) * 2, 2);
  return BFloat16ToFloat(h);
}

inline void StoreElement(float value, int i, DataType dtype, std::byte* row) {
  if (dtype == DataType::kFloat32) {
    std::memcpy(row + size_t(i) * 4, &value, 4);
    return;
  }
  const uint16_t h = FloatToBFloat16(value);
  std::memcpy(row + size_t(i) * 2, &h, 2);
}

}  // namespace m2n::ep

// CRC-32C (Castagnoli), for the payload checksum option (Options::checksum): the SSE4.2 crc32
// instruction where the CPU has it, else a table. Crc32c(b, Crc32c(a)) is the CRC of a then b.
#pragma once

#include <cstddef>
#include <cstdint>

namespace m2n::protocol {

uint32_t Crc32c(const void* data, size_t length, uint32_t crc = 0);

}  // namespace m2n::protocol

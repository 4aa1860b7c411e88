// The pipeline's own messages through m2n. Every message starts with a Header; the payload
// layouts are fixed by (rows, top_k, hidden), so both sides compute the same offsets.
//
// The disaggregated pipeline moves its tokens through m2n::ExpertParallel (runtime/pipeline.h) and
// sends only finish and report messages of its own, after the run's last EP call. The dispatch and
// combine layouts below are the collocated baseline's (runtime/collocated.cc), which exchanges
// them over NCCL:
//   dispatch (one per peer per micro-batch and layer):
//     Header | int32 row[rows] | int32 expert[rows * top_k] | float weight[rows * top_k] | pad to
//     64 | float x[rows * hidden]
//   A row is one token of the micro-batch; expert[] holds the global ids of its top-k experts that
//   live on the destination (-1 for the others) and weight[] their gate weights.
//   combine (the answer to one dispatch):
//     Header | int32 row[rows] | pad to 64 | float y[rows * hidden]   (y = sum of weight *
//     expert(x))
//   finish (attention -> every expert worker): the end of the EP traffic (both sides check that
//   they agree where it ended).
//   report (both ways, after the run): a chunk of a JSON report, for rank 0's summary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "m2n/status.h"

namespace moe {

inline constexpr uint32_t kWireMagic = 0x314F454D;  // "MOE1"

enum class MessageKind : uint16_t { kDispatch = 1, kCombine = 2, kFinish = 3, kReport = 4 };

struct Header {
  uint32_t magic = kWireMagic;
  uint16_t kind = 0;
  uint16_t top_k = 0;
  uint32_t iteration = 0;
  uint16_t layer = 0;
  uint16_t micro_batch = 0;
  uint32_t rows = 0;
  uint32_t hidden = 0;
  uint64_t report_bytes = 0;  // report: the whole report's length (chunks follow in order)
  uint64_t reserved = 0;
};
static_assert(sizeof(Header) == 40);

inline constexpr size_t kPayloadAlign = 64;
inline size_t AlignUp(size_t n) { return (n + kPayloadAlign - 1) / kPayloadAlign * kPayloadAlign; }

// Byte offsets inside one message.
struct DispatchLayout {
  size_t rows = 0, experts = 0, weights = 0, x = 0, bytes = 0;
  DispatchLayout(size_t n, size_t top_k, size_t hidden) {
    rows = sizeof(Header);
    experts = rows + n * 4;
    weights = experts + n * top_k * 4;
    x = AlignUp(weights + n * top_k * 4);
    bytes = x + n * hidden * 4;
  }
};
struct CombineLayout {
  size_t rows = 0, y = 0, bytes = 0;
  CombineLayout(size_t n, size_t hidden) {
    rows = sizeof(Header);
    y = AlignUp(rows + n * 4);
    bytes = y + n * hidden * 4;
  }
};

inline Header ReadHeader(const std::byte* data) {
  Header h;
  std::memcpy(&h, data, sizeof(h));
  return h;
}

// Checks a received message's header and length against what the schedule expects; the error
// names the sender, the step and the field that differs.
m2n::Status CheckMessage(const std::byte* data, size_t length, int from_rank, MessageKind kind,
                         const Header& want);

const char* MessageKindName(uint16_t kind);

}  // namespace moe

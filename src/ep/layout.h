// The message format of the expert-parallel layer and the pure functions that write and read it
// (src/ep/README.md draws it). Every message starts with a 32-byte Header; the sections after it
// are fixed by (rows, top_k, hidden, dtype), so both sides compute the same offsets:
//
//   dispatch (attention rank -> expert rank d, one per call, rows = tokens with an expert on d):
//     Header | int32 token[rows] | int32 expert[rows * top_k] | float weight[rows * top_k] |
//     pad to 64 | x[rows * hidden] (dtype)
//     expert[] holds the global ids of the row's top-k experts that live on d, -1 for the others,
//     and weight[] their gate weights (0 for the others).
//   combine (expert rank -> attention rank, the answer to one dispatch, rows = its (row, j) pairs):
//     Header | pad to 64 | y[rows * hidden] (dtype), in pair order (routing.h)
//
// The CUDA path writes and reads the same bytes; these functions are its reference.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "ep/routing.h"
#include "ep/wire.h"
#include "m2n/ep.h"
#include "m2n/status.h"

namespace m2n::ep {

// What every message of one layer shares.
struct Format {
  DataType dtype = DataType::kBFloat16;
  int hidden = 0;
  int top_k = 0;
  uint32_t config = 0;  // fingerprint of the options both sides must agree on
  size_t row_bytes() const { return size_t(hidden) * DataTypeBytes(dtype); }
};
// The fingerprint of (num_experts, top_k, hidden, dtype, placement), for Format::config.
uint32_t OptionsFingerprint(const ExpertParallelOptions& options, const Placement& placement);

// Byte offsets inside one dispatch message of `rows` rows.
struct DispatchLayout {
  size_t token = 0, expert = 0, weight = 0, x = 0, bytes = 0;
  DispatchLayout(const Format& f, size_t rows);
};
// Byte offsets inside one combine message of `rows` (row, j) pairs.
struct CombineLayout {
  size_t y = 0, bytes = 0;
  CombineLayout(const Format& f, size_t rows);
};

// The largest message either way: a dispatch of max_tokens rows, or a combine of max_tokens x
// min(top_k, max_local_experts) pairs.
size_t SlotBytesNeeded(const Format& f, int max_tokens, int max_local_experts);

// Writes the dispatch message to expert rank d into msg; returns its length. x: [tokens, hidden];
// topk_ids, topk_weights: [tokens, top_k], as given to PlanDispatch.
size_t WriteDispatch(const Format& f, uint32_t call, const Placement& placement,
                     const DispatchPlan& plan, int d, const std::byte* x,
                     std::span<const int32_t> topk_ids, std::span<const float> topk_weights,
                     std::byte* msg);

// A received dispatch message's sections.
struct DispatchView {
  int source = -1;
  int rows = 0;
  const int32_t* token = nullptr;
  const int32_t* expert = nullptr;
  const float* weight = nullptr;
  const std::byte* x = nullptr;
};
// Checks the header (kind, format, call) and the length; errors name the sender and the field.
StatusOr<DispatchView> ReadDispatch(const Format& f, uint32_t call, int source,
                                    const std::byte* data, size_t length);

// Copies every grouped row's x out of the messages into out[rows, hidden] (grouped order).
void GatherRows(const Format& f, const ExpertGrouping& grouping,
                std::span<const DispatchView> messages, std::byte* out);

// Writes the combine message back to the sender of grouping's message m from y[rows, hidden]
// (grouped order); returns its length.
size_t WriteCombine(const Format& f, uint32_t call, const ExpertGrouping& grouping, int m,
                    const std::byte* y, std::byte* msg);
// Checks a combine message from `source` that must hold `pairs` rows; returns its y section.
StatusOr<const std::byte*> ReadCombine(const Format& f, uint32_t call, int source, int pairs,
                                       const std::byte* data, size_t length);

}  // namespace m2n::ep

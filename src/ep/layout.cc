// The expert-parallel message format: writing and checking dispatch and combine messages
// (layout.h draws the format).
#include "ep/layout.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace m2n::ep {

uint32_t OptionsFingerprint(const ExpertParallelOptions& options, const Placement& placement) {
  uint32_t h = 2166136261u;  // FNV-1a over the fields, then the placement
  auto mix = [&h](int64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= uint32_t((uint64_t(v) >> (8 * i)) & 0xFF);
      h *= 16777619u;
    }
  };
  mix(options.num_experts);
  mix(options.top_k);
  mix(options.hidden);
  mix(int(options.dtype));
  for (int d : placement.owner) mix(d);
  return h;
}

DispatchLayout::DispatchLayout(const Format& f, size_t rows) {
  const DispatchOffsets o = DispatchSections(rows, size_t(f.top_k), f.row_bytes());
  token = o.token;
  expert = o.expert;
  weight = o.weight;
  x = o.x;
  bytes = o.bytes;
}

CombineLayout::CombineLayout(const Format& f, size_t rows) {
  y = CombineRowsOffset();
  bytes = CombineBytes(rows, f.row_bytes());
}

size_t SlotBytesNeeded(const Format& f, int max_tokens, int max_local_experts) {
  const size_t pairs = size_t(max_tokens) * size_t(std::min(f.top_k, max_local_experts));
  return std::max(DispatchLayout(f, size_t(max_tokens)).bytes, CombineLayout(f, pairs).bytes);
}

namespace {

void WriteHeader(const Format& f, MessageKind kind, uint32_t call, size_t rows, std::byte* msg) {
  Header h;
  h.kind = uint16_t(kind);
  h.dtype = uint16_t(f.dtype);
  h.config = f.config;
  h.call = call;
  h.rows = uint32_t(rows);
  h.hidden = uint32_t(f.hidden);
  h.top_k = uint16_t(f.top_k);
  std::memcpy(msg, &h, sizeof h);
}

// Checks a header against what the receiver expects; *rows receives its row count.
Status CheckHeader(const Format& f, MessageKind kind, uint32_t call, int source,
                   const std::byte* data, size_t length, uint32_t* rows) {
  const char* what = kind == MessageKind::kDispatch ? "dispatch" : "combine";
  const std::string from = std::string("the ") + what + " from rank " + std::to_string(source);
  Header h;
  if (length < sizeof h) {
    return DataLossError(from + " is " + std::to_string(length) +
                         " bytes, shorter than its header");
  }
  std::memcpy(&h, data, sizeof h);
  if (h.magic != kMagic || h.kind != uint16_t(kind)) {
    return DataLossError(from + " is not an expert-parallel " + what + " message (magic " +
                         std::to_string(h.magic) + ", kind " + std::to_string(h.kind) +
                         "): does the group carry other messages?");
  }
  if (h.config != f.config || h.dtype != uint16_t(f.dtype) || h.hidden != uint32_t(f.hidden) ||
      h.top_k != uint16_t(f.top_k)) {
    return FailedPreconditionError(
        from +
        " was written with other expert-parallel options (num_experts, top_k, "
        "hidden, dtype or placement differ from this rank's)");
  }
  if (h.call != call) {
    return FailedPreconditionError(from + " is for call " + std::to_string(h.call) +
                                   ", this rank expects call " + std::to_string(call) +
                                   " (the ranks' call sequences differ)");
  }
  *rows = h.rows;
  return OkStatus();
}

}  // namespace

size_t WriteDispatch(const Format& f, uint32_t call, const Placement& placement,
                     const DispatchPlan& plan, int d, const std::byte* x,
                     std::span<const int32_t> topk_ids, std::span<const float> topk_weights,
                     std::byte* msg) {
  const size_t rows = size_t(plan.rows(d)), k = size_t(f.top_k), row_bytes = f.row_bytes();
  const DispatchLayout layout(f, rows);
  WriteHeader(f, MessageKind::kDispatch, call, rows, msg);
  const int32_t* tokens = plan.row_token.data() + plan.row_offset[size_t(d)];
  auto* expert = reinterpret_cast<int32_t*>(msg + layout.expert);
  auto* weight = reinterpret_cast<float*>(msg + layout.weight);
  if (rows > 0) std::memcpy(msg + layout.token, tokens, rows * 4);
  for (size_t r = 0; r < rows; ++r) {
    const size_t t = size_t(tokens[r]);
    for (size_t j = 0; j < k; ++j) {
      const int32_t e = topk_ids[t * k + j];
      const bool here = placement.owner[size_t(e)] == d;
      expert[r * k + j] = here ? e : -1;
      weight[r * k + j] = here ? topk_weights[t * k + j] : 0.0f;
    }
    std::memcpy(msg + layout.x + r * row_bytes, x + t * row_bytes, row_bytes);
  }
  return layout.bytes;
}

StatusOr<DispatchView> ReadDispatch(const Format& f, uint32_t call, int source,
                                    const std::byte* data, size_t length) {
  uint32_t rows = 0;
  M2N_RETURN_IF_ERROR(CheckHeader(f, MessageKind::kDispatch, call, source, data, length, &rows));
  const DispatchLayout layout(f, rows);
  if (layout.bytes != length) {
    return DataLossError("the dispatch from rank " + std::to_string(source) + " says " +
                         std::to_string(rows) + " rows (" + std::to_string(layout.bytes) +
                         " bytes) but is " + std::to_string(length) + " bytes long");
  }
  DispatchView v;
  v.source = source;
  v.rows = int(rows);
  v.token = reinterpret_cast<const int32_t*>(data + layout.token);
  v.expert = reinterpret_cast<const int32_t*>(data + layout.expert);
  v.weight = reinterpret_cast<const float*>(data + layout.weight);
  v.x = data + layout.x;
  return v;
}

void GatherRows(const Format& f, const ExpertGrouping& grouping,
                std::span<const DispatchView> messages, std::byte* out) {
  const size_t row_bytes = f.row_bytes();
  for (size_t i = 0; i < grouping.row.size(); ++i) {
    const DispatchView& m = messages[size_t(grouping.message[i])];
    std::memcpy(out + i * row_bytes, m.x + size_t(grouping.row[i]) * row_bytes, row_bytes);
  }
}

size_t WriteCombine(const Format& f, uint32_t call, const ExpertGrouping& grouping, int m,
                    const std::byte* y, std::byte* msg) {
  const size_t pairs = size_t(grouping.pair_count[size_t(m)]), row_bytes = f.row_bytes();
  const CombineLayout layout(f, pairs);
  WriteHeader(f, MessageKind::kCombine, call, pairs, msg);
  for (size_t i = 0; i < grouping.row.size(); ++i) {
    if (grouping.message[i] != m) continue;
    std::memcpy(msg + layout.y + size_t(grouping.pair[i]) * row_bytes, y + i * row_bytes,
                row_bytes);
  }
  return layout.bytes;
}

StatusOr<const std::byte*> ReadCombine(const Format& f, uint32_t call, int source, int pairs,
                                       const std::byte* data, size_t length) {
  uint32_t rows = 0;
  M2N_RETURN_IF_ERROR(CheckHeader(f, MessageKind::kCombine, call, source, data, length, &rows));
  const CombineLayout layout(f, rows);
  if (rows != uint32_t(pairs) || layout.bytes != length) {
    return DataLossError("the combine from rank " + std::to_string(source) + " holds " +
                         std::to_string(rows) + " rows in " + std::to_string(length) +
                         " bytes; this rank dispatched " + std::to_string(pairs) +
                         " (token, expert) pairs to it");
  }
  return data + layout.y;
}

}  // namespace m2n::ep

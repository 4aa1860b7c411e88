#include "runtime/wire.h"

namespace moe {

const char* MessageKindName(uint16_t kind) {
  switch (static_cast<MessageKind>(kind)) {
    case MessageKind::kDispatch:
      return "dispatch";
    case MessageKind::kCombine:
      return "combine";
    case MessageKind::kFinish:
      return "finish";
    case MessageKind::kReport:
      return "report";
  }
  return "unknown";
}

m2n::Status CheckMessage(const std::byte* data, size_t length, int from_rank, MessageKind kind,
                         const Header& want) {
  const std::string from = "message from rank " + std::to_string(from_rank);
  if (length < sizeof(Header)) {
    return m2n::DataLossError(from + " is " + std::to_string(length) +
                              " bytes, shorter than a header");
  }
  const Header h = ReadHeader(data);
  if (h.magic != kWireMagic) return m2n::DataLossError(from + " has a bad magic number");
  if (h.kind != static_cast<uint16_t>(kind)) {
    return m2n::DataLossError(from + " is a " + MessageKindName(h.kind) + " message, expected " +
                              MessageKindName(static_cast<uint16_t>(kind)));
  }
  if (kind == MessageKind::kDispatch || kind == MessageKind::kCombine) {
    if (h.iteration != want.iteration || h.layer != want.layer ||
        h.micro_batch != want.micro_batch) {
      return m2n::DataLossError(
          from + " is for iteration " + std::to_string(h.iteration) + " layer " +
          std::to_string(h.layer) + " micro-batch " + std::to_string(h.micro_batch) +
          ", expected iteration " + std::to_string(want.iteration) + " layer " +
          std::to_string(want.layer) + " micro-batch " + std::to_string(want.micro_batch));
    }
    if (h.hidden != want.hidden) {
      return m2n::DataLossError(from + " has hidden size " + std::to_string(h.hidden) +
                                ", expected " + std::to_string(want.hidden));
    }
    const size_t bytes = kind == MessageKind::kDispatch
                             ? DispatchLayout(h.rows, h.top_k, h.hidden).bytes
                             : CombineLayout(h.rows, h.hidden).bytes;
    if (bytes != length) {
      return m2n::DataLossError(from + " (" + MessageKindName(h.kind) + ", " +
                                std::to_string(h.rows) + " rows) is " + std::to_string(length) +
                                " bytes, its layout needs " + std::to_string(bytes));
    }
  }
  return m2n::OkStatus();
}

}  // namespace moe

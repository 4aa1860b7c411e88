// m2n::ExpertParallel: dispatch and combine of tokens between M attention ranks and N expert ranks,
// on top of a Group (senders = attention ranks, receivers = expert ranks).
//
//   attention rank                                   expert rank
//   Dispatch(x, topk_ids, topk_weights)  ------->    ReceiveDispatch() -> ExpertBatch: rows grouped
//     each token once per expert rank that holds        by local expert, per-expert counts, where
//     any of its top-k experts                           each row came from
//                                                    (the caller runs its experts: a grouped GEMM)
//   ReceiveCombine(out) <-------------------------   Combine(y): each expert's output rows back
//     out[t] = sum_j topk_weights[t][j] * y_{expert j}(x[t]), in token order, accumulated in fp32
//
// Every call of one side is answered by one call of the other: each Dispatch sends exactly one
// message to every expert rank (an empty one where no token goes), and each Combine one message to
// every attention rank, so a receiver always knows when a call is complete. Calls are numbered;
// every message carries its call number and a fingerprint of the options, and a mismatch (ranks
// that disagree on the options or on the call sequence) is an error naming the rank.
//
// An attention rank may have up to slot_depth Dispatch calls whose combine it has not received yet
// (micro-batches in flight); ReceiveCombine answers them in order.
//
// These calls are host-driven, on host memory, over any transport: the calling thread drives
// progress as for Group (include/m2n/group.h), and every blocking call takes a Deadline. The
// message format and the routing / layout / combine code are in src/ep/ (src/ep/README.md).
//
// Stream-ordered variants (DispatchOnStream, ReceiveDispatchOnStream, CombineOnStream,
// ReceiveCombineOnStream) work on device memory for a group with device slots
// (Options::slot_memory = kCuda) that serves the device-side API (Group::device_group(); cuda_ipc):
// same options, message format and results (bit for bit) as the host-driven calls. Each enqueues
// kernels on a stream and returns at once: the routing (per-rank counts, which token goes where,
// message lengths) is computed on the device, kernels write the messages straight into the peers'
// slots (include/m2n/device.cuh), the host never waits for the GPU, and the calls may be captured
// into a CUDA graph and replayed (the call numbers live in device memory). A group uses either the
// host-driven calls (host slots) or the stream-ordered ones (device slots).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "m2n/deadline.h"
#include "m2n/group.h"
#include "m2n/status.h"

namespace m2n {

// The element type of the token rows (x, the expert outputs y, the combined output).
enum class DataType : uint16_t {
  kFloat32 = 1,
  kBFloat16 = 2,  // the top 16 bits of an IEEE float; converted with round-to-nearest-even
};
std::string_view DataTypeName(DataType dtype);
size_t DataTypeBytes(DataType dtype);

struct ExpertParallelOptions {
  int num_experts = 0;
  int top_k = 0;  // experts per token
  int hidden = 0;  // elements per token row
  DataType dtype = DataType::kBFloat16;
  int max_tokens = 0;  // the most tokens one attention rank dispatches in one call
  // placement[e]: the global rank of the expert rank that holds expert e (any map: an expert rank
  // may hold none, a few, or experts that are not contiguous). Empty: contiguous blocks, expert e
  // on expert rank e * N / num_experts. Every rank of the group must pass the same options.
  std::vector<int> placement;
};

// Where one row of an ExpertBatch came from.
struct ExpertRowSource {
  int rank = -1;  // the attention rank that dispatched it
  int token = -1;  // its token index in that rank's Dispatch call
  int top_k_slot = -1;  // j: the row is for topk_ids[token][j]
  float weight = 0;  // topk_weights[token][j] (applied by the attention rank in ReceiveCombine)
};

// What an expert rank received in one call; valid until its next ReceiveDispatch.
struct ExpertBatch {
  uint64_t call = 0;  // the call number, from 0
  const std::byte* x = nullptr;  // [rows, hidden] rows of dtype, grouped by local expert
  int rows = 0;
  std::span<const int> experts;  // this rank's experts (global ids, ascending)
  std::span<const int> counts;  // counts[l]: rows for experts[l]
  std::span<const int> offsets;  // offsets[l]: the first row of experts[l]; offsets[L] == rows
  std::span<const ExpertRowSource> sources;  // per row
};

// What an expert rank received in one stream-ordered call (ReceiveDispatchOnStream). Every
// pointer but host_counts is device memory, valid in stream order after that call and until the
// next ReceiveDispatchOnStream; the layout and orders are ExpertBatch's.
struct DeviceExpertBatch {
  const void* x = nullptr;  // [max_rows, hidden] of dtype; rows [0, offsets[L]) hold the batch
  int max_rows = 0;  // capacity: M x max_tokens x min(top_k, L)
  std::span<const int> experts;  // host: this rank's experts (global ids, ascending); L of them
  const int* counts = nullptr;  // [L]: rows per local expert
  const int* offsets = nullptr;  // [L + 1]: first row per local expert; offsets[L] = rows
  const ExpertRowSource* sources = nullptr;  // per row
  // Pinned host memory: counts[0, L) then the row count, written by the device; readable once the
  // stream has passed this call (an event or a stream synchronize), for frameworks that want the
  // counts on the host. The GPU path itself never needs them.
  const volatile int* host_counts = nullptr;
};

class ExpertParallel {
 public:
  // The slot_bytes a Group needs for these options (the largest dispatch or combine message), so
  // that the group can be created with it. Errors as Create's for bad options.
  static StatusOr<size_t> SlotBytesNeeded(const ExpertParallelOptions& options, int num_senders,
                                          int num_receivers);

  // Checks the options against the group (kInvalidArgument naming the field: a placement that names
  // a rank that is not an expert rank, slot_bytes too small, saying the size needed), registers the
  // send buffers (host slots) or allocates the device path's buffers (device slots: the group must
  // serve Group::device_group(), and slot_bytes be a multiple of 16). Local only: it exchanges
  // nothing with the peers. `group` must outlive this object and must not carry other messages
  // while it is used.
  static StatusOr<std::unique_ptr<ExpertParallel>> Create(Group& group,
                                                          const ExpertParallelOptions& options);

  ~ExpertParallel();
  ExpertParallel(const ExpertParallel&) = delete;
  ExpertParallel& operator=(const ExpertParallel&) = delete;

  // ---- Attention rank (Group sender) ----
  // x: [tokens, hidden] of dtype; topk_ids, topk_weights: [tokens, top_k]. tokens in
  // [0, max_tokens]. Sends one message to every expert rank and returns once the payloads have
  // left this rank's buffers (x may be reused). kInvalidArgument names a bad token / expert id.
  Status Dispatch(const void* x, int tokens, std::span<const int32_t> topk_ids,
                  std::span<const float> topk_weights, Deadline deadline);
  // Waits for every expert rank's combine of the oldest Dispatch not yet combined and writes
  // out[tokens, hidden] (dtype): the top-k weighted sum per token, accumulated in fp32 in top-k
  // order (bf16 rounded once, at the end).
  Status ReceiveCombine(void* out, Deadline deadline);
  int calls_in_flight() const;  // Dispatch(OnStream) calls whose combine has not been received

  // ---- Expert rank (Group receiver) ----
  // Waits for the next call's message from every attention rank and groups their rows by local
  // expert (copied out of the slots, which go back to their senders at once).
  StatusOr<ExpertBatch> ReceiveDispatch(Deadline deadline);
  // y: [rows, hidden] of dtype, in the order of the last ExpertBatch (y[i] = expert output of row
  // i). Sends each attention rank its rows back.
  Status Combine(const void* y, Deadline deadline);

  // ---- Stream-ordered calls (device slots; see the top of this file) ----
  // Errors found on the device (an expert id out of range, a message that is not the expected
  // one) are recorded there and returned by the layer's next call (sticky: the layer is broken);
  // a device wait that gives up (a peer that does not come) is the group's kDeadlineExceeded
  // naming the peer, also at the next call. kUnimplemented when m2n was built without CUDA.
  //
  // Attention rank. x: [tokens, hidden] of dtype; topk_ids, topk_weights: [tokens, top_k]; all
  // device memory, readable until the call's work on the stream is done. tokens (a host value) in
  // [0, max_tokens]. At most slot_depth calls whose combine has not been received.
  Status DispatchOnStream(const void* x, int tokens, const int32_t* topk_ids,
                          const float* topk_weights, Stream stream);
  // The same with the token count in device memory (*device_tokens, read when the call runs on
  // the stream: a router kernel may write it). A count outside [0, max_tokens] is an error found
  // on the device (the call then sends empty messages, so every rank still completes it).
  Status DispatchOnStream(const void* x, const int* device_tokens, const int32_t* topk_ids,
                          const float* topk_weights, Stream stream);
  // out: [tokens, hidden] of dtype (device), tokens of the oldest call not yet combined (a count
  // in device memory: allocate for max_tokens, as the host does not know it): the top-k
  // weighted sum per token, fp32 accumulation in top-k order, rounded once (as ReceiveCombine).
  Status ReceiveCombineOnStream(void* out, Stream stream);
  // Expert rank: the next call's rows, grouped by local expert, into this layer's device buffers
  // (*batch says where); the slots go back to their senders in stream order.
  Status ReceiveDispatchOnStream(DeviceExpertBatch* batch, Stream stream);
  // y: [rows, hidden] of dtype (device), in the order of the last DeviceExpertBatch (rows as its
  // offsets[L]; the buffer holds at least max_rows rows' worth or the batch's rows).
  Status CombineOnStream(const void* y, Stream stream);

  struct Impl;

 private:
  explicit ExpertParallel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace m2n

// The expert-parallel layer's device path: the tables its kernels read (DeviceTables, passed by
// value) and the launchers of the four stream-ordered calls (kernels.cu). CUDA-free and C++17, so
// that nvcc (kernels.cu) and the host compiler (device_calls.cc) both read it. src/ep/README.md
// ("The device path") describes the kernels and the orders they keep.
#pragma once

#include <cstddef>
#include <cstdint>

#include "m2n/device.h"

namespace m2n::ep {

// An error found on the device. It lives in mapped pinned memory, so that the host reads it at the
// next call without a copy or a synchronisation; the first error wins (claimed in device memory),
// its fields are written before `code`.
enum DeviceErrorCode : int {
  kNoDeviceError = 0,
  kBadExpertId = 1,  // a: token, b: top-k slot j, c: the id
  kNotOurs = 2,  // a: peer rank, b: magic, c: kind
  kOtherOptions = 3,  // a: peer rank
  kWrongCall = 4,  // a: peer rank, b: its call, c: the call expected
  kBadLength = 5,  // a: peer rank, b: rows in its header, c: its length in bytes
  kForeignExpert = 6,  // a: peer rank, b: the expert id it routed here
  kWrongPairs = 7,  // a: peer rank, b: rows in its header (-1: it could not take ours), c: the
                    // pairs dispatched to it
  kBadTokenCount = 8,  // a: *device_tokens
};
struct DeviceError {
  volatile int code;
  volatile int message_kind;  // MessageKind of the message at fault (0 for the caller's input)
  volatile int a, b, c;
};

// Where one grouped row came from; the layout of m2n::ExpertRowSource (device_calls.cc checks).
struct RowSource {
  int rank, token, top_k_slot;
  float weight;
};

// Device words of a layer (DeviceTables::words).
enum DeviceWord : int {
  kDispatchCalls = 0,  // attention: dispatches sent (the next call number)
  kCombineCalls = 1,  // attention: combines received
  kExpertCalls = 2,  // expert: dispatches received
  kDispatchBlocksDone = 3,  // attention: blocks of the running dispatch done (the last advances)
  kErrorClaim = 4,  // 1 once an error was recorded
  kNumWords = 5,
};

struct DeviceTables {
  DeviceGroup group;
  int m = 0, n = 0;  // attention ranks, expert ranks
  int num_experts = 0, top_k = 0, hidden = 0, max_tokens = 0, slot_depth = 0;
  int local_experts = 0;  // L: experts of this expert rank (0 on an attention rank)
  uint16_t dtype = 0;  // DataType
  uint32_t config = 0;  // Format::config
  unsigned long long row_bytes = 0;
  const int* owner = nullptr;  // [num_experts]: the expert rank index holding expert e
  const int* local_index = nullptr;  // [num_experts]: e's index on this rank, -1 elsewhere
  DeviceError* error = nullptr;  // device address of the mapped error record
  unsigned* words = nullptr;  // [kNumWords]
  // Attention rank: one entry per call in flight (ring of slot_depth, by call number).
  int* ring_tokens = nullptr;  // [depth]
  int32_t* ring_ids = nullptr;  // [depth][max_tokens * top_k]: the call's topk_ids
  float* ring_weights = nullptr;  // [depth][max_tokens * top_k]
  int32_t* ring_pair = nullptr;  // [depth][max_tokens * top_k]: (t, j)'s row in its combine
  int32_t* ring_pair_count = nullptr;  // [depth][n]: rows of the combine from each expert rank
  int32_t* row_token = nullptr;  // [n][max_tokens]: the running dispatch's rows per expert rank
  int32_t* row_count = nullptr;  // [n]
  const std::byte** combine_y = nullptr;  // [n]: the received combines' rows (null: bad)
  // Expert rank, the last call received.
  const std::byte** msg_data = nullptr;  // [m]: each attention rank's dispatch, in its slot
  int32_t* msg_rows = nullptr;  // [m]: its rows (0 when it was refused)
  int32_t* msg_pairs = nullptr;  // [m]: its (row, j) pairs for here = rows of the combine back
  int32_t* counts_ml = nullptr;  // [m][L]: rows per (attention rank, local expert)
  int32_t* row_of = nullptr;  // [max_rows]: a grouped row's row in its message
  std::byte* grouped_x = nullptr;  // [max_rows][row_bytes]
  RowSource* sources = nullptr;  // [max_rows]
  int32_t* counts = nullptr;  // [L]
  int32_t* offsets = nullptr;  // [L + 1]
  int32_t* combine_row = nullptr;  // [m][max_tokens * min(top_k, L)]: grouped row of pair p
  int* host_counts = nullptr;  // device address of the mapped [L + 1] (counts, then rows)
  int max_rows = 0, max_pairs = 0;  // max_pairs: pairs per message
  // Received messages, to release: per peer (m on an expert rank, n on an attention rank).
  int* recv_slot = nullptr;
  unsigned long long* recv_generation = nullptr;
  int* recv_ok = nullptr;
};

// Each launcher enqueues a call's kernels on `stream` (a cudaStream_t) and returns the launch's
// cudaError_t (0: cudaSuccess).
// device_tokens: null, or where the token count is (then `tokens` is ignored).
int LaunchDispatch(const DeviceTables& t, const void* x, int tokens, const int* device_tokens,
                   const int32_t* topk_ids, const float* topk_weights, void* stream);
int LaunchReceiveDispatch(const DeviceTables& t, void* stream);
int LaunchCombine(const DeviceTables& t, const void* y, void* stream);
// tokens: the call's count where the host knows it, else max_tokens (sizes the grid only).
int LaunchReceiveCombine(const DeviceTables& t, void* out, int tokens, void* stream);

}  // namespace m2n::ep

// The kernels of the expert-parallel layer's stream-ordered calls (device_kernels.h declares their
// launchers; src/ep/README.md, "The device path", draws them). They write and read the message
// format of wire.h in the orders of routing.h, with dtype.h's rounding and no FMA contraction in
// the weighted sum, so that the device path's bytes and results equal the host path's bit for bit.
// Orders come from block scans in index order, never from the order in which atomics land.
#include <cuda_runtime.h>

#include "ep/device_kernels.h"
#include "ep/wire.h"
#include "m2n/device.cuh"

namespace m2n::ep {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxBlocksPerPeer = 16;
constexpr uint16_t kFloat32 = 1;  // DataType::kFloat32 (ep.h is C++20; this file is not)

// ---- Helpers ----

__device__ void RecordError(const DeviceTables& t, int code, int kind, int a, int b, int c) {
  if (atomicCAS(t.words + kErrorClaim, 0u, 1u) != 0u) return;
  t.error->message_kind = kind;
  t.error->a = a;
  t.error->b = b;
  t.error->c = c;
  __threadfence_system();  // the host reads the fields once it sees the code
  t.error->code = code;
}

// Copies one row with the lanes of a warp: 16-byte words where both ends and the length allow.
__device__ void CopyRowWarp(std::byte* dst, const std::byte* src, unsigned long long bytes) {
  const unsigned lane = threadIdx.x & 31;
  const auto bits =
      reinterpret_cast<unsigned long long>(dst) | reinterpret_cast<unsigned long long>(src) | bytes;
  if ((bits & 15) == 0) {
    auto* d = reinterpret_cast<uint4*>(dst);
    const auto* s = reinterpret_cast<const uint4*>(src);
    for (unsigned long long i = lane; i < bytes / 16; i += 32) d[i] = s[i];
  } else if ((bits & 3) == 0) {
    auto* d = reinterpret_cast<unsigned*>(dst);
    const auto* s = reinterpret_cast<const unsigned*>(src);
    for (unsigned long long i = lane; i < bytes / 4; i += 32) d[i] = s[i];
  } else {
    for (unsigned long long i = lane; i < bytes; i += 32) dst[i] = src[i];
  }
}

__device__ float LoadElement(const std::byte* row, int i, uint16_t dtype) {
  if (dtype == kFloat32) return reinterpret_cast<const float*>(row)[i];
  const unsigned h = reinterpret_cast<const unsigned short*>(row)[i];
  return __uint_as_float(h << 16);
}

// dtype.h's FloatToBFloat16: round to nearest, ties to even; a NaN stays a quiet NaN.
__device__ void StoreElement(float value, int i, uint16_t dtype, std::byte* row) {
  if (dtype == kFloat32) {
    reinterpret_cast<float*>(row)[i] = value;
    return;
  }
  unsigned bits = __float_as_uint(value);
  if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x007FFFFFu) != 0) {
    bits = (bits >> 16) | 0x0040u;
  } else {
    bits = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  }
  reinterpret_cast<unsigned short*>(row)[i] = static_cast<unsigned short>(bits);
}

// Exclusive scan of v over the block, in thread order; *total receives the block's sum. Every
// thread calls it (it holds barriers).
__device__ int2 BlockExclusiveScan(int2 v, int2* total) {
  __shared__ int2 warp_sums[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  int2 inclusive = v;
  for (int o = 1; o < 32; o <<= 1) {
    const int x = __shfl_up_sync(0xffffffffu, inclusive.x, o);
    const int y = __shfl_up_sync(0xffffffffu, inclusive.y, o);
    if (lane >= o) inclusive = make_int2(inclusive.x + x, inclusive.y + y);
  }
  __syncthreads();  // warp_sums may still be read by an earlier call
  if (lane == 31) warp_sums[warp] = inclusive;
  __syncthreads();
  int2 before = make_int2(0, 0), all = make_int2(0, 0);
  for (int w = 0; w < warps; ++w) {
    const int2 s = warp_sums[w];
    if (w < warp) before = make_int2(before.x + s.x, before.y + s.y);
    all = make_int2(all.x + s.x, all.y + s.y);
  }
  *total = all;
  return make_int2(before.x + inclusive.x - v.x, before.y + inclusive.y - v.y);
}

__device__ void WriteHeader(const DeviceTables& t, MessageKind kind, unsigned call, int rows,
                            std::byte* msg) {
  Header h;
  h.kind = static_cast<uint16_t>(kind);
  h.dtype = t.dtype;
  h.config = t.config;
  h.call = call;
  h.rows = static_cast<uint32_t>(rows);
  h.hidden = static_cast<uint32_t>(t.hidden);
  h.top_k = static_cast<uint16_t>(t.top_k);
  *reinterpret_cast<Header*>(msg) = h;
}

// layout.cc's CheckHeader on the device, one thread: the message's rows, or -1 when it is not the
// expected one (recorded when `record`). `pairs`: the rows a combine must hold (-1: a dispatch).
__device__ int CheckHeader(const DeviceTables& t, const device::ReceivedMessage& msg,
                           MessageKind kind, unsigned call, int peer, bool record, int pairs) {
  const int k = static_cast<int>(kind);
  auto fail = [&](int code, int b, int c) {
    if (record) RecordError(t, code, k, peer, b, c);
    return -1;
  };
  if (msg.length < sizeof(Header)) return fail(kBadLength, 0, static_cast<int>(msg.length));
  const Header h = *reinterpret_cast<const Header*>(msg.data);
  if (h.magic != kMagic || h.kind != k) return fail(kNotOurs, int(h.magic), h.kind);
  if (h.config != t.config || h.dtype != t.dtype || h.hidden != unsigned(t.hidden) ||
      h.top_k != unsigned(t.top_k)) {
    return fail(kOtherOptions, 0, 0);
  }
  if (h.call != call) return fail(kWrongCall, int(h.call), int(call));
  const int rows = static_cast<int>(h.rows);
  if (kind == MessageKind::kCombine && rows != pairs) return fail(kWrongPairs, rows, pairs);
  const unsigned long long bytes =
      kind == MessageKind::kDispatch ? DispatchSections(h.rows, size_t(t.top_k), t.row_bytes).bytes
                                     : CombineBytes(h.rows, t.row_bytes);
  if (h.rows > unsigned(t.max_tokens) * (kind == MessageKind::kDispatch ? 1u : unsigned(t.top_k)) ||
      bytes != msg.length) {
    return fail(kBadLength, rows, static_cast<int>(msg.length));
  }
  return rows;
}

__device__ bool ValidExpert(const DeviceTables& t, int e) { return e >= 0 && e < t.num_experts; }

// ---- Attention rank: dispatch ----

// Block d: which tokens go to expert rank d (a scan in token order: PlanDispatch's rows) and
// where each (t, j) with its expert on d will be in d's combine; block 0 also keeps the call's
// ids, weights and token count for ReceiveCombine.
__global__ void PlanDispatchKernel(DeviceTables t, int tokens, const int* device_tokens,
                                   const int32_t* ids, const float* weights) {
  const int d = blockIdx.x, k = t.top_k;
  if (device_tokens != nullptr) {
    tokens = *device_tokens;
    if (tokens < 0 || tokens > t.max_tokens) {
      if (d == 0 && threadIdx.x == 0) RecordError(t, kBadTokenCount, 0, tokens, 0, 0);
      tokens = 0;
    }
  }
  const int ring = static_cast<int>(t.words[kDispatchCalls] % unsigned(t.slot_depth));
  const size_t per_call = size_t(t.max_tokens) * size_t(k);
  int32_t* pair = t.ring_pair + size_t(ring) * per_call;
  if (d == 0) {
    for (int i = threadIdx.x; i < tokens * k; i += blockDim.x) {
      t.ring_ids[size_t(ring) * per_call + i] = ids[i];
      t.ring_weights[size_t(ring) * per_call + i] = weights[i];
    }
    if (threadIdx.x == 0) t.ring_tokens[ring] = tokens;
  }
  int rows = 0, pairs = 0;
  for (int start = 0; start < tokens; start += blockDim.x) {
    const int token = start + static_cast<int>(threadIdx.x);
    int here = 0;
    for (int j = 0; token < tokens && j < k; ++j) {
      const int e = ids[token * k + j];
      if (!ValidExpert(t, e)) {
        if (d == 0) RecordError(t, kBadExpertId, 0, token, j, e);
      } else if (t.owner[e] == d) {
        ++here;
      }
    }
    int2 total;
    const int2 before = BlockExclusiveScan(make_int2(here > 0, here), &total);
    if (here > 0) {
      t.row_token[size_t(d) * t.max_tokens + rows + before.x] = token;
      int p = pairs + before.y;
      for (int j = 0; j < k; ++j) {
        const int e = ids[token * k + j];
        if (ValidExpert(t, e) && t.owner[e] == d) pair[token * k + j] = p++;
      }
    }
    rows += total.x;
    pairs += total.y;
  }
  if (threadIdx.x == 0) {
    t.row_count[d] = rows;
    t.ring_pair_count[ring * t.n + d] = pairs;
  }
}

// Blocks (d, b): take expert rank d's slot, write the dispatch message straight into it (block 0
// the header, tokens, ids and weights; every block a share of the rows), publish once all are
// done. The last block of the grid advances the call number.
__global__ void SendDispatchKernel(DeviceTables t, const std::byte* x, const int32_t* ids,
                                   const float* weights) {
  const int d = blockIdx.x, k = t.top_k;
  const device::SendSlot s = device::BeginSendBlock(t.group, d);
  if (s.ok) {
    const int rows = t.row_count[d];
    const int32_t* row_token = t.row_token + size_t(d) * t.max_tokens;
    const DispatchOffsets o = DispatchSections(size_t(rows), size_t(k), t.row_bytes);
    if (blockIdx.y == 0) {
      if (threadIdx.x == 0)
        WriteHeader(t, MessageKind::kDispatch, t.words[kDispatchCalls], rows, s.data);
      auto* token = reinterpret_cast<int32_t*>(s.data + o.token);
      auto* expert = reinterpret_cast<int32_t*>(s.data + o.expert);
      auto* weight = reinterpret_cast<float*>(s.data + o.weight);
      for (int r = threadIdx.x; r < rows; r += blockDim.x) token[r] = row_token[r];
      for (int i = threadIdx.x; i < rows * k; i += blockDim.x) {
        const int at = row_token[i / k] * k + i % k, e = ids[at];
        const bool here = ValidExpert(t, e) && t.owner[e] == d;
        expert[i] = here ? e : -1;
        weight[i] = here ? weights[at] : 0.0f;
      }
    }
    const int warps = static_cast<int>(gridDim.y) * kWarps;
    for (int r = static_cast<int>(blockIdx.y) * kWarps + threadIdx.x / 32; r < rows; r += warps) {
      CopyRowWarp(s.data + o.x + size_t(r) * t.row_bytes, x + size_t(row_token[r]) * t.row_bytes,
                  t.row_bytes);
    }
    device::EndSendBlock(t.group, s, static_cast<unsigned>(o.bytes), gridDim.y);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();  // this block's reads of the call number come before the advance
    if (atomicAdd(t.words + kDispatchBlocksDone, 1u) == gridDim.x * gridDim.y - 1) {
      t.words[kDispatchBlocksDone] = 0;
      t.words[kDispatchCalls] += 1;
    }
  }
}

// ---- Expert rank: receive dispatch ----

// Blocks (a, l): wait for attention rank a's message; count its rows for local expert l (and, in
// block l = 0, check its header and count its (row, j) pairs for this rank).
__global__ void CountDispatchKernel(DeviceTables t) {
  const int a = blockIdx.x, l = blockIdx.y, k = t.top_k;
  const device::ReceivedMessage msg = device::WaitReceiveBlock(t.group, a);
  __shared__ int checked_rows;
  if (threadIdx.x == 0) {
    checked_rows =
        msg.ok ? CheckHeader(t, msg, MessageKind::kDispatch, t.words[kExpertCalls], a, l == 0, -1)
               : -1;
  }
  __syncthreads();
  const int rows = checked_rows > 0 ? checked_rows : 0;
  const auto* expert = reinterpret_cast<const int32_t*>(
      msg.data + DispatchSections(size_t(rows), size_t(k), t.row_bytes).expert);
  int mine = 0, valid = 0;
  for (int i = threadIdx.x; i < rows * k; i += blockDim.x) {
    const int e = expert[i];
    if (e == -1) continue;
    if (!ValidExpert(t, e) || t.local_index[e] < 0) {
      if (l == 0) RecordError(t, kForeignExpert, int(MessageKind::kDispatch), a, e, 0);
      continue;
    }
    ++valid;
    if (t.local_index[e] == l) ++mine;
  }
  int2 total;
  BlockExclusiveScan(make_int2(mine, valid), &total);
  if (threadIdx.x != 0) return;
  if (l < t.local_experts) t.counts_ml[a * t.local_experts + l] = total.x;
  if (l == 0) {
    t.msg_data[a] = msg.data;
    t.msg_rows[a] = rows;
    // -1: this call's dispatch from rank a could not be taken (the wait gave up, or the message
    // failed its checks, recorded here): the combine back says so instead of carrying no rows.
    t.msg_pairs[a] = !msg.ok || checked_rows < 0 ? -1
                     : total.y < t.max_pairs     ? total.y
                                                 : t.max_pairs;
    t.recv_slot[a] = msg.slot;
    t.recv_generation[a] = msg.generation;
    t.recv_ok[a] = msg.ok ? 1 : 0;
  }
}

// One thread of block (0, l): counts[l], offsets[l] (and offsets[L]), their host copy.
__device__ void WriteCounts(const DeviceTables& t, int l) {
  const int L = t.local_experts;
  int before = 0, count = 0, total = 0;
  for (int l2 = 0; l2 < L; ++l2) {
    for (int a = 0; a < t.m; ++a) {
      const int v = t.counts_ml[a * L + l2];
      total += v;
      if (l2 < l) before += v;
      if (l2 == l) count += v;
    }
  }
  if (l < L) {
    t.counts[l] = count;
    t.offsets[l] = before;
    t.host_counts[l] = count;
  }
  if (l == (L > 0 ? L - 1 : 0)) {
    t.offsets[L] = total;
    t.host_counts[L] = total;
  }
}

// Blocks (a, l): the rows of attention rank a's message for local expert l go to grouped rows
// [base, base + count) in message order (rows, then j), with their sources and their place in the
// combine back to a; then the block copies their x out of the slot.
__global__ void GroupRowsKernel(DeviceTables t) {
  const int a = blockIdx.x, l = blockIdx.y, k = t.top_k, L = t.local_experts;
  __shared__ int base, count;
  if (threadIdx.x == 0) {
    if (a == 0) WriteCounts(t, l);
    int b = 0;
    for (int l2 = 0; l2 < l; ++l2)
      for (int a2 = 0; a2 < t.m; ++a2) b += t.counts_ml[a2 * L + l2];
    for (int a2 = 0; a2 < a && l < L; ++a2) b += t.counts_ml[a2 * L + l];
    base = b;
    count = l < L ? t.counts_ml[a * L + l] : 0;
  }
  __syncthreads();
  if (l >= L) return;
  const int rows = t.msg_rows[a];
  const std::byte* data = t.msg_data[a];
  const DispatchOffsets o = DispatchSections(size_t(rows), size_t(k), t.row_bytes);
  const auto* token = reinterpret_cast<const int32_t*>(data + o.token);
  const auto* expert = reinterpret_cast<const int32_t*>(data + o.expert);
  const auto* weight = reinterpret_cast<const float*>(data + o.weight);
  int mine_before = 0, valid_before = 0;
  for (int start = 0; start < rows * k; start += blockDim.x) {
    const int i = start + static_cast<int>(threadIdx.x);
    const int e = i < rows * k ? expert[i] : -1;
    const bool valid = ValidExpert(t, e) && t.local_index[e] >= 0;
    const bool match = valid && t.local_index[e] == l;
    int2 total;
    const int2 before = BlockExclusiveScan(make_int2(match, valid), &total);
    const int g = base + mine_before + before.x, p = valid_before + before.y;
    if (match && (g >= t.max_rows || p >= t.max_pairs)) {
      RecordError(t, kWrongPairs, int(MessageKind::kDispatch), a, p + 1, t.max_pairs);
    } else if (match) {
      const int r = i / k;
      t.sources[g] = RowSource{a, token[r], i % k, weight[i]};
      t.row_of[g] = r;
      t.combine_row[size_t(a) * t.max_pairs + p] = g;
    }
    mine_before += total.x;
    valid_before += total.y;
  }
  __syncthreads();  // row_of is written
  for (int q = threadIdx.x / 32; q < count && base + q < t.max_rows; q += kWarps) {
    const int g = base + q;
    CopyRowWarp(t.grouped_x + size_t(g) * t.row_bytes,
                data + o.x + size_t(t.row_of[g]) * t.row_bytes, t.row_bytes);
  }
}

// One block: hands the messages of the call back to their senders (in stream order, after every
// kernel that read them) and advances the call counter `word`.
__global__ void ReleaseKernel(DeviceTables t, int peers, int word) {
  for (int p = threadIdx.x; p < peers; p += blockDim.x) {
    device::ReceivedMessage msg;
    msg.ok = t.recv_ok[p] != 0;
    msg.peer_index = p;
    msg.slot = t.recv_slot[p];
    msg.generation = t.recv_generation[p];
    device::Release(t.group, msg);
  }
  if (threadIdx.x == 0) t.words[word] += 1;
}

// ---- Expert rank: combine ----

// Blocks (a, b): take attention rank a's slot and write its rows back in pair order.
__global__ void SendCombineKernel(DeviceTables t, const std::byte* y) {
  const int a = blockIdx.x;
  const device::SendSlot s = device::BeginSendBlock(t.group, a);
  if (!s.ok) return;
  // pairs -1 (the dispatch could not be taken) goes out as rows 0xffffffff and no rows: the
  // attention rank names it (kWrongPairs with b = -1) rather than a plain count mismatch.
  const int pairs = t.msg_pairs[a] < 0 ? 0 : t.msg_pairs[a];
  if (blockIdx.y == 0 && threadIdx.x == 0)
    WriteHeader(t, MessageKind::kCombine, t.words[kExpertCalls] - 1, t.msg_pairs[a], s.data);
  const int warps = static_cast<int>(gridDim.y) * kWarps;
  for (int p = static_cast<int>(blockIdx.y) * kWarps + threadIdx.x / 32; p < pairs; p += warps) {
    const int g = t.combine_row[size_t(a) * t.max_pairs + p];
    CopyRowWarp(s.data + CombineRowsOffset() + size_t(p) * t.row_bytes, y + size_t(g) * t.row_bytes,
                t.row_bytes);
  }
  device::EndSendBlock(t.group, s, static_cast<unsigned>(CombineBytes(pairs, t.row_bytes)),
                       gridDim.y);
}

// ---- Attention rank: receive combine ----

// Block d: wait for expert rank d's combine of the oldest call in flight and check it.
__global__ void WaitCombineKernel(DeviceTables t) {
  const int d = blockIdx.x;
  const device::ReceivedMessage msg = device::WaitReceiveBlock(t.group, d);
  if (threadIdx.x != 0) return;
  const unsigned call = t.words[kCombineCalls];
  const int ring = static_cast<int>(call % unsigned(t.slot_depth));
  const int pairs = t.ring_pair_count[ring * t.n + d];
  const int rows =
      msg.ok ? CheckHeader(t, msg, MessageKind::kCombine, call, t.m + d, true, pairs) : -1;
  t.combine_y[d] = rows >= 0 ? msg.data + CombineRowsOffset() : nullptr;
  t.recv_slot[d] = msg.slot;
  t.recv_generation[d] = msg.generation;
  t.recv_ok[d] = msg.ok ? 1 : 0;
}

// out[t] = sum over j in order of weight * y(t, j): fp32, no contraction (the host's operations),
// rounded once.
__global__ void WeightedSumKernel(DeviceTables t, std::byte* out) {
  const unsigned call = t.words[kCombineCalls];
  const int ring = static_cast<int>(call % unsigned(t.slot_depth)), k = t.top_k;
  const size_t per_call = size_t(t.max_tokens) * size_t(k);
  const int tokens = t.ring_tokens[ring];
  const int32_t* ids = t.ring_ids + ring * per_call;
  const float* weights = t.ring_weights + ring * per_call;
  const int32_t* pair = t.ring_pair + ring * per_call;
  for (int token = blockIdx.x; token < tokens; token += gridDim.x) {
    for (int i = threadIdx.x; i < t.hidden; i += blockDim.x) {
      float sum = 0.0f;
      for (int j = 0; j < k; ++j) {
        const int at = token * k + j, e = ids[at];
        if (!ValidExpert(t, e)) continue;
        const std::byte* y = t.combine_y[t.owner[e]];
        if (y == nullptr) continue;
        const float v = LoadElement(y + size_t(pair[at]) * t.row_bytes, i, t.dtype);
        sum = __fadd_rn(sum, __fmul_rn(weights[at], v));
      }
      StoreElement(sum, i, t.dtype, out + size_t(token) * t.row_bytes);
    }
  }
}

int BlocksPerPeer(unsigned long long bytes) {
  const unsigned long long blocks = (bytes + 32767) / 32768;  // about 32 KB of rows a block
  return blocks < 1 ? 1 : blocks > kMaxBlocksPerPeer ? kMaxBlocksPerPeer : int(blocks);
}

int LastError() { return static_cast<int>(cudaGetLastError()); }

}  // namespace

int LaunchDispatch(const DeviceTables& t, const void* x, int tokens, const int* device_tokens,
                   const int32_t* topk_ids, const float* topk_weights, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  PlanDispatchKernel<<<t.n, kThreads, 0, s>>>(t, tokens, device_tokens, topk_ids, topk_weights);
  if (int e = LastError()) return e;
  const dim3 grid(t.n, BlocksPerPeer(t.row_bytes * t.max_tokens));
  SendDispatchKernel<<<grid, kThreads, 0, s>>>(t, static_cast<const std::byte*>(x), topk_ids,
                                               topk_weights);
  return LastError();
}

int LaunchReceiveDispatch(const DeviceTables& t, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(t.m, t.local_experts > 0 ? t.local_experts : 1);
  CountDispatchKernel<<<grid, kThreads, 0, s>>>(t);
  if (int e = LastError()) return e;
  GroupRowsKernel<<<grid, kThreads, 0, s>>>(t);
  if (int e = LastError()) return e;
  ReleaseKernel<<<1, 32, 0, s>>>(t, t.m, kExpertCalls);
  return LastError();
}

int LaunchCombine(const DeviceTables& t, const void* y, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(t.m, BlocksPerPeer(t.row_bytes * t.max_pairs));
  SendCombineKernel<<<grid, kThreads, 0, s>>>(t, static_cast<const std::byte*>(y));
  return LastError();
}

int LaunchReceiveCombine(const DeviceTables& t, void* out, int tokens, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  WaitCombineKernel<<<t.n, 32, 0, s>>>(t);
  if (int e = LastError()) return e;
  const int blocks = tokens < 1 ? 1 : tokens > 1024 ? 1024 : tokens;
  WeightedSumKernel<<<blocks, kThreads, 0, s>>>(t, static_cast<std::byte*>(out));
  if (int e = LastError()) return e;
  ReleaseKernel<<<1, 32, 0, s>>>(t, t.n, kCombineCalls);
  return LastError();
}

}  // namespace m2n::ep

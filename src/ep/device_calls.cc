// The stream-ordered calls of m2n::ExpertParallel (ep.h): the device buffers a layer allocates at
// Create (so that the calls allocate nothing and can be captured into a CUDA graph), the checks of
// each call on the host, and the errors the kernels (kernels.cu) recorded on the device, read at
// the next call. Compiled only when CUDA is found; no_cuda.cc stands in otherwise.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

#include "ep/device_kernels.h"
#include "ep/layer.h"

namespace m2n {
namespace ep {

static_assert(sizeof(RowSource) == sizeof(ExpertRowSource) &&
              offsetof(RowSource, token) == offsetof(ExpertRowSource, token) &&
              offsetof(RowSource, top_k_slot) == offsetof(ExpertRowSource, top_k_slot) &&
              offsetof(RowSource, weight) == offsetof(ExpertRowSource, weight));

struct DeviceLayer {
  DeviceTables tables;
  std::vector<void*> device_memory;  // cudaMalloc'd, freed with the layer
  std::vector<void*> host_memory;  // cudaHostAlloc'd (mapped), freed with the layer
  DeviceError* error = nullptr;  // host address of tables.error
  int* host_counts = nullptr;  // host address of tables.host_counts
  std::vector<int> experts;  // expert rank: its experts, ascending
  bool combine_due = false;  // expert rank: a batch was received and not combined
  uint32_t received = 0;  // expert rank: calls received (as the host enqueued them), for messages

  DeviceLayer() = default;
  DeviceLayer(const DeviceLayer&) = delete;
  DeviceLayer& operator=(const DeviceLayer&) = delete;
  ~DeviceLayer() {
    for (void* p : device_memory) cudaFree(p);
    for (void* p : host_memory) cudaFreeHost(p);
  }
};

namespace {

Status CudaFailed(const std::string& what, cudaError_t e) {
  return InternalError(what + ": " + cudaGetErrorString(e));
}

// count zeroed elements of device memory (at least one, so that every table has an address).
template <typename T>
Status Allocate(DeviceLayer& layer, size_t count, T** out) {
  const size_t bytes = std::max<size_t>(count, 1) * sizeof(T);
  void* p = nullptr;
  if (cudaError_t e = cudaMalloc(&p, bytes); e != cudaSuccess)
    return CudaFailed("cudaMalloc(" + std::to_string(bytes) + ")", e);
  layer.device_memory.push_back(p);
  if (cudaError_t e = cudaMemset(p, 0, bytes); e != cudaSuccess) return CudaFailed("cudaMemset", e);
  *out = static_cast<T*>(p);
  return OkStatus();
}

template <typename T>
Status Upload(DeviceLayer& layer, const std::vector<T>& values, const T** out) {
  T* p = nullptr;
  M2N_RETURN_IF_ERROR(Allocate(layer, values.size(), &p));
  if (cudaError_t e =
          cudaMemcpy(p, values.data(), values.size() * sizeof(T), cudaMemcpyHostToDevice);
      e != cudaSuccess) {
    return CudaFailed("cudaMemcpy", e);
  }
  *out = p;
  return OkStatus();
}

// Zeroed pinned host memory mapped into the device: *host and its device address *device.
template <typename T>
Status AllocateMapped(DeviceLayer& layer, size_t count, T** host, T** device) {
  void* p = nullptr;
  const size_t bytes = std::max<size_t>(count, 1) * sizeof(T);
  if (cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocMapped); e != cudaSuccess)
    return CudaFailed("cudaHostAlloc", e);
  layer.host_memory.push_back(p);
  std::memset(p, 0, bytes);
  void* d = nullptr;
  if (cudaError_t e = cudaHostGetDevicePointer(&d, p, 0); e != cudaSuccess)
    return CudaFailed("cudaHostGetDevicePointer", e);
  *host = static_cast<T*>(p);
  *device = static_cast<T*>(d);
  return OkStatus();
}

// The constants and the placement tables of the layer.
Status FillConstants(const ExpertParallel::Impl& impl, const DeviceGroup& group,
                     DeviceLayer& layer) {
  DeviceTables& t = layer.tables;
  const ExpertParallelOptions& o = impl.options;
  const Placement& p = impl.layer.placement;
  t.group = group;
  t.m = p.num_senders;
  t.n = p.num_receivers;
  t.num_experts = o.num_experts;
  t.top_k = o.top_k;
  t.hidden = o.hidden;
  t.max_tokens = o.max_tokens;
  t.slot_depth = group.slot_depth;
  t.dtype = uint16_t(o.dtype);
  t.config = impl.layer.format.config;
  t.row_bytes = impl.layer.format.row_bytes();
  std::vector<int> local(p.owner.size(), -1);
  if (!impl.attention) {
    layer.experts = p.experts_of[size_t(impl.receiver)];
    t.local_experts = int(layer.experts.size());
    for (size_t e = 0; e < local.size(); ++e)
      if (p.owner[e] == impl.receiver) local[e] = p.local_index[e];
  }
  M2N_RETURN_IF_ERROR(Upload(layer, p.owner, &t.owner));
  return Upload(layer, local, &t.local_index);
}

Status AllocateAttention(DeviceLayer& layer) {
  DeviceTables& t = layer.tables;
  const size_t depth = size_t(t.slot_depth), per_call = size_t(t.max_tokens) * size_t(t.top_k);
  const size_t n = size_t(t.n);
  M2N_RETURN_IF_ERROR(Allocate(layer, depth, &t.ring_tokens));
  M2N_RETURN_IF_ERROR(Allocate(layer, depth * per_call, &t.ring_ids));
  M2N_RETURN_IF_ERROR(Allocate(layer, depth * per_call, &t.ring_weights));
  M2N_RETURN_IF_ERROR(Allocate(layer, depth * per_call, &t.ring_pair));
  M2N_RETURN_IF_ERROR(Allocate(layer, depth * n, &t.ring_pair_count));
  M2N_RETURN_IF_ERROR(Allocate(layer, n * size_t(t.max_tokens), &t.row_token));
  M2N_RETURN_IF_ERROR(Allocate(layer, n, &t.row_count));
  M2N_RETURN_IF_ERROR(Allocate(layer, n, &t.combine_y));
  M2N_RETURN_IF_ERROR(Allocate(layer, n, &t.recv_slot));
  M2N_RETURN_IF_ERROR(Allocate(layer, n, &t.recv_generation));
  return Allocate(layer, n, &t.recv_ok);
}

Status AllocateExpert(DeviceLayer& layer) {
  DeviceTables& t = layer.tables;
  const size_t m = size_t(t.m), L = size_t(t.local_experts);
  t.max_pairs = t.max_tokens * std::min(t.top_k, t.local_experts);
  t.max_rows = t.m * t.max_pairs;
  const size_t rows = size_t(t.max_rows);
  M2N_RETURN_IF_ERROR(Allocate(layer, m, &t.msg_data));
  M2N_RETURN_IF_ERROR(Allocate(layer, m, &t.msg_rows));
  M2N_RETURN_IF_ERROR(Allocate(layer, m, &t.msg_pairs));
  M2N_RETURN_IF_ERROR(Allocate(layer, m * L, &t.counts_ml));
  M2N_RETURN_IF_ERROR(Allocate(layer, rows, &t.row_of));
  M2N_RETURN_IF_ERROR(Allocate(layer, rows * t.row_bytes, &t.grouped_x));
  M2N_RETURN_IF_ERROR(Allocate(layer, rows, &t.sources));
  M2N_RETURN_IF_ERROR(Allocate(layer, L, &t.counts));
  M2N_RETURN_IF_ERROR(Allocate(layer, L + 1, &t.offsets));
  M2N_RETURN_IF_ERROR(Allocate(layer, m * size_t(t.max_pairs), &t.combine_row));
  M2N_RETURN_IF_ERROR(Allocate(layer, m, &t.recv_slot));
  M2N_RETURN_IF_ERROR(Allocate(layer, m, &t.recv_generation));
  M2N_RETURN_IF_ERROR(Allocate(layer, m, &t.recv_ok));
  return AllocateMapped(layer, L + 1, &layer.host_counts, &t.host_counts);
}

}  // namespace

Status CreateDeviceLayer(ExpertParallel::Impl& impl) {
  auto group = impl.group.device_group();
  if (!group.ok()) {
    return group.status().WithContext(
        impl.me() + ": the stream-ordered expert-parallel calls send through the device-side API");
  }
  if (group->slot_bytes % 16 != 0) {
    return InvalidArgumentError(impl.me() +
                                ": the stream-ordered expert-parallel calls need "
                                "Options::slot_bytes a multiple of 16 (rows are copied in 16-byte "
                                "words); it is " +
                                std::to_string(group->slot_bytes));
  }
  auto layer = std::make_shared<DeviceLayer>();
  const Status made = [&]() -> Status {
    M2N_RETURN_IF_ERROR(FillConstants(impl, *group, *layer));
    DeviceTables& t = layer->tables;
    M2N_RETURN_IF_ERROR(Allocate(*layer, kNumWords, &t.words));
    M2N_RETURN_IF_ERROR(AllocateMapped(*layer, 1, &layer->error, &t.error));
    M2N_RETURN_IF_ERROR(impl.attention ? AllocateAttention(*layer) : AllocateExpert(*layer));
    // The zeroing (cudaMemset) and the constants' copies (cudaMemcpy from pageable memory) are on
    // the default stream and may still be running when these return; the calls' kernels run on
    // the caller's streams, which may be non-blocking (no implicit order with the default stream).
    // Without this wait a first call could read the tables before they are zero (cudaMalloc hands
    // back the memory of a layer just freed, with its counters): once at creation, never per call.
    if (cudaError_t e = cudaStreamSynchronize(nullptr); e != cudaSuccess)
      return CudaFailed("cudaStreamSynchronize (the tables' zeroing and copies)", e);
    return OkStatus();
  }();
  if (!made.ok()) return made.WithContext(impl.me() + ": allocating the device path's buffers");
  impl.device = std::move(layer);
  return OkStatus();
}

}  // namespace ep

namespace {

// An error the kernels recorded, as the host path words it, with `call` (the call that reads it)
// in front.
Status DeviceErrorStatus(const ExpertParallel::Impl& impl, const char* call,
                         const ep::DeviceError& e) {
  const std::string me = impl.me() + ": " + call + ": an earlier call found on the device: ";
  const std::string from = std::string("the ") + (e.message_kind == 1 ? "dispatch" : "combine") +
                           " from rank " + std::to_string(e.a);
  switch (e.code) {
    case ep::kBadExpertId:
      return InvalidArgumentError(me + "DispatchOnStream: topk_ids[" + std::to_string(e.a) + "][" +
                                  std::to_string(e.b) + "] = " + std::to_string(e.c) +
                                  " is not an expert id in [0, " +
                                  std::to_string(impl.options.num_experts) + ")");
    case ep::kNotOurs:
      return DataLossError(me + from + " is not an expert-parallel message (magic " +
                           std::to_string(unsigned(e.b)) + ", kind " + std::to_string(e.c) + ")");
    case ep::kOtherOptions:
      return FailedPreconditionError(me + from +
                                     " was written with other expert-parallel "
                                     "options");
    case ep::kWrongCall:
      return FailedPreconditionError(me + from + " is for call " + std::to_string(e.b) +
                                     ", this rank expected call " + std::to_string(e.c));
    case ep::kForeignExpert:
      return DataLossError(me + from + " routes a row to expert " + std::to_string(e.b) +
                           ", which this rank does not hold");
    case ep::kBadTokenCount:
      return InvalidArgumentError(me + "DispatchOnStream: *device_tokens = " + std::to_string(e.a) +
                                  "; this layer takes 0 to max_tokens = " +
                                  std::to_string(impl.options.max_tokens) + " per call");
    case ep::kWrongPairs:
      if (e.b == -1) {
        return DataLossError(me + from +
                             " says that rank could not take this rank's dispatch of the call "
                             "(the message failed its checks there): that rank's own error says "
                             "which");
      }
      return DataLossError(me + from + " holds " + std::to_string(e.b) +
                           " (token, expert) pairs, expected " + std::to_string(e.c));
    default:
      return DataLossError(me + from + " says " + std::to_string(e.b) + " rows but is " +
                           std::to_string(e.c) + " bytes long");
  }
}

// The first error the kernels recorded (sticky), else the group's (a device wait that gave up).
Status CheckDevice(ExpertParallel::Impl& impl, const char* call, Stream stream) {
  const ep::DeviceError& e = *impl.device->error;
  if (e.code != ep::kNoDeviceError) return DeviceErrorStatus(impl, call, e);
  // The group's own device error (a wait that gave up). Not while the stream is being captured:
  // a capture is no time for the group's host-side progress.
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &capturing) == cudaSuccess &&
      capturing != cudaStreamCaptureStatusNone) {
    return OkStatus();
  }
  Status group = impl.group.Progress();
  if (!group.ok()) return group.WithContext(impl.me() + ": " + call);
  return OkStatus();
}

// Where a pointer lives: kInvalidArgument unless it is device (or managed) memory.
Status CheckDevicePointer(const ExpertParallel::Impl& impl, const char* call, const char* name,
                          const void* p) {
  const std::string what = impl.me() + ": " + call + ": " + name;
  if (p == nullptr) return InvalidArgumentError(what + " is null; it must be device memory");
  cudaPointerAttributes a{};
  if (cudaError_t e = cudaPointerGetAttributes(&a, p); e != cudaSuccess) {
    cudaGetLastError();  // a failed query leaves no error behind
    return InvalidArgumentError(what + ": cudaPointerGetAttributes: " + cudaGetErrorString(e));
  }
  if (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged) return OkStatus();
  return InvalidArgumentError(what + " (a host address) must be device memory");
}

Status Launched(const ExpertParallel::Impl& impl, const char* call, int error) {
  if (error == 0) return OkStatus();
  return ep::CudaFailed(impl.me() + ": " + call + ": launching its kernels",
                        static_cast<cudaError_t>(error));
}

// The common checks of every stream-ordered call.
Status Begin(ExpertParallel::Impl& impl, const char* call, bool attention_call, Stream stream) {
  if (impl.attention != attention_call) return impl.WrongSide(call, attention_call);
  M2N_RETURN_IF_ERROR(impl.CheckPath(call, true));
  return CheckDevice(impl, call, stream);
}

// Both DispatchOnStream: the count is `tokens`, or *device_tokens when that is not null.
Status DispatchOnDevice(ExpertParallel::Impl& impl, const void* x, int tokens,
                        const int* device_tokens, const int32_t* topk_ids,
                        const float* topk_weights, Stream stream) {
  constexpr const char* kCall = "DispatchOnStream";
  M2N_RETURN_IF_ERROR(Begin(impl, kCall, true, stream));
  ep::DeviceLayer& d = *impl.device;
  if (device_tokens == nullptr && (tokens < 0 || tokens > impl.options.max_tokens)) {
    return InvalidArgumentError(impl.me() + ": " + kCall + " of " + std::to_string(tokens) +
                                " tokens; this layer takes 0 to max_tokens = " +
                                std::to_string(impl.options.max_tokens) + " per call");
  }
  if (int(impl.device_in_flight.size()) >= d.tables.slot_depth) {
    return FailedPreconditionError(impl.me() + ": " + kCall + ": " +
                                   std::to_string(d.tables.slot_depth) +
                                   " calls are in flight (slot_depth); receive the oldest one's "
                                   "combine first");
  }
  if (device_tokens != nullptr) {
    M2N_RETURN_IF_ERROR(CheckDevicePointer(impl, kCall, "device_tokens", device_tokens));
    tokens = impl.options.max_tokens;  // what the pointers must hold room for
  }
  if (tokens > 0) {
    M2N_RETURN_IF_ERROR(CheckDevicePointer(impl, kCall, "x", x));
    M2N_RETURN_IF_ERROR(CheckDevicePointer(impl, kCall, "topk_ids", topk_ids));
    M2N_RETURN_IF_ERROR(CheckDevicePointer(impl, kCall, "topk_weights", topk_weights));
  }
  M2N_RETURN_IF_ERROR(Launched(
      impl, kCall,
      ep::LaunchDispatch(d.tables, x, tokens, device_tokens, topk_ids, topk_weights, stream)));
  impl.device_in_flight.push_back(tokens);
  return OkStatus();
}

}  // namespace

Status ExpertParallel::DispatchOnStream(const void* x, int tokens, const int32_t* topk_ids,
                                        const float* topk_weights, Stream stream) {
  return DispatchOnDevice(*impl_, x, tokens, nullptr, topk_ids, topk_weights, stream);
}

Status ExpertParallel::DispatchOnStream(const void* x, const int* device_tokens,
                                        const int32_t* topk_ids, const float* topk_weights,
                                        Stream stream) {
  if (device_tokens == nullptr) {
    return InvalidArgumentError(impl_->me() + ": DispatchOnStream: device_tokens is null");
  }
  return DispatchOnDevice(*impl_, x, 0, device_tokens, topk_ids, topk_weights, stream);
}

Status ExpertParallel::ReceiveCombineOnStream(void* out, Stream stream) {
  Impl& impl = *impl_;
  constexpr const char* kCall = "ReceiveCombineOnStream";
  M2N_RETURN_IF_ERROR(Begin(impl, kCall, true, stream));
  ep::DeviceLayer& d = *impl.device;
  if (impl.device_in_flight.empty()) {
    return FailedPreconditionError(impl.me() + ": " + kCall +
                                   ": no DispatchOnStream is waiting for its combine");
  }
  const int tokens = impl.device_in_flight.front();
  if (tokens > 0) M2N_RETURN_IF_ERROR(CheckDevicePointer(impl, kCall, "out", out));
  M2N_RETURN_IF_ERROR(
      Launched(impl, kCall, ep::LaunchReceiveCombine(d.tables, out, tokens, stream)));
  impl.device_in_flight.pop_front();
  return OkStatus();
}

Status ExpertParallel::ReceiveDispatchOnStream(DeviceExpertBatch* batch, Stream stream) {
  Impl& impl = *impl_;
  constexpr const char* kCall = "ReceiveDispatchOnStream";
  M2N_RETURN_IF_ERROR(Begin(impl, kCall, false, stream));
  ep::DeviceLayer& d = *impl.device;
  if (batch == nullptr) return InvalidArgumentError(impl.me() + ": " + kCall + ": batch is null");
  if (d.combine_due) {
    return FailedPreconditionError(impl.me() + ": " + kCall + ": call " +
                                   std::to_string(d.received - 1) +
                                   " has not been combined; call CombineOnStream first");
  }
  M2N_RETURN_IF_ERROR(Launched(impl, kCall, ep::LaunchReceiveDispatch(d.tables, stream)));
  const ep::DeviceTables& t = d.tables;
  batch->x = t.grouped_x;
  batch->max_rows = t.max_rows;
  batch->experts = d.experts;
  batch->counts = t.counts;
  batch->offsets = t.offsets;
  batch->sources = reinterpret_cast<const ExpertRowSource*>(t.sources);
  batch->host_counts = d.host_counts;
  d.combine_due = true;
  ++d.received;
  return OkStatus();
}

Status ExpertParallel::CombineOnStream(const void* y, Stream stream) {
  Impl& impl = *impl_;
  constexpr const char* kCall = "CombineOnStream";
  M2N_RETURN_IF_ERROR(Begin(impl, kCall, false, stream));
  ep::DeviceLayer& d = *impl.device;
  if (!d.combine_due) {
    return FailedPreconditionError(impl.me() + ": " + kCall +
                                   ": no received dispatch is waiting for its combine");
  }
  if (d.tables.max_rows > 0) M2N_RETURN_IF_ERROR(CheckDevicePointer(impl, kCall, "y", y));
  M2N_RETURN_IF_ERROR(Launched(impl, kCall, ep::LaunchCombine(d.tables, y, stream)));
  d.combine_due = false;
  return OkStatus();
}

}  // namespace m2n

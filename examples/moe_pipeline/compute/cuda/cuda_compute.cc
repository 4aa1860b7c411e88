#include "compute/cuda/cuda_compute.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "compute/cuda/graphs.h"
#include "compute/cuda/kernels.h"
#include "model/safetensors.h"

namespace moe::cuda {
namespace {

m2n::Status CudaError(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return m2n::OkStatus();
  int device = -1;
  (void)cudaGetDevice(&device);
  return m2n::InternalError("cuda (device " + std::to_string(device) + "): " + what + ": " +
                            cudaGetErrorString(e));
}

m2n::Status CublasError(cublasStatus_t s, const std::string& what) {
  if (s == CUBLAS_STATUS_SUCCESS) return m2n::OkStatus();
  return m2n::InternalError("cuBLAS: " + what + ": " + cublasGetStatusString(s));
}

#define MOE_CUDA(expr) M2N_RETURN_IF_ERROR(CudaError((expr), #expr))
#define MOE_CUBLAS(expr) M2N_RETURN_IF_ERROR(CublasError((expr), #expr))

// Device memory of `count` T, freed on destruction.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept : data_(o.data_), count_(o.count_) {
    o.data_ = nullptr;
    o.count_ = 0;
  }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(count_, o.count_);
    return *this;
  }
  ~DeviceArray() {
    if (data_ != nullptr) (void)cudaFree(data_);
  }
  m2n::Status Allocate(size_t count, const char* what) {
    if (data_ != nullptr) (void)cudaFree(data_);
    data_ = nullptr;
    count_ = count;
    if (count == 0) return m2n::OkStatus();
    return CudaError(
        cudaMalloc(reinterpret_cast<void**>(&data_), count * sizeof(T)),
        std::string("cudaMalloc of ") + std::to_string(count * sizeof(T)) + " bytes for " + what);
  }
  T* get() const { return data_; }
  size_t count() const { return count_; }

 private:
  T* data_ = nullptr;
  size_t count_ = 0;
};

using Bf16Array = DeviceArray<uint16_t>;

// Pinned host memory of `count` T (device-to-host copies that need no host wait), freed on
// destruction.
template <typename T>
class PinnedArray {
 public:
  PinnedArray() = default;
  PinnedArray(const PinnedArray&) = delete;
  PinnedArray& operator=(const PinnedArray&) = delete;
  ~PinnedArray() {
    if (data_ != nullptr) (void)cudaFreeHost(data_);
  }
  m2n::Status Allocate(size_t count, const char* what) {
    if (data_ != nullptr) (void)cudaFreeHost(data_);
    data_ = nullptr;
    if (count == 0) return m2n::OkStatus();
    void* p = nullptr;
    M2N_RETURN_IF_ERROR(CudaError(cudaMallocHost(&p, count * sizeof(T)),
                                  std::string("cudaMallocHost for ") + what));
    data_ = static_cast<T*>(p);
    return m2n::OkStatus();
  }
  T* get() const { return data_; }

 private:
  T* data_ = nullptr;
};

// The device, stream and cuBLAS handle of one backend object.
class Context {
 public:
  ~Context() {
    if (cublas_ != nullptr) cublasDestroy(cublas_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  m2n::Status Init(int local_rank) {
    const int count = VisibleDevices();
    if (count == 0) return m2n::FailedPreconditionError("cuda backend: no CUDA device visible");
    MOE_CUDA(cudaSetDevice(local_rank % count));
    MOE_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    MOE_CUBLAS(cublasCreate(&cublas_));
    MOE_CUBLAS(cublasSetStream(cublas_, stream_));
    return m2n::OkStatus();
  }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  m2n::Status Sync() { return CudaError(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }
  m2n::Status ToDevice(void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return m2n::OkStatus();
    return CudaError(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_),
                     "copy to the device");
  }
  m2n::Status ToHost(void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return m2n::OkStatus();
    return CudaError(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_),
                     "copy to the host");
  }
  // Rows crossing the interface: host memory, or device memory (the collocated baseline's NCCL
  // buffers); the direction is told by the pointers (unified addressing).
  m2n::Status Copy(void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return m2n::OkStatus();
    return CudaError(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_), "row copy");
  }

  // y[rows, n] (fp32) = x[rows, k] (bf16) . w[n, k]^T (bf16), fp32 accumulation. Row-major
  // y^T = w . x^T is column-major n x rows: op(A) = w (A = w^T in column-major, transposed).
  m2n::Status Gemm(const uint16_t* x, int rows, int k, const uint16_t* w, int n, float* y) {
    if (rows == 0) return m2n::OkStatus();
    const float one = 1.0f, zero = 0.0f;
    return CublasError(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, n, rows, k, &one, w,
                                    CUDA_R_16BF, k, x, CUDA_R_16BF, k, &zero, y, CUDA_R_32F, n,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                       "cublasGemmEx " + std::to_string(rows) + "x" + std::to_string(k) + " . " +
                           std::to_string(n) + "x" + std::to_string(k) + "^T");
  }

 private:
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
};

// Loads one tensor into bf16 device memory: generated on the device when seeded, else read from
// the checkpoint (fp32 on the host), rounded on the host and copied.
class WeightLoader {
 public:
  static m2n::StatusOr<WeightLoader> Open(const WeightSource& source, Context* context) {
    WeightLoader l;
    l.seed_ = source.seed;
    l.context_ = context;
    if (!source.checkpoint.empty()) {
      M2N_ASSIGN_OR_RETURN(Checkpoint c, Checkpoint::Open(source.checkpoint));
      l.checkpoint_.emplace(std::move(c));
    }
    return l;
  }

  m2n::Status Load(const std::string& name, std::vector<int64_t> shape, Bf16Array* out) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    M2N_RETURN_IF_ERROR(out->Allocate(static_cast<size_t>(n), name.c_str()));
    if (!checkpoint_) {
      float scale = 1;
      bool is_norm = false;
      SeededParameters(name, shape, &scale, &is_norm);
      return CudaError(LaunchFillSeeded(out->get(), n, SeededKey(seed_, name), scale, is_norm,
                                        context_->stream()),
                       "seeding " + name);
    }
    std::vector<float> host(static_cast<size_t>(n));
    M2N_RETURN_IF_ERROR(checkpoint_->Read(name, shape, host));
    std::vector<uint16_t> bits(host.size());
    for (size_t i = 0; i < host.size(); ++i) bits[i] = FloatToBf16(host[i]);
    M2N_RETURN_IF_ERROR(context_->ToDevice(out->get(), bits.data(), bits.size() * 2));
    return context_->Sync();  // `bits` goes out of scope
  }

 private:
  uint64_t seed_ = 1;
  Context* context_ = nullptr;
  std::optional<Checkpoint> checkpoint_;
};

std::string LayerPrefix(int layer) { return "model.layers." + std::to_string(layer) + "."; }

class CudaAttention final : public AttentionCompute {
 public:
  CudaAttention(const ModelConfig& c, const ComputeOptions& o) : c_(c), o_(o) {}

  m2n::Status Init(const WeightSource& source) {
    M2N_RETURN_IF_ERROR(ctx_.Init(o_.local_rank));
    M2N_ASSIGN_OR_RETURN(WeightLoader w, WeightLoader::Open(source, &ctx_));
    const int64_t h = c_.hidden_size;
    M2N_RETURN_IF_ERROR(w.Load("model.embed_tokens.weight", {c_.vocab_size, h}, &embed_));
    layers_.resize(static_cast<size_t>(c_.num_hidden_layers));
    for (int l = 0; l < c_.num_hidden_layers; ++l) {
      const std::string p = LayerPrefix(l);
      Layer& L = layers_[static_cast<size_t>(l)];
      M2N_RETURN_IF_ERROR(w.Load(p + "input_layernorm.weight", {h}, &L.input_norm));
      M2N_RETURN_IF_ERROR(w.Load(p + "self_attn.q_proj.weight", {c_.q_dim(), h}, &L.wq));
      M2N_RETURN_IF_ERROR(w.Load(p + "self_attn.k_proj.weight", {c_.kv_dim(), h}, &L.wk));
      M2N_RETURN_IF_ERROR(w.Load(p + "self_attn.v_proj.weight", {c_.kv_dim(), h}, &L.wv));
      M2N_RETURN_IF_ERROR(w.Load(p + "self_attn.o_proj.weight", {h, c_.q_dim()}, &L.wo));
      M2N_RETURN_IF_ERROR(w.Load(p + "post_attention_layernorm.weight", {h}, &L.post_norm));
      M2N_RETURN_IF_ERROR(
          w.Load(p + "block_sparse_moe.gate.weight", {c_.num_local_experts, h}, &L.gate));
    }
    M2N_RETURN_IF_ERROR(w.Load("model.norm.weight", {h}, &final_norm_));
    M2N_RETURN_IF_ERROR(w.Load("lm_head.weight", {c_.vocab_size, h}, &lm_head_));

    const size_t t = static_cast<size_t>(o_.max_tokens), hs = static_cast<size_t>(h);
    mbs_.resize(static_cast<size_t>(std::max(1, o_.micro_batches)));
    for (MicroBatch& mb : mbs_) {
      M2N_RETURN_IF_ERROR(mb.residual.Allocate(t * hs, "residual"));
      M2N_RETURN_IF_ERROR(mb.moe_input.Allocate(t * hs, "experts' input"));
      M2N_RETURN_IF_ERROR(mb.tokens.Allocate(t, "tokens"));
      M2N_RETURN_IF_ERROR(mb.slots.Allocate(t, "slots"));
      M2N_RETURN_IF_ERROR(mb.positions.Allocate(t, "positions"));
    }
    M2N_RETURN_IF_ERROR(normed_.Allocate(t * hs, "normed"));
    M2N_RETURN_IF_ERROR(q_.Allocate(t * static_cast<size_t>(c_.q_dim()), "q"));
    M2N_RETURN_IF_ERROR(k_.Allocate(t * static_cast<size_t>(c_.kv_dim()), "k"));
    M2N_RETURN_IF_ERROR(v_.Allocate(t * static_cast<size_t>(c_.kv_dim()), "v"));
    M2N_RETURN_IF_ERROR(attn_.Allocate(t * static_cast<size_t>(c_.q_dim()), "attention output"));
    M2N_RETURN_IF_ERROR(out_.Allocate(t * hs, "o-proj output"));
    M2N_RETURN_IF_ERROR(
        gate_.Allocate(t * static_cast<size_t>(c_.num_local_experts), "gate logits"));
    M2N_RETURN_IF_ERROR(
        top_index_.Allocate(t * static_cast<size_t>(c_.num_experts_per_tok), "top-k"));
    M2N_RETURN_IF_ERROR(
        top_weight_.Allocate(t * static_cast<size_t>(c_.num_experts_per_tok), "top-k weights"));
    M2N_RETURN_IF_ERROR(rows_.Allocate(t, "rows"));
    M2N_RETURN_IF_ERROR(staging_.Allocate(t * hs, "staging"));
    M2N_RETURN_IF_ERROR(logits_.Allocate(t * static_cast<size_t>(c_.vocab_size), "logits"));
    const size_t cache = static_cast<size_t>(o_.kv_slots) *
                         static_cast<size_t>(c_.num_hidden_layers) *
                         static_cast<size_t>(o_.max_context) * static_cast<size_t>(c_.kv_dim());
    M2N_RETURN_IF_ERROR(k_cache_.Allocate(cache, "KV cache (keys)"));
    M2N_RETURN_IF_ERROR(v_cache_.Allocate(cache, "KV cache (values)"));
    return ctx_.Sync();
  }

  std::string name() const override {
    return "cuda (bf16 weights and KV cache, cuBLAS, fp32 accumulation)";
  }

  m2n::Status Begin(int mb, std::span<const TokenRef> tokens) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    if (static_cast<int>(tokens.size()) > o_.max_tokens) {
      return m2n::InvalidArgumentError("micro-batch of " + std::to_string(tokens.size()) +
                                       " tokens exceeds max_tokens");
    }
    MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    m.rows = static_cast<int>(tokens.size());
    std::vector<int32_t> token(tokens.size()), slot(tokens.size()), position(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) {
      const TokenRef& t = tokens[i];
      if (t.token < 0 || t.token >= c_.vocab_size || t.kv_slot < 0 || t.kv_slot >= o_.kv_slots ||
          t.position < 0 || t.position >= o_.max_context) {
        return m2n::InvalidArgumentError("token " + std::to_string(i) + " is out of range");
      }
      token[i] = t.token;
      slot[i] = t.kv_slot;
      position[i] = t.position;
    }
    M2N_RETURN_IF_ERROR(ctx_.ToDevice(m.tokens.get(), token.data(), token.size() * 4));
    M2N_RETURN_IF_ERROR(ctx_.ToDevice(m.slots.get(), slot.data(), slot.size() * 4));
    M2N_RETURN_IF_ERROR(ctx_.ToDevice(m.positions.get(), position.data(), position.size() * 4));
    MOE_CUDA(LaunchEmbed(m.tokens.get(), m.rows, embed_.get(), c_.hidden_size, m.residual.get(),
                         ctx_.stream()));
    return ctx_.Sync();  // the host vectors go out of scope
  }

  m2n::Status AttentionAndGate(int mb, int layer, Routing* routing) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    M2N_RETURN_IF_ERROR(EnqueueLayer(mb, layer, top_index_.get(), top_weight_.get()));
    const int n = mbs_[static_cast<size_t>(mb)].rows, k = c_.num_experts_per_tok;
    routing->top_k = k;
    routing->expert.resize(static_cast<size_t>(n) * k);
    routing->weight.resize(static_cast<size_t>(n) * k);
    std::vector<int32_t> index(routing->expert.size());
    M2N_RETURN_IF_ERROR(ctx_.ToHost(index.data(), top_index_.get(), index.size() * 4));
    M2N_RETURN_IF_ERROR(
        ctx_.ToHost(routing->weight.data(), top_weight_.get(), routing->weight.size() * 4));
    M2N_RETURN_IF_ERROR(ctx_.Sync());
    for (size_t i = 0; i < index.size(); ++i) routing->expert[i] = index[i];
    return m2n::OkStatus();
  }

  // ---- Device path (compute.h) ----
  m2n::Status AttentionAndGateOnDevice(int mb, int layer, DeviceDispatch* out) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    if (layer < 0 || layer >= c_.num_hidden_layers)
      return m2n::InvalidArgumentError("layer out of range");
    M2N_RETURN_IF_ERROR(Lanes());
    const MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    Lane& lane = *lanes_[static_cast<size_t>(mb)];
    // The layer and, for the check, the routing's copy into pinned memory (read after the
    // iteration): as a CUDA graph where this shape came before (graphs.h).
    const size_t pairs = static_cast<size_t>(m.rows) * c_.num_experts_per_tok;
    const size_t at = static_cast<size_t>(layer) * lane.pairs_per_layer;
    lane.routed_rows[static_cast<size_t>(layer)] = m.rows;
    auto enqueue = [&]() -> m2n::Status {
      M2N_RETURN_IF_ERROR(EnqueueLayer(mb, layer, lane.top_index.get(), lane.top_weight.get()));
      M2N_RETURN_IF_ERROR(ctx_.ToHost(lane.host_index.get() + at, lane.top_index.get(), pairs * 4));
      return ctx_.ToHost(lane.host_weight.get() + at, lane.top_weight.get(), pairs * 4);
    };
    if (o_.cuda_graphs && m.rows > 0) {
      M2N_RETURN_IF_ERROR(graphs_.Run({mb, layer, m.rows}, ctx_.stream(), enqueue));
    } else {
      M2N_RETURN_IF_ERROR(enqueue());
    }
    MOE_CUDA(cudaEventRecord(lane.gate_done, ctx_.stream()));
    MOE_CUDA(cudaStreamWaitEvent(lane.stream, lane.gate_done, 0));
    return DeviceLane(mb, out);
  }

  m2n::Status DeviceLane(int mb, DeviceDispatch* out) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    M2N_RETURN_IF_ERROR(Lanes());
    Lane& lane = *lanes_[static_cast<size_t>(mb)];
    *out = {mbs_[static_cast<size_t>(mb)].moe_input.get(), lane.top_index.get(),
            lane.top_weight.get(), lane.combined.get(), lane.stream};
    return m2n::OkStatus();
  }

  m2n::Status BeforeEpCall(int mb, bool dispatch) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    M2N_RETURN_IF_ERROR(Lanes());
    const int last = dispatch ? last_dispatch_ : last_combine_;
    if (last < 0 || last == mb) return m2n::OkStatus();  // none yet, or this stream's own
    const Lane& before = *lanes_[static_cast<size_t>(last)];
    MOE_CUDA(cudaStreamWaitEvent(lanes_[static_cast<size_t>(mb)]->stream,
                                 dispatch ? before.dispatched : before.combined_in, 0));
    return m2n::OkStatus();
  }

  m2n::Status AfterEpCall(int mb, bool dispatch) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    M2N_RETURN_IF_ERROR(Lanes());
    const Lane& lane = *lanes_[static_cast<size_t>(mb)];
    MOE_CUDA(cudaEventRecord(dispatch ? lane.dispatched : lane.combined_in, lane.stream));
    (dispatch ? last_dispatch_ : last_combine_) = mb;
    return m2n::OkStatus();
  }

  m2n::Status AddCombinedOnDevice(int mb, int tokens) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    M2N_RETURN_IF_ERROR(Lanes());
    const MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    if (tokens < 0 || tokens > m.rows)
      return m2n::InvalidArgumentError("combined tokens outside the micro-batch");
    Lane& lane = *lanes_[static_cast<size_t>(mb)];
    MOE_CUDA(cudaEventRecord(lane.combine_done, lane.stream));
    MOE_CUDA(cudaStreamWaitEvent(ctx_.stream(), lane.combine_done, 0));
    if (tokens == 0) return m2n::OkStatus();
    MOE_CUDA(LaunchAdd(m.residual.get(), lane.combined.get(), int64_t{tokens} * c_.hidden_size,
                       ctx_.stream()));
    return m2n::OkStatus();
  }

  m2n::Status SyncDevice() override { return ctx_.Sync(); }

  m2n::Status RoutingOnHost(int mb, int layer, Routing* routing) override {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    M2N_RETURN_IF_ERROR(Lanes());
    if (layer < 0 || layer >= c_.num_hidden_layers)
      return m2n::InvalidArgumentError("layer out of range");
    M2N_RETURN_IF_ERROR(ctx_.Sync());
    const Lane& lane = *lanes_[static_cast<size_t>(mb)];
    const int k = c_.num_experts_per_tok;
    const size_t pairs = static_cast<size_t>(lane.routed_rows[static_cast<size_t>(layer)]) * k;
    const size_t at = static_cast<size_t>(layer) * lane.pairs_per_layer;
    routing->top_k = k;
    routing->expert.assign(lane.host_index.get() + at, lane.host_index.get() + at + pairs);
    routing->weight.assign(lane.host_weight.get() + at, lane.host_weight.get() + at + pairs);
    return m2n::OkStatus();
  }

  m2n::Status GatherRows(int mb, std::span<const int32_t> rows, float* dst) override {
    M2N_RETURN_IF_ERROR(CheckRows(mb, rows));
    const MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    const int n = static_cast<int>(rows.size()), h = c_.hidden_size;
    M2N_RETURN_IF_ERROR(ctx_.ToDevice(rows_.get(), rows.data(), rows.size() * 4));
    MOE_CUDA(LaunchGatherRows(m.moe_input.get(), rows_.get(), n, h, staging_.get(), ctx_.stream()));
    M2N_RETURN_IF_ERROR(ctx_.Copy(dst, staging_.get(), rows.size() * static_cast<size_t>(h) * 4));
    return ctx_.Sync();
  }

  m2n::Status ScatterAddRows(int mb, std::span<const int32_t> rows, const float* src) override {
    M2N_RETURN_IF_ERROR(CheckRows(mb, rows));
    MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    const int n = static_cast<int>(rows.size()), h = c_.hidden_size;
    M2N_RETURN_IF_ERROR(ctx_.ToDevice(rows_.get(), rows.data(), rows.size() * 4));
    M2N_RETURN_IF_ERROR(ctx_.Copy(staging_.get(), src, rows.size() * static_cast<size_t>(h) * 4));
    MOE_CUDA(LaunchScatterAddRows(m.residual.get(), rows_.get(), nullptr, n, h, staging_.get(),
                                  ctx_.stream()));
    return ctx_.Sync();  // `src` is an m2n slot, released after this returns
  }

  m2n::Status Logits(int mb, std::span<const int32_t> rows, float* out) override {
    M2N_RETURN_IF_ERROR(CheckRows(mb, rows));
    const MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    const int n = static_cast<int>(rows.size()), h = c_.hidden_size;
    cudaStream_t s = ctx_.stream();
    M2N_RETURN_IF_ERROR(ctx_.ToDevice(rows_.get(), rows.data(), rows.size() * 4));
    MOE_CUDA(LaunchGatherRows(m.residual.get(), rows_.get(), n, h, staging_.get(), s));
    MOE_CUDA(LaunchRmsNorm(staging_.get(), n, h, final_norm_.get(),
                           static_cast<float>(c_.rms_norm_eps), normed_.get(), nullptr, s));
    M2N_RETURN_IF_ERROR(
        ctx_.Gemm(normed_.get(), n, h, lm_head_.get(), c_.vocab_size, logits_.get()));
    M2N_RETURN_IF_ERROR(
        ctx_.ToHost(out, logits_.get(), rows.size() * static_cast<size_t>(c_.vocab_size) * 4));
    return ctx_.Sync();
  }

 private:
  struct Layer {
    Bf16Array input_norm, wq, wk, wv, wo, post_norm, gate;
  };
  struct MicroBatch {
    int rows = 0;
    DeviceArray<float> residual, moe_input;
    DeviceArray<int32_t> tokens, slots, positions;
  };

  // Layer `layer` of micro-batch mb up to the experts, enqueued on the compute stream; the top-k
  // into top_index / top_weight ([rows, top_k], device).
  m2n::Status EnqueueLayer(int mb, int layer, int32_t* top_index, float* top_weight) {
    MicroBatch& m = mbs_[static_cast<size_t>(mb)];
    const Layer& w = layers_[static_cast<size_t>(layer)];
    const int n = m.rows, h = c_.hidden_size, L = c_.num_hidden_layers;
    const float eps = static_cast<float>(c_.rms_norm_eps);
    const double log_theta = std::log(c_.rope_theta);
    cudaStream_t s = ctx_.stream();
    MOE_CUDA(
        LaunchRmsNorm(m.residual.get(), n, h, w.input_norm.get(), eps, normed_.get(), nullptr, s));
    M2N_RETURN_IF_ERROR(ctx_.Gemm(normed_.get(), n, h, w.wq.get(), c_.q_dim(), q_.get()));
    M2N_RETURN_IF_ERROR(ctx_.Gemm(normed_.get(), n, h, w.wk.get(), c_.kv_dim(), k_.get()));
    M2N_RETURN_IF_ERROR(ctx_.Gemm(normed_.get(), n, h, w.wv.get(), c_.kv_dim(), v_.get()));
    MOE_CUDA(LaunchRope(q_.get(), n, c_.num_attention_heads, c_.head_dim, m.positions.get(),
                        log_theta, s));
    MOE_CUDA(LaunchRope(k_.get(), n, c_.num_key_value_heads, c_.head_dim, m.positions.get(),
                        log_theta, s));
    MOE_CUDA(LaunchAppendKv(k_.get(), v_.get(), n, c_.kv_dim(), m.slots.get(), m.positions.get(),
                            layer, L, o_.max_context, k_cache_.get(), v_cache_.get(), s));
    MOE_CUDA(LaunchAttention(q_.get(), n, c_.num_attention_heads, c_.num_key_value_heads,
                             c_.head_dim, m.slots.get(), m.positions.get(), layer, L,
                             o_.max_context, k_cache_.get(), v_cache_.get(), attn_.get(), s));
    M2N_RETURN_IF_ERROR(ctx_.Gemm(attn_.get(), n, c_.q_dim(), w.wo.get(), h, out_.get()));
    MOE_CUDA(LaunchAdd(m.residual.get(), out_.get(), int64_t{n} * h, s));
    MOE_CUDA(LaunchRmsNorm(m.residual.get(), n, h, w.post_norm.get(), eps, normed_.get(),
                           m.moe_input.get(), s));
    M2N_RETURN_IF_ERROR(
        ctx_.Gemm(normed_.get(), n, h, w.gate.get(), c_.num_local_experts, gate_.get()));
    const int k = c_.num_experts_per_tok;
    MOE_CUDA(LaunchGateTopK(gate_.get(), n, c_.num_local_experts, k, c_.norm_topk_prob, top_index,
                            top_weight, s));
    return m2n::OkStatus();
  }

  // A micro-batch's own stream for its EP calls (device path), with its top-k, its combine
  // buffer and the pinned host copy of its routing at every layer of the iteration.
  struct Lane {
    ~Lane() {
      if (gate_done != nullptr) (void)cudaEventDestroy(gate_done);
      if (combine_done != nullptr) (void)cudaEventDestroy(combine_done);
      if (dispatched != nullptr) (void)cudaEventDestroy(dispatched);
      if (combined_in != nullptr) (void)cudaEventDestroy(combined_in);
      if (stream != nullptr) (void)cudaStreamDestroy(stream);
    }
    cudaStream_t stream = nullptr;
    cudaEvent_t gate_done = nullptr, combine_done = nullptr;
    cudaEvent_t dispatched = nullptr, combined_in = nullptr;  // after its EP calls (BeforeEpCall)
    DeviceArray<int32_t> top_index;
    DeviceArray<float> top_weight, combined;
    size_t pairs_per_layer = 0;  // max_tokens x top_k
    PinnedArray<int32_t> host_index;  // [layer][pairs_per_layer]
    PinnedArray<float> host_weight;
    std::vector<int> routed_rows;  // [layer]: tokens of its last gate at that layer
  };

  // The lanes, made at the first device-path call (the host path never needs them).
  m2n::Status Lanes() {
    if (!lanes_.empty()) return m2n::OkStatus();
    const size_t t = static_cast<size_t>(o_.max_tokens);
    const size_t k = static_cast<size_t>(c_.num_experts_per_tok);
    const size_t layers = static_cast<size_t>(c_.num_hidden_layers);
    for (size_t i = 0; i < mbs_.size(); ++i) {
      auto lane = std::make_unique<Lane>();
      MOE_CUDA(cudaStreamCreateWithFlags(&lane->stream, cudaStreamNonBlocking));
      MOE_CUDA(cudaEventCreateWithFlags(&lane->gate_done, cudaEventDisableTiming));
      MOE_CUDA(cudaEventCreateWithFlags(&lane->combine_done, cudaEventDisableTiming));
      MOE_CUDA(cudaEventCreateWithFlags(&lane->dispatched, cudaEventDisableTiming));
      MOE_CUDA(cudaEventCreateWithFlags(&lane->combined_in, cudaEventDisableTiming));
      M2N_RETURN_IF_ERROR(lane->top_index.Allocate(std::max<size_t>(t * k, 1), "top-k"));
      M2N_RETURN_IF_ERROR(lane->top_weight.Allocate(std::max<size_t>(t * k, 1), "top-k weights"));
      M2N_RETURN_IF_ERROR(lane->combined.Allocate(
          std::max<size_t>(t, 1) * static_cast<size_t>(c_.hidden_size), "combined rows"));
      lane->pairs_per_layer = t * k;
      M2N_RETURN_IF_ERROR(lane->host_index.Allocate(layers * t * k, "routing (host)"));
      M2N_RETURN_IF_ERROR(lane->host_weight.Allocate(layers * t * k, "routing weights (host)"));
      lane->routed_rows.assign(layers, 0);
      lanes_.push_back(std::move(lane));
    }
    return m2n::OkStatus();
  }

  m2n::Status CheckMb(int mb) const {
    if (mb < 0 || mb >= static_cast<int>(mbs_.size()))
      return m2n::InvalidArgumentError("micro-batch out of range");
    return m2n::OkStatus();
  }
  m2n::Status CheckRows(int mb, std::span<const int32_t> rows) const {
    M2N_RETURN_IF_ERROR(CheckMb(mb));
    const int n = mbs_[static_cast<size_t>(mb)].rows;
    for (int32_t r : rows) {
      if (r < 0 || r >= n) {
        return m2n::DataLossError("token row " + std::to_string(r) +
                                  " outside the micro-batch of " + std::to_string(n));
      }
    }
    return m2n::OkStatus();
  }

  ModelConfig c_;
  ComputeOptions o_;
  Context ctx_;
  Bf16Array embed_, final_norm_, lm_head_;
  std::vector<Layer> layers_;
  std::vector<MicroBatch> mbs_;
  Bf16Array normed_, attn_, k_cache_, v_cache_;
  DeviceArray<float> q_, k_, v_, out_, gate_, top_weight_, staging_, logits_;
  DeviceArray<int32_t> top_index_, rows_;
  // Destroyed before ctx_ (declared after it): their streams end before the compute stream's.
  std::vector<std::unique_ptr<Lane>> lanes_;
  int last_dispatch_ = -1, last_combine_ = -1;  // the lane of the last EP call of each kind
  GraphCache graphs_;  // the device path's layers (ComputeOptions::cuda_graphs)
};

class CudaExperts final : public ExpertCompute {
 public:
  CudaExperts(const ModelConfig& c, const ComputeOptions& o,
              std::unique_ptr<ExpertResidency> residency)
      : c_(c), o_(o), residency_(std::move(residency)) {}

  m2n::Status Init(const WeightSource& source, std::span<const int> experts) {
    M2N_RETURN_IF_ERROR(ctx_.Init(o_.local_rank));
    M2N_ASSIGN_OR_RETURN(WeightLoader w, WeightLoader::Open(source, &ctx_));
    held_.assign(experts.begin(), experts.end());
    local_.assign(static_cast<size_t>(c_.num_local_experts), -1);
    const int64_t h = c_.hidden_size, inter = c_.intermediate_size;
    layers_.resize(static_cast<size_t>(c_.num_hidden_layers));
    for (int l = 0; l < c_.num_hidden_layers; ++l) {
      for (size_t i = 0; i < held_.size(); ++i) {
        const int e = held_[i];
        if (e < 0 || e >= c_.num_local_experts)
          return m2n::InvalidArgumentError("expert " + std::to_string(e) + " does not exist");
        local_[static_cast<size_t>(e)] = static_cast<int>(i);
        if (residency_ != nullptr) continue;  // the expert cache holds them
        Expert x;
        M2N_RETURN_IF_ERROR(w.Load(ExpertTensorName(l, e, "w1"), {inter, h}, &x.w1));
        M2N_RETURN_IF_ERROR(w.Load(ExpertTensorName(l, e, "w3"), {inter, h}, &x.w3));
        M2N_RETURN_IF_ERROR(w.Load(ExpertTensorName(l, e, "w2"), {h, inter}, &x.w2));
        layers_[static_cast<size_t>(l)].push_back(std::move(x));
      }
    }
    return ctx_.Sync();
  }

  std::string name() const override {
    return std::string("cuda (bf16 weights, cuBLAS ") + (grouped_ ? "grouped" : "per-expert") +
           " GEMMs" + (residency_ != nullptr ? ", " + residency_->name() : std::string()) + ")";
  }

  m2n::Status Forward(int layer, int top_k, std::span<const ExpertInput> inputs) override {
    if (layer < 0 || layer >= c_.num_hidden_layers)
      return m2n::InvalidArgumentError("layer out of range");
    const int h = c_.hidden_size;
    const size_t experts = held_.size();
    // Rows of all inputs, concatenated: input i's rows start at offset[i].
    std::vector<int> offset(inputs.size() + 1, 0);
    for (size_t i = 0; i < inputs.size(); ++i) offset[i + 1] = offset[i] + inputs[i].rows;
    const int total = offset.back();
    // Per local expert: the global rows it serves and their gate weights, laid end to end.
    std::vector<std::vector<int32_t>> rows(experts);
    std::vector<std::vector<float>> weights(experts);
    M2N_RETURN_IF_ERROR(ForEachRoutedRow(inputs, top_k, c_.num_local_experts, local_,
                                         [&](size_t i, int r, int le, float weight) {
                                           rows[static_cast<size_t>(le)].push_back(offset[i] + r);
                                           weights[static_cast<size_t>(le)].push_back(weight);
                                         }));
    std::vector<int> start(experts + 1, 0);
    std::vector<int32_t> all_rows;
    std::vector<float> all_weights;
    for (size_t e = 0; e < experts; ++e) {
      start[e + 1] = start[e] + static_cast<int>(rows[e].size());
      all_rows.insert(all_rows.end(), rows[e].begin(), rows[e].end());
      all_weights.insert(all_weights.end(), weights[e].begin(), weights[e].end());
    }
    const int used = start.back();
    M2N_RETURN_IF_ERROR(Reserve(total, used));
    cudaStream_t s = ctx_.stream();
    for (size_t i = 0; i < inputs.size(); ++i) {
      M2N_RETURN_IF_ERROR(ctx_.Copy(x_.get() + static_cast<size_t>(offset[i]) * h, inputs[i].x,
                                    static_cast<size_t>(inputs[i].rows) * h * 4));
    }
    if (total > 0) MOE_CUDA(cudaMemsetAsync(out_.get(), 0, static_cast<size_t>(total) * h * 4, s));
    if (used > 0) {
      M2N_RETURN_IF_ERROR(ctx_.ToDevice(rows_.get(), all_rows.data(), all_rows.size() * 4));
      M2N_RETURN_IF_ERROR(
          ctx_.ToDevice(weights_.get(), all_weights.data(), all_weights.size() * 4));
      // Token gather: every expert's tokens, contiguous, in bf16.
      MOE_CUDA(LaunchGatherRowsBf16(x_.get(), rows_.get(), used, h, gathered_.get(), s));
      M2N_RETURN_IF_ERROR(RunExperts(layer, start, weights));
      // Combine on the expert side: out[row] += weight * y, one expert at a time (rows distinct).
      for (size_t e = 0; e < experts; ++e) {
        const int n = start[e + 1] - start[e];
        if (n == 0) continue;
        MOE_CUDA(LaunchScatterAddRows(out_.get(), rows_.get() + start[e], weights_.get() + start[e],
                                      n, h, y_.get() + static_cast<size_t>(start[e]) * h, s));
      }
    }
    for (size_t i = 0; i < inputs.size(); ++i) {
      M2N_RETURN_IF_ERROR(ctx_.Copy(inputs[i].out, out_.get() + static_cast<size_t>(offset[i]) * h,
                                    static_cast<size_t>(inputs[i].rows) * h * 4));
    }
    return ctx_.Sync();
  }

  // ---- Device path (compute.h) ----
  void* device_stream() override { return ctx_.stream(); }
  m2n::Status SyncDevice() override { return ctx_.Sync(); }

  m2n::Status ForwardGroupedOnDevice(int layer, const m2n::DeviceExpertBatch& b,
                                     const float** y) override {
    if (layer < 0 || layer >= c_.num_hidden_layers)
      return m2n::InvalidArgumentError("layer out of range");
    // cuBLAS takes host row counts: wait for the batch's pinned copy of them (the one host wait).
    M2N_RETURN_IF_ERROR(ctx_.Sync());
    const size_t experts = held_.size();
    if (b.experts.size() != experts) {
      return m2n::DataLossError("the EP layer delivered rows for " +
                                std::to_string(b.experts.size()) + " experts; this worker holds " +
                                std::to_string(experts));
    }
    std::vector<int> start(experts + 1, 0);
    std::vector<std::vector<float>> load(experts);  // the expert cache's load: one per row
    for (size_t e = 0; e < experts; ++e) {
      if (b.experts[e] != held_[e]) {
        return m2n::DataLossError("the EP layer delivered rows for expert " +
                                  std::to_string(b.experts[e]) +
                                  ", which this worker does not hold");
      }
      start[e + 1] = start[e] + b.host_counts[e];
      load[e].assign(static_cast<size_t>(b.host_counts[e]), 1.0f);
    }
    const int used = start.back();
    if (used != b.host_counts[experts] || used > b.max_rows) {
      return m2n::DataLossError("the EP layer's counts add up to " + std::to_string(used) +
                                " rows, its batch says " + std::to_string(b.host_counts[experts]));
    }
    M2N_RETURN_IF_ERROR(Reserve(0, std::max(used, 1)));
    *y = y_.get();
    if (used == 0) return m2n::OkStatus();
    // The rows are grouped by expert already: convert them to bf16 in place of a gather.
    MOE_CUDA(LaunchFloatToBf16(static_cast<const float*>(b.x), gathered_.get(),
                               int64_t{used} * c_.hidden_size, ctx_.stream()));
    return RunExperts(layer, start, load);
  }

 private:
  struct Expert {
    Bf16Array w1, w3, w2;
  };

  // Every local expert e with tokens over its rows [start[e], start[e + 1]) of gathered_ (bf16):
  // the SwiGLU chain into y_ (fp32, unweighted), enqueued on the compute stream.
  m2n::Status RunExperts(int layer, const std::vector<int>& start,
                         const std::vector<std::vector<float>>& gate_weights) {
    const int h = c_.hidden_size, inter = c_.intermediate_size, used = start.back();
    const size_t experts = held_.size();
    cudaStream_t s = ctx_.stream();
    std::vector<DeviceExpert> w;
    M2N_RETURN_IF_ERROR(Weights(layer, start, gate_weights, &w));
    std::vector<Problem> up, down;
    for (size_t e = 0, used_e = 0; e < experts; ++e) {
      const int n = start[e + 1] - start[e];
      if (n == 0) continue;
      const DeviceExpert& x = w[used_e++];
      const size_t at = static_cast<size_t>(start[e]);
      up.push_back({gathered_.get() + at * h, n, h, x.w1, inter, h1_.get() + at * inter});
      up.push_back({gathered_.get() + at * h, n, h, x.w3, inter, h3_.get() + at * inter});
      down.push_back({act_.get() + at * inter, n, inter, x.w2, h, y_.get() + at * h});
    }
    M2N_RETURN_IF_ERROR(GroupedGemm(up));
    MOE_CUDA(LaunchSiluMul(h1_.get(), h3_.get(), int64_t{used} * inter, act_.get(), s));
    M2N_RETURN_IF_ERROR(GroupedGemm(down));
    if (residency_ == nullptr) return m2n::OkStatus();
    std::vector<int> ids;
    for (size_t e = 0; e < experts; ++e)
      if (start[e + 1] > start[e]) ids.push_back(held_[e]);
    return residency_->Release(layer, ids, s);
  }
  // The weights of the local experts with tokens (start[e + 1] > start[e]), in local order:
  // resident, or acquired from the expert cache (which the stream then waits for).
  m2n::Status Weights(int layer, const std::vector<int>& start,
                      const std::vector<std::vector<float>>& gate_weights,
                      std::vector<DeviceExpert>* out) {
    std::vector<int> ids;
    std::vector<float> load;
    for (size_t e = 0; e < held_.size(); ++e) {
      if (start[e + 1] == start[e]) continue;
      if (residency_ == nullptr) {
        const Expert& x = layers_[static_cast<size_t>(layer)][e];
        out->push_back({x.w1.get(), x.w3.get(), x.w2.get()});
        continue;
      }
      ids.push_back(held_[e]);
      float sum = 0;
      for (float g : gate_weights[e]) sum += g;
      load.push_back(sum);
    }
    if (residency_ == nullptr) return m2n::OkStatus();
    return residency_->Acquire(layer, ids, load, ctx_.stream(), out);
  }

  // y[rows, n] = x[rows, k] . w[n, k]^T
  struct Problem {
    const uint16_t* x;
    int rows, k;
    const uint16_t* w;
    int n;
    float* y;
  };

  m2n::Status Reserve(int total, int used) {
    const size_t h = static_cast<size_t>(c_.hidden_size),
                 inter = static_cast<size_t>(c_.intermediate_size);
    if (static_cast<size_t>(total) > capacity_total_) {
      capacity_total_ = static_cast<size_t>(total) * 2;
      M2N_RETURN_IF_ERROR(x_.Allocate(capacity_total_ * h, "expert input"));
      M2N_RETURN_IF_ERROR(out_.Allocate(capacity_total_ * h, "expert output"));
    }
    if (static_cast<size_t>(used) > capacity_used_) {
      capacity_used_ = static_cast<size_t>(used) * 2;
      M2N_RETURN_IF_ERROR(rows_.Allocate(capacity_used_, "expert rows"));
      M2N_RETURN_IF_ERROR(weights_.Allocate(capacity_used_, "expert weights"));
      M2N_RETURN_IF_ERROR(gathered_.Allocate(capacity_used_ * h, "gathered tokens"));
      M2N_RETURN_IF_ERROR(h1_.Allocate(capacity_used_ * inter, "w1 output"));
      M2N_RETURN_IF_ERROR(h3_.Allocate(capacity_used_ * inter, "w3 output"));
      M2N_RETURN_IF_ERROR(act_.Allocate(capacity_used_ * inter, "activation"));
      M2N_RETURN_IF_ERROR(y_.Allocate(capacity_used_ * h, "w2 output"));
    }
    return m2n::OkStatus();
  }

  // All problems in one cublasGemmGroupedBatchedEx call (one group each: their row counts
  // differ); where this cuBLAS refuses bf16 inputs with fp32 outputs there, one cublasGemmEx each.
  m2n::Status GroupedGemm(const std::vector<Problem>& problems) {
    if (problems.empty()) return m2n::OkStatus();
    if (grouped_) {
      const size_t g = problems.size();
      std::vector<cublasOperation_t> ta(g, CUBLAS_OP_T), tb(g, CUBLAS_OP_N);
      std::vector<int> m(g), n(g), k(g), lda(g), ldb(g), ldc(g), size(g, 1);
      std::vector<float> alpha(g, 1.0f), beta(g, 0.0f);
      std::vector<const void*> a(g), b(g);
      std::vector<void*> c(g);
      for (size_t i = 0; i < g; ++i) {
        const Problem& p = problems[i];
        m[i] = p.n;
        n[i] = p.rows;
        k[i] = p.k;
        lda[i] = p.k;
        ldb[i] = p.k;
        ldc[i] = p.n;
        a[i] = p.w;
        b[i] = p.x;
        c[i] = p.y;
      }
      // The pointer arrays live in device memory, as for the batched GEMMs.
      if (pointers_.count() < 3 * g)
        M2N_RETURN_IF_ERROR(pointers_.Allocate(3 * g * 2, "GEMM pointer arrays"));
      std::vector<const void*> all;
      all.insert(all.end(), a.begin(), a.end());
      all.insert(all.end(), b.begin(), b.end());
      all.insert(all.end(), c.begin(), c.end());
      M2N_RETURN_IF_ERROR(ctx_.ToDevice(pointers_.get(), all.data(), all.size() * sizeof(void*)));
      auto* d = reinterpret_cast<void**>(pointers_.get());
      const cublasStatus_t st = cublasGemmGroupedBatchedEx(
          ctx_.cublas(), ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(),
          const_cast<const void* const*>(d), CUDA_R_16BF, lda.data(),
          const_cast<const void* const*>(d + g), CUDA_R_16BF, ldb.data(), beta.data(), d + 2 * g,
          CUDA_R_32F, ldc.data(), static_cast<int>(g), size.data(), CUBLAS_COMPUTE_32F);
      if (st == CUBLAS_STATUS_SUCCESS) return ctx_.Sync();  // the host arrays go out of scope
      if (st != CUBLAS_STATUS_NOT_SUPPORTED && st != CUBLAS_STATUS_INVALID_VALUE) {
        return CublasError(st, "cublasGemmGroupedBatchedEx over " + std::to_string(g) + " experts");
      }
      grouped_ = false;
    }
    for (const Problem& p : problems)
      M2N_RETURN_IF_ERROR(ctx_.Gemm(p.x, p.rows, p.k, p.w, p.n, p.y));
    return m2n::OkStatus();
  }

  ModelConfig c_;
  ComputeOptions o_;
  // Declared before ctx_: destroyed after it, once the stream that reads its slots is gone.
  std::unique_ptr<ExpertResidency> residency_;
  Context ctx_;
  std::vector<int> held_, local_;
  std::vector<std::vector<Expert>> layers_;
  size_t capacity_total_ = 0, capacity_used_ = 0;
  DeviceArray<float> x_, out_, weights_, h1_, h3_, y_;
  DeviceArray<int32_t> rows_;
  Bf16Array gathered_, act_;
  DeviceArray<uint64_t> pointers_;
  bool grouped_ = true;
};

}  // namespace

int VisibleDevices() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

m2n::Status UseDevice(int local_rank) {
  const int count = VisibleDevices();
  if (count == 0) return m2n::FailedPreconditionError("cuda backend: no CUDA device visible");
  return CudaError(cudaSetDevice(local_rank % count), "cudaSetDevice");
}

namespace {
size_t MatrixBytes(const ModelConfig& c) {
  const size_t bytes = static_cast<size_t>(c.hidden_size) *
                       static_cast<size_t>(c.intermediate_size) * sizeof(uint16_t);
  return (bytes + 255) / 256 * 256;
}
}  // namespace

size_t ExpertBlockBytes(const ModelConfig& c) { return 3 * MatrixBytes(c); }

DeviceExpert ExpertInBlock(const std::byte* block, const ModelConfig& c) {
  const size_t m = MatrixBytes(c);
  return {reinterpret_cast<const uint16_t*>(block), reinterpret_cast<const uint16_t*>(block + m),
          reinterpret_cast<const uint16_t*>(block + 2 * m)};
}

m2n::Status ReadExpertBlocks(const ModelConfig& c, const WeightSource& source,
                             std::span<const int> experts,
                             const std::function<std::byte*(int layer, int expert)>& block) {
  Context ctx;
  int device = 0;
  MOE_CUDA(cudaGetDevice(&device));
  M2N_RETURN_IF_ERROR(ctx.Init(device));
  M2N_ASSIGN_OR_RETURN(WeightLoader w, WeightLoader::Open(source, &ctx));
  const int64_t h = c.hidden_size, inter = c.intermediate_size;
  const size_t m = MatrixBytes(c), bytes = static_cast<size_t>(h * inter) * sizeof(uint16_t);
  Bf16Array tensor;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    for (int e : experts) {
      std::byte* out = block(l, e);
      const std::pair<const char*, std::vector<int64_t>> parts[] = {
          {"w1", {inter, h}}, {"w3", {inter, h}}, {"w2", {h, inter}}};
      for (size_t i = 0; i < 3; ++i) {
        M2N_RETURN_IF_ERROR(
            w.Load(ExpertTensorName(l, e, parts[i].first), parts[i].second, &tensor));
        M2N_RETURN_IF_ERROR(ctx.ToHost(out + i * m, tensor.get(), bytes));
        M2N_RETURN_IF_ERROR(ctx.Sync());
      }
    }
  }
  return m2n::OkStatus();
}

m2n::StatusOr<std::unique_ptr<AttentionCompute>> MakeCudaAttention(const ModelConfig& config,
                                                                   const WeightSource& source,
                                                                   const ComputeOptions& options) {
  auto a = std::make_unique<CudaAttention>(config, options);
  M2N_RETURN_IF_ERROR(a->Init(source));
  return std::unique_ptr<AttentionCompute>(std::move(a));
}

m2n::StatusOr<std::unique_ptr<ExpertCompute>> MakeCudaExperts(
    const ModelConfig& config, const WeightSource& source, std::span<const int> experts,
    const ComputeOptions& options, std::unique_ptr<ExpertResidency> residency) {
  auto e = std::make_unique<CudaExperts>(config, options, std::move(residency));
  M2N_RETURN_IF_ERROR(e->Init(source, experts));
  return std::unique_ptr<ExpertCompute>(std::move(e));
}

}  // namespace moe::cuda

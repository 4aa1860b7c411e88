// The cuda backend's expert side (cuda_compute.h): each expert's three bf16 matrices in one block,
// the grouped GEMMs over the rows of every expert, and the blocks read for the expert cache.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "compute/cuda/context.h"
#include "compute/cuda/kernels.h"

namespace moe::cuda {
namespace {

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

m2n::StatusOr<std::unique_ptr<ExpertCompute>> MakeCudaExperts(
    const ModelConfig& config, const WeightSource& source, std::span<const int> experts,
    const ComputeOptions& options, std::unique_ptr<ExpertResidency> residency) {
  auto e = std::make_unique<CudaExperts>(config, options, std::move(residency));
  M2N_RETURN_IF_ERROR(e->Init(source, experts));
  return std::unique_ptr<ExpertCompute>(std::move(e));
}

}  // namespace moe::cuda

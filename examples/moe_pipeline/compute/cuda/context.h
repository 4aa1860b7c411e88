// What the cuda backend's attention (cuda_attention.cc) and experts (cuda_experts.cc) share: errors
// named with the device, device and pinned arrays, the per-object stream and cuBLAS handle with its
// bf16 GEMM, and the weight loader (seeded on the device, or read from a checkpoint).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "compute/cuda/cuda_compute.h"
#include "compute/cuda/kernels.h"
#include "model/safetensors.h"

namespace moe::cuda {

inline m2n::Status CudaError(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return m2n::OkStatus();
  int device = -1;
  (void)cudaGetDevice(&device);
  return m2n::InternalError("cuda (device " + std::to_string(device) + "): " + what + ": " +
                            cudaGetErrorString(e));
}

inline m2n::Status CublasError(cublasStatus_t s, const std::string& what) {
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

inline std::string LayerPrefix(int layer) { return "model.layers." + std::to_string(layer) + "."; }

// One bf16 expert matrix (hidden x intermediate) in an expert block, padded to 256 bytes.
inline size_t MatrixBytes(const ModelConfig& c) {
  const size_t bytes = static_cast<size_t>(c.hidden_size) *
                       static_cast<size_t>(c.intermediate_size) * sizeof(uint16_t);
  return (bytes + 255) / 256 * 256;
}

}  // namespace moe::cuda

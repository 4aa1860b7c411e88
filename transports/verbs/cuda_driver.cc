#include "transports/verbs/cuda_driver.h"

#include <dlfcn.h>

namespace m2n::transport::verbs {
namespace {

// Entry points by their versioned names first (what cuda.h's macros call), then the plain ones.
template <typename Fn>
bool Find(void* lib, Fn* fn, const char* versioned, const char* plain, std::string* missing) {
  void* p = versioned != nullptr ? dlsym(lib, versioned) : nullptr;
  if (p == nullptr) p = dlsym(lib, plain);
  *fn = reinterpret_cast<Fn>(p);
  if (p == nullptr && missing != nullptr)
    *missing += std::string(missing->empty() ? "" : ", ") + plain;
  return p != nullptr;
}

StatusOr<const CudaDriver*> Load() {
  static CudaDriver driver;
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    return UnavailableError(
        "verbs: CUDA memory: libcuda.so.1 (the NVIDIA driver) cannot be loaded here");
  }
  std::string missing;
  CudaDriver& d = driver;
  Find(lib, &d.get_error_string, nullptr, "cuGetErrorString", &missing);
  Find(lib, &d.ctx_get_current, nullptr, "cuCtxGetCurrent", &missing);
  Find(lib, &d.ctx_set_current, nullptr, "cuCtxSetCurrent", &missing);
  Find(lib, &d.ctx_get_device, nullptr, "cuCtxGetDevice", &missing);
  Find(lib, &d.device_get_attribute, nullptr, "cuDeviceGetAttribute", &missing);
  Find(lib, &d.mem_alloc, "cuMemAlloc_v2", "cuMemAlloc", &missing);
  Find(lib, &d.mem_free, "cuMemFree_v2", "cuMemFree", &missing);
  Find(lib, &d.memset_d8, "cuMemsetD8_v2", "cuMemsetD8", &missing);
  Find(lib, &d.memcpy_htod, "cuMemcpyHtoD_v2", "cuMemcpyHtoD", &missing);
  Find(lib, &d.stream_synchronize, nullptr, "cuStreamSynchronize", &missing);
  Find(lib, &d.mem_host_register, "cuMemHostRegister_v2", "cuMemHostRegister", &missing);
  Find(lib, &d.mem_host_unregister, nullptr, "cuMemHostUnregister", &missing);
  Find(lib, &d.mem_host_get_device_pointer, "cuMemHostGetDevicePointer_v2",
       "cuMemHostGetDevicePointer", &missing);
  Find(lib, &d.get_handle_for_address_range, nullptr, "cuMemGetHandleForAddressRange", &missing);
  Find(lib, &d.stream_write_value32, "cuStreamWriteValue32_v2", "cuStreamWriteValue32", &missing);
  Find(lib, &d.stream_wait_value32, "cuStreamWaitValue32_v2", "cuStreamWaitValue32", &missing);
  Find(lib, &d.flush_gpudirect_rdma_writes, nullptr, "cuFlushGPUDirectRDMAWrites", nullptr);
  if (!missing.empty()) {
    return UnavailableError("verbs: the NVIDIA driver's libcuda.so.1 lacks " + missing +
                            " (driver too old?)");
  }
  return &driver;
}

}  // namespace

StatusOr<const CudaDriver*> CudaDriver::Get() {
  static const StatusOr<const CudaDriver*> driver = Load();
  return driver;
}

std::string CudaDriver::Error(std::string_view what, CUresult result) const {
  const char* text = nullptr;
  if (get_error_string == nullptr || get_error_string(result, &text) != CUDA_SUCCESS ||
      text == nullptr) {
    text = "unknown CUDA error";
  }
  return "verbs: " + std::string(what) + ": CUresult " + std::to_string(static_cast<int>(result)) +
         " (" + text + ")";
}

}  // namespace m2n::transport::verbs

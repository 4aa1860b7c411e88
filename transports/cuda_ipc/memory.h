// Memory of the cuda_ipc transport.
//   Device memory that peers write (receive slots, the signal words): cudaMalloc'd, exported once
//   by a CUDA IPC handle that every peer on the host opens (cudaIpcOpenMemHandle); a write is then
//   a plain store or copy into the mapping, over NVLink or PCIe peer to peer. Host memory that
//   peers write (receive slots of a host-memory group, the immediate rings): a POSIX shared-memory
//   segment that every peer maps. Registered send memory (caller's): device memory is checked to be
//   device memory; host memory is taken as it is. Neither is exported.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "m2n/memory.h"
#include "m2n/status.h"
#include "transports/transport.h"

namespace m2n::transport::cuda_ipc {

// A POSIX shared-memory segment, created (and unlinked at destruction) or opened.
class SharedSegment {
 public:
  static StatusOr<std::unique_ptr<SharedSegment>> Create(size_t size);
  // Maps `size` bytes of a peer's segment; refuses a segment smaller than that (fstat), since the
  // size comes from the peer and a mapping past the end faults only when touched.
  static StatusOr<std::unique_ptr<SharedSegment>> Open(const std::string& name, size_t size);
  ~SharedSegment();
  SharedSegment(const SharedSegment&) = delete;
  SharedSegment& operator=(const SharedSegment&) = delete;

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& name() const { return name_; }

 private:
  SharedSegment(std::string name, std::byte* data, size_t size, bool owner)
      : name_(std::move(name)), data_(data), size_(size), owner_(owner) {}
  std::string name_;
  std::byte* data_;
  size_t size_;
  bool owner_;
};

// Device memory this process allocated and exports by a CUDA IPC handle.
class DeviceAllocation {
 public:
  static StatusOr<std::unique_ptr<DeviceAllocation>> Create(size_t size);
  ~DeviceAllocation();
  DeviceAllocation(const DeviceAllocation&) = delete;
  DeviceAllocation& operator=(const DeviceAllocation&) = delete;

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  const cudaIpcMemHandle_t& handle() const { return handle_; }

 private:
  DeviceAllocation(std::byte* data, size_t size, cudaIpcMemHandle_t handle)
      : data_(data), size_(size), handle_(handle) {}
  std::byte* data_;
  size_t size_;
  cudaIpcMemHandle_t handle_;
};

// A peer's exported device memory, opened here.
class DeviceMapping {
 public:
  // Opens the handle and refuses an allocation smaller than `size` (cuMemGetAddressRange).
  static StatusOr<std::unique_ptr<DeviceMapping>> Open(const cudaIpcMemHandle_t& handle,
                                                       size_t size);
  ~DeviceMapping();
  DeviceMapping(const DeviceMapping&) = delete;
  DeviceMapping& operator=(const DeviceMapping&) = delete;
  std::byte* data() const { return data_; }

 private:
  explicit DeviceMapping(std::byte* data) : data_(data) {}
  std::byte* data_;
};

// A local region: allocated (exportable: shared segment or device allocation) or registered.
class IpcRegion final : public Region {
 public:
  static StatusOr<std::unique_ptr<IpcRegion>> Allocate(size_t size, MemoryKind kind);
  static StatusOr<std::unique_ptr<IpcRegion>> Register(void* data, size_t size, MemoryKind kind);

  std::byte* data() const override { return data_; }
  size_t size() const override { return size_; }
  MemoryKind kind() const override { return kind_; }
  StatusOr<Bytes> PackRemoteKey() const override;

 private:
  IpcRegion() = default;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
  MemoryKind kind_ = MemoryKind::kHost;
  std::unique_ptr<SharedSegment> segment_;
  std::unique_ptr<DeviceAllocation> device_;
};

// A peer's allocated region, mapped here.
class IpcRemoteRegion final : public RemoteRegion {
 public:
  static StatusOr<std::unique_ptr<IpcRemoteRegion>> Unpack(std::span<const std::byte> packed);
  size_t size() const override { return size_; }
  std::byte* data() const { return data_; }
  MemoryKind kind() const { return kind_; }

 private:
  IpcRemoteRegion() = default;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
  MemoryKind kind_ = MemoryKind::kHost;
  std::unique_ptr<SharedSegment> segment_;
  std::unique_ptr<DeviceMapping> device_;
};

}  // namespace m2n::transport::cuda_ipc

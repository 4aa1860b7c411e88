// VerbsTransport's part in the device-side API (m2n/device.h, proxied peers): the words kernels and
// the proxy share (host memory the GPU maps: the error word, the ring and its consumed count, the
// released and arrival words), the kernels' own counters in device memory, and the proxy started
// on the group's routes (staging slot -> the peer's slot). The proxy's side is device_ring.cc.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "transports/verbs/transport.h"

#if M2N_VERBS_WITH_CUDA
#include "transports/verbs/cuda_driver.h"
#endif

namespace m2n::transport::verbs {
namespace {

#if M2N_VERBS_WITH_CUDA
// Room for every send and every release that may be outstanding at once, so that a kernel waits
// for an entry only while the proxy is behind.
uint64_t RingCapacity(size_t cells) { return 2 * static_cast<uint64_t>(cells) + 16; }

// The allocation's zeroing and a copy from pageable memory run on the legacy stream and may not
// have landed when the call returns, while the user's kernels run on streams that do not wait for
// it: the words are in place before the device API hands them out.
Status SyncLegacyStream(const CudaDriver& cuda, std::string_view what) {
  if (CUresult r = cuda.stream_synchronize(CU_STREAM_LEGACY); r != CUDA_SUCCESS)
    return UnavailableError(cuda.Error("cuStreamSynchronize (" + std::string(what) + ")", r));
  return OkStatus();
}
#endif

}  // namespace

unsigned long long* VerbsTransport::DeviceAddress(unsigned long long* host) const {
  const auto offset =
      reinterpret_cast<uintptr_t>(host) - reinterpret_cast<uintptr_t>(device_api_.host);
  return reinterpret_cast<unsigned long long*>(device_api_.device + offset);
}

Status VerbsTransport::InitDeviceApi() {
  if (device_api_.host != nullptr) return OkStatus();
  if (stream_cq_ == nullptr) {
    return FailedPreconditionError(Who() +
                                   ": the device-side API needs GPU slots "
                                   "(Config::slot_memory = kCuda)");
  }
#if M2N_VERBS_WITH_CUDA
  M2N_ASSIGN_OR_RETURN(const CudaDriver* cuda, CudaDriver::Get());
  const size_t cells = Cells();
  const uint64_t capacity = RingCapacity(cells);
  // Words first (error, consumed, released, arrival), the ring after them on a 32-byte boundary.
  const size_t ring_word = (2 + 2 * cells + 3) / 4 * 4;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t used = ring_word * sizeof(unsigned long long) + capacity * sizeof(DeviceDescriptor);
  const size_t bytes = (used + page - 1) / page * page;
  auto* host = static_cast<unsigned long long*>(std::aligned_alloc(page, bytes));
  if (host == nullptr)
    return UnavailableError(Who() + ": allocating the device API's words failed");
  std::memset(host, 0, bytes);
  if (CUresult r = cuda->mem_host_register(
          host, bytes, CU_MEMHOSTREGISTER_DEVICEMAP | CU_MEMHOSTREGISTER_PORTABLE);
      r != CUDA_SUCCESS) {
    std::free(host);
    return UnavailableError(cuda->Error("cuMemHostRegister of the device API's words", r));
  }
  device_api_.host = host;  // Teardown unregisters and frees it from here on
  device_api_.bytes = bytes;
  CUdeviceptr device = 0;
  if (CUresult r = cuda->mem_host_get_device_pointer(&device, host, 0); r != CUDA_SUCCESS)
    return UnavailableError(cuda->Error("cuMemHostGetDevicePointer of the device API's words", r));
  device_api_.device = device;
  device_api_.ring = reinterpret_cast<DeviceDescriptor*>(host + ring_word);
  device_api_.ring_capacity = capacity;
  // generation_sent, generation_received, arrived_blocks, then the ring's claimed count: zeroed.
  auto counters =
      VerbsRegion::Allocate(ctx_, (3 * cells + 1) * sizeof(unsigned long long), MemoryKind::kCuda);
  if (!counters.ok()) return counters.status().WithContext(Who() + ": the device API's counters");
  device_api_.counters = std::move(counters).value();
  return SyncLegacyStream(*cuda, "the device API's counters");
#else
  return UnimplementedError(Who() + ": the device-side API needs a build with the CUDA toolkit");
#endif
}

StatusOr<DevicePeerWords> VerbsTransport::DeviceWords(int peer) {
  M2N_RETURN_IF_ERROR(CheckStreamSlot(peer, 0, "the device-side API"));
  M2N_RETURN_IF_ERROR(InitDeviceApi());
  const size_t cells = Cells();
  const size_t first =
      static_cast<size_t>(peer_index_[peer]) * static_cast<size_t>(config_.slot_depth);
  unsigned long long* words = device_api_.host;
  auto* counters = reinterpret_cast<unsigned long long*>(device_api_.counters->data());
  DevicePeerWords w;
  w.released = DeviceAddress(words + 2 + first);
  w.arrival = DeviceAddress(words + 2 + cells + first);
  w.generation_sent = counters + first;
  w.generation_received = counters + cells + first;
  w.arrived_blocks = counters + 2 * cells + first;
  // remote_arrival, remote_released: none; the proxy carries both.
  return w;
}

StatusOr<DeviceWaitLimit> VerbsTransport::DeviceWaits() {
  M2N_RETURN_IF_ERROR(InitDeviceApi());
  return DeviceWaitLimit{
      DeviceAddress(device_api_.host),
      static_cast<unsigned long long>(std::chrono::nanoseconds(config_.timeout).count())};
}

StatusOr<std::unique_ptr<Region>> VerbsTransport::AllocateDeviceCopy(
    std::span<const std::byte> contents) {
#if M2N_VERBS_WITH_CUDA
  M2N_ASSIGN_OR_RETURN(const CudaDriver* cuda, CudaDriver::Get());
  M2N_ASSIGN_OR_RETURN(
      std::unique_ptr<VerbsRegion> region,
      VerbsRegion::Allocate(ctx_, std::max<size_t>(contents.size(), 1), MemoryKind::kCuda));
  if (!contents.empty()) {
    if (CUresult r = cuda->memcpy_htod(reinterpret_cast<CUdeviceptr>(region->data()),
                                       contents.data(), contents.size());
        r != CUDA_SUCCESS) {
      return UnavailableError(cuda->Error("cuMemcpyHtoD of the device API's tables", r));
    }
  }
  M2N_RETURN_IF_ERROR(SyncLegacyStream(*cuda, "the device API's tables"));
  return std::unique_ptr<Region>(std::move(region));
#else
  (void)contents;
  return UnimplementedError(Who() + ": the device-side API needs a build with the CUDA toolkit");
#endif
}

StatusOr<DeviceRing> VerbsTransport::ProxyDevicePeers(std::span<const ProxiedPeer> peers,
                                                      size_t slot_bytes) {
  if (proxy_ != nullptr) {
    return FailedPreconditionError(Who() +
                                   ": the device-side API after the stream-ordered path "
                                   "started the proxy: one path per group");
  }
  M2N_RETURN_IF_ERROR(InitDeviceApi());
  if (peers.size() != config_.peers.size()) {
    return InvalidArgumentError(Who() + ": the device-side API needs a route for every peer (" +
                                std::to_string(peers.size()) + " of " +
                                std::to_string(config_.peers.size()) + ")");
  }
  const size_t cells = Cells();
  DeviceLink link;
  link.ring = device_api_.ring;
  link.ring_capacity = device_api_.ring_capacity;
  link.consumed = device_api_.host + 1;
  link.released = device_api_.host + 2;
  link.arrival = device_api_.host + 2 + cells;
  link.slot_bytes = slot_bytes;
  link.routes.resize(peers.size());
  for (const ProxiedPeer& p : peers) {
    M2N_RETURN_IF_ERROR(CheckStreamSlot(p.peer, 0, "the device-side API"));
    if (p.staging == nullptr || p.remote == nullptr)
      return InvalidArgumentError(PeerText(p.peer, "device-side API: no staging or peer slots"));
    const auto* staging = static_cast<const VerbsRegion*>(p.staging);
    const auto* remote = static_cast<const VerbsRemoteRegion*>(p.remote);
    link.routes[static_cast<size_t>(peer_index_[p.peer])] =
        DeviceRoute{reinterpret_cast<uintptr_t>(staging->data()) + p.staging_offset,
                    staging->lkey(), remote->address() + p.remote_offset, remote->rkey()};
  }
  M2N_RETURN_IF_ERROR(StartProxy(std::move(link)));
  auto* counters = reinterpret_cast<unsigned long long*>(device_api_.counters->data());
  DeviceRing ring;
  ring.entries = reinterpret_cast<DeviceDescriptor*>(
      DeviceAddress(reinterpret_cast<unsigned long long*>(device_api_.ring)));
  ring.claimed = counters + 3 * cells;
  ring.consumed = DeviceAddress(device_api_.host + 1);
  ring.capacity = device_api_.ring_capacity;
  return ring;
}

}  // namespace m2n::transport::verbs

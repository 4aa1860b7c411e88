// The device-side data path: Group::device_group() hands the user's kernels a DeviceGroup
// (m2n/device.h), the stream-ordered path's protocol with the kernels the user's own
// (m2n/device.cuh). The transport lends its signal words and error word (StreamOps::DeviceWords,
// DeviceWaits); the group adds the slot addresses of both sides, a send and a receive cursor per
// peer in device memory (the only state the stream path keeps on the host) and the table of
// DevicePeers, copied to device memory once. After that, no host call moves a message.
// A proxied transport (verbs) maps no peer's slots: the group allocates a staging slot array per
// peer in device memory and hands the transport the routes (staging slot -> the peer's slot), and
// the transport's proxy thread carries the kernels' messages and releases (m2n/device.h).
#include <algorithm>
#include <cstring>
#include <vector>

#include "group/impl.h"

namespace m2n {

// kUnimplemented / kFailedPrecondition, naming what is missing, when the device API cannot run.
Status Group::Impl::CheckDeviceApi(transport::StreamOps* ops) const {
  const std::string cannot = "transport '" + transport_name +
                             "' cannot serve the device-side API here: it has no signal words in "
                             "device memory and no proxy for them (cuda_ipc has the first, verbs "
                             "with receive slots in device memory the second)";
  if (options.slot_memory != MemoryKind::kCuda) {
    return FailedPreconditionError(
        me() +
        ": device_group(): the device-side API needs receive slots in device memory "
        "(Options::slot_memory = kCuda); this group's are in host memory" +
        (ops == nullptr ? "; and " + cannot : ""));
  }
  if (ops == nullptr) return UnimplementedError(me() + ": device_group(): " + cannot);
  return OkStatus();
}

// peers[index] as this rank's GPU sees it; cursor is filled in by MakeDeviceGroup.
StatusOr<DevicePeer> Group::Impl::MakeDevicePeer(transport::StreamOps& ops, int index) {
  const int peer = peers[static_cast<size_t>(index)];
  StatusOr<transport::DevicePeerWords> words = ops.DeviceWords(peer);
  if (!words.ok()) {
    return Status(words.status().code(), me() + ": device_group(): transport '" + transport_name +
                                             "' with " + RankName(peer) + ": " +
                                             words.status().message());
  }
  DevicePeer p;
  if (ops.DeviceProxied()) {
    p.staging_slots = device.staging->data() + static_cast<size_t>(index) * block_bytes();
  } else {
    M2N_ASSIGN_OR_RETURN(p.remote_slots,
                         ops.MappedAddress(*remote_slots[static_cast<size_t>(index)],
                                           remote_block_offset[static_cast<size_t>(index)]));
  }
  p.rank = peer;
  p.remote_arrival = words->remote_arrival;
  p.released = words->released;
  p.generation_sent = words->generation_sent;
  p.arrived_blocks = words->arrived_blocks;
  p.local_slots = SlotData(index, 0);
  p.arrival = words->arrival;
  p.generation_received = words->generation_received;
  p.remote_released = words->remote_released;
  return p;
}

// Proxied transports: the staging slots, and the proxy started on the routes to every peer.
StatusOr<DeviceRing> Group::Impl::ProxyDevicePeers(transport::StreamOps& ops) {
  M2N_ASSIGN_OR_RETURN(device.staging,
                       core->transport->Allocate(std::max<size_t>(1, block_bytes() * peers.size()),
                                                 MemoryKind::kCuda));
  std::vector<transport::ProxiedPeer> routes(peers.size());
  for (size_t i = 0; i < peers.size(); ++i) {
    routes[i] = {peers[i], device.staging.get(), i * block_bytes(), remote_slots[i].get(),
                 remote_block_offset[i]};
  }
  StatusOr<DeviceRing> ring = ops.ProxyDevicePeers(routes, slot_stride());
  if (!ring.ok()) {
    return Status(ring.status().code(), me() + ": device_group(): transport '" + transport_name +
                                            "': " + ring.status().message());
  }
  return ring;
}

Status Group::Impl::MakeDeviceGroup(transport::StreamOps& ops) {
  DeviceRing ring;
  if (ops.DeviceProxied()) {
    M2N_ASSIGN_OR_RETURN(ring, ProxyDevicePeers(ops));
  }
  std::vector<DevicePeer> table(peers.size());
  for (size_t i = 0; i < peers.size(); ++i) {
    M2N_ASSIGN_OR_RETURN(table[i], MakeDevicePeer(ops, static_cast<int>(i)));
  }
  M2N_ASSIGN_OR_RETURN(transport::DeviceWaitLimit waits, ops.DeviceWaits());
  // Two zeroed words per peer: [0] the next message to send, [1] the next to receive.
  const std::vector<std::byte> zeros(2 * sizeof(unsigned long long) * peers.size());
  M2N_ASSIGN_OR_RETURN(device.cursors, ops.AllocateDeviceCopy(zeros));
  auto* cursors = reinterpret_cast<unsigned long long*>(device.cursors->data());
  for (size_t i = 0; i < table.size(); ++i) table[i].cursor = cursors + 2 * i;
  std::vector<std::byte> bytes(sizeof(DevicePeer) * table.size());
  if (!table.empty()) std::memcpy(bytes.data(), table.data(), bytes.size());
  M2N_ASSIGN_OR_RETURN(device.peers, ops.AllocateDeviceCopy(bytes));
  DeviceGroup& g = device.handle;
  g.peers = reinterpret_cast<const DevicePeer*>(device.peers->data());
  g.num_peers = static_cast<int>(peers.size());
  g.rank = rank;
  g.slot_depth = options.slot_depth;
  g.slot_bytes = slot_stride();
  g.error_word = waits.error_word;
  g.timeout_ns = waits.timeout_ns;
  g.ring = ring;
  device.made = true;
  return OkStatus();
}

StatusOr<DeviceGroup> Group::device_group() {
  Impl& g = *impl_;
  M2N_RETURN_IF_ERROR(g.CheckOpen());
  transport::StreamOps* ops = g.core->transport->stream_ops();
  M2N_RETURN_IF_ERROR(g.CheckDeviceApi(ops));
  if (g.device.made) {
    M2N_RETURN_IF_ERROR(g.DeviceWaitError());
    return g.device.handle;
  }
  // The path is taken only once the handle exists: a transport that cannot serve it leaves the
  // group free to use another.
  if (g.data_path != Impl::DataPath::kUnset) {
    M2N_RETURN_IF_ERROR(g.UsePath(Impl::DataPath::kDevice));
  }
  Status made = g.MakeDeviceGroup(*ops);
  if (!made.ok()) {
    g.device.cursors.reset();
    g.device.peers.reset();
    // device.staging stays: a proxy that started holds its address (it posts nothing without a
    // descriptor, and no kernel has the ring).
    return made;
  }
  M2N_RETURN_IF_ERROR(g.UsePath(Impl::DataPath::kDevice));
  return g.device.handle;
}

}  // namespace m2n

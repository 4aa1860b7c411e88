// The stream-ordered data path (SendOnStream, ReceiveOnStream, ReleaseOnStream): the slot of a
// pair's k-th message is k mod slot_depth on both sides, and the transport keeps the credits and
// arrivals in device memory (see transports/transport.h), so the host only checks the calls and
// keeps count of which (peer, slot) holds a received message not yet released.
#include <algorithm>

#include "group/impl.h"

namespace m2n {

// The transport's stream-ordered operations, after every check a stream call needs.
StatusOr<transport::StreamOps*> Group::Impl::StreamPath(std::string_view call) {
  M2N_RETURN_IF_ERROR(CheckOpen());
  transport::StreamOps* ops = core->transport->stream_ops();
  if (ops == nullptr) {
    return UnimplementedError(
        me() + ": " + std::string(call) + ": transport '" + transport_name +
        "' has no stream-ordered operations (a GPU transport such as cuda_ipc has)");
  }
  if (options.slot_memory != MemoryKind::kCuda) {
    return FailedPreconditionError(
        me() + ": " + std::string(call) +
        " needs receive slots in device memory (Options::slot_memory = kCuda)");
  }
  M2N_RETURN_IF_ERROR(UsePath(DataPath::kStream));
  M2N_RETURN_IF_ERROR(DeviceWaitError());
  return ops;
}

Status Group::Impl::DeviceWaitError() {
  if (data_path != DataPath::kStream && data_path != DataPath::kDevice) return OkStatus();
  Status device = core->transport->stream_ops()->StreamError();
  if (!device.ok()) return Fail(device.WithContext(me()));
  return OkStatus();
}

Status Group::SendOnStream(std::span<const SendRequest> requests, Stream stream) {
  Impl& g = *impl_;
  M2N_ASSIGN_OR_RETURN(transport::StreamOps * ops, g.StreamPath("SendOnStream"));
  auto& writes = g.stream.writes;
  writes.clear();
  auto& batch_peers = g.stream.peers;
  batch_peers.clear();
  for (const SendRequest& r : requests) {
    M2N_RETURN_IF_ERROR(g.ValidPeer(r.peer, "send"));
    batch_peers.push_back(r.peer);
    M2N_RETURN_IF_ERROR(g.CheckSendLength(r));
    const transport::Region* source = nullptr;
    if (r.length > 0) {
      M2N_ASSIGN_OR_RETURN(MemoryRegion::Impl * region, g.FindRegion(r.data, r.length));
      source = region->region.get();
      if (source->kind() != MemoryKind::kCuda) {
        return InvalidArgumentError(
            g.me() + ": SendOnStream to " + RankName(r.peer) +
            ": the buffer is registered as host memory; stream-ordered sends "
            "take device memory (RegisterMemory(..., MemoryKind::kCuda))");
      }
    }
    transport::StreamWrite w;
    w.peer = r.peer;
    w.local = source;
    w.local_offset = r.length > 0 ? static_cast<const std::byte*>(r.data) - source->data() : 0;
    w.length = r.length;
    writes.push_back(w);
  }
  M2N_RETURN_IF_ERROR(g.CheckPerPeerCount(batch_peers, "SendOnStream"));
  for (transport::StreamWrite& w : writes) {
    int index = g.IndexOfPeer(w.peer);
    w.slot = static_cast<int>(g.stream.sent[index]++ % static_cast<uint64_t>(g.options.slot_depth));
    w.remote = g.remote_slots[index].get();
    w.remote_offset = g.remote_block_offset[index] + static_cast<size_t>(w.slot) * g.slot_stride();
    ++g.stats.messages_sent;
    g.stats.bytes_sent += w.length;
  }
  Status s = ops->SendOnStream(writes, stream);
  if (!s.ok()) return g.Fail(s.WithContext(g.me() + ": SendOnStream"));
  return OkStatus();
}

Status Group::ReceiveOnStream(std::span<const int> peers, std::span<Message> out, Stream stream) {
  Impl& g = *impl_;
  M2N_ASSIGN_OR_RETURN(transport::StreamOps * ops, g.StreamPath("ReceiveOnStream"));
  if (out.size() != peers.size()) {
    return InvalidArgumentError(g.me() + ": ReceiveOnStream needs one output per peer (" +
                                std::to_string(peers.size()) + " peers, " +
                                std::to_string(out.size()) + " outputs)");
  }
  for (int peer : peers) M2N_RETURN_IF_ERROR(g.ValidPeer(peer, "receive"));
  M2N_RETURN_IF_ERROR(g.CheckPerPeerCount(peers, "ReceiveOnStream"));
  const uint64_t depth = static_cast<uint64_t>(g.options.slot_depth);
  // Every slot this receive needs must have been released: its next message cannot come before.
  for (size_t i = 0; i < peers.size(); ++i) {
    int index = g.IndexOfPeer(peers[i]);
    uint64_t ahead = static_cast<uint64_t>(
        std::count(peers.begin(), peers.begin() + static_cast<std::ptrdiff_t>(i), peers[i]));
    uint64_t sequence = g.stream.received[index] + ahead;
    if (g.stream.held[index * depth + sequence % depth] != 0) {
      return FailedPreconditionError(
          g.me() + ": ReceiveOnStream from " + RankName(peers[i]) + " would need slot " +
          std::to_string(sequence % depth) + ", which still holds message " +
          std::to_string(g.stream.held[index * depth + sequence % depth] - 1) +
          "; release it (ReleaseOnStream) first");
    }
  }
  auto& slots = g.stream.slots;
  slots.clear();
  for (size_t i = 0; i < peers.size(); ++i) {
    int index = g.IndexOfPeer(peers[i]);
    uint64_t sequence = g.stream.received[index]++;
    int slot = static_cast<int>(sequence % depth);
    g.stream.held[index * depth + static_cast<uint64_t>(slot)] = sequence + 1;
    slots.push_back({peers[i], slot});
    out[i] = Message{
        peers[i], slot, 0, g.SlotData(index, slot), sequence, ops->ArrivedLength(peers[i], slot)};
    ++g.stats.messages_received;
  }
  Status s = ops->WaitOnStream(slots, stream);
  if (!s.ok()) return g.Fail(s.WithContext(g.me() + ": ReceiveOnStream"));
  return OkStatus();
}

Status Group::ReleaseOnStream(std::span<const Message> messages, Stream stream) {
  Impl& g = *impl_;
  M2N_ASSIGN_OR_RETURN(transport::StreamOps * ops, g.StreamPath("ReleaseOnStream"));
  const uint64_t depth = static_cast<uint64_t>(g.options.slot_depth);
  for (size_t i = 0; i < messages.size(); ++i) {
    const Message& m = messages[i];
    M2N_RETURN_IF_ERROR(g.ValidPeer(m.peer, "release a message"));
    int index = g.IndexOfPeer(m.peer);
    bool held = m.slot >= 0 && static_cast<uint64_t>(m.slot) < depth &&
                g.stream.held[index * depth + static_cast<uint64_t>(m.slot)] == m.sequence + 1;
    for (size_t j = 0; j < i && held; ++j)
      held = !(messages[j].peer == m.peer && messages[j].slot == m.slot);
    if (!held) {
      return FailedPreconditionError(
          g.me() + ": ReleaseOnStream: message " + std::to_string(m.sequence) + " from " +
          RankName(m.peer) + " in slot " + std::to_string(m.slot) +
          " is not held (released already, or not from ReceiveOnStream)");
    }
  }
  auto& slots = g.stream.slots;
  slots.clear();
  for (const Message& m : messages) {
    int index = g.IndexOfPeer(m.peer);
    g.stream.held[index * depth + static_cast<uint64_t>(m.slot)] = 0;
    slots.push_back({m.peer, m.slot});
    ++g.stats.acks_sent;
  }
  Status s = ops->ReleaseOnStream(slots, stream);
  if (!s.ok()) return g.Fail(s.WithContext(g.me() + ": ReleaseOnStream"));
  return OkStatus();
}

}  // namespace m2n

// The host-driven data path: Send (take a credit per message, write payload and immediate into the
// peer's slot, wait for the writes to finish), Receive / TryReceive (hand out arrived messages in
// order) and Release (post the slot's ACK). With Options::checksum the payload and its trailer are
// staged and written in one write.
#include <algorithm>
#include <cstring>

#include "group/impl.h"

namespace m2n {

// Every request of a Send, before anything is posted: a bad request sends nothing. Fills
// scratch.sources with each request's registered region (null for an empty message).
Status Group::Impl::CheckSends(std::span<const SendRequest> requests) {
  auto& sources = scratch.sources;
  sources.assign(requests.size(), nullptr);
  for (size_t i = 0; i < requests.size(); ++i) {
    const SendRequest& r = requests[i];
    M2N_RETURN_IF_ERROR(ValidPeer(r.peer, "send"));
    M2N_RETURN_IF_ERROR(CheckSendLength(r));
    if (r.length == 0) continue;
    M2N_ASSIGN_OR_RETURN(MemoryRegion::Impl * region, FindRegion(r.data, r.length));
    sources[i] = region->region.get();
    if (options.checksum && sources[i]->kind() != MemoryKind::kHost) {
      return InvalidArgumentError(
          me() + ": send to " + RankName(r.peer) +
          ": with Options::checksum the payload must be in host memory (the CPU "
          "computes its checksum)");
    }
  }
  return OkStatus();
}

// The write of request `i` (peer index `index`) into `slot` of the peer, numbered `sequence`.
transport::Write Group::Impl::MakeWrite(const SendRequest& r, size_t i, int index, int slot,
                                        uint64_t sequence) {
  const transport::Region* source = scratch.sources[i];
  transport::Write w;
  w.peer = r.peer;
  w.lane = transport::Lane::kData;
  w.local = source;
  w.local_offset = r.length > 0 ? static_cast<const std::byte*>(r.data) - source->data() : 0;
  w.remote = remote_slots[index].get();
  w.remote_offset = remote_block_offset[index] + static_cast<size_t>(slot) * slot_stride();
  w.length = r.length;
  if (options.checksum) {
    // Payload and trailer go in one write from the stage of this (peer, slot).
    const size_t offset =
        static_cast<size_t>(index) * block_bytes() + static_cast<size_t>(slot) * slot_stride();
    std::byte* stage = staging.data() + offset;
    if (r.length > 0) std::memcpy(stage, r.data, r.length);
    const uint32_t trailer[2] = {static_cast<uint32_t>(r.length),
                                 TrailerCrc(stage, r.length, sequence, rank)};
    std::memcpy(stage + r.length, trailer, sizeof trailer);
    w.local = staging_region.get();
    w.local_offset = offset;
    w.length = r.length + kTrailerBytes;
  }
  w.imm = protocol::EncodeImmediate(
      {protocol::ImmKind::kData, slot, static_cast<uint32_t>(sequence)}, seed_out[index]);
  w.cookie = next_cookie++;
  return w;
}

// Posts the writes gathered in scratch.batch, counting them in flight.
Status Group::Impl::PostBatch() {
  auto& batch = scratch.batch;
  if (batch.empty()) return OkStatus();
  Status s = core->transport->Post(batch);
  if (!s.ok()) return Fail(TransportFailure(s, -1));
  writes_in_flight += batch.size();
  for (const transport::Write& w : batch) ++peer_writes_in_flight[IndexOfPeer(w.peer)];
  batch.clear();
  return OkStatus();
}

// "2 send(s) (to rank 5: 1, rank 6: 1)", for timeouts: which peers a write still waits on.
std::string Group::Impl::WritesInFlightText() const {
  std::string text = std::to_string(writes_in_flight) + " send(s)";
  std::string who;
  for (size_t i = 0; i < peers.size(); ++i) {
    if (peer_writes_in_flight[i] == 0) continue;
    who += (who.empty() ? "" : ", ") + RankName(peers[i]) + ": " +
           std::to_string(peer_writes_in_flight[i]);
  }
  return who.empty() ? text : text + " (to " + who + ")";
}

Status Group::Send(const SendRequest& request, Deadline deadline) {
  return Send({&request, 1}, deadline);
}

Status Group::Send(std::span<const SendRequest> requests, Deadline deadline) {
  Impl& g = *impl_;
  M2N_RETURN_IF_ERROR(g.CheckOpen());
  M2N_RETURN_IF_ERROR(g.UsePath(Impl::DataPath::kHost));
  M2N_RETURN_IF_ERROR(g.CheckSends(requests));
  g.scratch.batch.clear();
  for (size_t i = 0; i < requests.size(); ++i) {
    const SendRequest& r = requests[i];
    int index = g.IndexOfPeer(r.peer);
    protocol::Credits& credit = g.credits[index];
    if (credit.available() == 0) {
      ++g.stats.credit_waits;
      M2N_RETURN_IF_ERROR(g.PostBatch());
      M2N_RETURN_IF_ERROR(g.WaitUntil([&] { return credit.available() > 0; }, deadline,
                                      [&] {
                                        return "waiting for a free slot at " + RankName(r.peer) +
                                               " (all " + std::to_string(credit.depth()) +
                                               " slots hold messages it has not released)";
                                      }));
    }
    int slot = credit.Take();
    const uint64_t sequence = g.data_posted[index]++;
    g.scratch.batch.push_back(g.MakeWrite(r, i, index, slot, sequence));
    ++g.stats.messages_sent;
    g.stats.bytes_sent += r.length;
  }
  M2N_RETURN_IF_ERROR(g.PostBatch());
  return g.WaitUntil([&] { return g.writes_in_flight == 0; }, deadline,
                     [&] { return "waiting for " + g.WritesInFlightText() + " to complete"; });
}

StatusOr<bool> Group::TryReceive(int peer, Message* out) {
  Impl& g = *impl_;
  M2N_RETURN_IF_ERROR(g.CheckOpen());
  M2N_RETURN_IF_ERROR(g.UsePath(Impl::DataPath::kHost));
  M2N_RETURN_IF_ERROR(g.ValidPeer(peer, "receive"));
  int index = g.IndexOfPeer(peer);
  if (g.receive[index].queued() == 0) M2N_RETURN_IF_ERROR(g.Progress());
  if (g.receive[index].queued() == 0) return false;
  auto a = g.receive[index].Deliver();
  *out = Message{peer, a.slot, a.length, g.SlotData(index, a.slot), a.sequence};
  return true;
}

StatusOr<Message> Group::Receive(int peer, Deadline deadline) {
  Message m;
  M2N_RETURN_IF_ERROR(Receive({&peer, 1}, {&m, 1}, deadline));
  return m;
}

Status Group::Receive(std::span<const int> peers, std::span<Message> out, Deadline deadline) {
  Impl& g = *impl_;
  M2N_RETURN_IF_ERROR(g.CheckOpen());
  M2N_RETURN_IF_ERROR(g.UsePath(Impl::DataPath::kHost));
  if (out.size() != peers.size()) {
    return InvalidArgumentError(g.me() + ": Receive needs one output per peer (" +
                                std::to_string(peers.size()) + " peers, " +
                                std::to_string(out.size()) + " outputs)");
  }
  // How many messages each peer must have queued; nothing is taken until all are there, so a
  // timeout leaves every message in place.
  auto& need = g.scratch.need;
  need.clear();
  for (int peer : peers) {
    M2N_RETURN_IF_ERROR(g.ValidPeer(peer, "receive"));
    int index = g.IndexOfPeer(peer);
    auto it = std::find_if(need.begin(), need.end(), [&](auto& n) { return n.first == index; });
    if (it == need.end())
      need.emplace_back(index, 1);
    else
      ++it->second;
  }
  auto all_there = [&] {
    for (auto& [index, count] : need) {
      if (g.receive[index].queued() < count) return false;
    }
    return true;
  };
  M2N_RETURN_IF_ERROR(g.WaitUntil(all_there, deadline, [&] {
    std::vector<int> missing;
    for (auto& [index, count] : need) {
      if (g.receive[index].queued() < count) missing.push_back(g.peers[index]);
    }
    return "waiting for a message from rank(s) " + JoinRanks(missing);
  }));
  for (size_t i = 0; i < peers.size(); ++i) {
    int index = g.IndexOfPeer(peers[i]);
    auto a = g.receive[index].Deliver();
    out[i] = Message{peers[i], a.slot, a.length, g.SlotData(index, a.slot), a.sequence};
  }
  return OkStatus();
}

Status Group::Release(const Message& message) { return Release({&message, 1}); }

Status Group::Release(std::span<const Message> messages) {
  Impl& g = *impl_;
  M2N_RETURN_IF_ERROR(g.CheckOpen());
  for (const Message& m : messages) {
    M2N_RETURN_IF_ERROR(g.ValidPeer(m.peer, "release a message"));
    int index = g.IndexOfPeer(m.peer);
    Status s = g.receive[index].Release(m.slot, m.sequence);
    if (!s.ok()) return s.WithContext(g.me());
    M2N_RETURN_IF_ERROR(g.PostAck(index, m.slot));
  }
  return OkStatus();
}

}  // namespace m2n

// The slot / credit / ACK protocol as completions drive it: one round of transport progress,
// and what each completion means. A data immediate announces a message in one of our slots (its
// sequence number and, with Options::checksum, its trailer are checked before anyone sees it); an
// ACK immediate hands a slot of the peer back to us as a credit; a finished write ends a Send's
// wait. Releasing a message posts its ACK (PostAck). Immediates are encoded by
// protocol/immediate.h.
#include <cstdio>
#include <cstring>

#include "group/impl.h"

namespace m2n {

using transport::Completion;
using transport::Lane;

// One round of transport progress; applies every completion.
Status Group::Impl::Progress() {
  auto polled = core->transport->Poll(scratch.completions);
  if (!polled.ok()) return Fail(TransportFailure(polled.status(), -1));
  for (size_t i = 0; i < *polled; ++i) {
    const Completion& c = scratch.completions[i];
    switch (c.type) {
      case Completion::Type::kWriteDone:
        if ((c.cookie & kAckCookie) == 0) {
          --writes_in_flight;
          const int index = IndexOfPeer(c.peer);
          if (index >= 0 && peer_writes_in_flight[index] > 0) --peer_writes_in_flight[index];
        }
        break;
      case Completion::Type::kError:
        return Fail(TransportFailure(c.error, c.peer));
      case Completion::Type::kImmediate:
        M2N_RETURN_IF_ERROR(OnImmediate(c));
        break;
    }
  }
  return OkStatus();
}

Status Group::Impl::OnImmediate(const Completion& c) {
  int index = IndexOfPeer(c.peer);
  if (index < 0) {
    return Fail(DataLossError(me() + ": an immediate arrived from " + RankName(c.peer) +
                              ", which is not a peer of this rank"));
  }
  auto decoded = protocol::DecodeImmediate(c.imm, c.peer, rank, seed_in[index]);
  if (!decoded.ok()) {
    return Fail(
        decoded.status().WithContext(me() + ": on the " + std::string(LaneName(c.lane)) + " lane"));
  }
  const protocol::Immediate& imm = *decoded;
  bool ack_lane = c.lane == Lane::kAck;
  if (ack_lane != (imm.kind == protocol::ImmKind::kAck)) {
    return Fail(DataLossError(me() + ": " + protocol::ToString(imm) + " from " + RankName(c.peer) +
                              " arrived on the " + std::string(LaneName(c.lane)) + " lane"));
  }
  if (ack_lane) return OnAck(index, imm, c.peer);
  const uint64_t sequence = receive[index].next_sequence();
  M2N_RETURN_IF_ERROR(CheckSequence(imm, sequence, c.peer, "message"));
  size_t length = c.length;
  if (options.checksum) {
    M2N_ASSIGN_OR_RETURN(length, CheckTrailer(index, imm.slot, c.length, sequence));
  }
  Status s = receive[index].OnArrival(imm.slot, length);
  if (!s.ok()) return Fail(s.WithContext(me()));
  ++stats.messages_received;
  stats.bytes_received += length;
  return OkStatus();
}

// An ACK from the peer at `index`: the slot it names is ours to write again.
Status Group::Impl::OnAck(int index, const protocol::Immediate& imm, int peer) {
  M2N_RETURN_IF_ERROR(CheckSequence(imm, acks_heard[index], peer, "ACK"));
  Status s = credits[index].OnAck(imm.slot);
  if (!s.ok()) return Fail(s.WithContext(me()));
  ++acks_heard[index];
  ++stats.acks_received;
  return OkStatus();
}

// Immediates of one kind from one peer arrive in posting order, each numbered; anything else
// means one was lost, duplicated or reordered on the way, and the message it announces (or the
// slot an ACK returns) cannot be trusted, so nothing of it is handed out.
Status Group::Impl::CheckSequence(const protocol::Immediate& imm, uint64_t expected, int peer,
                                  std::string_view what) {
  const uint32_t want = static_cast<uint32_t>(expected % protocol::kSequenceModulus);
  if (imm.sequence == want) return OkStatus();
  return Fail(DataLossError(
      me() + ": " + std::string(what) + " from " + RankName(peer) +
      " out of sequence: expected number " + std::to_string(expected) + " (" +
      std::to_string(want) + " mod " + std::to_string(protocol::kSequenceModulus) + "), got " +
      std::to_string(imm.sequence) + " mod " + std::to_string(protocol::kSequenceModulus) +
      " (slot " + std::to_string(imm.slot) +
      "): an immediate was lost, duplicated or reordered on the way; nothing of it was delivered"));
}

// Options::checksum: verifies the trailer of the message that landed in (index, slot) before
// anyone sees it; returns the payload length.
StatusOr<size_t> Group::Impl::CheckTrailer(int index, int slot, size_t written, uint64_t sequence) {
  const int peer = peers[index];
  auto bad = [&](const std::string& why) {
    return Fail(DataLossError(me() + ": message " + std::to_string(sequence) + " from " +
                              RankName(peer) + " (slot " + std::to_string(slot) + ", " +
                              std::to_string(written) + " bytes written) " + why));
  };
  if (slot >= options.slot_depth)
    return bad("names a slot outside [0, " + std::to_string(options.slot_depth) + ")");
  if (written < kTrailerBytes || written > slot_stride()) {
    return bad("cannot hold a payload and its " + std::to_string(kTrailerBytes) +
               "-byte checksum trailer");
  }
  const size_t length = written - kTrailerBytes;
  const std::byte* data = SlotData(index, slot);
  uint32_t trailer[2];
  std::memcpy(trailer, data + length, sizeof trailer);
  if (trailer[0] != length) {
    return bad("has a trailer for " + std::to_string(trailer[0]) + " payload bytes, not " +
               std::to_string(length));
  }
  const uint32_t crc = TrailerCrc(data, length, sequence, peer);
  if (trailer[1] != crc) {
    char text[64];
    snprintf(text, sizeof text, "0x%08x, the payload's is 0x%08x", trailer[1], crc);
    return bad("fails its checksum (the trailer says " + std::string(text) +
               "): corrupted on the way; it was not delivered");
  }
  return length;
}

// Hands `slot` back to the peer at `index`: an ACK immediate on the ACK lane, carrying no data.
Status Group::Impl::PostAck(int index, int slot) {
  int peer = peers[index];
  transport::Write w;
  w.peer = peer;
  w.lane = Lane::kAck;
  w.imm = protocol::EncodeImmediate(
      {protocol::ImmKind::kAck, slot, static_cast<uint32_t>(acks_posted[index])}, seed_out[index]);
  w.cookie = kAckCookie | next_cookie++;
  Status s = core->transport->Post({&w, 1});
  if (!s.ok()) return Fail(TransportFailure(s, peer));
  ++acks_posted[index];
  ++stats.acks_sent;
  return OkStatus();
}

}  // namespace m2n

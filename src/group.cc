// Group: bootstrap, configuration check, connection, and the slot / credit / ACK protocol on top of
// one Transport. See docs/architecture.md for the protocol.
#include "m2n/group.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bootstrap/store.h"
#include "group_factory.h"
#include "protocol/checksum.h"
#include "protocol/config_check.h"
#include "protocol/immediate.h"
#include "protocol/slots.h"
#include "transports/transport.h"
#include "m2n/topology.h"
#include "m2n/version.h"

namespace m2n {

namespace {

using transport::Completion;
using transport::Lane;

std::string RankName(int rank) { return "rank " + std::to_string(rank); }
std::string_view LaneName(Lane lane) { return lane == Lane::kAck ? "ACK" : "data"; }

// Options::checksum: after the payload in its slot, {uint32 payload length, uint32 CRC-32C of the
// payload, the message's sequence number, its length and the writer's rank}. It travels in the
// same write as the payload (so the immediate still announces both at once), which is why the
// sender stages the payload: a zero-copy write from the user's buffer has no room for it.
constexpr size_t kTrailerBytes = 8;

uint32_t TrailerCrc(const std::byte* payload, size_t length, uint64_t sequence, int writer) {
  uint32_t crc = protocol::Crc32c(payload, length);
  const uint64_t tail[2] = {sequence, (uint64_t{static_cast<uint32_t>(writer)} << 32) | length};
  return protocol::Crc32c(tail, sizeof tail, crc);
}

// Cookies of our own writes: ACK writes are not waited on by a Send, so they are told apart.
constexpr uint64_t kAckCookie = uint64_t{1} << 63;

std::string JoinRanks(const std::vector<int>& ranks) {
  std::string out;
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(ranks[i]);
  }
  return out;
}

StatusOr<const transport::TransportInfo*> ChooseTransport(const std::string& wanted, MemoryKind slots) {
  auto all = transport::RegisteredTransports();
  std::string names;
  for (const auto& info : all) names += (names.empty() ? "" : ", ") + std::string(info.name);
  if (all.empty()) {
    return UnavailableError("no transport was compiled into this build of m2n (see the configure summary)");
  }
  if (wanted == "auto") {
    std::string reasons;
    for (const auto& info : all) {
      if (slots == MemoryKind::kCuda && !info.cuda_memory) {
        reasons += "; " + std::string(info.name) + ": cannot place receive slots in CUDA memory";
        continue;
      }
      Status usable = info.probe(slots);
      if (usable.ok()) return &info;
      reasons += "; " + std::string(info.name) + ": " + usable.message();
    }
    return UnavailableError("no usable transport here" + reasons);
  }
  for (const auto& info : all) {
    if (info.name == wanted) {
      Status usable = info.probe(slots);
      if (!usable.ok()) return usable.WithContext("transport '" + wanted + "' is not usable here");
      return &info;
    }
  }
  return InvalidArgumentError("unknown transport '" + wanted + "'; this build has: " + names);
}

// spin_us = -1: spin 50 us unless this host runs more of the group's ranks than it has online
// cores; then a spinning rank only delays the rank it waits for, so yield at once.
// Every rank publishes its host name (PublishHost) whatever its own spin setting, since a rank with
// spin_us = -1 reads them all.
std::string HostName() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return host;
}

Status PublishHost(bootstrap::Store& store, int rank) {
  return store.SetString("m2n/host/" + std::to_string(rank), HostName());
}

StatusOr<int> AutoSpinUs(bootstrap::Store& store, int world, Deadline deadline) {
  const std::string host = HostName();
  int local = 0;
  for (int r = 0; r < world; ++r) {
    M2N_ASSIGN_OR_RETURN(std::string other, store.GetString("m2n/host/" + std::to_string(r), deadline));
    local += other == host;
  }
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  return local > cores ? 0 : 50;
}

}  // namespace

std::string_view RoleName(Role role) { return role == Role::kSender ? "sender" : "receiver"; }

std::string_view MemoryKindName(MemoryKind kind) {
  return kind == MemoryKind::kHost ? "host" : "cuda";
}

std::vector<std::string> AvailableTransports() {
  std::vector<std::string> names;
  for (const auto& info : transport::RegisteredTransports()) names.emplace_back(info.name);
  return names;
}

// ---------------------------------------------------------------------------------------------
// Registered memory. The Core is shared by the Group and every MemoryRegion, so a region that
// outlives its Group still deregisters against a live transport.

struct Core {
  std::unique_ptr<transport::Transport> transport;
  // Registered send regions by base address, for finding the region of a SendRequest.
  std::map<uintptr_t, MemoryRegion::Impl*> regions;
};

struct MemoryRegion::Impl {
  std::shared_ptr<Core> core;
  std::unique_ptr<transport::Region> region;
  ~Impl() {
    if (core) core->regions.erase(reinterpret_cast<uintptr_t>(region->data()));
  }
};

MemoryRegion::MemoryRegion(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MemoryRegion::MemoryRegion(MemoryRegion&&) noexcept = default;
MemoryRegion& MemoryRegion::operator=(MemoryRegion&&) noexcept = default;
MemoryRegion::~MemoryRegion() = default;
std::byte* MemoryRegion::data() const { return impl_ ? impl_->region->data() : nullptr; }
size_t MemoryRegion::size() const { return impl_ ? impl_->region->size() : 0; }
MemoryKind MemoryRegion::kind() const { return impl_ ? impl_->region->kind() : MemoryKind::kHost; }

// ---------------------------------------------------------------------------------------------

struct Group::Impl {
  Options options;
  int rank = -1;
  int world = 0;
  Role role = Role::kSender;
  std::vector<int> peers;  // the other side, ascending
  std::string transport_name;
  std::unique_ptr<bootstrap::Store> store;
  std::shared_ptr<Core> core;

  // Our receive slots: one block of depth x slot_bytes per peer, in peers order.
  std::unique_ptr<transport::Region> slots;
  // Per peer (by index into peers): its slots for us, our slot bookkeeping for it, our credits.
  std::vector<std::unique_ptr<transport::RemoteRegion>> remote_slots;
  std::vector<size_t> remote_block_offset;  // where our block starts in the peer's slot region
  std::vector<protocol::ReceiveSlots> receive;
  std::vector<protocol::Credits> credits;
  std::vector<int> peer_index;  // rank -> index into peers, -1 for the same side

  uint64_t next_cookie = 1;
  uint64_t writes_in_flight = 0;  // data writes posted and not yet done
  std::vector<uint32_t> peer_writes_in_flight;  // the same per peer, to name them in a timeout
  std::vector<Completion> completions = std::vector<Completion>(64);
  // Scratch reused by every call, so the data path does not allocate in steady state.
  std::vector<transport::Write> batch;
  std::vector<const transport::Region*> sources;
  std::vector<std::pair<int, size_t>> need;  // Receive: (peer index, messages wanted)
  // Stream-ordered path: messages enqueued per peer (the slot is the count mod slot_depth, the same
  // on both sides), and per (peer, slot) the sequence + 1 of a received message not yet released.
  enum class DataPath { kUnset, kHost, kStream };
  DataPath data_path = DataPath::kUnset;
  std::vector<uint64_t> stream_sent;
  std::vector<uint64_t> stream_received;
  std::vector<uint64_t> stream_held;
  std::vector<transport::StreamWrite> stream_writes;
  std::vector<transport::StreamSlot> stream_slots;
  std::vector<int> stream_peers;
  // Sequence numbers of immediates, per peer: data we posted (a receiver's count is its
  // ReceiveSlots::next_sequence), ACKs we posted, ACKs we heard.
  std::vector<uint64_t> data_posted;
  std::vector<uint64_t> acks_posted;
  std::vector<uint64_t> acks_heard;
  // Per peer: the pair's part of the immediate check (protocol::ImmediateSeed), for immediates we
  // write to the peer and for those it writes to us.
  std::vector<uint8_t> seed_out;
  std::vector<uint8_t> seed_in;
  // Options::checksum: payload + trailer are staged here, one slot's worth per (peer, slot), and
  // written from here; a stage is reused only after its slot's ACK, when its write is long done.
  std::vector<std::byte> staging;
  std::unique_ptr<transport::Region> staging_region;
  Status fatal;  // sticky: once a peer or the protocol failed, every call returns it
  // Group::Abort, from any thread: every wait checks it, and every later call returns kAborted.
  std::atomic<bool> aborted{false};
  bool closed = false;
  int barrier_count = 0;
  Clock::time_point next_liveness_check{};
  Clock::time_point store_silent_since{};  // the first unanswered liveness check since the last answer
  GroupStats stats;

  // A slot's bytes in the slot region: the payload, and the checksum trailer when it is on.
  size_t slot_stride() const { return options.slot_bytes + (options.checksum ? kTrailerBytes : 0); }
  size_t block_bytes() const { return slot_stride() * static_cast<size_t>(options.slot_depth); }
  std::byte* SlotData(int index, int slot) const {
    return slots->data() + static_cast<size_t>(index) * block_bytes() + static_cast<size_t>(slot) * slot_stride();
  }
  std::string me() const { return RankName(rank) + " (" + std::string(RoleName(role)) + ")"; }

  Status CheckOpen() const {
    if (closed) return FailedPreconditionError(me() + ": the group is closed");
    if (aborted.load(std::memory_order_acquire)) return AbortedStatus();
    return fatal;
  }

  Status AbortedStatus(const std::string& during = "") const {
    return AbortedError(me() + ": the group was aborted (Group::Abort)" + (during.empty() ? "" : " while " + during) +
                        "; close it");
  }

  // A store call that failed. Rank 0 serves the store, so on any other rank a store that is gone
  // means rank 0 is.
  Status StoreFailure(const Status& error, const std::string& during) const {
    if (rank != 0 && error.code() == StatusCode::kUnavailable) {
      return UnavailableError(me() + ": rank 0 died or is unreachable (it serves the bootstrap store: " +
                              error.message() + ") while " + during);
    }
    return error.WithContext(me() + " while " + during);
  }

  int IndexOfPeer(int peer) const {
    return peer >= 0 && peer < world ? peer_index[peer] : -1;
  }

  Status ValidPeer(int peer, std::string_view what) const {
    if (IndexOfPeer(peer) >= 0) return OkStatus();
    std::string why = peer < 0 || peer >= world
                          ? "outside [0, " + std::to_string(world) + ")"
                          : "on this rank's own side (" + std::string(RoleName(role)) + "s talk to " +
                                (role == Role::kSender ? "receivers" : "senders") + " only)";
    return InvalidArgumentError(me() + ": " + std::string(what) + " to/from rank " +
                                std::to_string(peer) + ", which is " + why);
  }

  // "2 send(s) (to rank 5: 1, rank 6: 1)", for timeouts: which peers a write still waits on.
  std::string WritesInFlightText() const {
    std::string text = std::to_string(writes_in_flight) + " send(s)";
    std::string who;
    for (size_t i = 0; i < peers.size(); ++i) {
      if (peer_writes_in_flight[i] == 0) continue;
      who += (who.empty() ? "" : ", ") + RankName(peers[i]) + ": " + std::to_string(peer_writes_in_flight[i]);
    }
    return who.empty() ? text : text + " (to " + who + ")";
  }

  Status Fail(Status status) {
    if (fatal.ok()) fatal = std::move(status);
    return fatal;
  }

  // One round of transport progress; applies every completion.
  Status Progress() {
    auto polled = core->transport->Poll(completions);
    if (!polled.ok()) return Fail(TransportFailure(polled.status(), -1));
    for (size_t i = 0; i < *polled; ++i) {
      const Completion& c = completions[i];
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

  // A transport error about `peer` (-1: none named). When a rank died, that is the cause worth
  // reporting (a survivor's transport often fails only as a consequence: a peer that gave up on
  // the dead rank closed its connections), so the store is asked first. The transport may see a
  // death before the store's server does (a reset connection against that server's next poll), so
  // the store gets a short while, bounded by the liveness period, to confirm it.
  Status TransportFailure(const Status& error, int peer) {
    const auto until = Clock::now() + std::chrono::milliseconds(std::clamp(2 * options.liveness_check_ms, 20, 1000));
    for (;;) {
      Status dead = DeadRanksStatus([] { return std::string("the transport failed"); }, Deadline::At(until));
      if (!dead.ok()) return Status(dead.code(), dead.message() + " (the transport reported: " + error.message() + ")");
      if (peer < 0 || Clock::now() >= until) break;
      usleep(2000);
    }
    std::string who = peer >= 0 ? "lost " + RankName(peer) + ": " : "";
    return Status(error.code(), me() + ": " + who + error.message());
  }

  Status OnImmediate(const Completion& c) {
    int index = IndexOfPeer(c.peer);
    if (index < 0) {
      return Fail(DataLossError(me() + ": an immediate arrived from " + RankName(c.peer) +
                                ", which is not a peer of this rank"));
    }
    auto decoded = protocol::DecodeImmediate(c.imm, c.peer, rank, seed_in[index]);
    if (!decoded.ok()) {
      return Fail(decoded.status().WithContext(me() + ": on the " + std::string(LaneName(c.lane)) + " lane"));
    }
    const protocol::Immediate& imm = *decoded;
    bool ack_lane = c.lane == Lane::kAck;
    if (ack_lane != (imm.kind == protocol::ImmKind::kAck)) {
      return Fail(DataLossError(me() + ": " + protocol::ToString(imm) + " from " + RankName(c.peer) +
                                " arrived on the " + std::string(LaneName(c.lane)) + " lane"));
    }
    if (ack_lane) {
      M2N_RETURN_IF_ERROR(CheckSequence(imm, acks_heard[index], c.peer, "ACK"));
      Status s = credits[index].OnAck(imm.slot);
      if (!s.ok()) return Fail(s.WithContext(me()));
      ++acks_heard[index];
      ++stats.acks_received;
      return OkStatus();
    }
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

  // Immediates of one kind from one peer arrive in posting order, each numbered; anything else
  // means one was lost, duplicated or reordered on the way, and the message it announces (or the
  // slot an ACK returns) cannot be trusted, so nothing of it is handed out.
  Status CheckSequence(const protocol::Immediate& imm, uint64_t expected, int peer, std::string_view what) {
    const uint32_t want = static_cast<uint32_t>(expected % protocol::kSequenceModulus);
    if (imm.sequence == want) return OkStatus();
    return Fail(DataLossError(
        me() + ": " + std::string(what) + " from " + RankName(peer) + " out of sequence: expected number " +
        std::to_string(expected) + " (" + std::to_string(want) + " mod " +
        std::to_string(protocol::kSequenceModulus) + "), got " + std::to_string(imm.sequence) + " mod " +
        std::to_string(protocol::kSequenceModulus) + " (slot " + std::to_string(imm.slot) +
        "): an immediate was lost, duplicated or reordered on the way; nothing of it was delivered"));
  }

  // Options::checksum: verifies the trailer of the message that landed in (index, slot) before
  // anyone sees it; returns the payload length.
  StatusOr<size_t> CheckTrailer(int index, int slot, size_t written, uint64_t sequence) {
    const int peer = peers[index];
    auto bad = [&](const std::string& why) {
      return Fail(DataLossError(me() + ": message " + std::to_string(sequence) + " from " + RankName(peer) +
                                " (slot " + std::to_string(slot) + ", " + std::to_string(written) +
                                " bytes written) " + why));
    };
    if (slot >= options.slot_depth) return bad("names a slot outside [0, " + std::to_string(options.slot_depth) + ")");
    if (written < kTrailerBytes || written > slot_stride()) {
      return bad("cannot hold a payload and its " + std::to_string(kTrailerBytes) + "-byte checksum trailer");
    }
    const size_t length = written - kTrailerBytes;
    const std::byte* data = SlotData(index, slot);
    uint32_t trailer[2];
    std::memcpy(trailer, data + length, sizeof trailer);
    if (trailer[0] != length) {
      return bad("has a trailer for " + std::to_string(trailer[0]) + " payload bytes, not " + std::to_string(length));
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

  // Waits, making progress, until done() or the deadline; `what` names the wait in errors.
  // Spins for spin_us after the last progress, then yields the core each round; every
  // liveness_check_ms it asks the store whether a rank died, and once more before it reports a
  // timeout, so that a wait that ran out because a rank died says so.
  template <typename Done, typename What>
  Status WaitUntil(Done done, Deadline deadline, What what) {
    auto spin_until = Clock::now() + std::chrono::microseconds(options.spin_us);
    for (uint32_t round = 0;; ++round) {
      M2N_RETURN_IF_ERROR(Progress());
      if (done()) return OkStatus();
      // Reading the clock costs as much as a poll: look at it every 16th round only.
      if (round % 16 != 15) continue;
      if (aborted.load(std::memory_order_acquire)) return AbortedStatus(what());
      auto now = Clock::now();
      if (now >= deadline.time()) {
        M2N_RETURN_IF_ERROR(CheckRanksAlive(what, LastLivenessBound()));
        return DeadlineExceededError(me() + ": timed out " + what() + StoreSilence());
      }
      if (now >= next_liveness_check) {
        next_liveness_check = now + std::chrono::milliseconds(options.liveness_check_ms);
        M2N_RETURN_IF_ERROR(CheckRanksAlive(what, LivenessBound(deadline)));
      }
      if (now >= spin_until) sched_yield();
    }
  }

  // Fails (sticky) if any rank of the group died: a group is one fault domain, since a rank that
  // only talks to live peers still waits on them, and they on the dead one.
  template <typename What>
  Status CheckRanksAlive(What what, Deadline check_by) {
    Status dead = DeadRanksStatus(what, check_by);
    return dead.ok() ? dead : Fail(std::move(dead));
  }

  // How long one liveness question may wait for the store's answer: a stopped or stalled rank 0
  // (which serves the store) must hold neither a call past its own deadline nor Abort past one
  // liveness period.
  Deadline LivenessBound(Deadline call) const {
    const auto period = std::chrono::milliseconds(std::clamp(options.liveness_check_ms, 10, 1000));
    return Deadline::At(std::min(call.time(), Clock::now() + period));
  }
  // The question asked once a call's deadline has passed: a short grace, so a call ends at most
  // this long after its deadline.
  Deadline LastLivenessBound() const {
    return Deadline::After(std::chrono::milliseconds(std::clamp(options.liveness_check_ms, 10, 100)));
  }
  // Said in a timeout when the store has not been answering: the wait may have run out because
  // rank 0 is stopped, not because of the peers it waited on.
  std::string StoreSilence() const {
    if (store_silent_since == Clock::time_point{}) return "";
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - store_silent_since).count();
    return "; the bootstrap store on rank 0 has not answered a liveness check for " + std::to_string(ms) +
           " ms either (rank 0 stopped or overloaded?)";
  }

  // kUnavailable naming the ranks that left without a goodbye, or OK. Rank 0 serves the store, so
  // a store that is gone means rank 0 is.
  // A store that does not answer by `check_by` is not an error here (the caller's own deadline
  // decides); it is remembered for the timeout's message.
  template <typename What>
  Status DeadRanksStatus(What what, Deadline check_by) {
    if (!store) return OkStatus();
    auto dead = store->DeadRanks(check_by);
    if (!dead.ok() && dead.status().code() == StatusCode::kDeadlineExceeded) {
      if (store_silent_since == Clock::time_point{}) store_silent_since = Clock::now();
      return OkStatus();
    }
    if (!dead.ok()) return StoreFailure(dead.status(), what());
    store_silent_since = Clock::time_point{};
    std::vector<int> gone;
    for (int r : *dead) {
      if (r != rank) gone.push_back(r);
    }
    if (gone.empty()) return OkStatus();
    return UnavailableError(me() + ": " + (gone.size() == 1 ? "rank " : "ranks ") + JoinRanks(gone) +
                            " died" +
                            " (bootstrap connection closed without a goodbye) while " + what());
  }

  Status PostAck(int index, int slot) {
    int peer = peers[index];
    transport::Write w;
    w.peer = peer;
    w.lane = Lane::kAck;
    w.imm = protocol::EncodeImmediate({protocol::ImmKind::kAck, slot, static_cast<uint32_t>(acks_posted[index])},
                                      seed_out[index]);
    w.cookie = kAckCookie | next_cookie++;
    Status s = core->transport->Post({&w, 1});
    if (!s.ok()) return Fail(TransportFailure(s, peer));
    ++acks_posted[index];
    ++stats.acks_sent;
    return OkStatus();
  }

  StatusOr<MemoryRegion::Impl*> FindRegion(const void* data, size_t length) const {
    auto address = reinterpret_cast<uintptr_t>(data);
    auto it = core->regions.upper_bound(address);
    if (it != core->regions.begin()) {
      --it;
      const transport::Region& r = *it->second->region;
      uintptr_t base = reinterpret_cast<uintptr_t>(r.data());
      if (address >= base && address - base <= r.size() && length <= r.size() - (address - base)) {
        return it->second;
      }
    }
    char text[64];
    snprintf(text, sizeof text, "%p", data);
    return InvalidArgumentError(me() + ": buffer [" + text + ", +" + std::to_string(length) +
                                ") is not inside memory registered with this group (RegisterMemory)");
  }

  // A barrier through the store that keeps the transport moving while it waits, so that peers
  // still finishing their sends (which may need our progress) are not stalled by it.
  Status StoreBarrier(const std::string& name, Deadline deadline) {
    const std::string key = "m2n/barrier/" + name;
    auto what = [&] { return "waiting in barrier '" + name + "'"; };
    auto arrived = store->Add(key, 1);
    if (!arrived.ok()) return Fail(StoreFailure(arrived.status(), what()));
    int64_t count = *arrived;
    auto spin_until = Clock::now() + std::chrono::microseconds(options.spin_us);
    while (count < world) {
      M2N_RETURN_IF_ERROR(Progress());
      if (aborted.load(std::memory_order_acquire)) return AbortedStatus(what());
      if (deadline.Expired()) {
        M2N_RETURN_IF_ERROR(CheckRanksAlive(what, LastLivenessBound()));
        return DeadlineExceededError(me() + ": barrier '" + name + "': " + std::to_string(count) + " of " +
                                     std::to_string(world) + " ranks arrived by the deadline");
      }
      auto now = Clock::now();
      if (now >= next_liveness_check) {
        next_liveness_check = now + std::chrono::milliseconds(options.liveness_check_ms);
        M2N_RETURN_IF_ERROR(CheckRanksAlive(what, LivenessBound(deadline)));
      }
      auto current = store->Add(key, 0);
      if (!current.ok()) return Fail(StoreFailure(current.status(), what()));
      count = *current;
      if (now >= spin_until) usleep(50);
    }
    return OkStatus();
  }

  Status Connect(Deadline deadline);
  Status Teardown(Deadline deadline, bool clean);

  // The data path a call uses: a group uses the host-driven calls or the stream-ordered ones.
  Status UsePath(DataPath path) {
    if (data_path == DataPath::kUnset) data_path = path;
    if (data_path == path) return OkStatus();
    return FailedPreconditionError(
        me() + ": this group already moves its messages with the " +
        (data_path == DataPath::kHost ? "host-driven Send / Receive" : "stream-ordered *OnStream calls") +
        "; one group uses one of the two");
  }

  // The transport's stream-ordered operations, after every check a stream call needs.
  StatusOr<transport::StreamOps*> StreamPath(std::string_view call) {
    M2N_RETURN_IF_ERROR(CheckOpen());
    transport::StreamOps* ops = core->transport->stream_ops();
    if (ops == nullptr) {
      return UnimplementedError(me() + ": " + std::string(call) + ": transport '" + transport_name +
                                "' has no stream-ordered operations (a GPU transport such as cuda_ipc has)");
    }
    if (options.slot_memory != MemoryKind::kCuda) {
      return FailedPreconditionError(me() + ": " + std::string(call) +
                                     " needs receive slots in device memory (Options::slot_memory = kCuda)");
    }
    M2N_RETURN_IF_ERROR(UsePath(DataPath::kStream));
    Status device = ops->StreamError();
    if (!device.ok()) return Fail(device.WithContext(me()));
    return ops;
  }

  // Rejects a batch that names one peer more than slot_depth times.
  Status CheckPerPeerCount(std::span<const int> peers_in_batch, std::string_view call) {
    auto& count = need;
    count.clear();
    for (int peer : peers_in_batch) {
      int index = IndexOfPeer(peer);
      auto it = std::find_if(count.begin(), count.end(), [&](auto& n) { return n.first == index; });
      if (it == count.end()) count.emplace_back(index, 1);
      else if (++it->second > static_cast<size_t>(options.slot_depth)) {
        return InvalidArgumentError(me() + ": " + std::string(call) + " names " + RankName(peer) +
                                    " more than slot_depth (" + std::to_string(options.slot_depth) +
                                    ") times in one call");
      }
    }
    return OkStatus();
  }
};

// ---------------------------------------------------------------------------------------------

Status Group::Impl::Connect(Deadline deadline) {
  const int depth = options.slot_depth;
  // Our receive slots, then every peer's address and key, through the store.
  if (options.slot_memory == MemoryKind::kCuda && !core->transport->capabilities().cuda_memory) {
    return InvalidArgumentError(me() + ": Options::slot_memory is cuda, but transport '" + transport_name +
                                "' cannot place receive slots in CUDA memory");
  }
  M2N_ASSIGN_OR_RETURN(slots, core->transport->Allocate(block_bytes() * peers.size(), options.slot_memory));
  M2N_ASSIGN_OR_RETURN(transport::Bytes slot_key, slots->PackRemoteKey());
  M2N_RETURN_IF_ERROR(store->Set("m2n/slots/" + std::to_string(rank), slot_key));
  for (int peer : peers) {
    M2N_ASSIGN_OR_RETURN(transport::Bytes address, core->transport->LocalAddress(peer));
    M2N_RETURN_IF_ERROR(store->Set("m2n/addr/" + std::to_string(rank) + "/" + std::to_string(peer), address));
  }
  for (int peer : peers) {
    M2N_ASSIGN_OR_RETURN(bootstrap::Bytes address,
                         store->Get("m2n/addr/" + std::to_string(peer) + "/" + std::to_string(rank), deadline));
    Status s = core->transport->Connect(peer, address);
    if (!s.ok()) return s.WithContext(me() + ": connecting to " + RankName(peer));
  }
  for (size_t i = 0; i < peers.size(); ++i) {
    int peer = peers[i];
    M2N_ASSIGN_OR_RETURN(bootstrap::Bytes key, store->Get("m2n/slots/" + std::to_string(peer), deadline));
    auto remote = core->transport->UnpackRemoteKey(peer, key);
    if (!remote.ok()) return remote.status().WithContext(me() + ": slots of " + RankName(peer));
    remote_slots.push_back(std::move(remote).value());
    // The peer's slot region holds one block per rank on our side, in ascending rank order; ranks
    // on our side are contiguous, so our block index is our offset within our side.
    int our_index = role == Role::kSender ? rank : rank - options.num_senders;
    remote_block_offset.push_back(block_bytes() * static_cast<size_t>(our_index));
    receive.emplace_back(peer, depth, options.slot_bytes);
    credits.emplace_back(peer, depth);
  }
  data_posted.assign(peers.size(), 0);
  peer_writes_in_flight.assign(peers.size(), 0);
  acks_posted.assign(peers.size(), 0);
  acks_heard.assign(peers.size(), 0);
  for (int peer : peers) {
    seed_out.push_back(protocol::ImmediateSeed(rank, peer));
    seed_in.push_back(protocol::ImmediateSeed(peer, rank));
  }
  if (options.checksum) {
    staging.resize(block_bytes() * peers.size());
    auto staged = core->transport->Register(staging.data(), staging.size(), MemoryKind::kHost);
    if (!staged.ok()) return staged.status().WithContext(me() + ": registering the checksum staging buffer");
    staging_region = std::move(staged).value();
  }
  stream_sent.assign(peers.size(), 0);
  stream_received.assign(peers.size(), 0);
  stream_held.assign(peers.size() * static_cast<size_t>(depth), 0);
  return StoreBarrier("connected", deadline);
}

StatusOr<std::unique_ptr<Group>> Group::Create(const Options& requested) {
  return GroupFactory::Create(requested, nullptr);
}

StatusOr<std::unique_ptr<Group>> GroupFactory::Create(const Options& requested, const TransportWrapper& wrap) {
  M2N_ASSIGN_OR_RETURN(Options options, ResolveOptions(requested));
  const BootstrapOptions& b = options.bootstrap;
  Deadline deadline = Deadline::After(b.timeout);

  auto impl = std::make_unique<Group::Impl>();
  impl->options = options;
  impl->rank = b.rank;
  impl->world = b.world_size;
  impl->role = b.rank < options.num_senders ? Role::kSender : Role::kReceiver;
  impl->peer_index.assign(impl->world, -1);
  if (impl->role == Role::kSender) {
    for (int r = options.num_senders; r < impl->world; ++r) impl->peers.push_back(r);
  } else {
    for (int r = 0; r < options.num_senders; ++r) impl->peers.push_back(r);
  }
  for (size_t i = 0; i < impl->peers.size(); ++i) impl->peer_index[impl->peers[i]] = static_cast<int>(i);
  if (options.checksum && options.slot_memory != MemoryKind::kHost) {
    return InvalidArgumentError(impl->me() + ": Options::checksum needs receive slots in host memory (the CPU "
                                "computes the checksum); slot_memory is " +
                                std::string(MemoryKindName(options.slot_memory)));
  }
  if (impl->world > protocol::kMaxRanks || options.slot_depth > protocol::kMaxSlots) {
    return InvalidArgumentError("options: at most " + std::to_string(protocol::kMaxRanks) + " ranks and " +
                                std::to_string(protocol::kMaxSlots) + " slots per peer");
  }

  bootstrap::TcpStoreOptions store_options;
  store_options.host = b.master_addr;
  store_options.port = b.master_port;
  store_options.serve = b.rank == 0;
  store_options.rank = b.rank;
  store_options.world_size = b.world_size;
  store_options.job_id = b.job_id;
  auto store = bootstrap::ConnectTcpStore(store_options, deadline);
  if (!store.ok()) return store.status().WithContext(impl->me());
  impl->store = std::move(store).value();

  // Every rank publishes what it was configured with and checks everyone's, before anything is
  // allocated: a mismatch is reported on every rank, naming the field and the ranks.
  auto chosen = ChooseTransport(options.transport, options.slot_memory);
  std::string transport_name = chosen.ok() ? std::string((*chosen)->name) : "<" + chosen.status().message() + ">";
  protocol::Fingerprint mine = {
      {"m2n_version", kVersionString},
      {"world_size", std::to_string(impl->world)},
      {"num_senders", std::to_string(options.num_senders)},
      {"num_receivers", std::to_string(options.num_receivers)},
      {"slot_bytes", std::to_string(options.slot_bytes)},
      {"slot_depth", std::to_string(options.slot_depth)},
      {"transport", transport_name},
      {"slot_memory", std::string(MemoryKindName(options.slot_memory))},
      {"checksum", std::string(options.checksum ? "on" : "off")},
  };
  M2N_RETURN_IF_ERROR(PublishHost(*impl->store, impl->rank));
  M2N_RETURN_IF_ERROR(impl->store->SetString("m2n/config/" + std::to_string(impl->rank),
                                             protocol::EncodeFingerprint(mine)));
  std::vector<protocol::Fingerprint> all(impl->world);
  for (int r = 0; r < impl->world; ++r) {
    auto text = impl->store->GetString("m2n/config/" + std::to_string(r), deadline);
    if (!text.ok()) return text.status().WithContext(impl->me() + ": configuration of " + RankName(r));
    auto decoded = protocol::DecodeFingerprint(*text);
    if (!decoded.ok()) return decoded.status().WithContext(impl->me() + ": configuration of " + RankName(r));
    all[r] = std::move(decoded).value();
  }
  Status agreed = protocol::CheckFingerprints(all);
  if (agreed.ok() && impl->options.spin_us < 0) {
    M2N_ASSIGN_OR_RETURN(impl->options.spin_us, AutoSpinUs(*impl->store, impl->world, deadline));
  }
  if (!agreed.ok()) {
    // Rank 0 serves the store: it stays until every rank has read every configuration, so that
    // each one reports the mismatch rather than a vanished store.
    (void)impl->store->Add("m2n/config-checked", 1);
    while (impl->rank == 0 && !deadline.Expired()) {
      auto checked = impl->store->Add("m2n/config-checked", 0);
      if (!checked.ok() || *checked >= impl->world) break;
      usleep(1000);
    }
    (void)impl->store->Goodbye();
    return agreed.WithContext(impl->me());
  }
  if (!chosen.ok()) return chosen.status().WithContext(impl->me());
  impl->transport_name = transport_name;

  transport::Config config;
  config.rank = impl->rank;
  config.world_size = impl->world;
  config.peers = impl->peers;
  config.max_unpolled = options.slot_depth;
  config.timeout = b.timeout;
  config.slot_depth = options.slot_depth;
  config.slot_memory = options.slot_memory;
  if ((*chosen)->uses_nic) {
    const Placement placement = ChoosePlacement(options);  // the NIC nearest to our GPU, a proxy core
    config.nic = placement.nic;
    config.nic_required = placement.nic_from_options;
    config.proxy_core = placement.proxy_core;
  }
  auto created = (*chosen)->create(config);
  if (!created.ok()) return created.status().WithContext(impl->me());
  impl->core = std::make_shared<Core>();
  impl->core->transport = wrap ? wrap(std::move(created).value()) : std::move(created).value();

  Status connected = impl->Connect(deadline);
  if (!connected.ok()) {
    (void)impl->Teardown(Deadline::AfterMs(1000), /*clean=*/false);
    return connected;
  }
  return std::unique_ptr<Group>(new Group(std::move(impl)));
}

Group::Group(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Group::~Group() {
  if (!impl_->closed) (void)impl_->Teardown(Deadline::AfterMs(2000), /*clean=*/false);
}

int Group::rank() const { return impl_->rank; }
int Group::world_size() const { return impl_->world; }
Role Group::role() const { return impl_->role; }
int Group::num_senders() const { return impl_->options.num_senders; }
int Group::num_receivers() const { return impl_->options.num_receivers; }
std::span<const int> Group::peers() const { return impl_->peers; }
const Options& Group::options() const { return impl_->options; }
std::string_view Group::transport_name() const { return impl_->transport_name; }
GroupStats Group::stats() const { return impl_->stats; }

StatusOr<MemoryRegion> Group::RegisterMemory(void* data, size_t size, MemoryKind kind) {
  M2N_RETURN_IF_ERROR(impl_->CheckOpen());
  if (data == nullptr || size == 0) {
    return InvalidArgumentError(impl_->me() + ": RegisterMemory needs a non-null buffer and size > 0");
  }
  auto address = reinterpret_cast<uintptr_t>(data);
  auto& regions = impl_->core->regions;
  auto next = regions.lower_bound(address);
  bool overlaps = (next != regions.end() && next->first < address + size);
  if (!overlaps && next != regions.begin()) {
    auto prev = std::prev(next);
    overlaps = prev->first + prev->second->region->size() > address;
  }
  if (overlaps) {
    return InvalidArgumentError(impl_->me() + ": RegisterMemory: the buffer overlaps a region already registered");
  }
  auto region = impl_->core->transport->Register(data, size, kind);
  if (!region.ok()) return region.status().WithContext(impl_->me() + ": RegisterMemory");
  auto handle = std::make_unique<MemoryRegion::Impl>();
  handle->core = impl_->core;
  handle->region = std::move(region).value();
  regions[address] = handle.get();
  return MemoryRegion(std::move(handle));
}

Status Group::Send(const SendRequest& request, Deadline deadline) { return Send({&request, 1}, deadline); }

Status Group::Send(std::span<const SendRequest> requests, Deadline deadline) {
  Impl& g = *impl_;
  M2N_RETURN_IF_ERROR(g.CheckOpen());
  M2N_RETURN_IF_ERROR(g.UsePath(Impl::DataPath::kHost));
  // Validate everything before posting anything: a bad request sends nothing.
  auto& sources = g.sources;
  sources.assign(requests.size(), nullptr);
  for (size_t i = 0; i < requests.size(); ++i) {
    const SendRequest& r = requests[i];
    M2N_RETURN_IF_ERROR(g.ValidPeer(r.peer, "send"));
    if (r.length > g.options.slot_bytes) {
      return InvalidArgumentError(g.me() + ": message of " + std::to_string(r.length) + " bytes to " +
                                  RankName(r.peer) + " is larger than a slot (" +
                                  std::to_string(g.options.slot_bytes) + " bytes, Options::slot_bytes)");
    }
    if (r.length > 0) {
      M2N_ASSIGN_OR_RETURN(MemoryRegion::Impl * region, g.FindRegion(r.data, r.length));
      sources[i] = region->region.get();
      if (g.options.checksum && sources[i]->kind() != MemoryKind::kHost) {
        return InvalidArgumentError(g.me() + ": send to " + RankName(r.peer) +
                                    ": with Options::checksum the payload must be in host memory (the CPU "
                                    "computes its checksum)");
      }
    }
  }
  auto& batch = g.batch;
  batch.clear();
  auto post_batch = [&]() -> Status {
    if (batch.empty()) return OkStatus();
    Status s = g.core->transport->Post(batch);
    if (!s.ok()) return g.Fail(g.TransportFailure(s, -1));
    g.writes_in_flight += batch.size();
    for (const transport::Write& w : batch) ++g.peer_writes_in_flight[g.IndexOfPeer(w.peer)];
    batch.clear();
    return OkStatus();
  };
  for (size_t i = 0; i < requests.size(); ++i) {
    const SendRequest& r = requests[i];
    int index = g.IndexOfPeer(r.peer);
    protocol::Credits& credit = g.credits[index];
    if (credit.available() == 0) {
      ++g.stats.credit_waits;
      M2N_RETURN_IF_ERROR(post_batch());
      M2N_RETURN_IF_ERROR(g.WaitUntil([&] { return credit.available() > 0; }, deadline, [&] {
        return "waiting for a free slot at " + RankName(r.peer) + " (all " +
               std::to_string(credit.depth()) + " slots hold messages it has not released)";
      }));
    }
    int slot = credit.Take();
    const uint64_t sequence = g.data_posted[index]++;
    transport::Write w;
    w.peer = r.peer;
    w.lane = Lane::kData;
    w.local = sources[i];
    w.local_offset = r.length > 0 ? static_cast<const std::byte*>(r.data) - sources[i]->data() : 0;
    w.remote = g.remote_slots[index].get();
    w.remote_offset = g.remote_block_offset[index] + static_cast<size_t>(slot) * g.slot_stride();
    w.length = r.length;
    if (g.options.checksum) {
      // Payload and trailer go in one write from the stage of this (peer, slot).
      const size_t offset = static_cast<size_t>(index) * g.block_bytes() + static_cast<size_t>(slot) * g.slot_stride();
      std::byte* stage = g.staging.data() + offset;
      if (r.length > 0) std::memcpy(stage, r.data, r.length);
      const uint32_t trailer[2] = {static_cast<uint32_t>(r.length), TrailerCrc(stage, r.length, sequence, g.rank)};
      std::memcpy(stage + r.length, trailer, sizeof trailer);
      w.local = g.staging_region.get();
      w.local_offset = offset;
      w.length = r.length + kTrailerBytes;
    }
    w.imm = protocol::EncodeImmediate({protocol::ImmKind::kData, slot, static_cast<uint32_t>(sequence)},
                                      g.seed_out[index]);
    w.cookie = g.next_cookie++;
    batch.push_back(w);
    ++g.stats.messages_sent;
    g.stats.bytes_sent += r.length;
  }
  M2N_RETURN_IF_ERROR(post_batch());
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
    return InvalidArgumentError(g.me() + ": Receive needs one output per peer (" + std::to_string(peers.size()) +
                                " peers, " + std::to_string(out.size()) + " outputs)");
  }
  // How many messages each peer must have queued; nothing is taken until all are there, so a
  // timeout leaves every message in place.
  auto& need = g.need;
  need.clear();
  for (int peer : peers) {
    M2N_RETURN_IF_ERROR(g.ValidPeer(peer, "receive"));
    int index = g.IndexOfPeer(peer);
    auto it = std::find_if(need.begin(), need.end(), [&](auto& n) { return n.first == index; });
    if (it == need.end()) need.emplace_back(index, 1);
    else ++it->second;
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

// ---------------------------------------------------------------------------------------------
// Stream-ordered calls: the slot of a pair's k-th message is k mod slot_depth on both sides; the
// transport keeps the credits and arrivals in device memory (see transports/transport.h).

Status Group::SendOnStream(std::span<const SendRequest> requests, Stream stream) {
  Impl& g = *impl_;
  M2N_ASSIGN_OR_RETURN(transport::StreamOps * ops, g.StreamPath("SendOnStream"));
  auto& writes = g.stream_writes;
  writes.clear();
  auto& batch_peers = g.stream_peers;
  batch_peers.clear();
  for (const SendRequest& r : requests) {
    M2N_RETURN_IF_ERROR(g.ValidPeer(r.peer, "send"));
    batch_peers.push_back(r.peer);
    if (r.length > g.options.slot_bytes) {
      return InvalidArgumentError(g.me() + ": message of " + std::to_string(r.length) + " bytes to " +
                                  RankName(r.peer) + " is larger than a slot (" +
                                  std::to_string(g.options.slot_bytes) + " bytes, Options::slot_bytes)");
    }
    const transport::Region* source = nullptr;
    if (r.length > 0) {
      M2N_ASSIGN_OR_RETURN(MemoryRegion::Impl * region, g.FindRegion(r.data, r.length));
      source = region->region.get();
      if (source->kind() != MemoryKind::kCuda) {
        return InvalidArgumentError(g.me() + ": SendOnStream to " + RankName(r.peer) +
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
    w.slot = static_cast<int>(g.stream_sent[index]++ % static_cast<uint64_t>(g.options.slot_depth));
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
                                std::to_string(peers.size()) + " peers, " + std::to_string(out.size()) +
                                " outputs)");
  }
  for (int peer : peers) M2N_RETURN_IF_ERROR(g.ValidPeer(peer, "receive"));
  M2N_RETURN_IF_ERROR(g.CheckPerPeerCount(peers, "ReceiveOnStream"));
  const uint64_t depth = static_cast<uint64_t>(g.options.slot_depth);
  // Every slot this receive needs must have been released: its next message cannot come before.
  for (size_t i = 0; i < peers.size(); ++i) {
    int index = g.IndexOfPeer(peers[i]);
    uint64_t ahead = static_cast<uint64_t>(
        std::count(peers.begin(), peers.begin() + static_cast<std::ptrdiff_t>(i), peers[i]));
    uint64_t sequence = g.stream_received[index] + ahead;
    if (g.stream_held[index * depth + sequence % depth] != 0) {
      return FailedPreconditionError(
          g.me() + ": ReceiveOnStream from " + RankName(peers[i]) + " would need slot " +
          std::to_string(sequence % depth) + ", which still holds message " +
          std::to_string(g.stream_held[index * depth + sequence % depth] - 1) +
          "; release it (ReleaseOnStream) first");
    }
  }
  auto& slots = g.stream_slots;
  slots.clear();
  for (size_t i = 0; i < peers.size(); ++i) {
    int index = g.IndexOfPeer(peers[i]);
    uint64_t sequence = g.stream_received[index]++;
    int slot = static_cast<int>(sequence % depth);
    g.stream_held[index * depth + static_cast<uint64_t>(slot)] = sequence + 1;
    slots.push_back({peers[i], slot});
    out[i] = Message{peers[i], slot, 0, g.SlotData(index, slot), sequence, ops->ArrivedLength(peers[i], slot)};
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
                g.stream_held[index * depth + static_cast<uint64_t>(m.slot)] == m.sequence + 1;
    for (size_t j = 0; j < i && held; ++j) held = !(messages[j].peer == m.peer && messages[j].slot == m.slot);
    if (!held) {
      return FailedPreconditionError(g.me() + ": ReleaseOnStream: message " + std::to_string(m.sequence) +
                                     " from " + RankName(m.peer) + " in slot " + std::to_string(m.slot) +
                                     " is not held (released already, or not from ReceiveOnStream)");
    }
  }
  auto& slots = g.stream_slots;
  slots.clear();
  for (const Message& m : messages) {
    int index = g.IndexOfPeer(m.peer);
    g.stream_held[index * depth + static_cast<uint64_t>(m.slot)] = 0;
    slots.push_back({m.peer, m.slot});
    ++g.stats.acks_sent;
  }
  Status s = ops->ReleaseOnStream(slots, stream);
  if (!s.ok()) return g.Fail(s.WithContext(g.me() + ": ReleaseOnStream"));
  return OkStatus();
}

Status Group::Barrier(Deadline deadline) {
  M2N_RETURN_IF_ERROR(impl_->CheckOpen());
  return impl_->StoreBarrier("user/" + std::to_string(impl_->barrier_count++), deadline);
}

Status Group::Progress() {
  M2N_RETURN_IF_ERROR(impl_->CheckOpen());
  if (impl_->data_path == Impl::DataPath::kStream) {
    Status device = impl_->core->transport->stream_ops()->StreamError();
    if (!device.ok()) return impl_->Fail(device.WithContext(impl_->me()));
  }
  return impl_->Progress();
}

Status Group::Close(Deadline deadline) {
  if (impl_->closed) return FailedPreconditionError(impl_->me() + ": the group is already closed");
  return impl_->Teardown(deadline, /*clean=*/true);
}

void Group::Abort() { impl_->aborted.store(true, std::memory_order_release); }

// A clean teardown hands back every slot we still hold, waits for our messages to be released,
// meets every rank in a barrier (so nobody writes into slots that are about to go away), then
// closes the transport and says goodbye to the store. An unclean one (destructor without Close,
// failed creation) skips the waits. After a failure (`fatal`) or an abort there is nobody worth
// waiting for: the transport is closed at once and Close succeeds, since the failure was reported
// already. Only an abort leaves without a goodbye: the peers, which may still be waiting on this
// rank, then see it gone and fail by name instead of by timeout.
Status Group::Impl::Teardown(Deadline deadline, bool clean) {
  closed = true;
  const bool was_aborted = aborted.load(std::memory_order_acquire);
  const bool failed = !fatal.ok() || was_aborted;
  Status result;
  if (clean && !failed && core) {
    // Messages still queued or held by the user are released now: the peer waits for those credits.
    for (size_t i = 0; i < receive.size() && result.ok(); ++i) {
      for (int slot : receive[i].ReleaseAll()) {
        result = PostAck(static_cast<int>(i), slot);
        if (!result.ok()) break;
      }
    }
    if (result.ok()) {
      result = WaitUntil(
          [&] {
            for (auto& c : credits) {
              if (c.available() != c.depth()) return false;
            }
            return writes_in_flight == 0;
          },
          deadline, [] { return std::string("closing: waiting for peers to release our messages"); });
    }
    if (result.ok()) result = StoreBarrier("close", deadline);
    if (result.ok() && rank == 0) {
      // Rank 0 serves the store: keep it up until every rank has left the close barrier.
      (void)store->Add("m2n/barrier/close-left", 1);
      while (!deadline.Expired()) {
        auto left = store->Add("m2n/barrier/close-left", 0);
        if (!left.ok() || *left >= world) break;
        usleep(200);
      }
    } else if (result.ok()) {
      (void)store->Add("m2n/barrier/close-left", 1);
    }
  }
  staging_region.reset();
  if (core && core->transport) {
    // After a failure nobody is owed a flush: the transport closes at once (forcing what is left).
    Status s = core->transport->Close(failed ? Deadline::AfterMs(0) : deadline.Min(Deadline::AfterMs(2000)));
    if (result.ok() && clean && !failed) result = s;
  }
  slots.reset();
  remote_slots.clear();
  if (store && !was_aborted) {
    if (clean || fatal.ok()) (void)store->Goodbye();
  }
  // An aborted rank drops its store connection now, not when the Group is destroyed: that is how
  // its peers learn that it left.
  if (was_aborted) store.reset();
  return result;
}

}  // namespace m2n

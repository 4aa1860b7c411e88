// Group::Impl: the state of one Group, and the internal operations its files share. Each file of
// src/group/ does one job on it: transport_choice.cc picks and creates the transport, setup.cc
// and create.cc bootstrap the group through the store, memory.cc keeps the registry of registered
// memory, liveness.cc notices dead ranks and a silent store, protocol.cc applies completions
// (immediates, ACK credits, checksum trailers), checks.cc holds the argument checks both data
// paths share, host_path.cc and stream_path.cc are two data paths, device_path.cc hands the third
// (the device-side API, m2n/device.h) to the user's kernels, teardown.cc closes.
// See docs/architecture.md for the protocol. Not public API.
#pragma once

#include <sched.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "bootstrap/store.h"
#include "group_factory.h"
#include "m2n/device.h"
#include "m2n/group.h"
#include "protocol/checksum.h"
#include "protocol/immediate.h"
#include "protocol/slots.h"
#include "transports/transport.h"

namespace m2n {

inline std::string RankName(int rank) { return "rank " + std::to_string(rank); }
inline std::string_view LaneName(transport::Lane lane) {
  return lane == transport::Lane::kAck ? "ACK" : "data";
}
// "3, 5, 7"
std::string JoinRanks(const std::vector<int>& ranks);

// Options::checksum: after the payload in its slot, {uint32 payload length, uint32 CRC-32C of the
// payload, the message's sequence number, its length and the writer's rank}. It travels in the
// same write as the payload (so the immediate still announces both at once), which is why the
// sender stages the payload: a zero-copy write from the user's buffer has no room for it.
constexpr size_t kTrailerBytes = 8;

inline uint32_t TrailerCrc(const std::byte* payload, size_t length, uint64_t sequence, int writer) {
  uint32_t crc = protocol::Crc32c(payload, length);
  const uint64_t tail[2] = {sequence, (uint64_t{static_cast<uint32_t>(writer)} << 32) | length};
  return protocol::Crc32c(tail, sizeof tail, crc);
}

// Cookies of our own writes: ACK writes are not waited on by a Send, so they are told apart.
constexpr uint64_t kAckCookie = uint64_t{1} << 63;

// The transport named by Options::transport ("auto": the first usable one that can hold `slots`);
// transport_choice.cc.
StatusOr<const transport::TransportInfo*> ChooseTransport(const std::string& wanted,
                                                          MemoryKind slots);

// Registered memory (memory.cc). The Core is shared by the Group and every MemoryRegion, so a
// region that outlives its Group still deregisters against a live transport.
struct Core {
  std::unique_ptr<transport::Transport> transport;
  // Registered send regions by base address, for finding the region of a SendRequest.
  std::map<uintptr_t, MemoryRegion::Impl*> regions;
};

struct MemoryRegion::Impl {
  std::shared_ptr<Core> core;
  std::unique_ptr<transport::Region> region;
  ~Impl();
};

// Says, late and only when needed, what a wait was doing ("waiting for a message from rank 3").
using WaitText = std::function<std::string()>;

struct Group::Impl {
  // ---- Who we are, set by GroupFactory::Create ----
  Options options;
  int rank = -1;
  int world = 0;
  Role role = Role::kSender;
  std::vector<int> peers;  // the other side, ascending
  std::vector<int> peer_index;  // rank -> index into peers, -1 for the same side
  std::string transport_name;
  std::unique_ptr<bootstrap::Store> store;
  std::shared_ptr<Core> core;

  // ---- The slot / credit / ACK protocol; every vector is per peer, by index into peers ----
  // Our receive slots: one block of depth x slot_bytes per peer, in peers order.
  std::unique_ptr<transport::Region> slots;
  std::vector<std::unique_ptr<transport::RemoteRegion>> remote_slots;  // the peer's slots for us
  std::vector<size_t> remote_block_offset;  // where our block starts in the peer's slot region
  std::vector<protocol::ReceiveSlots> receive;
  std::vector<protocol::Credits> credits;
  // Sequence numbers of immediates: data we posted (a receiver's count is its
  // ReceiveSlots::next_sequence), ACKs we posted, ACKs we heard.
  std::vector<uint64_t> data_posted;
  std::vector<uint64_t> acks_posted;
  std::vector<uint64_t> acks_heard;
  // The pair's part of the immediate check (protocol::ImmediateSeed), for immediates we write to
  // the peer and for those it writes to us.
  std::vector<uint8_t> seed_out;
  std::vector<uint8_t> seed_in;
  uint64_t next_cookie = 1;
  uint64_t writes_in_flight = 0;  // data writes posted and not yet done
  std::vector<uint32_t> peer_writes_in_flight;  // the same per peer, to name them in a timeout
  // Options::checksum: payload + trailer are staged here, one slot's worth per (peer, slot), and
  // written from here; a stage is reused only after its slot's ACK, when its write is long done.
  std::vector<std::byte> staging;
  std::unique_ptr<transport::Region> staging_region;

  // Scratch reused by every call, so the data path does not allocate in steady state.
  struct Scratch {
    std::vector<transport::Completion> completions = std::vector<transport::Completion>(64);
    std::vector<transport::Write> batch;
    std::vector<const transport::Region*> sources;
    std::vector<std::pair<int, size_t>> need;  // (peer index, messages wanted in one call)
  } scratch;

  // ---- Which data path this group uses, and the stream-ordered path's state ----
  enum class DataPath { kUnset, kHost, kStream, kDevice };
  DataPath data_path = DataPath::kUnset;
  // Messages enqueued per peer (the slot is the count mod slot_depth, the same on both sides), and
  // per (peer, slot) the sequence + 1 of a received message not yet released.
  struct StreamState {
    std::vector<uint64_t> sent;
    std::vector<uint64_t> received;
    std::vector<uint64_t> held;
    std::vector<transport::StreamWrite> writes;  // scratch
    std::vector<transport::StreamSlot> slots;  // scratch
    std::vector<int> peers;  // scratch
  } stream;
  // The device-side API (device_path.cc), once device_group() made it: the handle, and the device
  // memory it points to (2 cursor words per peer; the DevicePeer table; for a proxied transport,
  // the staging slots, slot_depth per peer, registered for the transport's writes).
  struct DeviceState {
    bool made = false;
    DeviceGroup handle;
    std::unique_ptr<transport::Region> cursors;
    std::unique_ptr<transport::Region> peers;
    std::unique_ptr<transport::Region> staging;
  } device;

  // ---- Liveness (liveness.cc) ----
  struct LivenessState {
    Clock::time_point next_check{};
    Clock::time_point store_silent_since{};  // the first unanswered check since the last answer
  } liveness;

  // ---- Lifetime ----
  Status fatal;  // sticky: once a peer or the protocol failed, every call returns it
  // Group::Abort or the caller's token (Group::Create), from any thread: every wait checks it,
  // the transport's own waits too (transport::Config::aborted), and every later call returns
  // kAborted. Shared, so that an Abort through a kept token never touches a destroyed Group.
  AbortToken abort;
  bool closed = false;
  int barrier_count = 0;
  GroupStats stats;

  // A slot's bytes in the slot region: the payload, and the checksum trailer when it is on.
  size_t slot_stride() const { return options.slot_bytes + (options.checksum ? kTrailerBytes : 0); }
  size_t block_bytes() const { return slot_stride() * static_cast<size_t>(options.slot_depth); }
  std::byte* SlotData(int index, int slot) const {
    return slots->data() + static_cast<size_t>(index) * block_bytes() +
           static_cast<size_t>(slot) * slot_stride();
  }
  std::string me() const { return RankName(rank) + " (" + std::string(RoleName(role)) + ")"; }
  int IndexOfPeer(int peer) const { return peer >= 0 && peer < world ? peer_index[peer] : -1; }

  Status CheckOpen() const {
    if (closed) return FailedPreconditionError(me() + ": the group is closed");
    if (Aborted()) return AbortedStatus();
    return fatal;
  }
  Status AbortedStatus(const std::string& during = "") const {
    return AbortedError(me() + ": the group was aborted (Group::Abort)" +
                        (during.empty() ? "" : " while " + during) + "; close it");
  }
  bool Aborted() const { return abort.aborted(); }
  Status Fail(Status status) {
    if (fatal.ok()) fatal = std::move(status);
    return fatal;
  }

  // Creation, in the order GroupFactory::Create (create.cc) calls them: setup.cc, but
  // CreateTransport in transport_choice.cc.
  void SetRanks(const Options& resolved);
  Status CheckOptions() const;
  Status ConnectStore(Deadline deadline);
  Status AgreeOnConfiguration(const std::string& chosen_transport, Deadline deadline);
  Status CreateTransport(const transport::TransportInfo& info, const TransportWrapper& wrap);
  Status Connect(Deadline deadline);
  Status AllocateSlots();
  Status ExchangeAddresses(Deadline deadline);
  Status ExchangeSlotKeys(Deadline deadline);
  Status PreparePeerState();

  // checks.cc: the argument checks both data paths share.
  Status ValidPeer(int peer, std::string_view what) const;
  Status CheckSendLength(const SendRequest& request) const;
  Status CheckPerPeerCount(std::span<const int> peers_in_batch, std::string_view call);
  Status UsePath(DataPath path);

  // memory.cc
  StatusOr<MemoryRegion::Impl*> FindRegion(const void* data, size_t length) const;

  // protocol.cc: transport progress and what each completion means.
  Status Progress();
  Status OnImmediate(const transport::Completion& c);
  Status OnAck(int index, const protocol::Immediate& imm, int peer);
  Status CheckSequence(const protocol::Immediate& imm, uint64_t expected, int peer,
                       std::string_view what);
  StatusOr<size_t> CheckTrailer(int index, int slot, size_t written, uint64_t sequence);
  Status PostAck(int index, int slot);

  // host_path.cc. MakeWrite: request i's write; CheckSends left its region in scratch.sources[i].
  Status CheckSends(std::span<const SendRequest> requests);
  transport::Write MakeWrite(const SendRequest& request, size_t i, int index, int slot,
                             uint64_t sequence);
  Status PostBatch();
  std::string WritesInFlightText() const;

  // stream_path.cc
  StatusOr<transport::StreamOps*> StreamPath(std::string_view call);
  // The device error word read back as a Status (kStream and kDevice paths); OK otherwise.
  Status DeviceWaitError();

  // device_path.cc
  Status CheckDeviceApi(transport::StreamOps* ops) const;
  StatusOr<DevicePeer> MakeDevicePeer(transport::StreamOps& ops, int index);
  Status MakeDeviceGroup(transport::StreamOps& ops);
  StatusOr<DeviceRing> ProxyDevicePeers(transport::StreamOps& ops);

  // liveness.cc
  Status StoreFailure(const Status& error, const std::string& during) const;
  Status TransportFailure(const Status& error, int peer);
  Status CheckRanksAlive(const WaitText& what, Deadline check_by);
  Status DeadRanksStatus(const WaitText& what, Deadline check_by);
  // Whether a liveness check is due at `now`; if so, the next one is one period later.
  bool LivenessCheckDue(Clock::time_point now) {
    if (now < liveness.next_check) return false;
    liveness.next_check = now + std::chrono::milliseconds(options.liveness_check_ms);
    return true;
  }
  Deadline LivenessBound(Deadline call) const;
  Deadline LastLivenessBound() const;
  std::string StoreSilence() const;
  Status StoreBarrier(const std::string& name, Deadline deadline);

  // teardown.cc
  Status Teardown(Deadline deadline, bool clean);
  Status DrainForClose(Deadline deadline);
  Status LeaveCloseBarrier(Deadline deadline);
  bool AwaitCount(const std::string& key, Deadline deadline);

  // Waits, making progress, until done() or the deadline; `what` names the wait in errors.
  // Spins for spin_us after the last progress, then yields the core each round; every
  // liveness_check_ms it asks the store whether a rank died, and once more before it reports a
  // timeout, so that a wait that ran out because a rank died says so. A template, so that the
  // data path's done() is inlined into the polling loop.
  template <typename Done, typename What>
  Status WaitUntil(Done done, Deadline deadline, What what) {
    auto spin_until = Clock::now() + std::chrono::microseconds(options.spin_us);
    for (uint32_t round = 0;; ++round) {
      M2N_RETURN_IF_ERROR(Progress());
      if (done()) return OkStatus();
      // Reading the clock costs as much as a poll: look at it every 16th round only.
      if (round % 16 != 15) continue;
      if (Aborted()) return AbortedStatus(what());
      auto now = Clock::now();
      if (now >= deadline.time()) {
        M2N_RETURN_IF_ERROR(CheckRanksAlive(what, LastLivenessBound()));
        return DeadlineExceededError(me() + ": timed out " + what() + StoreSilence());
      }
      if (LivenessCheckDue(now))
        M2N_RETURN_IF_ERROR(CheckRanksAlive(what, LivenessBound(deadline)));
      if (now >= spin_until) sched_yield();
    }
  }
};

}  // namespace m2n

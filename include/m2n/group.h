// m2n::Group: a persistent group of M senders and N receivers.
//
// Created once (bootstrap, configuration check, connect, register, exchange keys), reused for every
// call, closed once. Each rank exposes registered receive slots for every peer on the other side,
// so messages flow both ways: senders -> receivers (dispatch) and receivers -> senders (combine).
//
// A Send writes the payload straight into a free slot of the peer by a one-sided write and signals
// it with an immediate (sender, slot, length): RDMA write-with-immediate, emulated by transports
// that lack it. The peer sees a Message that points into that slot; Release() hands the slot back
// to the sender by an ACK on the ACK lane, a channel of its own, never queued behind data.
//
// Completion model: the calling thread drives progress. Every blocking call (Send, Receive,
// Barrier, Close) makes progress while it waits and returns by its Deadline. Between calls, nothing
// moves; a rank that neither sends nor receives for long should call Progress(). A Group is used by
// one thread at a time, except Abort(), which any other thread may call while the Group object is
// alive (not during or after its destructor); to abort from a thread that may outlive the Group,
// or to abort Create itself, hold an AbortToken instead (below).
//
// Failures (docs/reliability.md): a group is one fault domain. When any rank of it dies, every
// other rank's blocked or next blocking call fails with kUnavailable naming the dead rank; a
// protocol check that fails (a lost, duplicated, reordered or corrupted immediate, a bad checksum)
// is kDataLoss and nothing of the bad message is handed out. Either error is sticky: close the
// group and create a new one.
#pragma once

#include <cstddef>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "m2n/deadline.h"
#include "m2n/device.h"
#include "m2n/memory.h"
#include "m2n/options.h"
#include "m2n/status.h"

namespace m2n {

enum class Role { kSender, kReceiver };

// A CUDA stream: a cudaStream_t passed as void*, so that this header needs no CUDA headers.
// nullptr is the legacy default stream.
using Stream = void*;
std::string_view RoleName(Role role);

// One message to one peer. [data, data + length) must lie inside a MemoryRegion registered with the
// Group, and length <= Options::slot_bytes.
struct SendRequest {
  int peer = -1;  // global rank of a peer on the other side
  const void* data = nullptr;
  size_t length = 0;
};

// A received message: a view of the receive slot it landed in, valid until Release().
struct Message {
  int peer = -1;  // the rank that sent it
  int slot = -1;  // the slot it occupies, in [0, slot_depth)
  size_t length = 0;
  std::byte* data = nullptr;
  uint64_t sequence = 0;  // per (peer -> this rank) count of messages, from 0
  // Stream-ordered receives only (ReceiveOnStream): the host does not know the length, so `length`
  // is 0 and this device address holds it, valid in stream order after the receive.
  const uint32_t* device_length = nullptr;
};

// A shared abort flag: a copyable handle that every copy aborts alike, and that stays valid however
// long it is kept, whatever happens to the Group. Group::abort_token() hands out the group's own;
// Group::Create(options, token) makes a group that uses the caller's, so that Abort also reaches
// Create's waits. Abort() is safe from any thread at any time, before, during or after the
// Group's Create, calls, Close and destructor; it never blocks. A token is meant for one group:
// a group created with an aborted token fails.
class AbortToken {
 public:
  AbortToken() : flag_(std::make_shared<std::atomic<bool>>(false)) {}
  void Abort() const { flag_->store(true, std::memory_order_release); }
  bool aborted() const { return flag_->load(std::memory_order_acquire); }

 private:
  std::shared_ptr<std::atomic<bool>> flag_;
};

// Counters since creation; cheap to read.
struct GroupStats {
  uint64_t messages_sent = 0;
  uint64_t bytes_sent = 0;
  uint64_t messages_received = 0;
  uint64_t bytes_received = 0;
  uint64_t acks_sent = 0;
  uint64_t acks_received = 0;
  uint64_t credit_waits = 0;  // Sends that found no free slot at the peer and had to wait
};

class Group {
 public:
  // Bootstraps and connects the whole group; every rank of the job calls it. `options` are resolved
  // with ResolveOptions() first. Errors: kInvalidArgument for a bad rank / world size / option,
  // kFailedPrecondition for a configuration that differs between ranks (reported on every rank),
  // kDeadlineExceeded / kUnavailable when the store or a peer cannot be reached.
  static StatusOr<std::unique_ptr<Group>> Create(const Options& options);
  // The same, aborted by `abort`: an Abort before Create returns ends its waits (the barrier, the
  // configuration check) within a few polls and makes it fail, kAborted or the error it had
  // found, tearing down what it made; its reads of the store return by the options' timeout
  // first (docs/reliability.md). After Create, the token is the group's: Group::Abort() sets it.
  static StatusOr<std::unique_ptr<Group>> Create(const Options& options, const AbortToken& abort);

  ~Group();  // closes with a short deadline if Close() was not called
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const;
  int world_size() const;
  Role role() const;
  int num_senders() const;
  int num_receivers() const;
  // Ranks on the other side, ascending: the only valid peers.
  std::span<const int> peers() const;
  const Options& options() const;  // as resolved
  std::string_view transport_name() const;
  GroupStats stats() const;

  // Registers [data, data + size) for sending. The region must outlive its use in Send.
  StatusOr<MemoryRegion> RegisterMemory(void* data, size_t size,
                                        MemoryKind kind = MemoryKind::kHost);

  // Posts every request, each into a free slot of its peer, waiting for credits where a peer has
  // none, and returns once every payload has left its source buffer (the buffer may be reused).
  Status Send(std::span<const SendRequest> requests, Deadline deadline);
  Status Send(const SendRequest& request, Deadline deadline);

  // Waits until one message from each of `peers` is there; out[i] receives the oldest unreceived
  // message from peers[i] (a peer may appear several times). out.size() == peers.size().
  Status Receive(std::span<const int> peers, std::span<Message> out, Deadline deadline);
  StatusOr<Message> Receive(int peer, Deadline deadline);
  // Non-blocking: the oldest unreceived message from `peer`, if there is one.
  StatusOr<bool> TryReceive(int peer, Message* out);

  // Hands the message's slot back to its sender (an ACK). Releasing a slot twice, or a message this
  // group never delivered, is kFailedPrecondition.
  Status Release(const Message& message);
  Status Release(std::span<const Message> messages);

  // ---- Stream-ordered calls (device memory; GPU transports, Options::slot_memory = kCuda) ----
  // Each call enqueues work on `stream` (a cudaStream_t) after the work already there and returns
  // at once; no host thread waits for the GPU, and the calls may be captured into a CUDA graph and
  // replayed. Slots are used round robin per peer, the same on both sides; the credit of a slot is
  // waited for on the device. A device wait longer than BootstrapOptions::timeout gives up, and the
  // next call on this group returns kDeadlineExceeded. A group uses either these calls or the
  // host-driven Send / Receive for its messages, not both.
  //
  // SendOnStream: every request's data must lie in memory registered as MemoryKind::kCuda; at most
  // slot_depth requests per peer in one call. The buffer may be reused by work enqueued after it.
  Status SendOnStream(std::span<const SendRequest> requests, Stream stream);
  // ReceiveOnStream: `stream` waits until the next message from each of `peers` is in its slot;
  // out[i] points into that slot (device memory; length in *device_length). A peer may appear at
  // most slot_depth times, and a slot must be released before it is received into again.
  Status ReceiveOnStream(std::span<const int> peers, std::span<Message> out, Stream stream);
  // ReleaseOnStream: hands the slots back to their senders once the work before it on `stream` is
  // done (the consumer kernel that read them).
  Status ReleaseOnStream(std::span<const Message> messages, Stream stream);

  // ---- Device-side calls (include/m2n/device.cuh) ----
  // The handle with which kernels send and receive this group's messages themselves: for a group
  // with device slots on a transport that keeps its credits and arrivals in device memory
  // (cuda_ipc). kUnimplemented where the transport cannot serve it, saying why.
  StatusOr<DeviceGroup> device_group();

  // All ranks of the group; through the bootstrap store (slow path: set-up and tests, not per
  // message).
  Status Barrier(Deadline deadline);

  // One round of progress without blocking: completions, arrivals, ACKs.
  Status Progress();

  // Asks the bootstrap store now whether any rank of the group died, as the blocking calls do every
  // Options::liveness_check_ms while they wait: kUnavailable naming the dead rank(s) (sticky, as
  // there), or OK. Waits for the store's answer until `deadline` or one liveness period, whichever
  // is first; an unanswered question is OK. For a caller that waits outside the group (on shared
  // memory, say) and must notice a dead rank as promptly as Receive does; it paces its own calls.
  Status CheckPeersAlive(Deadline deadline);

  // Waits until every peer has released this rank's messages and said goodbye, then disconnects.
  // After Close, every call returns kFailedPrecondition. Stream-ordered work of this group must
  // have completed (synchronize its streams) before Close.
  Status Close(Deadline deadline);

  // Makes every blocking call of this group, in any thread, return kAborted promptly (within a
  // few polls), and every later call return kAborted too, except Close. Callable from any thread
  // while the Group object is alive, any number of times; never blocks. Not during or after the
  // destructor (that is a use after free): a thread that may outlive the Group aborts through
  // abort_token() instead. Close after Abort tears down at once: it waits for no peer and says no
  // goodbye, so the peers see this rank leave and fail their calls naming it. Abort during Close
  // cuts Close's waits short the same way, and that Close returns kAborted (docs/reliability.md).
  void Abort();
  // The token Abort() sets (or the one passed to Create): keep a copy to abort safely from a
  // thread whose calls may race with the Group's destruction.
  AbortToken abort_token() const;

  struct Impl;

 private:
  friend class GroupFactory;  // src/group/group_factory.h
  explicit Group(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Names of the transports compiled into this build, best first ("ucx", ...).
std::vector<std::string> AvailableTransports();

}  // namespace m2n

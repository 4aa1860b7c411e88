// The verbs transport's stream-ordered path: a proxy thread between CUDA streams and the NIC.
//
// The GPU and the proxy meet in words of host memory that the GPU reads and writes (registered
// with cuMemHostRegister, reached by cuStreamWriteValue32 / cuStreamWaitValue32), one per (kind,
// peer, slot), each a generation count: the n-th use of a slot is generation n.
//   sender:   SendOnStream queues the write's descriptor here, then enqueues on the stream
//             "kReady = n" (runs once the producer's work before it is done) and "wait kSent >= n".
//             The proxy sees kReady, waits for the slot's credit (the receiver's ACK of use n - 1),
//             posts one IBV_WR_RDMA_WRITE_WITH_IMM (imm = slot) from GPU memory into the peer's
//             slot, and on its completion stores kSent = n: the stream goes on, the source is free.
//   receiver: WaitOnStream enqueues "kWaiting = n" and "wait kArrived >= n" (with a flush of remote
//             writes where the GPU has it). The proxy takes the write's receive completion, stores
//             the byte count in kLength, flushes GPUDirect RDMA writes where the GPU needs that
//             done from the host, and stores kArrived = n.
//             ReleaseOnStream enqueues "kFreed = n"; the proxy sees it and sends the ACK, a
//             zero-length write-with-immediate on the peer's stream ACK QP.
// The proxy owns the stream QPs and their CQ; nothing else touches them. Every wait is bounded: a
// send that has no credit, or a stream that waits for a message, for longer than the timeout is
// let go (the stream continues) and the error is kept for StreamError (DEADLINE_EXCEEDED naming the
// peer and slot). Host memory or device memory makes no difference to the proxy, so its logic is
// tested with host memory in the Soft-RoCE VM (tests/verbs_stream_test.cc).
//
// The device-side API (m2n/device.h, proxied peers) goes through the same thread and QPs
// (device_ring.cc): kernels put send and release descriptors into a ring in host memory; the proxy
// takes them in ring order, posts the write-with-imm from the peer's staging slot or the ACK, and
// keeps two words per (peer, slot) the kernels poll: released (the credits it received) and arrival
// ((generation << 32) | length, stored after the write's receive completion and the flush). The
// kernels wait on the GPU, bounded; the proxy itself never waits, and a descriptor that breaks the
// protocol is dropped with an error naming the peer and slot.
#pragma once

#include <infiniband/verbs.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "m2n/device.h"
#include "m2n/status.h"
#include "transports/verbs/endpoint.h"

namespace m2n::transport::verbs {

enum StreamWord : int {
  kReady = 0,  // GPU: generation of the last send whose payload is ready
  kSent = 1,  // proxy: generation of the last send that completed
  kWaiting = 2,  // GPU: generation the receiving stream waits for
  kArrived = 3,  // proxy: generation of the last message that arrived (and was flushed)
  kLength = 4,  // proxy: byte count of the last message that arrived
  kFreed = 5,  // GPU: generation of the last message released
  kNumStreamWords = 6,
};

// One stream write, as the proxy posts it.
struct StreamDescriptor {
  uint64_t local_address = 0;
  uint32_t lkey = 0;
  uint64_t remote_address = 0;
  uint32_t rkey = 0;
  uint32_t length = 0;
};

// Where a proxied peer's messages go from and to: byte 0 of its staging slots here and of its
// receive slots (for us) there; slot k is k * slot_bytes further.
struct DeviceRoute {
  uint64_t staging_address = 0;
  uint32_t lkey = 0;
  uint64_t remote_address = 0;
  uint32_t rkey = 0;
};

// What the proxy shares with the kernels of the device-side API; off while ring is null. Every
// pointer is host memory (the GPU maps it) that outlives the proxy; the words have device.h's
// type (unsigned long long), so that std::atomic_ref binds to them and not to a converted copy.
struct DeviceLink {
  DeviceDescriptor* ring = nullptr;
  uint64_t ring_capacity = 0;
  unsigned long long* consumed = nullptr;  // the proxy: descriptors taken
  unsigned long long* released = nullptr;  // the proxy, per (peer index, slot): credits received
  unsigned long long* arrival =
      nullptr;  // the proxy, per (peer index, slot): (generation << 32) | length
  uint64_t slot_bytes = 0;
  std::vector<DeviceRoute> routes;  // by peer index
};

// A device wait's give-up code ((reason << 56) | (peer rank << 24) | slot, m2n/device.h) as the
// group reports it: DEADLINE_EXCEEDED naming the wait, the peer and the slot.
Status DeviceWaitGaveUp(uint64_t code, std::chrono::milliseconds timeout);

class StreamProxy {
 public:
  struct Peer {
    int rank = -1;
    Endpoint* endpoint = nullptr;  // with its stream QPs
  };
  struct Settings {
    int slot_depth = 1;
    std::chrono::milliseconds timeout{30000};
    int proxy_core = -1;  // pinned there when >= 0
    std::function<void()> on_start;  // on the proxy thread first (e.g. make a CUDA context current)
    std::function<void()> flush;  // after an arrival, before kArrived is raised; may be empty
    DeviceLink device;  // the device-side API's ring and words, if used
  };

  // `words` holds WordCount() zeroed words that outlive the proxy. Starts the thread.
  static StatusOr<std::unique_ptr<StreamProxy>> Start(ibv_cq* cq, std::vector<Peer> peers,
                                                      uint32_t* words, Settings settings);
  ~StreamProxy();  // stops the thread
  StreamProxy(const StreamProxy&) = delete;
  StreamProxy& operator=(const StreamProxy&) = delete;

  static size_t WordCount(size_t peers, int slot_depth) {
    return kNumStreamWords * peers * static_cast<size_t>(slot_depth);
  }
  // Offset of (kind, peer index, slot) in the words.
  static size_t WordIndex(StreamWord kind, size_t peers, int slot_depth, int peer_index, int slot) {
    return (static_cast<size_t>(kind) * peers + static_cast<size_t>(peer_index)) *
               static_cast<size_t>(slot_depth) +
           static_cast<size_t>(slot);
  }

  // Host side, at enqueue time (one thread): the generation the stream operation uses.
  uint32_t QueueSend(int peer_index, int slot, const StreamDescriptor& descriptor);
  uint32_t NextWait(int peer_index, int slot) { return ++wait_generation_[Cell(peer_index, slot)]; }
  uint32_t NextRelease(int peer_index, int slot) {
    return ++release_generation_[Cell(peer_index, slot)];
  }

  // The first failure (a bad completion, a wait that timed out); OK otherwise.
  Status error() const;

 private:
  // wr_ids of the proxy's sends: (cell << 32) | generation for data; ACKs carry kAckWrId. Receives
  // carry kRecvWrId (endpoint.h).
  static constexpr uint64_t kAckWrId = uint64_t{1} << 62;

  StreamProxy(ibv_cq* cq, std::vector<Peer> peers, uint32_t* words, Settings settings);
  size_t Cell(int peer_index, int slot) const {
    return static_cast<size_t>(peer_index) * static_cast<size_t>(settings_.slot_depth) +
           static_cast<size_t>(slot);
  }
  uint32_t Load(StreamWord kind, size_t cell) const;
  void Store(StreamWord kind, size_t cell, uint32_t value);
  void Fail(Status s);
  void Run();
  // One round; true when it did something.
  bool PollCompletions();
  bool PostReadySends();
  bool SendAcks();
  void CheckWaits();
  // device_ring.cc: takes the kernels' descriptors; true when it took one.
  bool TakeDeviceDescriptors();
  Status TakeDeviceSend(size_t peer_index, int slot, uint32_t generation, uint32_t length);
  Status TakeDeviceRelease(size_t peer_index, int slot, uint32_t generation);
  void StoreDeviceWord(unsigned long long* words, size_t cell, uint64_t value);
  Status PostWrite(QueuePair& q, uint64_t wr_id, const StreamDescriptor* d, uint32_t imm);

  ibv_cq* cq_;
  std::vector<Peer> peers_;
  uint32_t* words_;
  Settings settings_;
  std::vector<std::pair<uint32_t, std::pair<int, Lane>>>
      qp_index_;  // qp_num -> (peer index, lane), sorted

  // Host side (enqueue thread).
  std::vector<uint32_t> send_generation_;
  std::vector<uint32_t> wait_generation_;
  std::vector<uint32_t> release_generation_;

  // Shared: descriptors queued by the host, taken by the proxy.
  std::mutex queue_mutex_;
  std::vector<std::deque<StreamDescriptor>> queued_;  // by cell
  std::atomic<uint64_t> queued_count_{0};

  // Proxy thread only.
  std::vector<uint32_t> taken_;  // generation of the last send posted (or given up)
  std::vector<uint32_t> credits_;  // ACKs received: uses of the slot the peer released
  std::vector<uint32_t> arrivals_;  // messages arrived
  std::vector<uint32_t> acked_;  // ACKs sent
  std::vector<std::chrono::steady_clock::time_point> stalled_since_;  // a send without credit
  std::vector<std::chrono::steady_clock::time_point> waiting_since_;  // a stream waiting for data
  uint64_t ring_taken_ = 0;  // device descriptors taken

  mutable std::mutex error_mutex_;
  Status error_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace m2n::transport::verbs

// The verbs transport: m2n's writes as native RDMA write-with-immediate on libibverbs.
//
// One device context and protection domain (context.h), one completion queue for everything, and
// per peer two RC queue pairs (endpoint.h): data and ACK, each with its own traffic class and
// service level so that credit returns never queue behind payload. A Write is one
// IBV_WR_RDMA_WRITE_WITH_IMM into the peer's registered region; the peer's pre-posted zero-SGE
// receive WR turns it into an IBV_WC_RECV_RDMA_WITH_IMM completion carrying the immediate and the
// byte count. README.md describes signalling, inline data, batching and the connection exchange.
// With GPU slots (Config::slot_memory = kCuda) it also offers StreamOps: a proxy thread posts the
// writes of CUDA streams (stream.h).
#pragma once

#include <infiniband/verbs.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "m2n/deadline.h"
#include "m2n/status.h"
#include "transports/transport.h"
#include "transports/verbs/context.h"
#include "transports/verbs/endpoint.h"
#include "transports/verbs/memory.h"
#include "transports/verbs/stream.h"

namespace m2n::transport::verbs {

class VerbsTransport final : public Transport, public StreamOps {
 public:
  static StatusOr<std::unique_ptr<Transport>> Create(const Config& config);
  // Tears down whatever Close() did not, without waiting for peers.
  ~VerbsTransport() override;

  std::string_view name() const override { return "verbs"; }
  Capabilities capabilities() const override;

  StatusOr<std::unique_ptr<Region>> Register(void* data, size_t size, MemoryKind kind) override;
  StatusOr<std::unique_ptr<Region>> RegisterSource(void* data, size_t size,
                                                   MemoryKind kind) override;
  StatusOr<std::unique_ptr<Region>> Allocate(size_t size, MemoryKind kind) override;

  StatusOr<Bytes> LocalAddress(int peer) override;
  Status Connect(int peer, std::span<const std::byte> remote_address) override;
  StatusOr<std::unique_ptr<RemoteRegion>> UnpackRemoteKey(
      int peer, std::span<const std::byte> packed) override;

  Status Post(std::span<const Write> writes) override;
  StatusOr<size_t> Poll(std::span<Completion> out) override;

  Status Close(Deadline deadline) override;
  StreamOps* stream_ops() override { return stream_cq_ != nullptr ? this : nullptr; }

  // StreamOps (stream.h describes the protocol).
  Status SendOnStream(std::span<const StreamWrite> writes, void* stream) override;
  Status WaitOnStream(std::span<const StreamSlot> slots, void* stream) override;
  Status ReleaseOnStream(std::span<const StreamSlot> slots, void* stream) override;
  const uint32_t* ArrivedLength(int peer, int slot) const override;
  Status StreamError() override;
  // The device-side API through the proxy (device_ops.cc; stream.h describes the protocol).
  StatusOr<DevicePeerWords> DeviceWords(int peer) override;
  StatusOr<DeviceWaitLimit> DeviceWaits() override;
  StatusOr<std::unique_ptr<Region>> AllocateDeviceCopy(
      std::span<const std::byte> contents) override;
  bool DeviceProxied() const override { return true; }
  StatusOr<DeviceRing> ProxyDevicePeers(std::span<const ProxiedPeer> peers,
                                        size_t slot_bytes) override;

  // What Create chose, for tests and logs.
  uint32_t send_queue_depth() const { return sq_depth_; }
  uint32_t signal_every() const { return signal_every_; }
  const Context& context() const { return *ctx_; }

 private:
  // CQEs taken per ibv_poll_cq (poll.cc; Post and Close drain the queue in such steps too).
  static constexpr int kPollBatch = 32;
  explicit VerbsTransport(const Config& config) : config_(config) {}
  std::string Who() const { return "verbs: rank " + std::to_string(config_.rank); }
  Endpoint* FindEndpoint(int peer) const;
  QueuePair* FindQp(uint32_t qp_num) const;
  Status Validate(const Write& w) const;
  // Posts the writes chained on `q` (indices into `writes`) as one WR list.
  Status PostChain(QueuePair& q, std::span<const Write> writes);
  // Polls the CQ until `q` has room for one more send, bounded by Config::timeout.
  Status WaitForRoom(QueuePair& q);
  // The queue depths, the signalling interval and the completion queue, sized from max_unpolled
  // and the device's limits.
  Status CreateQueues();
  // One CQE: a send completion (kWriteDone through wr_id), an immediate, or a peer's failure.
  void TakeCompletion(const ibv_wc& wc);
  // Polls up to `budget` CQEs into backlog_; reposts the receive WRs they used up.
  void DrainCq(int budget);
  void CompleteSends(QueuePair& q, uint64_t through_seq);
  Completion& Emit(Completion::Type type, int peer, Lane lane);
  void Teardown();
  // The stream path: its CQ and the host words the GPU shares (Create); the proxy (first use).
  Status InitStreamPath();
  Status StartProxy(DeviceLink device = {});
  // The device-side API's words (device_ops.cc): host memory the GPU maps, device counters.
  Status InitDeviceApi();
  unsigned long long* DeviceAddress(unsigned long long* host) const;
  size_t Cells() const { return config_.peers.size() * static_cast<size_t>(config_.slot_depth); }
  Status CheckStreamSlot(int peer, int slot, std::string_view call) const;
  uint64_t DeviceWord(StreamWord kind, int peer, int slot) const;

  Config config_;
  VerbsOptions options_;
  std::shared_ptr<Context> ctx_;  // first member to be built, last to go (regions share it)
  ibv_cq* cq_ = nullptr;
  uint32_t sq_depth_ = 0;
  uint32_t rq_depth_ = 0;
  uint32_t signal_every_ = 1;
  std::vector<int> peer_index_;  // rank -> index into config_.peers, or -1
  std::vector<std::unique_ptr<Endpoint>> endpoints_;  // by peer index; made by LocalAddress
  std::vector<std::pair<uint32_t, QueuePair*>> qp_by_num_;  // sorted by QP number
  std::vector<Completion> backlog_;  // completions not yet handed out
  size_t backlog_head_ = 0;
  // Scratch for Post: per-QP chains of write indices, and the WRs themselves.
  std::vector<QueuePair*> touched_;
  std::vector<std::vector<uint32_t>> chains_;  // parallel to touched_
  std::vector<ibv_send_wr> wrs_;
  std::vector<ibv_sge> sges_;
  std::vector<QueuePair*> repost_;
  bool closed_ = false;

  // Stream path (GPU slots only).
  ibv_cq* stream_cq_ = nullptr;
  uint32_t* stream_words_ = nullptr;  // host memory, registered with CUDA
  size_t stream_word_count_ = 0;
  uint64_t stream_words_device_ = 0;  // its device address (CUdeviceptr)
  unsigned stream_wait_flags_ = 0;  // CU_STREAM_WAIT_VALUE_FLUSH where the GPU has it
  bool host_flush_ = false;  // else cuFlushGPUDirectRDMAWrites from the proxy
  bool can_host_flush_ = false;  // the driver and GPU offer cuFlushGPUDirectRDMAWrites
  void* cuda_context_ = nullptr;  // CUcontext current at Create
  std::unique_ptr<StreamProxy> proxy_;
  Status stream_error_;

  // The device-side API (device_ops.cc), once DeviceWords / DeviceWaits / ProxyDevicePeers asked.
  // host: error word, consumed, released[cells], arrival[cells], then the ring (32-byte aligned),
  // registered with CUDA; counters: generation_sent, generation_received, arrived_blocks [cells
  // each] and the ring's claimed count, in device memory.
  struct DeviceApi {
    unsigned long long* host = nullptr;
    size_t bytes = 0;
    uint64_t device = 0;  // the host block's device address
    DeviceDescriptor* ring = nullptr;
    uint64_t ring_capacity = 0;
    std::unique_ptr<VerbsRegion> counters;
  } device_api_;
};

}  // namespace m2n::transport::verbs

namespace m2n::transport {
const TransportInfo& verbsTransportInfo();
}  // namespace m2n::transport

#include "transports/verbs/stream.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace m2n::transport::verbs {
namespace {

constexpr int kPollBatch = 16;
// Idle rounds before the proxy yields its core between rounds, and how often waits are checked.
constexpr uint32_t kSpinRounds = 2048;
constexpr uint32_t kCheckEvery = 1024;

// Generations wrap: a is after b.
bool After(uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) > 0; }

}  // namespace

StreamProxy::StreamProxy(ibv_cq* cq, std::vector<Peer> peers, uint32_t* words, Settings settings)
    : cq_(cq), peers_(std::move(peers)), words_(words), settings_(std::move(settings)) {
  const size_t cells = peers_.size() * static_cast<size_t>(settings_.slot_depth);
  send_generation_.assign(cells, 0);
  wait_generation_.assign(cells, 0);
  release_generation_.assign(cells, 0);
  queued_.resize(cells);
  taken_.assign(cells, 0);
  credits_.assign(cells, 0);
  arrivals_.assign(cells, 0);
  acked_.assign(cells, 0);
  stalled_since_.assign(cells, {});
  waiting_since_.assign(cells, {});
  for (size_t i = 0; i < peers_.size(); ++i) {
    for (Lane lane : {Lane::kData, Lane::kAck}) {
      qp_index_.push_back(
          {peers_[i].endpoint->stream_qp(lane).qp->qp_num, {static_cast<int>(i), lane}});
    }
  }
  std::sort(qp_index_.begin(), qp_index_.end());
}

StatusOr<std::unique_ptr<StreamProxy>> StreamProxy::Start(ibv_cq* cq, std::vector<Peer> peers,
                                                          uint32_t* words, Settings settings) {
  if (settings.slot_depth < 1 || settings.slot_depth > (1 << 16)) {
    return InvalidArgumentError("verbs: stream path: slot depth " +
                                std::to_string(settings.slot_depth) + " outside [1, 65536]");
  }
  for (const Peer& p : peers) {
    if (p.endpoint == nullptr || p.endpoint->num_qps() != kMaxQps || !p.endpoint->connected()) {
      return FailedPreconditionError(PeerText(p.rank, "stream path: no connected stream QPs"));
    }
  }
  const DeviceLink& d = settings.device;
  if (d.ring != nullptr &&
      (d.ring_capacity == 0 || d.consumed == nullptr || d.released == nullptr ||
       d.arrival == nullptr || d.routes.size() != peers.size() || d.slot_bytes == 0)) {
    return InvalidArgumentError(
        "verbs: device-side API: a descriptor ring without its capacity, its words, the slot size "
        "or a route per peer (" +
        std::to_string(d.routes.size()) + " routes for " + std::to_string(peers.size()) +
        " peers)");
  }
  std::unique_ptr<StreamProxy> proxy(
      new StreamProxy(cq, std::move(peers), words, std::move(settings)));
  proxy->thread_ = std::thread(&StreamProxy::Run, proxy.get());
  return proxy;
}

StreamProxy::~StreamProxy() {
  stop_.store(true, std::memory_order_release);
  if (thread_.joinable()) thread_.join();
}

uint32_t StreamProxy::Load(StreamWord kind, size_t cell) const {
  return std::atomic_ref<uint32_t>(words_[static_cast<size_t>(kind) * queued_.size() + cell])
      .load(std::memory_order_acquire);
}

void StreamProxy::Store(StreamWord kind, size_t cell, uint32_t value) {
  std::atomic_ref<uint32_t>(words_[static_cast<size_t>(kind) * queued_.size() + cell])
      .store(value, std::memory_order_release);
}

uint32_t StreamProxy::QueueSend(int peer_index, int slot, const StreamDescriptor& descriptor) {
  const size_t cell = Cell(peer_index, slot);
  const uint32_t generation = ++send_generation_[cell];
  std::lock_guard<std::mutex> lock(queue_mutex_);
  queued_[cell].push_back(descriptor);
  queued_count_.fetch_add(1, std::memory_order_release);
  return generation;
}

Status StreamProxy::error() const {
  std::lock_guard<std::mutex> lock(error_mutex_);
  return error_;
}

void StreamProxy::Fail(Status s) {
  std::lock_guard<std::mutex> lock(error_mutex_);
  if (error_.ok()) error_ = std::move(s);
}

void StreamProxy::Run() {
  if (settings_.proxy_core >= 0 && settings_.proxy_core < CPU_SETSIZE) {
    // Best effort: a core outside this process's cpuset leaves the thread where it is.
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(settings_.proxy_core, &set);
    (void)pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  }
  if (settings_.on_start) settings_.on_start();
  uint32_t idle = 0;
  uint32_t round = 0;
  while (!stop_.load(std::memory_order_acquire)) {
    bool busy = PollCompletions();
    busy = PostReadySends() || busy;
    busy = SendAcks() || busy;
    busy = TakeDeviceDescriptors() || busy;
    if (++round % kCheckEvery == 0) CheckWaits();
    idle = busy ? 0 : idle + 1;
    if (idle > kSpinRounds) sched_yield();
  }
}

Status StreamProxy::PostWrite(QueuePair& q, uint64_t wr_id, const StreamDescriptor* d,
                              uint32_t imm) {
  ibv_send_wr wr{};
  ibv_sge sge{};
  wr.wr_id = wr_id;
  wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
  wr.imm_data = htonl(imm);
  wr.send_flags = IBV_SEND_SIGNALED;
  if (d != nullptr) {
    wr.wr.rdma.remote_addr = d->remote_address;
    wr.wr.rdma.rkey = d->rkey;
    if (d->length > 0) {
      sge.addr = d->local_address;
      sge.length = d->length;
      sge.lkey = d->lkey;
      wr.sg_list = &sge;
      wr.num_sge = 1;
    }
  }
  ibv_send_wr* bad = nullptr;
  if (int err = ibv_post_send(q.qp, &wr, &bad); err != 0) {
    return UnavailableError(PeerText(
        q.endpoint->peer(), std::string("ibv_post_send (") + QpName(q) + "): " +
                                std::strerror(err) + " (errno " + std::to_string(err) + ")"));
  }
  return OkStatus();
}

bool StreamProxy::PollCompletions() {
  ibv_wc wcs[kPollBatch];
  const int n = ibv_poll_cq(cq_, kPollBatch, wcs);
  if (n < 0) {
    Fail(UnavailableError("verbs: stream path: ibv_poll_cq failed (CQ overrun or device error)"));
    return false;
  }
  for (int i = 0; i < n; ++i) {
    const ibv_wc& wc = wcs[i];
    auto it =
        std::lower_bound(qp_index_.begin(), qp_index_.end(), wc.qp_num,
                         [](const auto& entry, uint32_t qp_num) { return entry.first < qp_num; });
    if (it == qp_index_.end() || it->first != wc.qp_num) continue;
    const int p = it->second.first;
    const Lane lane = it->second.second;
    QueuePair& q = peers_[static_cast<size_t>(p)].endpoint->stream_qp(lane);
    const bool recv = (wc.wr_id & kRecvWrId) != 0;
    const bool data_send = !recv && (wc.wr_id & kAckWrId) == 0;
    if (wc.status != IBV_WC_SUCCESS) {
      Fail(UnavailableError(PeerText(
          peers_[static_cast<size_t>(p)].rank,
          std::string(QpName(q)) + ": " + (recv ? "receive" : "write-with-imm") + " completion: " +
              ibv_wc_status_str(wc.status) + " (status " + std::to_string(wc.status) + ")")));
      // The stream waiting for this send goes on; StreamError tells the caller.
      if (data_send)
        Store(kSent, static_cast<size_t>(wc.wr_id >> 32), static_cast<uint32_t>(wc.wr_id));
      continue;
    }
    if (data_send) {
      Store(kSent, static_cast<size_t>(wc.wr_id >> 32), static_cast<uint32_t>(wc.wr_id));
      continue;
    }
    if (!recv) continue;  // an ACK of ours went out
    if (Status s = q.endpoint->PostReceives(q, 1); !s.ok()) Fail(s);
    const uint32_t slot = ntohl(wc.imm_data);
    if (wc.opcode != IBV_WC_RECV_RDMA_WITH_IMM ||
        slot >= static_cast<uint32_t>(settings_.slot_depth)) {
      Fail(DataLossError(PeerText(peers_[static_cast<size_t>(p)].rank,
                                  std::string(QpName(q)) +
                                      ": a completion that is not a write-with-imm to a slot "
                                      "(opcode " +
                                      std::to_string(wc.opcode) + ", slot " + std::to_string(slot) +
                                      ")")));
      continue;
    }
    const size_t cell = Cell(p, static_cast<int>(slot));
    if (lane == Lane::kAck) {
      StoreDeviceWord(settings_.device.released, cell, ++credits_[cell]);
      continue;
    }
    Store(kLength, cell, wc.byte_len);
    // The payload went to GPU memory by PCIe writes; where the GPU cannot flush them itself at the
    // wait, make them visible before saying it arrived.
    if (settings_.flush) settings_.flush();
    Store(kArrived, cell, ++arrivals_[cell]);
    StoreDeviceWord(settings_.device.arrival, cell,
                    (static_cast<uint64_t>(arrivals_[cell]) << 32) | wc.byte_len);
  }
  return n > 0;
}

bool StreamProxy::PostReadySends() {
  if (queued_count_.load(std::memory_order_acquire) == 0) return false;
  bool busy = false;
  const int depth = settings_.slot_depth;
  for (size_t p = 0; p < peers_.size(); ++p) {
    for (int slot = 0; slot < depth; ++slot) {
      const size_t cell = Cell(static_cast<int>(p), slot);
      if (!After(Load(kReady, cell), taken_[cell])) continue;
      const uint32_t generation = taken_[cell] + 1;
      // Credit: the receiver released this slot's previous use.
      const bool credit = !After(generation - 1, credits_[cell]);
      if (!credit) {
        const auto now = std::chrono::steady_clock::now();
        if (stalled_since_[cell] == std::chrono::steady_clock::time_point{}) {
          stalled_since_[cell] = now;
          continue;
        }
        if (now - stalled_since_[cell] < settings_.timeout) continue;
      }
      StreamDescriptor d;
      {
        std::lock_guard<std::mutex> lock(queue_mutex_);
        if (queued_[cell].empty()) {
          Fail(InternalError(
              PeerText(peers_[p].rank, "stream path: slot " + std::to_string(slot) +
                                           " was made ready with no write queued for it")));
          taken_[cell] = generation;
          Store(kSent, cell, generation);
          continue;
        }
        d = queued_[cell].front();
        queued_[cell].pop_front();
      }
      queued_count_.fetch_sub(1, std::memory_order_relaxed);
      stalled_since_[cell] = {};
      taken_[cell] = generation;
      busy = true;
      if (!credit) {
        Fail(DeadlineExceededError(
            PeerText(peers_[p].rank, "a stream-ordered send waited for the peer to release slot " +
                                         std::to_string(slot) + " longer than " +
                                         std::to_string(settings_.timeout.count()) +
                                         " ms and gave up; its stream went on without sending")));
        Store(kSent, cell, generation);
        continue;
      }
      const uint64_t wr_id = (static_cast<uint64_t>(cell) << 32) | generation;
      if (Status s = PostWrite(peers_[p].endpoint->stream_qp(Lane::kData), wr_id, &d,
                               static_cast<uint32_t>(slot));
          !s.ok()) {
        Fail(s);
        Store(kSent, cell, generation);
      }
    }
  }
  return busy;
}

bool StreamProxy::SendAcks() {
  bool busy = false;
  const int depth = settings_.slot_depth;
  for (size_t p = 0; p < peers_.size(); ++p) {
    for (int slot = 0; slot < depth; ++slot) {
      const size_t cell = Cell(static_cast<int>(p), slot);
      const uint32_t freed = Load(kFreed, cell);
      while (After(freed, acked_[cell])) {
        ++acked_[cell];
        busy = true;
        StreamDescriptor none;
        if (Status s = PostWrite(peers_[p].endpoint->stream_qp(Lane::kAck), kAckWrId | cell, &none,
                                 static_cast<uint32_t>(slot));
            !s.ok()) {
          Fail(s);
        }
      }
    }
  }
  return busy;
}

void StreamProxy::CheckWaits() {
  const int depth = settings_.slot_depth;
  std::chrono::steady_clock::time_point now{};
  for (size_t p = 0; p < peers_.size(); ++p) {
    for (int slot = 0; slot < depth; ++slot) {
      const size_t cell = Cell(static_cast<int>(p), slot);
      const uint32_t waiting = Load(kWaiting, cell);
      if (!After(waiting, arrivals_[cell])) {
        waiting_since_[cell] = {};
        continue;
      }
      if (now == std::chrono::steady_clock::time_point{}) now = std::chrono::steady_clock::now();
      if (waiting_since_[cell] == std::chrono::steady_clock::time_point{}) {
        waiting_since_[cell] = now;
      } else if (now - waiting_since_[cell] >= settings_.timeout) {
        Fail(DeadlineExceededError(PeerText(
            peers_[p].rank, "a stream-ordered receive waited for a message in slot " +
                                std::to_string(slot) + " longer than " +
                                std::to_string(settings_.timeout.count()) +
                                " ms and gave up; work after it on the stream saw no valid data")));
        arrivals_[cell] = waiting;
        Store(kArrived, cell, waiting);
        waiting_since_[cell] = {};
      }
    }
  }
}

}  // namespace m2n::transport::verbs

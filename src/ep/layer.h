// The state of one expert-parallel layer (m2n::ExpertParallel::Impl), shared by its creation
// (ep.cc), the attention rank's calls (attention.cc) and the expert rank's calls (expert.cc).
#pragma once

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ep/layout.h"
#include "ep/routing.h"
#include "m2n/ep.h"

namespace m2n {
namespace ep {

// Placement, format and slot bytes of a layer, checked.
struct Resolved {
  ep::Placement placement;
  ep::Format format;
  size_t slot_bytes = 0;
};

// The device path's state (device_layer.h; only in a build with CUDA).
struct DeviceLayer;

}  // namespace ep

struct ExpertParallel::Impl {
  Group& group;
  ExpertParallelOptions options;
  ep::Resolved layer;
  bool attention = false;
  int receiver = -1;  // this expert rank's index in [0, N)
  std::vector<int> peers;
  std::vector<std::byte> send_memory;  // one message of up to slot_bytes per peer
  std::optional<MemoryRegion> send_region;  // optional: MemoryRegion() is inline, its Impl opaque
  std::vector<SendRequest> requests;
  std::vector<Message> received;
  // Attention rank: the calls whose combine has not come back, oldest first.
  struct Call {
    ep::DispatchPlan plan;
    std::vector<int32_t> ids;
    std::vector<float> weights;
  };
  std::deque<Call> in_flight;
  uint32_t next_dispatch = 0, next_combine = 0;
  // Expert rank: the last call's grouping, rows and where they came from.
  uint32_t next_call = 0;
  bool combine_due = false;
  ep::ExpertGrouping grouping;
  std::vector<std::byte> grouped_x;
  std::vector<int> counts;
  std::vector<ExpertRowSource> sources;
  // The stream-ordered calls' device buffers and kernels' tables: set for a group with device
  // slots (then the host-driven calls are refused), null for host slots.
  std::shared_ptr<ep::DeviceLayer> device;
  // Device path, attention rank: the token count of each call whose combine is due (as the host
  // knows it: max_tokens for a count in device memory), oldest first.
  std::deque<int> device_in_flight;

  Impl(Group& g, const ExpertParallelOptions& o) : group(g), options(o) {}
  std::string me() const { return "expert-parallel rank " + std::to_string(group.rank()); }
  std::byte* send_slot(size_t peer_index) {
    return send_memory.data() + peer_index * layer.slot_bytes;
  }
  Status WrongSide(const char* call, bool want_attention) const {
    return FailedPreconditionError(me() + ": " + call + " is for " +
                                   (want_attention ? "attention ranks (group senders)"
                                                   : "expert ranks (group "
                                                     "receivers)") +
                                   ", and this rank is " +
                                   (attention ? "an attention rank" : "an expert rank"));
  }
  // The host-driven calls need host slots; the stream-ordered ones device slots.
  Status CheckPath(const char* call, bool want_device) const {
    if ((device != nullptr) == want_device) return OkStatus();
    return FailedPreconditionError(me() + ": " + call +
                                   (want_device
                                        ? " (stream-ordered) needs a group with device slots "
                                          "(Options::slot_memory = kCuda)"
                                        : " (host-driven) needs a group with host slots "
                                          "(Options::slot_memory = kHost); use the *OnStream "
                                          "calls on device slots"));
  }
  Status SendAll(const char* what, uint32_t call, Deadline deadline) {
    Status s = group.Send(requests, deadline);
    if (!s.ok()) return s.WithContext(me() + ": " + what + " of call " + std::to_string(call));
    return OkStatus();
  }
  Status ReceiveAll(const char* what, uint32_t call, Deadline deadline) {
    received.resize(peers.size());
    Status s = group.Receive(peers, received, deadline);
    if (!s.ok()) return s.WithContext(me() + ": " + what + " of call " + std::to_string(call));
    return OkStatus();
  }
  // Releases the received messages; the first error wins over the release's.
  Status ReleaseAll(Status first) {
    Status s = group.Release(received);
    return first.ok() ? s : first;
  }
};

namespace ep {
// Allocates the device path's buffers for impl (device_calls.cc; kUnimplemented without CUDA).
Status CreateDeviceLayer(ExpertParallel::Impl& impl);
}  // namespace ep

}  // namespace m2n

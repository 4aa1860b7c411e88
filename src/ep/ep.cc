// m2n::ExpertParallel (m2n/ep.h): creating a layer (options checked against the group, send
// buffers registered). The calls are in attention.cc and expert.cc; the routing, the message format
// and the weighted sum are the pure functions of routing.h, layout.h and combine.h.
#include <string>

#include "ep/layer.h"

namespace m2n {

std::string_view DataTypeName(DataType dtype) {
  switch (dtype) {
    case DataType::kFloat32:
      return "fp32";
    case DataType::kBFloat16:
      return "bf16";
  }
  return "unknown";
}

size_t DataTypeBytes(DataType dtype) { return dtype == DataType::kFloat32 ? 4 : 2; }

namespace {

Status CheckOptions(const ExpertParallelOptions& o) {
  auto bad = [](const char* field, int value, const char* rule) {
    return InvalidArgumentError(std::string("ExpertParallelOptions::") + field + " is " +
                                std::to_string(value) + ", must be " + rule);
  };
  if (o.top_k < 1 || o.top_k > o.num_experts) return bad("top_k", o.top_k, "in [1, num_experts]");
  if (o.top_k > 0xFFFF) return bad("top_k", o.top_k, "< 65536");
  if (o.hidden < 1) return bad("hidden", o.hidden, ">= 1");
  if (o.max_tokens < 0) return bad("max_tokens", o.max_tokens, ">= 0");
  if (o.dtype != DataType::kFloat32 && o.dtype != DataType::kBFloat16) {
    return bad("dtype", int(o.dtype), "DataType::kFloat32 or DataType::kBFloat16");
  }
  return OkStatus();
}

// Placement, format and slot bytes of a layer, checked.
StatusOr<ep::Resolved> Resolve(const ExpertParallelOptions& o, int num_senders, int num_receivers) {
  ep::Resolved r;
  M2N_ASSIGN_OR_RETURN(r.placement,
                       ep::MakePlacement(o.num_experts, o.placement, num_senders, num_receivers));
  M2N_RETURN_IF_ERROR(CheckOptions(o));
  r.format = ep::Format{o.dtype, o.hidden, o.top_k, ep::OptionsFingerprint(o, r.placement)};
  r.slot_bytes = ep::SlotBytesNeeded(r.format, o.max_tokens, r.placement.max_local_experts);
  return r;
}

}  // namespace

StatusOr<size_t> ExpertParallel::SlotBytesNeeded(const ExpertParallelOptions& options,
                                                 int num_senders, int num_receivers) {
  M2N_ASSIGN_OR_RETURN(ep::Resolved r, Resolve(options, num_senders, num_receivers));
  return r.slot_bytes;
}

StatusOr<std::unique_ptr<ExpertParallel>> ExpertParallel::Create(
    Group& group, const ExpertParallelOptions& options) {
  auto impl = std::make_unique<Impl>(group, options);
  auto resolved = Resolve(options, group.num_senders(), group.num_receivers());
  if (!resolved.ok()) return resolved.status().WithContext(impl->me());
  impl->layer = std::move(*resolved);
  const size_t have = group.options().slot_bytes;
  if (have < impl->layer.slot_bytes) {
    return InvalidArgumentError(
        impl->me() + ": the group's slot_bytes " + std::to_string(have) +
        " cannot hold the largest message; " +
        "these options need slot_bytes >= " + std::to_string(impl->layer.slot_bytes) +
        " (max_tokens " + std::to_string(options.max_tokens) + ", hidden " +
        std::to_string(options.hidden) + ", top_k " + std::to_string(options.top_k) + ", " +
        std::string(DataTypeName(options.dtype)) +
        "; ExpertParallel::SlotBytesNeeded computes it)");
  }
  impl->attention = group.role() == Role::kSender;
  if (!impl->attention) impl->receiver = group.rank() - group.num_senders();
  impl->peers.assign(group.peers().begin(), group.peers().end());
  if (group.options().slot_memory == MemoryKind::kCuda) {
    M2N_RETURN_IF_ERROR(ep::CreateDeviceLayer(*impl));
    return std::unique_ptr<ExpertParallel>(new ExpertParallel(std::move(impl)));
  }
  impl->send_memory.resize(impl->peers.size() * impl->layer.slot_bytes);
  auto region = group.RegisterMemory(impl->send_memory.data(), impl->send_memory.size());
  if (!region.ok())
    return region.status().WithContext(impl->me() + ": registering the send buffers");
  impl->send_region.emplace(std::move(*region));
  return std::unique_ptr<ExpertParallel>(new ExpertParallel(std::move(impl)));
}

ExpertParallel::ExpertParallel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ExpertParallel::~ExpertParallel() = default;

int ExpertParallel::calls_in_flight() const {
  return int(impl_->in_flight.size() + impl_->device_in_flight.size());
}

}  // namespace m2n

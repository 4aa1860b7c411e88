// Transport choice: which compiled-in transport a Group uses (Options::transport, or "auto": the
// first one usable here that can hold the receive slots), and creating it with the Group's
// configuration, including the NIC and proxy core for a transport that uses a NIC.
#include "group/impl.h"
#include "m2n/topology.h"

namespace m2n {

std::vector<std::string> AvailableTransports() {
  std::vector<std::string> names;
  for (const auto& info : transport::RegisteredTransports()) names.emplace_back(info.name);
  return names;
}

StatusOr<const transport::TransportInfo*> ChooseTransport(const std::string& wanted,
                                                          MemoryKind slots) {
  auto all = transport::RegisteredTransports();
  std::string names;
  for (const auto& info : all) names += (names.empty() ? "" : ", ") + std::string(info.name);
  if (all.empty()) {
    return UnavailableError(
        "no transport was compiled into this build of m2n (see the configure summary)");
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

// Creates the chosen transport, passes it through `wrap` (the tests' fault injection; none in
// Group::Create) and makes it the Core that the Group and its memory regions share.
Status Group::Impl::CreateTransport(const transport::TransportInfo& info,
                                    const TransportWrapper& wrap) {
  transport::Config config;
  config.rank = rank;
  config.world_size = world;
  config.peers = peers;
  config.max_unpolled = options.slot_depth;
  config.timeout = options.bootstrap.timeout;
  config.slot_depth = options.slot_depth;
  config.slot_memory = options.slot_memory;
  config.aborted = [abort = abort] { return abort.aborted(); };  // a copy: the Core may outlive us
  if (info.uses_nic) {
    const Placement placement =
        ChoosePlacement(options);  // the NIC nearest to our GPU, a proxy core
    config.nic = placement.nic;
    config.nic_required = placement.nic_from_options;
    config.proxy_core = placement.proxy_core;
  }
  auto created = info.create(config);
  if (!created.ok()) return created.status().WithContext(me());
  core = std::make_shared<Core>();
  core->transport = wrap ? wrap(std::move(created).value()) : std::move(created).value();
  return OkStatus();
}

}  // namespace m2n

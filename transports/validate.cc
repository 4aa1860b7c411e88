// The shared write-validation rule of the transports (validate.h).
#include "transports/validate.h"

namespace m2n::transport {

StatusOr<std::vector<int>> CheckConfig(const Config& config, std::string_view transport,
                                       int max_unpolled_limit) {
  const std::string who = std::string(transport) + ": rank " + std::to_string(config.rank);
  const std::string world = " outside a world of " + std::to_string(config.world_size);
  if (config.world_size <= 0 || config.rank < 0 || config.rank >= config.world_size)
    return InvalidArgumentError(who + ": rank" + world);
  if (config.max_unpolled < 1 || config.max_unpolled > max_unpolled_limit) {
    return InvalidArgumentError(who + ": max_unpolled " + std::to_string(config.max_unpolled) +
                                " outside [1, " + std::to_string(max_unpolled_limit) + "]");
  }
  std::vector<int> index(static_cast<size_t>(config.world_size), -1);
  for (size_t i = 0; i < config.peers.size(); ++i) {
    const int peer = config.peers[i];
    if (peer < 0 || peer >= config.world_size)
      return InvalidArgumentError(who + ": peer rank " + std::to_string(peer) + world);
    if (index[static_cast<size_t>(peer)] >= 0)
      return InvalidArgumentError(who + ": peer rank " + std::to_string(peer) + " listed twice");
    index[static_cast<size_t>(peer)] = static_cast<int>(i);
  }
  return index;
}

std::string WriteText(const Write& w, std::string_view transport, std::string_view why) {
  std::string text(transport);
  text +=
      ": peer rank " + std::to_string(w.peer) + ": write of " + std::to_string(w.length) + " bytes";
  text += why;
  return text;
}

Status ValidateWriteRegions(const Write& w, std::string_view transport,
                            const std::type_info& local_type, const std::type_info& remote_type) {
  // Messages are built only on failure: this runs for every write.
  auto refuse = [&](std::string_view why) {
    return InvalidArgumentError(WriteText(w, transport, why));
  };
  if (w.local == nullptr || w.remote == nullptr) return refuse(" without a local or remote region");
  // typeid first: a Region of some other transport must not be static_cast to ours.
  if (typeid(*w.local) != local_type)
    return refuse(": local region not registered by this transport");
  if (typeid(*w.remote) != remote_type)
    return refuse(": remote region not unpacked by this transport");
  if (!RangeInside(w.local_offset, w.length, w.local->size())) {
    return refuse(" at local offset " + std::to_string(w.local_offset) +
                  " overruns the local region of " + std::to_string(w.local->size()) + " bytes");
  }
  if (!RangeInside(w.remote_offset, w.length, w.remote->size())) {
    return refuse(" at remote offset " + std::to_string(w.remote_offset) +
                  " overruns the remote region of " + std::to_string(w.remote->size()) + " bytes");
  }
  return OkStatus();
}

Write AsWrite(const StreamWrite& w) {
  Write as_write;
  as_write.peer = w.peer;
  as_write.local = w.local;
  as_write.local_offset = w.local_offset;
  as_write.remote = w.remote;
  as_write.remote_offset = w.remote_offset;
  as_write.length = w.length;
  return as_write;
}

}  // namespace m2n::transport

// The argument checks both data paths (host_path.cc, stream_path.cc) share, each with the message
// a caller needs: a peer on the other side, a message that fits a slot, a peer named at most
// slot_depth times in one stream call, and one data path per group.
#include <algorithm>

#include "group/impl.h"

namespace m2n {

Status Group::Impl::ValidPeer(int peer, std::string_view what) const {
  if (IndexOfPeer(peer) >= 0) return OkStatus();
  std::string why = peer < 0 || peer >= world
                        ? "outside [0, " + std::to_string(world) + ")"
                        : "on this rank's own side (" + std::string(RoleName(role)) + "s talk to " +
                              (role == Role::kSender ? "receivers" : "senders") + " only)";
  return InvalidArgumentError(me() + ": " + std::string(what) + " to/from rank " +
                              std::to_string(peer) + ", which is " + why);
}

Status Group::Impl::CheckSendLength(const SendRequest& r) const {
  if (r.length <= options.slot_bytes) return OkStatus();
  return InvalidArgumentError(me() + ": message of " + std::to_string(r.length) + " bytes to " +
                              RankName(r.peer) + " is larger than a slot (" +
                              std::to_string(options.slot_bytes) + " bytes, Options::slot_bytes)");
}

// Rejects a batch that names one peer more than slot_depth times.
Status Group::Impl::CheckPerPeerCount(std::span<const int> peers_in_batch, std::string_view call) {
  auto& count = scratch.need;
  count.clear();
  for (int peer : peers_in_batch) {
    int index = IndexOfPeer(peer);
    auto it = std::find_if(count.begin(), count.end(), [&](auto& n) { return n.first == index; });
    if (it == count.end())
      count.emplace_back(index, 1);
    else if (++it->second > static_cast<size_t>(options.slot_depth)) {
      return InvalidArgumentError(me() + ": " + std::string(call) + " names " + RankName(peer) +
                                  " more than slot_depth (" + std::to_string(options.slot_depth) +
                                  ") times in one call");
    }
  }
  return OkStatus();
}

// The data path a call uses: a group uses the host-driven calls, the stream-ordered ones or the
// device-side API (its signal words and cursors would disagree otherwise).
Status Group::Impl::UsePath(DataPath path) {
  if (data_path == DataPath::kUnset) data_path = path;
  if (data_path == path) return OkStatus();
  const auto name = [](DataPath p) -> std::string {
    switch (p) {
      case DataPath::kHost:
        return "host-driven Send / Receive";
      case DataPath::kStream:
        return "stream-ordered *OnStream calls";
      case DataPath::kDevice:
        return "device-side API (device_group(), m2n/device.cuh)";
      case DataPath::kUnset:
        break;
    }
    return "";
  };
  return FailedPreconditionError(me() + ": this group already moves its messages with the " +
                                 name(data_path) + ", so it cannot use the " + name(path) +
                                 "; one group uses one data path");
}

}  // namespace m2n

// How a Group is made, with one seam for tests: a wrapper around the transport the Group creates.
// Group::Create passes none. The fault-injecting transport of the tests (tests/fault_transport.h)
// comes in here, so src/ knows it only as a transport::Transport. Not public API.
#pragma once

#include <functional>
#include <memory>

#include "m2n/group.h"
#include "transports/transport.h"

namespace m2n {

// Takes the transport the Group chose and created, returns the one the Group will use.
using TransportWrapper =
    std::function<std::unique_ptr<transport::Transport>(std::unique_ptr<transport::Transport>)>;

class GroupFactory {
 public:
  // `abort`: the group's abort flag (Group::Create(options, token)); by default a fresh one.
  static StatusOr<std::unique_ptr<Group>> Create(const Options& options,
                                                 const TransportWrapper& wrap,
                                                 const AbortToken& abort = AbortToken());
};

}  // namespace m2n

// topology.h's loaders in a build without hwloc: the selection logic is there, the machine is not.
#include "topology/topology.h"

namespace m2n::topology {

bool HwlocBuilt() { return false; }

StatusOr<Machine> LoadThisMachine() {
  return UnimplementedError(
      "topology: this build has no hwloc (apt-get install libhwloc-dev and reconfigure); the "
      "transports "
      "choose their NIC themselves");
}

StatusOr<Machine> LoadMachineXml(std::string_view) {
  return UnimplementedError("topology: this build has no hwloc, so it cannot read an XML topology");
}

}  // namespace m2n::topology

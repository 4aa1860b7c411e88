// Where a rank's traffic goes: the RDMA NIC nearest to its GPU and a CPU core near both for a
// transport's proxy thread, chosen from the machine's topology (hwloc) unless the operator says
// (Options::nic / Options::proxy_core, M2N_NIC / M2N_PROXY_CORE). Group::Create does this itself;
// these calls show what it chooses (m2n_perf prints them in its header).
#pragma once

#include <string>
#include <vector>

#include "m2n/options.h"
#include "m2n/status.h"

namespace m2n {

struct Placement {
  std::string gpu;  // PCI bus id of this process's GPU; empty: none (host-memory slots)
  std::string nic;  // RDMA device (e.g. mlx5_0); empty: the transport picks its own
  bool nic_from_options = false;  // Options::nic / M2N_NIC named it (a must, not a preference)
  int proxy_core = -1;  // CPU (OS index) for a proxy thread; -1: not pinned
  std::string reason;  // one line: what was chosen and why
};

// The placement for this process under `options` (resolved: ResolveOptions). The GPU is the
// current CUDA device when options.slot_memory is kCuda. Never fails for want of a topology: the
// reason then says why nothing was chosen (no hwloc in this build, hwloc failed).
Placement ChoosePlacement(const Options& options);

// The topology as m2n sees it, one line each: a summary, then per GPU its NIC, path and proxy core.
std::vector<std::string> DescribeTopology();

}  // namespace m2n

// The machine as m2n places work on it: GPUs and RDMA NICs by PCI address, where each sits (PCIe
// switches, host bridge, NUMA node, package) and the cores near it; and the choice made from that,
// for one GPU: the nearest NIC and a proxy core near both.
//
// Loaded by hwloc (this host, or an XML topology, which is how the tests build synthetic machines);
// the selection logic works on the plain Machine below and is unit tested without hwloc. A build
// without hwloc has the logic but no loader: Load* return UNIMPLEMENTED saying so.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "m2n/status.h"

namespace m2n::topology {

// How far apart two PCI devices are, nearest first (NCCL's PIX/PXB, PHB, NODE, SYS, with the
// socket step split out).
enum class PathType : uint8_t {
  kPciSwitch = 0,  // below a common PCIe switch (PCI-to-PCI bridges only)
  kHostBridge = 1,  // below a common host bridge (root complex), no common switch
  kNumaNode = 2,  // different host bridges of one NUMA node
  kPackage = 3,  // different NUMA nodes of one package
  kSystem = 4,  // different packages (the inter-socket link)
};
const char* PathName(PathType type);

struct PciDevice {
  std::string bus_id;  // "0000:17:00.0", lower case
  std::string name;  // NIC: the RDMA device (mlx5_0); GPU: its OS device (cuda0) or ""
  std::vector<uint64_t> bridges;  // the bridges above it, host bridge first (hwloc gp_index)
  std::vector<bool> switch_port;  // parallel to bridges: a PCI-to-PCI bridge (a switch port)
  int numa = -1;  // OS index of its NUMA node; -1: unknown
  int package = -1;  // OS index of its package; -1: unknown
  std::vector<int> cpus;  // OS indices of the PUs local to it, ascending
};

struct Core {
  int pu = -1;  // OS index of the core's first PU (what a thread is pinned to)
  int numa = -1;
  int package = -1;
};

struct Machine {
  std::vector<PciDevice> gpus;  // PCI order
  std::vector<PciDevice> nics;  // PCI order
  std::vector<Core> cores;  // usable cores (allowed to this process), hwloc order
  int packages = 0;
  int numa_nodes = 0;
  std::string source;  // "hwloc 2.9.0 (this host)", "hwloc 2.9.0 (XML)"
};

// Whether this build has hwloc.
bool HwlocBuilt();
// This host's topology (I/O devices included). UNIMPLEMENTED without hwloc; UNAVAILABLE when
// hwloc fails, with its errno text.
StatusOr<Machine> LoadThisMachine();
// A topology in hwloc's XML format (hwloc-ls --of xml, or written by hand as the tests do).
StatusOr<Machine> LoadMachineXml(std::string_view xml);

struct Path {
  PathType type = PathType::kSystem;
  int hops = 0;  // PCI bridges between the two, through their lowest common one
};
Path PathBetween(const PciDevice& a, const PciDevice& b);

struct Choice {
  int gpu = -1;  // index into Machine::gpus; -1: none (a CPU-only rank)
  int nic = -1;  // index into Machine::nics; -1: no NIC found
  int proxy_pu = -1;  // OS index of the PU for the proxy thread; -1: none
  PathType path = PathType::kSystem;  // GPU (or CPUs) to NIC
  std::string why;  // one line
};

// For Machine::gpus[gpu]: the NIC on the shortest path (fewest bridges among equals); GPUs with
// the same set of equally near NICs are spread over it in PCI order. The proxy core: a core local
// to both GPU and NIC (else to the GPU, else any), the GPUs sharing such a set taking different
// cores from the top of it down (core 0 and its neighbours are where the OS and the ranks' main
// threads usually run).
Choice ChooseForGpu(const Machine& machine, int gpu);
// For a rank without a GPU, bound to `cpus`: the NIC whose local PUs overlap `cpus` most (first in
// PCI order among equals); the proxy core: the highest core in cpus that is local to that NIC.
Choice ChooseForCpus(const Machine& machine, const std::vector<int>& cpus);

// Index of the GPU with this PCI bus id (any case; "0000:" may be left off), or -1.
int FindGpu(const Machine& machine, std::string_view bus_id);

// One line per GPU: "GPU 0000:17:00.0 -> mlx5_0 (PCIe switch), proxy core 23", plus a summary
// line; what m2n_perf's header shows.
std::vector<std::string> Describe(const Machine& machine);

}  // namespace m2n::topology

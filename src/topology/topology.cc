// The selection logic of topology.h: pure functions of a Machine, no hwloc.
#include "topology/topology.h"

#include <algorithm>
#include <cctype>
#include <tuple>

namespace m2n::topology {
namespace {

bool Contains(const std::vector<int>& sorted, int value) {
  return std::binary_search(sorted.begin(), sorted.end(), value);
}

std::string Lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// The NICs nearest to `gpu` (all at the same path type and hop count), in PCI order.
std::vector<int> NearestNics(const Machine& m, const PciDevice& gpu, Path* best_path) {
  std::vector<int> best;
  Path best_so_far;
  for (size_t i = 0; i < m.nics.size(); ++i) {
    const Path p = PathBetween(gpu, m.nics[i]);
    const auto key = std::make_tuple(p.type, p.hops);
    if (best.empty() || key < std::make_tuple(best_so_far.type, best_so_far.hops)) {
      best.assign(1, static_cast<int>(i));
      best_so_far = p;
    } else if (key == std::make_tuple(best_so_far.type, best_so_far.hops)) {
      best.push_back(static_cast<int>(i));
    }
  }
  if (best_path != nullptr) *best_path = best_so_far;
  return best;
}

// Cores local to every PU list given (empty lists are ignored), in hwloc order.
std::vector<int> LocalCores(const Machine& m, const std::vector<const std::vector<int>*>& lists) {
  std::vector<int> out;
  for (size_t i = 0; i < m.cores.size(); ++i) {
    bool local = true;
    for (const auto* cpus : lists) {
      if (!cpus->empty() && !Contains(*cpus, m.cores[i].pu)) local = false;
    }
    if (local) out.push_back(static_cast<int>(i));
  }
  return out;
}

// Candidate cores for a GPU / NIC pair: local to both, else to the GPU, else all.
std::vector<int> ProxyCandidates(const Machine& m, const PciDevice& gpu, const PciDevice* nic) {
  std::vector<int> cores;
  if (nic != nullptr) cores = LocalCores(m, {&gpu.cpus, &nic->cpus});
  if (cores.empty()) cores = LocalCores(m, {&gpu.cpus});
  if (cores.empty()) cores = LocalCores(m, {});
  return cores;
}

// The NIC chosen for GPU `gpu`, or -1: GPUs with the same nearest set share it in PCI order.
int NicFor(const Machine& m, int gpu, Path* path) {
  const std::vector<int> nearest = NearestNics(m, m.gpus[gpu], path);
  if (nearest.empty()) return -1;
  size_t ordinal = 0;
  for (int other = 0; other < gpu; ++other) {
    if (NearestNics(m, m.gpus[other], nullptr) == nearest) ++ordinal;
  }
  return nearest[ordinal % nearest.size()];
}

}  // namespace

const char* PathName(PathType type) {
  switch (type) {
    case PathType::kPciSwitch:
      return "PCIe switch";
    case PathType::kHostBridge:
      return "host bridge";
    case PathType::kNumaNode:
      return "NUMA node";
    case PathType::kPackage:
      return "package";
    case PathType::kSystem:
      return "across packages";
  }
  return "?";
}

Path PathBetween(const PciDevice& a, const PciDevice& b) {
  size_t common = 0;
  while (common < a.bridges.size() && common < b.bridges.size() &&
         a.bridges[common] == b.bridges[common]) {
    ++common;
  }
  Path p;
  p.hops = static_cast<int>(a.bridges.size() + b.bridges.size() - 2 * common);
  if (common > 0) {
    const bool pci_bridge = common - 1 < a.switch_port.size() && a.switch_port[common - 1];
    p.type = pci_bridge ? PathType::kPciSwitch : PathType::kHostBridge;
  } else if (a.numa >= 0 && a.numa == b.numa) {
    p.type = PathType::kNumaNode;
  } else if (a.package >= 0 && a.package == b.package) {
    p.type = PathType::kPackage;
  } else {
    p.type = PathType::kSystem;
  }
  return p;
}

Choice ChooseForGpu(const Machine& m, int gpu) {
  Choice c;
  if (gpu < 0 || gpu >= static_cast<int>(m.gpus.size())) {
    c.why = "GPU index " + std::to_string(gpu) + " not in the topology";
    return c;
  }
  c.gpu = gpu;
  const PciDevice& g = m.gpus[gpu];
  Path path;
  c.nic = NicFor(m, gpu, &path);
  c.path = path.type;
  const PciDevice* nic = c.nic >= 0 ? &m.nics[c.nic] : nullptr;
  const std::vector<int> cores = ProxyCandidates(m, g, nic);
  if (!cores.empty()) {
    // GPUs with the same candidate cores take different ones, from the top down.
    size_t ordinal = 0;
    for (int other = 0; other < gpu; ++other) {
      const int other_nic = NicFor(m, other, nullptr);
      if (ProxyCandidates(m, m.gpus[other], other_nic >= 0 ? &m.nics[other_nic] : nullptr) == cores)
        ++ordinal;
    }
    c.proxy_pu = m.cores[cores[cores.size() - 1 - ordinal % cores.size()]].pu;
  }
  c.why = "GPU " + g.bus_id +
          (nic != nullptr ? " -> " + nic->name + " (" + PathName(c.path) + ", " +
                                std::to_string(path.hops) + " PCI hops)"
                          : std::string(" -> no RDMA NIC in the topology"));
  if (c.proxy_pu >= 0) c.why += ", proxy core " + std::to_string(c.proxy_pu);
  return c;
}

Choice ChooseForCpus(const Machine& m, const std::vector<int>& cpus) {
  Choice c;
  size_t best_overlap = 0;
  for (size_t i = 0; i < m.nics.size(); ++i) {
    size_t overlap = 0;
    for (int cpu : cpus) overlap += Contains(m.nics[i].cpus, cpu) ? 1 : 0;
    if (c.nic < 0 || overlap > best_overlap) {
      c.nic = static_cast<int>(i);
      best_overlap = overlap;
    }
  }
  const std::vector<int> empty;
  const std::vector<int>& nic_cpus = c.nic >= 0 ? m.nics[c.nic].cpus : empty;
  for (size_t i = m.cores.size(); i-- > 0;) {
    const int pu = m.cores[i].pu;
    if (std::find(cpus.begin(), cpus.end(), pu) == cpus.end()) continue;
    if (!nic_cpus.empty() && !Contains(nic_cpus, pu) && best_overlap > 0) continue;
    c.proxy_pu = pu;
    break;
  }
  if (c.nic >= 0) {
    const PciDevice& nic = m.nics[c.nic];
    c.path = best_overlap > 0 ? PathType::kNumaNode : PathType::kSystem;
    c.why = "no GPU: " + nic.name +
            (best_overlap > 0 ? " (local to this process's CPUs)"
                              : " (none is local to this process's CPUs)");
  } else {
    c.why = "no GPU, no RDMA NIC in the topology";
  }
  if (c.proxy_pu >= 0) c.why += ", proxy core " + std::to_string(c.proxy_pu);
  return c;
}

int FindGpu(const Machine& m, std::string_view bus_id) {
  std::string want = Lower(bus_id);
  if (std::count(want.begin(), want.end(), ':') == 1) want = "0000:" + want;
  // CUDA reports "00000000:17:00.0" (an 8-digit domain).
  if (want.size() > 12 && want.find(':') == 8) want = want.substr(4);
  for (size_t i = 0; i < m.gpus.size(); ++i) {
    if (m.gpus[i].bus_id == want) return static_cast<int>(i);
  }
  return -1;
}

std::vector<std::string> Describe(const Machine& m) {
  std::vector<std::string> lines;
  lines.push_back(m.source + ": " + std::to_string(m.packages) + " package(s), " +
                  std::to_string(m.numa_nodes) + " NUMA node(s), " +
                  std::to_string(m.cores.size()) + " usable core(s), " +
                  std::to_string(m.gpus.size()) + " GPU(s), " + std::to_string(m.nics.size()) +
                  " RDMA NIC(s)");
  for (size_t i = 0; i < m.gpus.size(); ++i)
    lines.push_back(ChooseForGpu(m, static_cast<int>(i)).why);
  if (m.gpus.empty()) {
    for (const PciDevice& nic : m.nics) {
      lines.push_back("NIC " + nic.name + " " + nic.bus_id + ", NUMA node " +
                      std::to_string(nic.numa));
    }
  }
  return lines;
}

}  // namespace m2n::topology

// topology.h's loaders, by hwloc 2: this host, or an XML topology.
#include <hwloc.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "topology/topology.h"

namespace m2n::topology {
namespace {

constexpr unsigned kClassDisplayVga = 0x0300;
constexpr unsigned kClassDisplay3d = 0x0302;
constexpr unsigned kVendorNvidia = 0x10de;
constexpr unsigned kVendorAmd = 0x1002;

// Owns a topology handle.
struct Handle {
  hwloc_topology_t topology = nullptr;
  ~Handle() {
    if (topology != nullptr) hwloc_topology_destroy(topology);
  }
};

std::vector<int> Cpus(hwloc_const_cpuset_t set) {
  std::vector<int> out;
  if (set == nullptr) return out;
  unsigned id;
  hwloc_bitmap_foreach_begin(id, set) { out.push_back(static_cast<int>(id)); }
  hwloc_bitmap_foreach_end();
  return out;
}

// The package holding `obj` (a normal object), or -1.
int PackageOf(hwloc_topology_t t, hwloc_obj_t obj) {
  if (obj == nullptr || obj->cpuset == nullptr || hwloc_bitmap_iszero(obj->cpuset)) return -1;
  if (obj->type == HWLOC_OBJ_PACKAGE) return static_cast<int>(obj->os_index);
  if (hwloc_obj_t p = hwloc_get_ancestor_obj_by_type(t, HWLOC_OBJ_PACKAGE, obj))
    return static_cast<int>(p->os_index);
  // Attached above the packages (a Group, the Machine): the one package covering it, if any.
  hwloc_obj_t found = nullptr;
  for (hwloc_obj_t p = nullptr;
       (p = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_PACKAGE, p)) != nullptr;) {
    if (hwloc_bitmap_isincluded(obj->cpuset, p->cpuset)) found = p;
  }
  return found != nullptr ? static_cast<int>(found->os_index) : -1;
}

// The NUMA node holding `obj` (a normal object) when it is exactly one, else -1.
int NumaOf(hwloc_obj_t obj) {
  if (obj == nullptr || obj->nodeset == nullptr || hwloc_bitmap_weight(obj->nodeset) != 1)
    return -1;
  return hwloc_bitmap_first(obj->nodeset);
}

std::string BusId(const hwloc_obj_t pci) {
  char text[32];
  std::snprintf(text, sizeof text, "%04x:%02x:%02x.%x", pci->attr->pcidev.domain,
                pci->attr->pcidev.bus, pci->attr->pcidev.dev, pci->attr->pcidev.func);
  return text;
}

PciDevice Describe(hwloc_topology_t t, hwloc_obj_t pci, std::string name) {
  PciDevice d;
  d.bus_id = BusId(pci);
  d.name = std::move(name);
  for (hwloc_obj_t up = pci->parent; up != nullptr && up->type == HWLOC_OBJ_BRIDGE;
       up = up->parent) {
    d.bridges.insert(d.bridges.begin(), up->gp_index);
    d.switch_port.insert(d.switch_port.begin(),
                         up->attr->bridge.upstream_type == HWLOC_OBJ_BRIDGE_PCI);
  }
  hwloc_obj_t local = hwloc_get_non_io_ancestor_obj(t, pci);
  if (local != nullptr) {
    d.cpus = Cpus(local->cpuset);
    d.numa = NumaOf(local);
    d.package = PackageOf(t, local);
  }
  return d;
}

StatusOr<Machine> Load(hwloc_topology_t t, const std::string& source) {
  Machine m;
  m.source = std::string("hwloc ") + HWLOC_VERSION + " (" + source + ")";
  m.packages = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PACKAGE);
  m.numa_nodes = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE);
  hwloc_const_cpuset_t allowed = hwloc_topology_get_allowed_cpuset(t);
  // Cores (or PUs where the topology has no cores): the first allowed PU of each.
  const hwloc_obj_type_t unit =
      hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE) > 0 ? HWLOC_OBJ_CORE : HWLOC_OBJ_PU;
  for (hwloc_obj_t core = nullptr; (core = hwloc_get_next_obj_by_type(t, unit, core)) != nullptr;) {
    hwloc_bitmap_t usable = hwloc_bitmap_alloc();
    hwloc_bitmap_and(usable, core->cpuset, allowed);
    const int pu = hwloc_bitmap_first(usable);
    hwloc_bitmap_free(usable);
    if (pu < 0) continue;
    Core c;
    c.pu = pu;
    c.package = PackageOf(t, core);
    for (hwloc_obj_t node = nullptr;
         (node = hwloc_get_next_obj_by_type(t, HWLOC_OBJ_NUMANODE, node)) != nullptr;) {
      if (hwloc_bitmap_isincluded(core->cpuset, node->cpuset))
        c.numa = static_cast<int>(node->os_index);
    }
    m.cores.push_back(c);
  }
  for (hwloc_obj_t pci = nullptr; (pci = hwloc_get_next_pcidev(t, pci)) != nullptr;) {
    const unsigned cls = pci->attr->pcidev.class_id;
    const unsigned vendor = pci->attr->pcidev.vendor_id;
    std::string gpu_name;
    bool accelerator = false;
    for (hwloc_obj_t os = pci->io_first_child; os != nullptr; os = os->next_sibling) {
      if (os->type != HWLOC_OBJ_OS_DEVICE) continue;
      if (os->attr->osdev.type == HWLOC_OBJ_OSDEV_OPENFABRICS && os->name != nullptr) {
        m.nics.push_back(Describe(t, pci, os->name));
      } else if (os->attr->osdev.type == HWLOC_OBJ_OSDEV_COPROC && os->name != nullptr) {
        accelerator = true;
        if (gpu_name.empty()) gpu_name = os->name;
      }
    }
    const bool gpu = accelerator || cls == kClassDisplay3d ||
                     (cls == kClassDisplayVga && (vendor == kVendorNvidia || vendor == kVendorAmd));
    if (gpu) m.gpus.push_back(Describe(t, pci, gpu_name));
  }
  auto by_bus = [](const PciDevice& a, const PciDevice& b) {
    return a.bus_id < b.bus_id || (a.bus_id == b.bus_id && a.name < b.name);
  };
  std::sort(m.gpus.begin(), m.gpus.end(), by_bus);
  std::sort(m.nics.begin(), m.nics.end(), by_bus);
  return m;
}

Status Prepare(Handle& h) {
  if (hwloc_topology_init(&h.topology) != 0) {
    h.topology = nullptr;
    return UnavailableError(std::string("topology: hwloc_topology_init: ") + std::strerror(errno));
  }
  // PCI devices, bridges and OS devices that matter (GPUs, NICs), not every PCI function; no
  // caches, distances, memory attributes or CPU kinds: fewer sysfs reads (a load takes ~0.3 s in
  // the emulated test VM otherwise).
  hwloc_topology_set_io_types_filter(h.topology, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
  hwloc_topology_set_cache_types_filter(h.topology, HWLOC_TYPE_FILTER_KEEP_NONE);
  hwloc_topology_set_icache_types_filter(h.topology, HWLOC_TYPE_FILTER_KEEP_NONE);
#if HWLOC_API_VERSION >= 0x00020800
  hwloc_topology_set_flags(h.topology, HWLOC_TOPOLOGY_FLAG_NO_DISTANCES |
                                           HWLOC_TOPOLOGY_FLAG_NO_MEMATTRS |
                                           HWLOC_TOPOLOGY_FLAG_NO_CPUKINDS);
#endif
  return OkStatus();
}

}  // namespace

bool HwlocBuilt() { return true; }

StatusOr<Machine> LoadThisMachine() {
  Handle h;
  M2N_RETURN_IF_ERROR(Prepare(h));
  // PCI devices from sysfs (hwloc's Linux backend) rather than the libpciaccess plugin, which
  // leaks its device-name table in every process that loads it and is not needed for bus ids;
  // nor the OpenGL and OpenCL plugins (GPUs are found by PCI class and CUDA devices).
  for (const char* name : {"pci", "gl", "opencl"}) {
    (void)hwloc_topology_set_components(h.topology, HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, name);
  }
  if (hwloc_topology_load(h.topology) != 0) {
    return UnavailableError(std::string("topology: hwloc_topology_load (this host): ") +
                            std::strerror(errno));
  }
  return Load(h.topology, "this host");
}

StatusOr<Machine> LoadMachineXml(std::string_view xml) {
  Handle h;
  M2N_RETURN_IF_ERROR(Prepare(h));
  const std::string text(xml);  // hwloc wants the terminating NUL counted
  if (hwloc_topology_set_xmlbuffer(h.topology, text.c_str(), static_cast<int>(text.size() + 1)) !=
      0) {
    return InvalidArgumentError(std::string("topology: hwloc_topology_set_xmlbuffer: ") +
                                std::strerror(errno));
  }
  if (hwloc_topology_load(h.topology) != 0) {
    return InvalidArgumentError(std::string("topology: hwloc cannot load the XML topology: ") +
                                std::strerror(errno));
  }
  return Load(h.topology, "XML");
}

}  // namespace m2n::topology

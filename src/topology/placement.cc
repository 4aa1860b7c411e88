// m2n/topology.h: the placement of this process, from the topology and the operator's overrides.
#include <dlfcn.h>
#include <sched.h>

#include <string>
#include <vector>

#include "m2n/topology.h"
#include "topology/topology.h"

namespace m2n {
namespace {

// This host's topology, loaded once per process (hwloc reads sysfs: milliseconds, not free).
const StatusOr<topology::Machine>& ThisMachine() {
  static const StatusOr<topology::Machine> machine = topology::LoadThisMachine();
  return machine;
}

// PCI bus id of the current CUDA device, or "" when there is none. The driver API is reached only
// when this process already loaded it (RTLD_NOLOAD): src/ has no CUDA dependency, and a process
// that never used CUDA is not made to start it.
std::string CurrentGpuBusId() {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  if (lib == nullptr) return "";
  using GetCurrent = int (*)(void**);
  using GetDevice = int (*)(int*);
  using GetBusId = int (*)(char*, int, int);
  auto get_current = reinterpret_cast<GetCurrent>(dlsym(lib, "cuCtxGetCurrent"));
  auto get_device = reinterpret_cast<GetDevice>(dlsym(lib, "cuCtxGetDevice"));
  auto get_bus_id = reinterpret_cast<GetBusId>(dlsym(lib, "cuDeviceGetPCIBusId"));
  std::string bus_id;
  void* context = nullptr;
  int device = -1;
  char text[64] = {};
  if (get_current != nullptr && get_device != nullptr && get_bus_id != nullptr &&
      get_current(&context) == 0 && context != nullptr && get_device(&device) == 0 &&
      get_bus_id(text, sizeof text, device) == 0) {
    bus_id = text;
  }
  dlclose(lib);
  return bus_id;
}

std::vector<int> AllowedCpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

}  // namespace

Placement ChoosePlacement(const Options& options) {
  Placement p;
  const std::string gpu = options.slot_memory == MemoryKind::kCuda ? CurrentGpuBusId() : "";
  p.gpu = gpu;
  const auto& machine = ThisMachine();
  if (!machine.ok()) {
    p.reason = machine.status().message();
  } else {
    const int index = gpu.empty() ? -1 : topology::FindGpu(*machine, gpu);
    const topology::Choice c = index >= 0 ? topology::ChooseForGpu(*machine, index)
                                          : topology::ChooseForCpus(*machine, AllowedCpus());
    if (c.nic >= 0) p.nic = machine->nics[c.nic].name;
    p.proxy_core = c.proxy_pu;
    p.reason =
        (!gpu.empty() && index < 0 ? "GPU " + gpu + " is not in the topology; " : std::string()) +
        c.why;
    if (index >= 0) p.gpu = machine->gpus[index].bus_id;
  }
  if (!options.nic.empty()) {
    p.nic = options.nic;
    p.nic_from_options = true;
    p.reason += "; NIC " + options.nic + " from Options::nic / M2N_NIC";
  }
  if (options.proxy_core >= 0) {
    p.proxy_core = options.proxy_core;
    p.reason += "; proxy core " + std::to_string(options.proxy_core) +
                " from Options::proxy_core / M2N_PROXY_CORE";
  }
  return p;
}

std::vector<std::string> DescribeTopology() {
  const auto& machine = ThisMachine();
  if (!machine.ok()) return {machine.status().message()};
  return topology::Describe(*machine);
}

}  // namespace m2n

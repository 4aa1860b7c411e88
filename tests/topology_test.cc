// src/topology: the NIC and proxy core chosen per GPU, on a synthetic two-socket machine that hwloc
// loads from XML, and a check that this host's real topology loads.
#include <gtest/gtest.h>

#include <string>

#include "m2n/topology.h"
#include "topology/topology.h"

namespace m2n::topology {
namespace {

// hwloc XML pieces. Cpusets are hex masks of PUs; one PU per core; gp_index must be unique.
int next_gp = 100;
std::string Gp() { return " gp_index=\"" + std::to_string(next_gp++) + "\""; }

std::string Core(int pu) {
  char mask[16];
  std::snprintf(mask, sizeof mask, "0x%08x", 1u << pu);
  const std::string set = std::string(" cpuset=\"") + mask + "\" complete_cpuset=\"" + mask + "\"";
  return "<object type=\"Core\" os_index=\"" + std::to_string(pu) + "\"" + set + Gp() + ">" +
         "<object type=\"PU\" os_index=\"" + std::to_string(pu) + "\"" + set + Gp() +
         "/></object>\n";
}

std::string PciDev(const std::string& bus, const std::string& type, const std::string& osdev = "",
                   int osdev_type = 0) {
  std::string s = "<object type=\"PCIDev\"" + Gp() + " pci_busid=\"" + bus + "\" pci_type=\"" +
                  type + "\" pci_link_speed=\"0.000000\"";
  if (osdev.empty()) return s + "/>\n";
  return s + "><object type=\"OSDev\"" + Gp() + " name=\"" + osdev + "\" osdev_type=\"" +
         std::to_string(osdev_type) + "\"/></object>\n";
}
std::string Gpu(const std::string& bus, const std::string& cuda) {
  return PciDev(bus, "0302 [10de:2330] [10de:16c1] a1", cuda, 5);
}
std::string Nic(const std::string& bus, const std::string& name) {
  return PciDev(bus, "0207 [15b3:101b] [15b3:0007] 00", name, 3);
}

// A PCI-to-PCI bridge (root port or switch port) leading to buses [lo, hi].
std::string PciBridge(const std::string& bus, int depth, const std::string& range,
                      const std::string& children) {
  return "<object type=\"Bridge\"" + Gp() + " bridge_type=\"1-1\" depth=\"" +
         std::to_string(depth) + "\" bridge_pci=\"0000:[" + range + "]\" pci_busid=\"" + bus +
         "\" pci_type=\"0604 [8086:2030] [0000:0000] 00\" pci_link_speed=\"0.000000\">\n" +
         children + "</object>\n";
}
std::string HostBridge(const std::string& range, const std::string& children) {
  return "<object type=\"Bridge\"" + Gp() + " bridge_type=\"0-1\" depth=\"0\" bridge_pci=\"0000:[" +
         range + "]\">\n" + children + "</object>\n";
}

std::string Package(int index, const std::string& mask, const std::string& inside) {
  const std::string nodeset = index == 0 ? "0x00000001" : "0x00000002";
  const std::string sets = " cpuset=\"" + mask + "\" complete_cpuset=\"" + mask + "\" nodeset=\"" +
                           nodeset + "\" complete_nodeset=\"" + nodeset + "\"";
  return "<object type=\"Package\" os_index=\"" + std::to_string(index) + "\"" + sets + Gp() +
         ">\n" + "<object type=\"NUMANode\" os_index=\"" + std::to_string(index) + "\"" + sets +
         Gp() + " local_memory=\"1073741824\"/>\n" + inside + "</object>\n";
}

// Two sockets, four cores each (PUs 0-3, 4-7).
//   socket 0: host bridge 00 -> root port 00:01.0 -> switch (up 16:00.0, down 17:00.0 / 17:01.0)
//               -> GPU 18:00.0 (cuda0), NIC 19:00.0 (mlx5_0)
//             host bridge 00 -> root port 00:02.0 -> GPU 2a:00.0 (cuda1), no NIC near it
//   socket 1: host bridge 80 -> root port 80:01.0 -> switch (up 91:00.0, down 92:00-02.0)
//               -> GPU 9a:00.0 (cuda2), GPU 9b:00.0 (cuda3), NIC 9c:00.0 (mlx5_1), NIC 9d:00.0
//               (mlx5_2)
std::string TwoSocketXml() {
  next_gp = 100;
  const std::string socket0_io = HostBridge(
      "00-3f",
      PciBridge(
          "0000:00:01.0", 1, "16-19",
          PciBridge("0000:16:00.0", 2, "17-19",
                    PciBridge("0000:17:00.0", 3, "18-18", Gpu("0000:18:00.0", "cuda0")) +
                        PciBridge("0000:17:01.0", 3, "19-19", Nic("0000:19:00.0", "mlx5_0")))) +
          PciBridge("0000:00:02.0", 1, "2a-2a", Gpu("0000:2a:00.0", "cuda1")));
  const std::string socket1_io = HostBridge(
      "80-bf",
      PciBridge(
          "0000:80:01.0", 1, "91-9d",
          PciBridge("0000:91:00.0", 2, "92-9d",
                    PciBridge("0000:92:00.0", 3, "9a-9b",
                              Gpu("0000:9a:00.0", "cuda2") + Gpu("0000:9b:00.0", "cuda3")) +
                        PciBridge("0000:92:01.0", 3, "9c-9d",
                                  Nic("0000:9c:00.0", "mlx5_1") + Nic("0000:9d:00.0", "mlx5_2")))));
  return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE topology SYSTEM \"hwloc2.dtd\">\n"
         "<topology version=\"2.0\">\n"
         "<object type=\"Machine\" os_index=\"0\" cpuset=\"0x000000ff\" "
         "complete_cpuset=\"0x000000ff\" "
         "allowed_cpuset=\"0x000000ff\" nodeset=\"0x00000003\" complete_nodeset=\"0x00000003\" "
         "allowed_nodeset=\"0x00000003\" gp_index=\"1\">\n" +
         Package(0, "0x0000000f", Core(0) + Core(1) + Core(2) + Core(3) + socket0_io) +
         Package(1, "0x000000f0", Core(4) + Core(5) + Core(6) + Core(7) + socket1_io) +
         "</object>\n</topology>\n";
}

class TopologyXml : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HwlocBuilt())
      GTEST_SKIP() << "this build has no hwloc (libhwloc-dev): the XML loader is absent";
    auto m = LoadMachineXml(TwoSocketXml());
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    machine = std::move(m).value();
  }
  int Nic(const std::string& name) const {
    for (size_t i = 0; i < machine.nics.size(); ++i) {
      if (machine.nics[i].name == name) return static_cast<int>(i);
    }
    return -1;
  }
  Machine machine;
};

TEST_F(TopologyXml, FindsGpusNicsAndCores) {
  ASSERT_EQ(machine.gpus.size(), 4u);
  ASSERT_EQ(machine.nics.size(), 3u);
  EXPECT_EQ(machine.gpus[0].bus_id, "0000:18:00.0");
  EXPECT_EQ(machine.gpus[0].name, "cuda0");
  EXPECT_EQ(machine.gpus[3].bus_id, "0000:9b:00.0");
  EXPECT_EQ(machine.nics[0].name, "mlx5_0");
  EXPECT_EQ(machine.nics[0].bus_id, "0000:19:00.0");
  EXPECT_EQ(machine.nics[2].name, "mlx5_2");
  EXPECT_EQ(machine.packages, 2);
  EXPECT_EQ(machine.numa_nodes, 2);
  ASSERT_EQ(machine.cores.size(), 8u);
  EXPECT_EQ(machine.cores[5].pu, 5);
  EXPECT_EQ(machine.cores[5].package, 1);
  EXPECT_EQ(machine.cores[5].numa, 1);
  EXPECT_EQ(machine.gpus[1].package, 0);
  EXPECT_EQ(machine.nics[1].numa, 1);
  EXPECT_EQ(machine.nics[1].cpus, (std::vector<int>{4, 5, 6, 7}));
}

TEST_F(TopologyXml, PathTypes) {
  const auto& g = machine.gpus;
  EXPECT_EQ(PathBetween(g[0], machine.nics[Nic("mlx5_0")]).type, PathType::kPciSwitch);
  EXPECT_EQ(PathBetween(g[0], machine.nics[Nic("mlx5_0")]).hops, 2);
  EXPECT_EQ(PathBetween(g[1], machine.nics[Nic("mlx5_0")]).type, PathType::kHostBridge);
  EXPECT_EQ(PathBetween(g[0], machine.nics[Nic("mlx5_1")]).type, PathType::kSystem);
  EXPECT_EQ(PathBetween(g[2], g[3]).type, PathType::kPciSwitch);
  EXPECT_EQ(PathBetween(g[2], g[3]).hops, 0);
  // Without the bridges (a flatter topology), the NUMA node and package still order them.
  PciDevice a = g[0], b = g[1];
  a.bridges.clear();
  b.bridges.clear();
  EXPECT_EQ(PathBetween(a, b).type, PathType::kNumaNode);
  b.numa = 7;
  EXPECT_EQ(PathBetween(a, b).type, PathType::kPackage);
}

TEST_F(TopologyXml, NearestNicAndProxyCorePerGpu) {
  const Choice c0 = ChooseForGpu(machine, 0);
  EXPECT_EQ(c0.nic, Nic("mlx5_0"));
  EXPECT_EQ(c0.path, PathType::kPciSwitch);
  EXPECT_EQ(c0.proxy_pu, 3);  // a socket-0 core, from the top down
  // No NIC under GPU 1's root port: the one under its host bridge, not socket 1's.
  const Choice c1 = ChooseForGpu(machine, 1);
  EXPECT_EQ(c1.nic, Nic("mlx5_0"));
  EXPECT_EQ(c1.path, PathType::kHostBridge);
  EXPECT_EQ(c1.proxy_pu, 2);  // GPU 0 took core 3
  // Two GPUs, two equally near NICs: one each, in PCI order; different proxy cores on socket 1.
  const Choice c2 = ChooseForGpu(machine, 2);
  const Choice c3 = ChooseForGpu(machine, 3);
  EXPECT_EQ(c2.nic, Nic("mlx5_1"));
  EXPECT_EQ(c3.nic, Nic("mlx5_2"));
  EXPECT_EQ(c2.path, PathType::kPciSwitch);
  EXPECT_EQ(c2.proxy_pu, 7);
  EXPECT_EQ(c3.proxy_pu, 6);
  EXPECT_NE(c3.why.find("mlx5_2"), std::string::npos) << c3.why;
  EXPECT_EQ(ChooseForGpu(machine, 4).nic, -1);
}

TEST_F(TopologyXml, CpuOnlyRankTakesTheNicOfItsSocket) {
  const Choice c = ChooseForCpus(machine, {4, 5, 6, 7});
  EXPECT_EQ(c.nic, Nic("mlx5_1"));
  EXPECT_EQ(c.proxy_pu, 7);
  const Choice d = ChooseForCpus(machine, {0, 1});
  EXPECT_EQ(d.nic, Nic("mlx5_0"));
  EXPECT_EQ(d.proxy_pu, 1);
}

TEST_F(TopologyXml, FindGpuByCudaStyleBusId) {
  EXPECT_EQ(FindGpu(machine, "00000000:9A:00.0"), 2);  // cudaDeviceGetPCIBusId's form
  EXPECT_EQ(FindGpu(machine, "0000:18:00.0"), 0);
  EXPECT_EQ(FindGpu(machine, "2a:00.0"), 1);
  EXPECT_EQ(FindGpu(machine, "0000:55:00.0"), -1);
}

TEST_F(TopologyXml, DescribeNamesEveryGpu) {
  const std::vector<std::string> lines = Describe(machine);
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_NE(lines[0].find("2 package(s)"), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("4 GPU(s), 3 RDMA NIC(s)"), std::string::npos) << lines[0];
  EXPECT_NE(lines[1].find("0000:18:00.0 -> mlx5_0 (PCIe switch"), std::string::npos) << lines[1];
  EXPECT_NE(lines[2].find("host bridge"), std::string::npos) << lines[2];
}

TEST(Topology, BadXmlIsAnError) {
  if (!HwlocBuilt()) GTEST_SKIP() << "this build has no hwloc";
  auto m = LoadMachineXml("<topology>not hwloc</topology>");
  EXPECT_FALSE(m.ok());
}

TEST(Topology, ThisMachineLoads) {
  if (!HwlocBuilt()) {
    EXPECT_EQ(LoadThisMachine().status().code(), StatusCode::kUnimplemented);
    GTEST_SKIP() << "this build has no hwloc";
  }
  auto m = LoadThisMachine();
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_GE(m->cores.size(), 1u);
  EXPECT_GE(m->packages, 1);
  const std::vector<std::string> lines = DescribeTopology();
  ASSERT_FALSE(lines.empty());
  EXPECT_NE(lines[0].find("this host"), std::string::npos) << lines[0];
  for (const std::string& line : lines) std::printf("  %s\n", line.c_str());
}

TEST(Topology, OptionsOverrideThePlacement) {
  Options options;
  options.nic = "mlx5_7";
  options.proxy_core = 1;
  const Placement p = ChoosePlacement(options);
  EXPECT_EQ(p.nic, "mlx5_7");
  EXPECT_TRUE(p.nic_from_options);
  EXPECT_EQ(p.proxy_core, 1);
  EXPECT_NE(p.reason.find("M2N_NIC"), std::string::npos) << p.reason;
  const Placement automatic = ChoosePlacement(Options{});
  EXPECT_FALSE(automatic.nic_from_options);
  EXPECT_FALSE(automatic.reason.empty());
}

}  // namespace
}  // namespace m2n::topology

// m2n_congestion (tools/congestion/): profile parsing, the dry-run plan, --apply writes and the
// errors, against a fake sysfs / debugfs tree in a temporary directory.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "tools/congestion/profile.h"

namespace m2n::congestion {
namespace {

namespace fs = std::filesystem;

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteFile(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

// A fake mlx5 host: eth2 -> 0000:04:00.0, ECN files for priorities 0..7, a few cc_params.
class CongestionToolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/m2n_congestion_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    const fs::path net = root_ / "sys/class/net/eth2";
    for (int p = 0; p < 8; ++p) {
      WriteFile(net / "ecn/roce_np/enable" / std::to_string(p), "0\n");
      WriteFile(net / "ecn/roce_rp/enable" / std::to_string(p), "0\n");
    }
    const fs::path pci = root_ / "sys/devices/pci0000:00/0000:04:00.0";
    fs::create_directories(pci);
    fs::create_symlink("../../../devices/pci0000:00/0000:04:00.0", net / "device");
    cc_ = root_ / "sys/kernel/debug/mlx5/0000:04:00.0/cc_params";
    WriteFile(cc_ / "rp_ai_rate", "5\n");
    WriteFile(cc_ / "rp_time_reset", "300\n");
    WriteFile(cc_ / "np_cnp_dscp", "48\n");
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(cc_ / "rp_time_reset", fs::perms::owner_read | fs::perms::owner_write, ec);
    fs::remove_all(root_, ec);
  }

  fs::path root_;
  fs::path cc_;
};

constexpr const char* kProfile =
    "# comment\n"
    "interface = eth2\n"
    "ecn.np.priorities = 3\n"
    "ecn.rp.priorities = 3, 5   # two\n"
    "dcqcn.rp_time_reset = 600\n"
    "dcqcn.np_cnp_dscp = 48\n";

TEST_F(CongestionToolTest, ParsesProfile) {
  auto p = ParseProfile(kProfile, "test.conf");
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->interface, "eth2");
  EXPECT_EQ(p->np_priorities, std::vector<int>({3}));
  EXPECT_EQ(p->rp_priorities, std::vector<int>({3, 5}));
  ASSERT_EQ(p->dcqcn.size(), 2u);
  EXPECT_EQ(p->dcqcn[0].key, "rp_time_reset");
  EXPECT_EQ(p->dcqcn[0].value, "600");
  EXPECT_EQ(p->dcqcn[0].line, 5);
}

TEST_F(CongestionToolTest, DryRunShowsChangesAndWritesNothing) {
  auto p = ParseProfile(kProfile, "test.conf");
  ASSERT_TRUE(p.ok());
  auto plan = Plan(*p, root_.string());
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  ASSERT_EQ(plan->size(), 5u);
  const std::string text = FormatPlan(*plan, /*applied=*/false);
  const std::string np3 = (root_ / "sys/class/net/eth2/ecn/roce_np/enable/3").string();
  EXPECT_NE(text.find(np3 + ": 0 -> 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find((cc_ / "rp_time_reset").string() + ": 300 -> 600\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find((cc_ / "np_cnp_dscp").string() + ": = 48 (unchanged)\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("5 file(s), 4 to change (dry run"), std::string::npos) << text;
  EXPECT_EQ(ReadFile(np3), "0\n");
  EXPECT_EQ(ReadFile(cc_ / "rp_time_reset"), "300\n");
}

TEST_F(CongestionToolTest, ApplyWritesValues) {
  auto p = ParseProfile(kProfile, "test.conf");
  ASSERT_TRUE(p.ok());
  auto plan = Plan(*p, root_.string() + "/");
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  ASSERT_TRUE(Apply(*plan).ok());
  const fs::path ecn = root_ / "sys/class/net/eth2/ecn";
  EXPECT_EQ(ReadFile(ecn / "roce_np/enable/3"), "1\n");
  EXPECT_EQ(ReadFile(ecn / "roce_rp/enable/3"), "1\n");
  EXPECT_EQ(ReadFile(ecn / "roce_rp/enable/5"), "1\n");
  EXPECT_EQ(ReadFile(ecn / "roce_np/enable/4"), "0\n");  // not listed: left alone
  EXPECT_EQ(ReadFile(cc_ / "rp_time_reset"), "600\n");
  // A second plan finds everything in place.
  auto again = Plan(*p, root_.string());
  ASSERT_TRUE(again.ok());
  for (const Change& c : *again) EXPECT_TRUE(c.unchanged()) << c.path;
}

TEST_F(CongestionToolTest, ExplicitPciWithoutInterface) {
  auto p = ParseProfile("pci = 0000:04:00.0\ndcqcn.rp_ai_rate = 10\n", "t");
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  auto plan = Plan(*p, root_.string());
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  ASSERT_EQ(plan->size(), 1u);
  EXPECT_EQ((*plan)[0].current, "5");
  EXPECT_EQ((*plan)[0].wanted, "10");
}

TEST_F(CongestionToolTest, MissingFileIsNamed) {
  // rp_hai_rate is a real mlx5 parameter, but this "NIC" has no file for it.
  auto p = ParseProfile("interface = eth2\ndcqcn.rp_hai_rate = 25\n", "t");
  ASSERT_TRUE(p.ok());
  auto plan = Plan(*p, root_.string());
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), StatusCode::kNotFound);
  EXPECT_NE(
      plan.status().message().find((cc_ / "rp_hai_rate").string() + " does not exist on this NIC"),
      std::string::npos)
      << plan.status().ToString();

  auto no_if = ParseProfile("interface = eth9\necn.np.priorities = 3\n", "t");
  ASSERT_TRUE(no_if.ok());
  auto plan2 = Plan(*no_if, root_.string());
  ASSERT_FALSE(plan2.ok());
  EXPECT_NE(plan2.status().message().find("sys/class/net/eth9/ecn/roce_np/enable/3"),
            std::string::npos)
      << plan2.status().ToString();
}

TEST_F(CongestionToolTest, BadProfilesNameTheLine) {
  struct Case {
    const char* text;
    const char* expect;
  } cases[] = {
      {"interface = eth2\nspeed = 100\n", "t:2: unknown key 'speed'"},
      {"interface = eth2\ndcqcn.rp_bogus = 1\n", "t:2: unknown DCQCN parameter 'rp_bogus'"},
      {"interface = eth2\ndcqcn.rp_ai_rate = fast\n",
       "t:2: dcqcn.rp_ai_rate = 'fast' is not an unsigned"},
      {"interface = eth2\ndcqcn.rp_ai_rate = -1\n", "is not an unsigned"},
      {"interface = eth2\necn.np.priorities = 8\n",
       "t:2: ecn.np.priorities: priority '8' is not in 0..7"},
      {"interface = eth2\ninterface = eth3\n", "t:2: interface is set twice"},
      {"interface\n", "t:1: expected 'key = value'"},
      {"ecn.rp.priorities = 3\n", "ecn.* needs 'interface"},
      {"dcqcn.rp_ai_rate = 5\n", "dcqcn.* needs"},
  };
  for (const Case& c : cases) {
    auto p = ParseProfile(c.text, "t");
    ASSERT_FALSE(p.ok()) << c.text;
    EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument) << c.text;
    EXPECT_NE(p.status().message().find(c.expect), std::string::npos)
        << c.text << " -> " << p.status().ToString();
  }
}

TEST_F(CongestionToolTest, PermissionDeniedNamesFileAndErrno) {
  auto p = ParseProfile("interface = eth2\ndcqcn.rp_time_reset = 600\n", "t");
  ASSERT_TRUE(p.ok());
  fs::permissions(cc_ / "rp_time_reset", fs::perms::owner_read);
  auto plan = Plan(*p, root_.string());
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  Status s;
  if (::geteuid() != 0) {
    s = Apply(*plan);
  } else {
    // Root ignores file modes: apply from a child that has dropped to nobody (65534), for which
    // the 0700 temporary directory and the 0400 file are closed.
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(3);
      const Status child = Apply(*plan);
      const std::string msg =
          std::to_string(static_cast<int>(child.code())) + " " + child.message();
      ssize_t ignored = ::write(fds[1], msg.data(), msg.size());
      (void)ignored;
      ::_exit(0);
    }
    ::close(fds[1]);
    std::string msg;
    char buf[512];
    ssize_t n;
    while ((n = ::read(fds[0], buf, sizeof(buf))) > 0) msg.append(buf, static_cast<size_t>(n));
    ::close(fds[0]);
    int st = 0;
    ASSERT_EQ(::waitpid(pid, &st, 0), pid);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 3) GTEST_SKIP() << "root, and cannot drop to uid 65534";
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    const size_t space = msg.find(' ');
    ASSERT_NE(space, std::string::npos) << msg;
    s = Status(static_cast<StatusCode>(std::stoi(msg.substr(0, space))), msg.substr(space + 1));
  }
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
  EXPECT_NE(s.message().find((cc_ / "rp_time_reset").string()), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("Permission denied (errno 13)"), std::string::npos) << s.ToString();
  EXPECT_EQ(ReadFile(cc_ / "rp_time_reset"), "300\n");
}

TEST_F(CongestionToolTest, ShippedProfileParses) {
  auto p = LoadProfile(std::string(M2N_PROFILES_DIR) + "/mxn-incast.conf");
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_FALSE(p->np_priorities.empty());
  EXPECT_FALSE(p->dcqcn.empty());
}

// The binary end to end: dry run by default, --apply writes, errors exit 1 with the message.
TEST_F(CongestionToolTest, BinaryDryRunAndApply) {
  const fs::path conf = root_ / "p.conf";
  WriteFile(conf, kProfile);
  const std::string base =
      std::string(M2N_CONGESTION_BIN) + " --root " + root_.string() + " " + conf.string();
  auto run = [](const std::string& cmd, std::string* out) {
    FILE* f = ::popen((cmd + " 2>&1").c_str(), "r");
    if (f == nullptr) return -1;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out->append(buf, n);
    const int st = ::pclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  };
  std::string out;
  EXPECT_EQ(run(base, &out), 0) << out;
  EXPECT_NE(out.find("dry run: nothing written"), std::string::npos) << out;
  EXPECT_EQ(ReadFile(cc_ / "rp_time_reset"), "300\n");
  out.clear();
  EXPECT_EQ(run(base + " --apply", &out), 0) << out;
  EXPECT_NE(out.find("4 written"), std::string::npos) << out;
  EXPECT_EQ(ReadFile(cc_ / "rp_time_reset"), "600\n");
  out.clear();
  WriteFile(conf, "interface = eth2\nbogus = 1\n");
  EXPECT_EQ(run(base, &out), 1) << out;
  EXPECT_NE(out.find("unknown key 'bogus'"), std::string::npos) << out;
}

}  // namespace
}  // namespace m2n::congestion

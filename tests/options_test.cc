#include "m2n/options.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <string>
#include <vector>

namespace m2n {
namespace {

// Clears every launcher and M2N_* variable for the test, restoring nothing: each test runs in a
// process of its own (gtest_discover_tests + ctest).
class OptionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name :
         {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_RANK",
          "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "SLURM_PROCID", "SLURM_NTASKS"}) {
      unsetenv(name);
    }
    for (const EnvironmentVariable& v : EnvironmentTable()) unsetenv(std::string(v.name).c_str());
  }
  Options Base() {
    Options o;
    o.num_senders = 2;
    o.num_receivers = 2;
    return o;
  }
};

TEST_F(OptionsTest, TorchrunVariables) {
  setenv("RANK", "3", 1);
  setenv("WORLD_SIZE", "4", 1);
  setenv("MASTER_ADDR", "10.1.2.3", 1);
  setenv("MASTER_PORT", "1234", 1);
  auto o = ResolveOptions(Base());
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->bootstrap.rank, 3);
  EXPECT_EQ(o->bootstrap.world_size, 4);
  EXPECT_EQ(o->bootstrap.master_addr, "10.1.2.3");
  EXPECT_EQ(o->bootstrap.master_port, 1234);
  EXPECT_EQ(o->bootstrap.job_id, "m2n@10.1.2.3:1234");
}

TEST_F(OptionsTest, OpenMpiAndSlurmVariables) {
  setenv("OMPI_COMM_WORLD_RANK", "1", 1);
  setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
  auto o = ResolveOptions(Base());
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->bootstrap.rank, 1);
  unsetenv("OMPI_COMM_WORLD_RANK");
  unsetenv("OMPI_COMM_WORLD_SIZE");
  setenv("SLURM_PROCID", "2", 1);
  setenv("SLURM_NTASKS", "4", 1);
  o = ResolveOptions(Base());
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->bootstrap.rank, 2);
  EXPECT_EQ(o->bootstrap.master_addr, "127.0.0.1");
}

TEST_F(OptionsTest, M2nVariablesOverrideCode) {
  setenv("M2N_RANK", "0", 1);
  setenv("M2N_WORLD_SIZE", "5", 1);
  setenv("M2N_SENDERS", "3", 1);
  setenv("M2N_SLOT_BYTES", "4M", 1);
  setenv("M2N_SLOT_DEPTH", "8", 1);
  setenv("M2N_TRANSPORT", "ucx", 1);
  auto o = ResolveOptions(Base());
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->num_senders, 3);
  EXPECT_EQ(o->slot_bytes, size_t{4} << 20);
  EXPECT_EQ(o->slot_depth, 8);
  EXPECT_EQ(o->transport, "ucx");
  EXPECT_NE(DescribeOptions(*o).find("3"), std::string::npos);
}

TEST_F(OptionsTest, BadValuesNameTheVariable) {
  setenv("M2N_SLOT_DEPTH", "lots", 1);
  auto o = ResolveOptions(Base());
  EXPECT_EQ(o.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(o.status().message().find("M2N_SLOT_DEPTH"), std::string::npos);
  setenv("M2N_SLOT_DEPTH", "5000", 1);
  o = ResolveOptions(Base());
  EXPECT_NE(o.status().message().find("outside"), std::string::npos);
}

TEST_F(OptionsTest, WrongRankOrWorldSize) {
  Options o = Base();
  o.bootstrap.world_size = 4;
  o.bootstrap.rank = 4;
  auto r = ResolveOptions(o);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("rank 4 is outside [0, 4)"), std::string::npos)
      << r.status().message();
  o.bootstrap.rank = 0;
  o.bootstrap.world_size = 5;
  r = ResolveOptions(o);
  EXPECT_NE(r.status().message().find("world size 5 != M + N"), std::string::npos)
      << r.status().message();
  o.bootstrap.world_size = -1;
  r = ResolveOptions(o);
  EXPECT_NE(r.status().message().find("no world size"), std::string::npos);
}

// A second group beside a first one: its options are the first one's, resolved, with the next port.
// The launcher's M2N_MASTER_PORT must not send it back to the first group's store, and the checks
// still apply to resolved options.
TEST_F(OptionsTest, ResolvedOptionsAreFinal) {
  setenv("M2N_RANK", "1", 1);
  setenv("M2N_WORLD_SIZE", "4", 1);
  setenv("M2N_MASTER_PORT", "4000", 1);
  setenv("M2N_TRANSPORT", "ucx", 1);
  auto first = ResolveOptions(Base());
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_TRUE(first->resolved);
  EXPECT_EQ(first->bootstrap.master_port, 4000);
  Options second = *first;
  second.bootstrap.master_port = 4001;
  second.transport = "auto";
  auto again = ResolveOptions(second);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->bootstrap.master_port, 4001);
  EXPECT_EQ(again->transport, "auto");
  EXPECT_EQ(again->bootstrap.rank, 1);
  EXPECT_EQ(again->bootstrap.job_id, first->bootstrap.job_id);

  // Not resolved: the variables win, as for any options set in code.
  second.resolved = false;
  again = ResolveOptions(second);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->bootstrap.master_port, 4000);
  EXPECT_EQ(again->transport, "ucx");

  second = *first;
  second.bootstrap.rank = 7;
  again = ResolveOptions(second);
  EXPECT_EQ(again.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(again.status().message().find("rank 7 is outside [0, 4)"), std::string::npos)
      << again.status().message();
}

}  // namespace
}  // namespace m2n

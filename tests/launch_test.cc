// The launch kit (m2n/launch.h): each launcher's variables recognised, the local-rank rule, a bad
// value rejected naming its variable, and SpawnLocal / WaitForJob over trivial children (/bin/sh):
// exits collected, a failure stopping the others, a hanging child killed at the deadline.
#include "m2n/launch.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <string>

namespace m2n {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// Clears every launcher variable; each test runs in a process of its own (gtest_discover_tests).
class LaunchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : {"M2N_RANK",
                             "M2N_WORLD_SIZE",
                             "M2N_LOCAL_RANK",
                             "M2N_LOCAL_WORLD_SIZE",
                             "M2N_MASTER_ADDR",
                             "M2N_MASTER_PORT",
                             "M2N_JOB_ID",
                             "RANK",
                             "WORLD_SIZE",
                             "LOCAL_RANK",
                             "LOCAL_WORLD_SIZE",
                             "MASTER_ADDR",
                             "MASTER_PORT",
                             "OMPI_COMM_WORLD_RANK",
                             "OMPI_COMM_WORLD_SIZE",
                             "OMPI_COMM_WORLD_LOCAL_RANK",
                             "OMPI_COMM_WORLD_LOCAL_SIZE",
                             "PMI_RANK",
                             "PMI_SIZE",
                             "MPI_LOCALRANKID",
                             "MPI_LOCALNRANKS",
                             "SLURM_PROCID",
                             "SLURM_NTASKS",
                             "SLURM_LOCALID",
                             "SLURM_NTASKS_PER_NODE",
                             "SLURM_STEP_NUM_NODES",
                             "SLURM_NNODES"}) {
      unsetenv(name);
    }
  }
  static LaunchInfo Detect() {
    auto info = DetectLaunch();
    EXPECT_TRUE(info.ok()) << info.status().ToString();
    return info.ok() ? *info : LaunchInfo{};
  }
};

TEST_F(LaunchTest, NoLauncher) {
  const LaunchInfo info = Detect();
  EXPECT_EQ(info.launcher, Launcher::kNone);
  EXPECT_EQ(info.rank, -1);
  EXPECT_EQ(info.world_size, -1);
  EXPECT_EQ(LocalRank(info, 5), 5);
}

struct Case {
  Launcher launcher;
  const char* rank;
  const char* size;
  const char* local_rank;
  const char* local_size;
};

TEST_F(LaunchTest, EachLaunchersVariables) {
  for (const Case& c :
       {Case{Launcher::kM2n, "M2N_RANK", "M2N_WORLD_SIZE", "M2N_LOCAL_RANK",
             "M2N_LOCAL_WORLD_SIZE"},
        Case{Launcher::kTorchrun, "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
        Case{Launcher::kOpenMpi, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
             "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"},
        Case{Launcher::kPmi, "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"},
        Case{Launcher::kSlurm, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
             "SLURM_NTASKS_PER_NODE"}}) {
    SetUp();
    setenv(c.rank, "5", 1);
    setenv(c.size, "8", 1);
    setenv(c.local_rank, "1", 1);
    setenv(c.local_size, "4", 1);
    const LaunchInfo info = Detect();
    EXPECT_EQ(info.launcher, c.launcher) << c.rank;
    EXPECT_EQ(info.rank, 5) << c.rank;
    EXPECT_EQ(info.world_size, 8) << c.size;
    EXPECT_EQ(info.local_rank, 1) << c.local_rank;
    EXPECT_EQ(info.local_size, 4) << c.local_size;
    EXPECT_TRUE(info.multi_host()) << c.rank << ": 4 of 8 ranks on this host";
    EXPECT_EQ(LocalRank(info, 5), 1) << c.rank;
  }
}

TEST_F(LaunchTest, FirstLauncherWinsAndMasterAddress) {
  setenv("OMPI_COMM_WORLD_RANK", "2", 1);
  setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
  setenv("M2N_RANK", "3", 1);
  setenv("MASTER_ADDR", "10.0.0.1", 1);
  setenv("MASTER_PORT", "1234", 1);
  LaunchInfo info = Detect();
  EXPECT_EQ(info.launcher, Launcher::kM2n);
  EXPECT_EQ(info.rank, 3);
  EXPECT_EQ(info.world_size, 4) << "the first size variable set";
  EXPECT_EQ(info.master_addr, "10.0.0.1");
  EXPECT_EQ(info.master_port, 1234);
  setenv("M2N_MASTER_ADDR", "10.0.0.2", 1);
  setenv("M2N_MASTER_PORT", "4321", 1);
  info = Detect();
  EXPECT_EQ(info.master_addr, "10.0.0.2");
  EXPECT_EQ(info.master_port, 4321);
  EXPECT_EQ(LauncherName(info.launcher), "M2N_RANK");
  EXPECT_EQ(LauncherName(Launcher::kPmi), "PMI");
}

// The local rank: the launcher's own variable, else another launcher's, else the rank.
TEST_F(LaunchTest, LocalRankRule) {
  setenv("PMI_RANK", "6", 1);
  setenv("PMI_SIZE", "8", 1);
  LaunchInfo info = Detect();
  EXPECT_EQ(info.local_rank, -1);
  EXPECT_EQ(LocalRank(info, info.rank), 6) << "no local variable: the rank (one host)";
  EXPECT_FALSE(info.multi_host());
  setenv("LOCAL_RANK", "2", 1);
  EXPECT_EQ(LocalRank(Detect(), 6), 2) << "another launcher's local rank";
  setenv("MPI_LOCALRANKID", "3", 1);
  EXPECT_EQ(LocalRank(Detect(), 6), 3) << "the launcher's own local rank first";
}

TEST_F(LaunchTest, SlurmHostsAndUnevenTasksPerNode) {
  setenv("SLURM_PROCID", "0", 1);
  setenv("SLURM_NTASKS", "5", 1);
  setenv("SLURM_NTASKS_PER_NODE", "2(x2),1", 1);  // Slurm's own form: says nothing about this host
  setenv("SLURM_NNODES", "3", 1);
  const LaunchInfo info = Detect();
  EXPECT_EQ(info.local_size, -1);
  EXPECT_EQ(info.num_hosts, 3);
  EXPECT_TRUE(info.multi_host());
}

TEST_F(LaunchTest, BadValueNamesTheVariable) {
  for (const char* name : {"M2N_RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK",
                           "PMI_SIZE", "SLURM_PROCID", "SLURM_LOCALID", "MASTER_PORT"}) {
    SetUp();
    // A local variable is read once a launcher is found, and another launcher's too.
    if (std::string(name).find("LOCAL") != std::string::npos) setenv("RANK", "0", 1);
    setenv(name, "lots", 1);
    auto info = DetectLaunch();
    ASSERT_FALSE(info.ok()) << name;
    EXPECT_EQ(info.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(info.status().message().find(name), std::string::npos) << info.status().message();
    EXPECT_NE(info.status().message().find("lots"), std::string::npos) << info.status().message();
  }
  SetUp();
  setenv("PMI_RANK", "-1", 1);
  auto info = DetectLaunch();
  EXPECT_NE(info.status().message().find("PMI_RANK=-1 is outside"), std::string::npos)
      << info.status().message();
}

TEST_F(LaunchTest, PicksAFreePort) {
  auto port = PickFreePort();
  ASSERT_TRUE(port.ok()) << port.status().ToString();
  EXPECT_GT(*port, 0);
  EXPECT_LE(*port, 65535);
}

SpawnOptions Shell(int ranks, const std::string& script) {
  return SpawnOptions{.program = "/bin/sh", .args = {"sh", "-c", script}, .num_ranks = ranks};
}

// Each rank sees its own job variables; every exit is collected.
TEST_F(LaunchTest, SpawnsRanksAndCollectsTheirExits) {
  SpawnOptions o =
      Shell(3,
            "test \"$M2N_WORLD_SIZE\" = 3 && test \"$M2N_LOCAL_RANK\" = \"$M2N_RANK\" && "
            "test -n \"$M2N_MASTER_PORT\" && test \"$M2N_JOB_ID\" = job-7 && "
            "test \"$EXTRA\" = yes && exit $((M2N_RANK * 10))");
  o.job_id = "job-7";
  o.env = {"EXTRA=yes"};
  o.wait.finished_codes = {0, 10, 20};
  auto job = SpawnLocal(o, Deadline::After(seconds(30)));
  ASSERT_TRUE(job.ok()) << job.status().ToString();
  ASSERT_EQ(job->ranks.size(), 3u);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(job->ranks[r].exit_code, r * 10) << "rank " << r;
    EXPECT_FALSE(job->ranks[r].running_at_stop);
  }
  EXPECT_EQ(job->first_failure, -1);
  EXPECT_FALSE(job->timed_out);
}

// A rank that fails stops the others (SIGTERM), and says which it was.
TEST_F(LaunchTest, AFailureStopsTheOthers) {
  const auto start = Clock::now();
  auto job = SpawnLocal(Shell(3, "if [ \"$M2N_RANK\" = 1 ]; then exit 3; fi; exec sleep 60"),
                        Deadline::After(seconds(30)));
  ASSERT_TRUE(job.ok()) << job.status().ToString();
  EXPECT_EQ(job->first_failure, 1);
  EXPECT_EQ(job->ranks[1].Describe(), "exited with status 3");
  EXPECT_EQ(job->running_at_failure, 2);
  EXPECT_EQ(job->ranks[0].signal, SIGTERM);
  EXPECT_TRUE(job->ranks[2].running_at_stop);
  EXPECT_FALSE(job->timed_out);
  EXPECT_LT(Clock::now() - start, seconds(20));
}

// A rank that ignores SIGTERM and hangs is killed at the deadline plus the grace.
TEST_F(LaunchTest, AHangingRankIsKilledAtTheDeadline) {
  SpawnOptions o = Shell(
      2, "if [ \"$M2N_RANK\" = 1 ]; then trap '' TERM; while :; do sleep 1; done; fi; exit 0");
  o.wait.grace = milliseconds(200);
  const auto start = Clock::now();
  auto job = SpawnLocal(o, Deadline::After(milliseconds(500)));
  ASSERT_TRUE(job.ok()) << job.status().ToString();
  EXPECT_TRUE(job->timed_out);
  EXPECT_EQ(job->ranks[0].exit_code, 0);
  EXPECT_TRUE(job->ranks[1].running_at_stop);
  EXPECT_EQ(job->ranks[1].signal, SIGKILL);
  EXPECT_NE(job->ranks[1].Describe().find("killed by signal 9"), std::string::npos);
  EXPECT_LT(Clock::now() - start, seconds(10));
}

TEST_F(LaunchTest, AProgramThatCannotRunFailsItsRank) {
  auto job = SpawnLocal({.program = "/nonexistent/m2n-test", .num_ranks = 1},
                        Deadline::After(seconds(30)));
  ASSERT_TRUE(job.ok()) << job.status().ToString();
  EXPECT_EQ(job->first_failure, 0);
  EXPECT_EQ(job->ranks[0].exit_code, 127);
  EXPECT_FALSE(SpawnLocal({.num_ranks = 0}, Deadline::After(seconds(1))).ok());
}

}  // namespace
}  // namespace m2n

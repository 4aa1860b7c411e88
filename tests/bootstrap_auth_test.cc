// The store's authentication (src/bootstrap/handshake.h, issue 15 finding 1): ranks with the job
// key join and work; a wrong or missing key is refused in both directions; a stranger learns
// neither the job id nor the world size, and one that drops mid-handshake marks no rank dead;
// each rank sets only its own keys; strangers past the bound are closed at once; two jobs on one
// port never mix, with a key or without (the launcher's run name); the key's sources (variable,
// file of mode 0600, SpawnLocal's own) and the warning of a keyless store bound beyond loopback.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "bootstrap/handshake.h"
#include "bootstrap/store_rules.h"
#include "bootstrap/tcp_store.h"
#include "bootstrap/wire.h"
#include "bootstrap_test_util.h"
#include "m2n/launch.h"
#include "m2n/options.h"

namespace m2n::bootstrap {
namespace {

using namespace std::chrono_literals;
using wire::Message;

constexpr char kKey[] = "0123456789abcdef-the-job-key";
constexpr char kOtherKey[] = "fedcba9876543210-another-key";

Options TwoRanks() {
  Options o;
  o.num_senders = 1;
  o.num_receivers = 1;
  return o;
}

TcpStoreOptions KeyedOptions(int port, int rank, int world_size, std::string key,
                             std::string job = kJob) {
  TcpStoreOptions options = RankOptions(port, rank, world_size, std::move(job));
  options.job_key = std::move(key);
  return options;
}

std::unique_ptr<Store> Serve(int world_size, std::string key, std::string job = kJob) {
  TcpStoreOptions options = KeyedOptions(0, 0, world_size, std::move(key), std::move(job));
  options.serve = true;
  StatusOr<std::unique_ptr<Store>> store = ConnectTcpStore(options, Deadline::AfterMs(5000));
  EXPECT_TRUE(store.ok()) << store.status().ToString();
  return store.ok() ? std::move(*store) : nullptr;
}

StatusOr<std::unique_ptr<Store>> Join(int port, int rank, int world_size, std::string key,
                                      int64_t ms = 3000) {
  return ConnectTcpStore(KeyedOptions(port, rank, world_size, std::move(key)),
                         Deadline::AfterMs(ms));
}

// The ERROR a raw HELLO of `job` as `rank` gets, or "" when it is challenged instead.
std::string RefusalOfHello(int port, const std::string& job, int rank, int world_size) {
  int fd = RawConnect(port);
  EXPECT_GE(fd, 0);
  EXPECT_TRUE(SendAll(fd, ValidFrame(wire::Hello{job, rank, world_size, TestNonce()})));
  std::optional<Message> answer = ReadOneFrame(fd, 2000ms);
  close(fd);
  if (answer && std::holds_alternative<wire::ErrorReply>(*answer))
    return std::get<wire::ErrorReply>(*answer).text;
  EXPECT_TRUE(answer && std::holds_alternative<wire::Challenge>(*answer));
  return "";
}

TEST(StoreAuthTest, RanksWithTheJobKeyJoinAndWork) {
  constexpr int kWorld = 3;
  std::unique_ptr<Store> rank0 = Serve(kWorld, kKey);
  ASSERT_NE(rank0, nullptr);
  const int port = TcpStorePort(*rank0);
  std::vector<int> results(kWorld, -1);
  std::vector<std::thread> ranks;
  for (int r = 1; r < kWorld; ++r) {
    ranks.emplace_back([&, r] {
      StatusOr<std::unique_ptr<Store>> store = Join(port, r, kWorld, kKey);
      if (!store.ok()) return ADD_FAILURE() << store.status().ToString();
      results[r] = RankWorkload(**store, r, kWorld);
      if (results[r] == 0 && !(*store)->Goodbye().ok()) results[r] = 100;
    });
  }
  results[0] = RankWorkload(*rank0, 0, kWorld);
  for (auto& t : ranks) t.join();
  for (int r = 0; r < kWorld; ++r) EXPECT_EQ(results[r], 0) << "rank " << r;
  EXPECT_TRUE(rank0->DeadRanks()->empty());
}

TEST(StoreAuthTest, AWrongOrMissingKeyIsRefusedInBothDirections) {
  for (const auto& [store_key, rank_key] :
       {std::pair<std::string, std::string>{kKey, kOtherKey}, {kKey, ""}, {"", kKey}}) {
    std::unique_ptr<Store> rank0 = Serve(2, store_key);
    ASSERT_NE(rank0, nullptr);
    StatusOr<std::unique_ptr<Store>> rank1 = Join(TcpStorePort(*rank0), 1, 2, rank_key);
    EXPECT_EQ(rank1.status().code(), StatusCode::kFailedPrecondition) << rank1.status().ToString();
    EXPECT_TRUE(Contains(rank1.status().message(), "did not prove it holds the job key"))
        << rank1.status().ToString();
    EXPECT_FALSE(Contains(rank1.status().message(), "0123456789abcdef")) << "a key in a message";
    std::this_thread::sleep_for(100ms);
    EXPECT_TRUE(rank0->DeadRanks()->empty()) << "a refused rank marked dead";
  }
  // The store refuses a rank whose proof does not check (the rank side played by hand).
  std::unique_ptr<Store> rank0 = Serve(2, kKey);
  ASSERT_NE(rank0, nullptr);
  std::string refusal;
  EXPECT_LT(RawJoin(TcpStorePort(*rank0), 1, 2, kOtherKey, kJob, &refusal), 0);
  EXPECT_EQ(refusal, kHelloRefused);
  const int fd = RawJoin(TcpStorePort(*rank0), 1, 2, kKey);
  EXPECT_GE(fd, 0) << "the right key is let in";
  close(fd);
}

TEST(StoreAuthTest, AStrangerLearnsNeitherTheJobIdNorTheWorldSize) {
  std::unique_ptr<Store> rank0 = Serve(3, kKey);
  ASSERT_NE(rank0, nullptr);
  const int port = TcpStorePort(*rank0);
  // Another job, a wrong world size, and a wrong key all get the same words, naming nothing.
  EXPECT_EQ(RefusalOfHello(port, "guess", 1, 3), kHelloRefused);
  EXPECT_EQ(RefusalOfHello(port, kJob, 1, 7), kHelloRefused);
  std::string refusal;
  EXPECT_LT(RawJoin(port, 1, 3, "not-the-key-but-long-enough", kJob, &refusal), 0);
  EXPECT_EQ(refusal, kHelloRefused);
  for (const std::string& text : {RefusalOfHello(port, "guess", 1, 3), refusal}) {
    EXPECT_FALSE(Contains(text, kJob)) << text;
    EXPECT_FALSE(Contains(text, "3")) << text;
  }
}

TEST(StoreAuthTest, AStrangerThatHellosAsARankAndDropsMarksNoRankDead) {
  for (const std::string& key : {std::string(kKey), std::string()}) {
    std::unique_ptr<Store> rank0 = Serve(3, key);
    ASSERT_NE(rank0, nullptr);
    const int port = TcpStorePort(*rank0);
    // Rank 1's HELLO, challenged, then gone without a PROOF; rank 2 with a wrong proof.
    EXPECT_EQ(RefusalOfHello(port, kJob, 1, 3), "");
    if (!key.empty()) {
      EXPECT_LT(RawJoin(port, 2, 3, kOtherKey), 0);
    }
    std::this_thread::sleep_for(200ms);
    StatusOr<std::vector<int>> dead = rank0->DeadRanks();
    ASSERT_OK(dead.status());
    EXPECT_TRUE(dead->empty()) << "key '" << key << "': rank " << dead->front()
                               << " marked dead by a stranger";
    // And the real ranks join as if nothing happened.
    StatusOr<std::unique_ptr<Store>> rank1 = Join(port, 1, 3, key);
    StatusOr<std::unique_ptr<Store>> rank2 = Join(port, 2, 3, key);
    EXPECT_OK(rank1.status());
    EXPECT_OK(rank2.status());
  }
}

TEST(StoreAuthTest, EachRankSetsOnlyItsOwnKeys) {
  std::unique_ptr<Store> rank0 = Serve(3, kKey);
  ASSERT_NE(rank0, nullptr);
  StatusOr<std::unique_ptr<Store>> rank1 = Join(TcpStorePort(*rank0), 1, 3, kKey);
  ASSERT_OK(rank1.status());
  Store& one = **rank1;
  ASSERT_OK(rank0->SetString("m2n/addr/0/1", "rank 0's address for rank 1"));
  // Its own keys, and the shared counters, by ADD.
  EXPECT_OK(one.SetString("m2n/addr/1/0", "mine"));
  EXPECT_OK(one.SetString("m2n/host/1", "mine"));
  EXPECT_OK(one.Add("m2n/barrier/connected", 1).status());
  EXPECT_OK(one.Add("m2n/config-checked", 1).status());
  // Not another rank's, nor a counter by SET, nor a key no rank owns.
  for (const char* key :
       {"m2n/addr/0/1", "m2n/slots/2", "m2n/config/0", "m2n/barrier/connected", "m2n/host/01"}) {
    Status s = one.SetString(key, "redirected");
    EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << key << ": " << s.ToString();
    EXPECT_TRUE(Contains(s.message(), "rank 1 may not SET '" + std::string(key) + "'"))
        << s.ToString();
  }
  StatusOr<int64_t> add = one.Add("m2n/slots/0", 1);
  EXPECT_EQ(add.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(add.status().message(), "it belongs to rank 0")) << add.status().ToString();
  // Reading stays open, and what rank 0 published is unchanged.
  EXPECT_EQ(*one.GetString("m2n/addr/0/1", Deadline::AfterMs(1000)), "rank 0's address for rank 1");
  EXPECT_OK(one.Goodbye());
}

TEST(StoreAuthTest, KeyOwnerFollowsTheGroupsNames) {
  EXPECT_EQ(KeyOwner("m2n/addr/3/7"), 3);
  EXPECT_EQ(KeyOwner("m2n/slots/12"), 12);
  EXPECT_EQ(KeyOwner("m2n/host/0"), 0);
  EXPECT_EQ(KeyOwner("m2n/barrier/close-left"), -1);
  EXPECT_EQ(KeyOwner("m2n/barrier/user/4"), -1);
  EXPECT_EQ(KeyOwner("m2n/config-checked"), -1);
  EXPECT_EQ(KeyOwner("m2n/addr/03"), -1);
  EXPECT_EQ(KeyOwner("m2n//3"), -1);
  EXPECT_EQ(KeyOwner("m2n/addr/99999999"), -1);
  EXPECT_EQ(KeyOwner("user/3"), -1);
  EXPECT_OK(CheckWriter(5, "anything/outside", true));
}

TEST(StoreAuthTest, StrangersPastTheBoundAreClosedAtOnce) {
  std::unique_ptr<Store> rank0 = Serve(2, kKey);
  ASSERT_NE(rank0, nullptr);
  const int port = TcpStorePort(*rank0);
  std::vector<int> strangers;
  for (int i = 0; i < 64; ++i) {
    strangers.push_back(RawConnect(port));
    ASSERT_GE(strangers.back(), 0);
  }
  std::this_thread::sleep_for(200ms);  // all accepted
  const int extra = RawConnect(port);
  ASSERT_GE(extra, 0);
  auto start = Clock::now();
  Drained drained = ReadUntilClosed(extra, 2000ms);
  EXPECT_TRUE(drained.closed) << "the 65th stranger is still connected";
  EXPECT_LT(MsSince(start), 1000);
  close(extra);
  // A rank that comes while the strangers fill the bound gets in once they go.
  std::thread leave([&] {
    std::this_thread::sleep_for(300ms);
    for (int fd : strangers) close(fd);
  });
  StatusOr<std::unique_ptr<Store>> rank1 = Join(port, 1, 2, kKey, 5000);
  leave.join();
  EXPECT_OK(rank1.status());
}

TEST(StoreAuthTest, TwoJobsOnOnePortNeverMix) {
  // With keys: job B, with the same (default) job id and world size as job A, is refused.
  std::unique_ptr<Store> a0 = Serve(2, kKey, "m2n@127.0.0.1:29517");
  ASSERT_NE(a0, nullptr);
  const int port = TcpStorePort(*a0);
  StatusOr<std::unique_ptr<Store>> b1 = ConnectTcpStore(
      KeyedOptions(port, 1, 2, kOtherKey, "m2n@127.0.0.1:29517"), Deadline::AfterMs(2000));
  EXPECT_EQ(b1.status().code(), StatusCode::kFailedPrecondition) << b1.status().ToString();
  StatusOr<std::unique_ptr<Store>> a1 = ConnectTcpStore(
      KeyedOptions(port, 1, 2, kKey, "m2n@127.0.0.1:29517"), Deadline::AfterMs(2000));
  EXPECT_OK(a1.status());

  // Without keys: two torchrun runs on one master port get different default job ids.
  auto job_id_of = [](const char* run) {
    setenv("RANK", "1", 1);
    setenv("WORLD_SIZE", "2", 1);
    setenv("MASTER_ADDR", "127.0.0.1", 1);
    setenv("MASTER_PORT", "29517", 1);
    setenv("TORCHELASTIC_RUN_ID", run, 1);
    StatusOr<Options> o = ResolveOptions(TwoRanks());
    for (const char* v :
         {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"})
      unsetenv(v);
    EXPECT_TRUE(o.ok()) << o.status().ToString();
    return o.ok() ? o->bootstrap.job_id : std::string();
  };
  const std::string job_a = job_id_of("run-a");
  EXPECT_EQ(job_a, "m2n@127.0.0.1:29517/run-a");
  EXPECT_NE(job_a, job_id_of("run-b"));
  std::unique_ptr<Store> keyless = Serve(2, "", job_a);
  ASSERT_NE(keyless, nullptr);
  StatusOr<std::unique_ptr<Store>> other_run = ConnectTcpStore(
      RankOptions(TcpStorePort(*keyless), 1, 2, job_id_of("run-b")), Deadline::AfterMs(2000));
  EXPECT_EQ(other_run.status().code(), StatusCode::kFailedPrecondition)
      << other_run.status().ToString();
}

// The key's sources through ResolveOptions: M2N_JOB_KEY, a file only its owner can read, never
// both.
class JobKeyOptionsTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (const char* v : {"M2N_JOB_KEY", "M2N_JOB_KEY_FILE", "M2N_RANK", "M2N_WORLD_SIZE"})
      unsetenv(v);
    if (!path_.empty()) unlink(path_.c_str());
  }
  StatusOr<Options> Resolve() {
    setenv("M2N_RANK", "0", 1);
    setenv("M2N_WORLD_SIZE", "2", 1);
    return ResolveOptions(TwoRanks());
  }
  std::string WriteKeyFile(const std::string& text, mode_t mode) {
    path_ = ::testing::TempDir() + "m2n_job_key_" + std::to_string(getpid());
    unlink(path_.c_str());
    FILE* f = std::fopen(path_.c_str(), "w");
    std::fputs(text.c_str(), f);
    std::fclose(f);
    chmod(path_.c_str(), mode);
    return path_;
  }
  std::string path_;
};

TEST_F(JobKeyOptionsTest, FromTheVariableOrAPrivateFile) {
  setenv("M2N_JOB_KEY", kKey, 1);
  StatusOr<Options> o = Resolve();
  ASSERT_OK(o.status());
  EXPECT_EQ(o->bootstrap.job_key, kKey);
  EXPECT_FALSE(Contains(DescribeOptions(*o), kKey)) << "the key is printed";
  EXPECT_TRUE(Contains(DescribeOptions(*o), "set (not shown)"));
  unsetenv("M2N_JOB_KEY");

  setenv("M2N_JOB_KEY_FILE", WriteKeyFile(std::string(kOtherKey) + "\n", 0600).c_str(), 1);
  o = Resolve();
  ASSERT_OK(o.status());
  EXPECT_EQ(o->bootstrap.job_key, kOtherKey);
}

TEST_F(JobKeyOptionsTest, AFileOthersCanReadAShortKeyOrBothSourcesAreRefused) {
  setenv("M2N_JOB_KEY_FILE", WriteKeyFile(kKey, 0644).c_str(), 1);
  StatusOr<Options> o = Resolve();
  EXPECT_EQ(o.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(o.status().message(), "(mode 0644)")) << o.status().ToString();
  EXPECT_TRUE(Contains(o.status().message(), "chmod 600")) << o.status().ToString();

  chmod(path_.c_str(), 0600);
  setenv("M2N_JOB_KEY", kKey, 1);
  o = Resolve();
  EXPECT_EQ(o.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(o.status().message(), "both M2N_JOB_KEY and M2N_JOB_KEY_FILE"))
      << o.status().ToString();

  unsetenv("M2N_JOB_KEY_FILE");
  setenv("M2N_JOB_KEY", "secret", 1);
  o = Resolve();
  EXPECT_EQ(o.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(o.status().message(), "M2N_JOB_KEY is 6 bytes; it must be at least 16"))
      << o.status().ToString();
}

TEST(StoreAuthTest, AKeylessStoreBoundBeyondLoopbackWarnsOnce) {
  auto warning_of = [](const std::string& host, const std::string& key) {
    TcpStoreOptions options = KeyedOptions(0, 0, 2, key);
    options.host = host;
    ::testing::internal::CaptureStderr();
    StatusOr<std::unique_ptr<TcpStoreServer>> server = StartTcpStoreServer(options);
    std::string text = ::testing::internal::GetCapturedStderr();
    EXPECT_TRUE(server.ok()) << server.status().ToString();
    return text;
  };
  const std::string open = warning_of("0.0.0.0", "");
  EXPECT_TRUE(Contains(open, "WARNING: the store listens on 0.0.0.0:")) << open;
  EXPECT_TRUE(Contains(open, "without a job key")) << open;
  EXPECT_TRUE(Contains(open, "M2N_JOB_KEY")) << open;
  EXPECT_EQ(open.find("WARNING"), open.rfind("WARNING")) << "one warning";
  EXPECT_EQ(warning_of("0.0.0.0", kKey), "");
  EXPECT_EQ(warning_of("127.0.0.1", ""), "");
}

TEST(StoreAuthTest, SpawnLocalGivesEachJobAFreshKeyUnlessTheCallerSetsOne) {
  // Each rank checks its key: 64 hex digits, the same on every rank (one file per rank compared).
  const std::string dir = ::testing::TempDir();
  const std::string tag = dir + "m2n_spawn_key_" + std::to_string(getpid());
  const std::string script =
      "test ${#M2N_JOB_KEY} -eq 64 && printf %s \"$M2N_JOB_KEY\" > " + tag + ".$M2N_RANK";
  setenv("M2N_JOB_KEY", "inherited-key-of-another-job", 1);
  StatusOr<JobExit> job = SpawnLocal(
      {.program = "/bin/sh", .args = {"sh", "-c", script}, .num_ranks = 2}, Deadline::After(10s));
  unsetenv("M2N_JOB_KEY");
  ASSERT_OK(job.status());
  for (const RankExit& r : job->ranks) EXPECT_EQ(r.exit_code, 0) << r.Describe();
  auto read = [](const std::string& path) {
    std::string text;
    if (FILE* f = std::fopen(path.c_str(), "r")) {
      char buf[128];
      size_t n = std::fread(buf, 1, sizeof(buf), f);
      text.assign(buf, n);
      std::fclose(f);
    }
    unlink(path.c_str());
    return text;
  };
  const std::string key0 = read(tag + ".0");
  EXPECT_EQ(key0.size(), 64u);
  EXPECT_EQ(key0, read(tag + ".1"));

  // The caller's own key is kept.
  job = SpawnLocal({.program = "/bin/sh",
                    .args = {"sh", "-c", std::string("test \"$M2N_JOB_KEY\" = ") + kKey},
                    .num_ranks = 1,
                    .env = {std::string("M2N_JOB_KEY=") + kKey}},
                   Deadline::After(10s));
  ASSERT_OK(job.status());
  EXPECT_EQ(job->ranks[0].exit_code, 0) << job->ranks[0].Describe();
}

}  // namespace
}  // namespace m2n::bootstrap

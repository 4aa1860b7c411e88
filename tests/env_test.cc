// The one environment reader (src/base/env.h), and one bad value per transport variable parser
// that runs without hardware: ucx's (EagerMaxFromEnv, DirectStoresFromEnv, ErrModeFromEnv) and
// verbs' option parsing (VerbsOptionsFromEnv). cuda_ipc reads its variables while it starts on a
// GPU (cuda_ipc_gpu_test covers the good values there); its parser is this same reader.
#include "src/base/env.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <string>

#if M2N_ENV_TEST_UCX
#include "transports/ucx/endpoint.h"
#endif
#if M2N_ENV_TEST_VERBS
#include "transports/verbs/context.h"
#endif

namespace m2n {
namespace {

constexpr const char* kName = "M2N_ENV_TEST_VALUE";

// The error is InvalidArgument and names the variable and the value.
void ExpectNamed(const Status& status, const std::string& name, const std::string& value) {
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_NE(status.message().find(name), std::string::npos) << status.message();
  EXPECT_NE(status.message().find(value), std::string::npos) << status.message();
}

TEST(Env, AbsentOrEmptyGivesTheDefault) {
  unsetenv(kName);
  EXPECT_FALSE(env::IsSet(kName));
  EXPECT_EQ(*env::Int(kName, 0, 10, 7), 7);
  EXPECT_EQ(*env::Size(kName, 0, 10, 7), 7u);
  EXPECT_EQ(*env::Bool(kName, true), true);
  EXPECT_EQ(env::String(kName, "x"), "x");
  setenv(kName, "", 1);
  EXPECT_FALSE(env::IsSet(kName));
  EXPECT_EQ(*env::Int(kName, 0, 10, 7), 7);
  EXPECT_EQ(env::String(kName, "x"), "x");
}

TEST(Env, Integers) {
  for (auto [text, value] :
       {std::pair{"0", 0}, {"42", 42}, {"-1", -1}, {"007", 7}, {"0x10", 16}, {"0XfF", 255}}) {
    setenv(kName, text, 1);
    auto parsed = env::Int(kName, -5, 1000, 3);
    ASSERT_TRUE(parsed.ok()) << text << ": " << parsed.status().ToString();
    EXPECT_EQ(*parsed, value) << text;
  }
  for (const char* bad : {"lots", "12Q", "1.5", " 3", "3 ", "+3", "--1", "0x", "4K"}) {
    setenv(kName, bad, 1);
    auto parsed = env::Int(kName, -5, 1000, 3);
    ExpectNamed(parsed.status(), kName, bad);
    EXPECT_NE(parsed.status().message().find("is not an integer"), std::string::npos) << bad;
  }
  for (const char* outside : {"1001", "-6", "99999999999999999999999"}) {
    setenv(kName, outside, 1);
    auto parsed = env::Int(kName, -5, 1000, 3);
    ExpectNamed(parsed.status(), kName, outside);
    EXPECT_NE(parsed.status().message().find("is outside [-5, 1000]"), std::string::npos)
        << outside;
  }
}

TEST(Env, Sizes) {
  for (auto [text, value] : {std::pair{"0", uint64_t{0}},
                             {"65536", uint64_t{65536}},
                             {"64K", uint64_t{64} << 10},
                             {"4m", uint64_t{4} << 20},
                             {"2G", uint64_t{2} << 30}}) {
    setenv(kName, text, 1);
    auto parsed = env::Size(kName, 0, uint64_t{1} << 40, 1);
    ASSERT_TRUE(parsed.ok()) << text << ": " << parsed.status().ToString();
    EXPECT_EQ(*parsed, value) << text;
  }
  for (const char* bad : {"lots", "-1", "64KB", "K", "1.5M", "0x10"}) {
    setenv(kName, bad, 1);
    ExpectNamed(env::Size(kName, 0, uint64_t{1} << 40, 1).status(), kName, bad);
  }
  for (const char* outside : {"2000000000000000000000", "9999999G", "2K"}) {
    setenv(kName, outside, 1);
    auto parsed = env::Size(kName, 0, 1024, 1);
    ExpectNamed(parsed.status(), kName, outside);
    EXPECT_NE(parsed.status().message().find("outside"), std::string::npos) << outside;
  }
  setenv(kName, "1", 1);
  EXPECT_FALSE(env::Size(kName, 2, 10, 2).ok()) << "below the minimum";
}

TEST(Env, Booleans) {
  for (const char* yes : {"1", "true", "YES", "On"}) {
    setenv(kName, yes, 1);
    EXPECT_EQ(*env::Bool(kName, false), true) << yes;
  }
  for (const char* no : {"0", "false", "no", "OFF"}) {
    setenv(kName, no, 1);
    EXPECT_EQ(*env::Bool(kName, true), false) << no;
  }
  for (const char* bad : {"2", "maybe", "y"}) {
    setenv(kName, bad, 1);
    ExpectNamed(env::Bool(kName, true).status(), kName, bad);
  }
}

TEST(Env, Strings) {
  setenv(kName, "mlx5_0", 1);
  EXPECT_TRUE(env::IsSet(kName));
  EXPECT_EQ(env::String(kName, "x"), "mlx5_0");
}

#if M2N_ENV_TEST_UCX
TEST(Env, UcxVariables) {
  setenv("M2N_UCX_EAGER_MAX", "lots", 1);
  ExpectNamed(transport::ucx::EagerMaxFromEnv().status(), "M2N_UCX_EAGER_MAX", "lots");
  setenv("M2N_UCX_EAGER_MAX", "64K", 1);
  EXPECT_EQ(**transport::ucx::EagerMaxFromEnv(), size_t{64} << 10);
  setenv("M2N_UCX_EAGER_MAX", "auto", 1);
  EXPECT_FALSE(transport::ucx::EagerMaxFromEnv()->has_value());
  setenv("M2N_UCX_DIRECT", "sometimes", 1);
  ExpectNamed(transport::ucx::DirectStoresFromEnv().status(), "M2N_UCX_DIRECT", "sometimes");
  setenv("M2N_UCX_DIRECT", "0", 1);
  EXPECT_EQ(*transport::ucx::DirectStoresFromEnv(), false);
  unsetenv("M2N_UCX_DIRECT");
  EXPECT_EQ(*transport::ucx::DirectStoresFromEnv(), true);
  setenv("M2N_UCX_ERR_MODE", "loud", 1);
  ExpectNamed(transport::ucx::ErrModeFromEnv().status(), "M2N_UCX_ERR_MODE", "loud");
}
#endif

#if M2N_ENV_TEST_VERBS
TEST(Env, VerbsVariables) {
  setenv("M2N_VERBS_PORT", "two", 1);
  ExpectNamed(transport::verbs::VerbsOptionsFromEnv().status(), "M2N_VERBS_PORT", "two");
  setenv("M2N_VERBS_PORT", "2", 1);
  setenv("M2N_VERBS_TRAFFIC_CLASS", "0x60", 1);
  setenv("M2N_VERBS_DEVICE", "rxe0", 1);
  auto options = transport::verbs::VerbsOptionsFromEnv();
  ASSERT_TRUE(options.ok()) << options.status().ToString();
  EXPECT_EQ(options->port, 2);
  EXPECT_EQ(options->traffic_class, 0x60);
  EXPECT_EQ(options->device, "rxe0");
  setenv("M2N_VERBS_TIMEOUT", "32", 1);
  ExpectNamed(transport::verbs::VerbsOptionsFromEnv().status(), "M2N_VERBS_TIMEOUT", "32");
  unsetenv("M2N_VERBS_TIMEOUT");
  setenv("M2N_VERBS_VERBOSE", "loud", 1);
  ExpectNamed(transport::verbs::VerbsOptionsFromEnv().status(), "M2N_VERBS_VERBOSE", "loud");
}
#endif

}  // namespace
}  // namespace m2n

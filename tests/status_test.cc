// Status and StatusOr: codes, messages, context, the propagation macros, and value() on an error.
#include "m2n/status.h"

#include <gtest/gtest.h>

namespace m2n {
namespace {

StatusOr<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgumentError(std::to_string(x) + " is odd");
  return x / 2;
}

Status Quarter(int x, int* out) {
  M2N_ASSIGN_OR_RETURN(int half, Half(x));
  M2N_ASSIGN_OR_RETURN(*out, Half(half));
  return OkStatus();
}

TEST(StatusTest, CodesAndMessages) {
  EXPECT_TRUE(OkStatus().ok());
  Status s = DeadlineExceededError("no message from rank 3 within 5 ms");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(s.ToString(), "DEADLINE_EXCEEDED: no message from rank 3 within 5 ms");
  EXPECT_EQ(s.WithContext("rank 0").message(), "rank 0: no message from rank 3 within 5 ms");
  EXPECT_TRUE(OkStatus().WithContext("ignored").ok());
}

TEST(StatusTest, StatusOrCarriesValueOrError) {
  auto ok = Half(8);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 4);
  auto bad = Half(3);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  // An OK status without a value is itself an error, never a silent empty value.
  StatusOr<int> empty{OkStatus()};
  EXPECT_EQ(empty.status().code(), StatusCode::kInternal);
}

// value() on an error is a bug in the caller: it aborts, saying which error, as abseil's does.
TEST(StatusDeathTest, ValueOnErrorAbortsWithTheStatus) {
  EXPECT_DEATH((void)Half(3).value(),
               "StatusOr::value\\(\\) on an error: INVALID_ARGUMENT: 3 is odd");
  const StatusOr<int> bad = Half(5);
  EXPECT_DEATH((void)bad.value(), "StatusOr::value\\(\\) on an error: INVALID_ARGUMENT: 5 is odd");
  StatusOr<int> also_bad = Half(7);
  EXPECT_DEATH((void)also_bad.value(), "on an error: INVALID_ARGUMENT: 7 is odd");
}

TEST(StatusTest, MacrosPropagate) {
  int out = 0;
  EXPECT_TRUE(Quarter(8, &out).ok());
  EXPECT_EQ(out, 2);
  Status s = Quarter(6, &out);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "3 is odd");
}

}  // namespace
}  // namespace m2n

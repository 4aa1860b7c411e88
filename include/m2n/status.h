// m2n::Status and m2n::StatusOr<T>: the one error rule of the library.
//
// Every fallible call returns a Status (or a StatusOr<T>); nothing throws across the API.
// Codes and their retry meaning follow abseil's canonical codes (docs/errors.md):
//   kInvalidArgument    the caller passed something wrong; retrying the same call fails again.
//   kFailedPrecondition the system is not in a state for this call (e.g. mismatched configuration
//                       between ranks, a slot released twice); fix the state first.
//   kUnavailable        a peer or the bootstrap store cannot be reached or died; the group is
//   unusable,
//                       recreate it.
//   kDeadlineExceeded   the call's deadline passed before it could finish; it may be retried.
//   kAborted            the group was aborted; close it.
//   kDataLoss           bytes arrived that fail a check (bad framing, a corrupt bootstrap message).
//   kInternal           a transport or system call failed in a way m2n did not expect.
// The message is written where the error is first seen and names the rank, peer, transport and the
// system error text.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace m2n {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "DEADLINE_EXCEEDED: no message from rank 3 within 5000 ms"
  std::string ToString() const;

  // Returns a copy whose message is `context + ": " + message()`, code unchanged.
  Status WithContext(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status OkStatus() { return Status(); }
Status InvalidArgumentError(std::string message);
Status FailedPreconditionError(std::string message);
Status UnavailableError(std::string message);
Status DeadlineExceededError(std::string message);
Status AbortedError(std::string message);
Status DataLossError(std::string message);
Status InternalError(std::string message);
Status NotFoundError(std::string message);
Status OutOfRangeError(std::string message);
Status UnimplementedError(std::string message);

namespace internal {
// Prints "StatusOr::value() on an error: <status>" to stderr and aborts.
[[noreturn]] void StatusOrValueOnError(const Status& status);
}  // namespace internal

// A value or the Status saying why there is none. operator* and operator-> do not check: use them
// only after ok().
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design, as absl::StatusOr
  StatusOr(Status status) : status_(std::move(status)) {  // NOLINT
    if (status_.ok())
      status_ = InternalError("StatusOr constructed from an OK status without a value");
  }

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  // value() on an error aborts the process with the status in its message (as absl::StatusOr
  // does): check ok() first, or use M2N_ASSIGN_OR_RETURN.
  T& value() & {
    if (!ok()) internal::StatusOrValueOnError(status_);
    return *value_;
  }
  const T& value() const& {
    if (!ok()) internal::StatusOrValueOnError(status_);
    return *value_;
  }
  T&& value() && {
    if (!ok()) internal::StatusOrValueOnError(status_);
    return std::move(*value_);
  }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace m2n

// Returns early from the enclosing function with the status of `expr` if it is not OK.
#define M2N_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::m2n::Status m2n_status_ = (expr);        \
    if (!m2n_status_.ok()) return m2n_status_; \
  } while (0)

#define M2N_CONCAT_INNER_(a, b) a##b
#define M2N_CONCAT_(a, b) M2N_CONCAT_INNER_(a, b)
// M2N_ASSIGN_OR_RETURN(auto x, MakeX()); declares x from the value or returns the error.
#define M2N_ASSIGN_OR_RETURN(lhs, expr) \
  M2N_ASSIGN_OR_RETURN_IMPL_(M2N_CONCAT_(m2n_statusor_, __LINE__), lhs, expr)
#define M2N_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

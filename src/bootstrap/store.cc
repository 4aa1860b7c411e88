#include "bootstrap/store.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <limits>
#include <string>
#include <system_error>

#include "bootstrap/store_rules.h"
#include "bootstrap/wire.h"

namespace m2n::bootstrap {

Status CheckKey(const std::string& key) {
  if (key.empty()) return InvalidArgumentError("bootstrap: a store key must not be empty");
  if (key.size() > wire::kMaxKeyBytes) {
    return InvalidArgumentError("bootstrap: key '" + key.substr(0, 64) + "...' is " +
                                std::to_string(key.size()) + " bytes; the maximum is " +
                                std::to_string(wire::kMaxKeyBytes));
  }
  return OkStatus();
}

Status CheckValue(std::span<const std::byte> value) {
  if (value.size() > wire::kMaxValueBytes) {
    return InvalidArgumentError("bootstrap: a store value of " + std::to_string(value.size()) +
                                " bytes exceeds the maximum of " +
                                std::to_string(wire::kMaxValueBytes));
  }
  return OkStatus();
}

Status CheckWaitKeys(std::span<const std::string> keys) {
  if (keys.size() > wire::kMaxWaitKeys) {
    return InvalidArgumentError("bootstrap: a Wait on " + std::to_string(keys.size()) +
                                " keys exceeds the maximum of " +
                                std::to_string(wire::kMaxWaitKeys));
  }
  for (const std::string& key : keys) M2N_RETURN_IF_ERROR(CheckKey(key));
  return OkStatus();
}

StatusOr<int64_t> AddToCounter(const std::string& key, const Bytes* value, int64_t delta) {
  int64_t count = 0;
  if (value != nullptr) {
    const char* begin = reinterpret_cast<const char*>(value->data());
    const char* end = begin + value->size();
    auto [ptr, ec] = std::from_chars(begin, end, count);
    if (value->empty() || ec != std::errc() || ptr != end) {
      return InvalidArgumentError("bootstrap: Add on key '" + key +
                                  "', which holds a value that is not a counter written by Add");
    }
  }
  if ((delta > 0 && count > std::numeric_limits<int64_t>::max() - delta) ||
      (delta < 0 && count < std::numeric_limits<int64_t>::min() - delta)) {
    return OutOfRangeError("bootstrap: Add of " + std::to_string(delta) + " to counter '" + key +
                           "' (" + std::to_string(count) + ") overflows int64");
  }
  return count + delta;
}

int KeyOwner(const std::string& key) {
  constexpr std::string_view kPrefix = "m2n/";
  if (key.rfind(kPrefix, 0) != 0) return -1;
  const size_t name_end = key.find('/', kPrefix.size());
  if (name_end == std::string::npos || name_end == kPrefix.size()) return -1;
  const size_t rank_begin = name_end + 1;
  size_t rank_end = key.find('/', rank_begin);
  if (rank_end == std::string::npos) rank_end = key.size();
  const size_t digits = rank_end - rank_begin;
  if (digits == 0 || digits > 7 || (digits > 1 && key[rank_begin] == '0')) return -1;
  int rank = 0;
  for (size_t i = rank_begin; i < rank_end; ++i) {
    if (key[i] < '0' || key[i] > '9') return -1;
    rank = rank * 10 + (key[i] - '0');
  }
  return rank;
}

Status CheckWriter(int rank, const std::string& key, bool is_set) {
  if (key.rfind("m2n/", 0) != 0) return OkStatus();
  const int owner = KeyOwner(key);
  if (owner == rank) return OkStatus();
  if (owner < 0 && !is_set) return OkStatus();  // a shared counter
  const std::string op = is_set ? "SET" : "ADD to";
  if (owner < 0) {
    return FailedPreconditionError("rank " + std::to_string(rank) + " may not " + op + " '" + key +
                                   "': a shared counter is changed by ADD only");
  }
  return FailedPreconditionError("rank " + std::to_string(rank) + " may not " + op + " '" + key +
                                 "': it belongs to rank " + std::to_string(owner));
}

Bytes CounterBytes(int64_t count) {
  std::string text = std::to_string(count);
  auto bytes = std::as_bytes(std::span<const char>(text.data(), text.size()));
  return Bytes(bytes.begin(), bytes.end());
}

std::string QuoteKeys(std::span<const std::string> keys) {
  constexpr size_t kShown = 8;
  std::string out;
  for (size_t i = 0; i < keys.size() && i < kShown; ++i) {
    if (i > 0) out += ", ";
    out += "'" + keys[i] + "'";
  }
  if (keys.size() > kShown) out += ", ... (" + std::to_string(keys.size()) + " in all)";
  return out;
}

Status Store::SetString(const std::string& key, const std::string& value) {
  return Set(key, std::as_bytes(std::span<const char>(value.data(), value.size())));
}

StatusOr<std::string> Store::GetString(const std::string& key, Deadline deadline) {
  M2N_ASSIGN_OR_RETURN(Bytes value, Get(key, deadline));
  return std::string(reinterpret_cast<const char*>(value.data()), value.size());
}

// Every rank adds 1 to "barrier/<name>"; the one that brings the count to world_size sets
// "barrier-done/<name>", which everyone waits for. The store holds no per-barrier state beyond two
// keys, and a rank that dies before arriving leaves the others waiting only until their deadline.
Status Store::Barrier(const std::string& name, int world_size, Deadline deadline) {
  if (world_size < 1) {
    return InvalidArgumentError("bootstrap: barrier '" + name + "' with a world size of " +
                                std::to_string(world_size));
  }
  const int64_t timeout_ms = std::max<int64_t>(
      0, std::chrono::ceil<std::chrono::milliseconds>(deadline.time() - Clock::now()).count());
  const std::string counter = "barrier/" + name;
  const std::string done = "barrier-done/" + name;
  M2N_RETURN_IF_ERROR(CheckKey(done));

  M2N_ASSIGN_OR_RETURN(int64_t arrived, Add(counter, 1));
  if (arrived > world_size) {
    return FailedPreconditionError(
        "bootstrap: barrier '" + name + "' reached by " + std::to_string(arrived) +
        " ranks but the world size is " + std::to_string(world_size) +
        " (a barrier name used twice, or ranks that disagree on the world size)");
  }
  if (arrived == world_size) M2N_RETURN_IF_ERROR(SetString(done, "1"));

  const std::string keys[] = {done};
  Status waited = Wait(keys, deadline);
  if (waited.code() != StatusCode::kDeadlineExceeded) return waited;
  // Say how far the barrier got; Add(0) reads the counter without changing it.
  StatusOr<int64_t> now = Add(counter, 0);
  std::string count = now.ok() ? std::to_string(*now) : "an unknown number";
  return DeadlineExceededError("bootstrap: barrier '" + name + "': " + count + " of " +
                               std::to_string(world_size) + " ranks arrived within " +
                               std::to_string(timeout_ms) + " ms");
}

}  // namespace m2n::bootstrap

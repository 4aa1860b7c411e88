// The in-memory store: one map shared by every thread that holds the same Store, for unit tests of
// code above the store. Semantics match the TCP store (same key and value limits, same counters,
// every wait bounded by its deadline); nobody can die, so DeadRanks is always empty.
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "bootstrap/store.h"
#include "bootstrap/store_rules.h"

namespace m2n::bootstrap {
namespace {

class InMemoryStore final : public Store {
 public:
  Status Set(const std::string& key, std::span<const std::byte> value) override {
    M2N_RETURN_IF_ERROR(CheckKey(key));
    M2N_RETURN_IF_ERROR(CheckValue(value));
    {
      std::lock_guard lock(mu_);
      values_[key] = Bytes(value.begin(), value.end());
    }
    changed_.notify_all();
    return OkStatus();
  }

  StatusOr<Bytes> Get(const std::string& key, Deadline deadline) override {
    M2N_RETURN_IF_ERROR(CheckKey(key));
    std::unique_lock lock(mu_);
    if (!changed_.wait_until(lock, deadline.time(), [&] { return values_.contains(key); })) {
      return DeadlineExceededError("bootstrap: key '" + key +
                                   "' did not appear in the in-memory store in time");
    }
    return values_.at(key);
  }

  StatusOr<int64_t> Add(const std::string& key, int64_t delta) override {
    M2N_RETURN_IF_ERROR(CheckKey(key));
    int64_t count = 0;
    {
      std::lock_guard lock(mu_);
      auto it = values_.find(key);
      M2N_ASSIGN_OR_RETURN(count,
                           AddToCounter(key, it == values_.end() ? nullptr : &it->second, delta));
      values_[key] = CounterBytes(count);
    }
    changed_.notify_all();
    return count;
  }

  Status Wait(std::span<const std::string> keys, Deadline deadline) override {
    M2N_RETURN_IF_ERROR(CheckWaitKeys(keys));
    std::unique_lock lock(mu_);
    auto all_present = [&] {
      for (const std::string& key : keys) {
        if (!values_.contains(key)) return false;
      }
      return true;
    };
    if (changed_.wait_until(lock, deadline.time(), all_present)) return OkStatus();
    std::vector<std::string> missing;
    for (const std::string& key : keys) {
      if (!values_.contains(key)) missing.push_back(key);
    }
    return DeadlineExceededError(
        "bootstrap: still missing from the in-memory store at the deadline: " + QuoteKeys(missing));
  }

  using Store::DeadRanks;
  StatusOr<std::vector<int>> DeadRanks(Deadline) override { return std::vector<int>{}; }
  Status Goodbye() override { return OkStatus(); }

 private:
  std::mutex mu_;
  std::condition_variable changed_;  // notified after every Set / Add
  std::map<std::string, Bytes> values_;
};

}  // namespace

std::unique_ptr<Store> NewInMemoryStore() { return std::make_unique<InMemoryStore>(); }

}  // namespace m2n::bootstrap

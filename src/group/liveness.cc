// Liveness: a group is one fault domain, so every wait asks the bootstrap store, every
// liveness_check_ms, whether a rank died, and reports a dead rank by name rather than a timeout.
// Rank 0 serves the store, so a store that is gone means rank 0 is; a store that stops answering is
// remembered and said in a timeout's message. The store barrier lives here too: it is a wait that
// keeps the transport moving and watches for dead ranks like every other.
#include <unistd.h>

#include <algorithm>

#include "group/impl.h"

namespace m2n {

std::string JoinRanks(const std::vector<int>& ranks) {
  std::string out;
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(ranks[i]);
  }
  return out;
}

// A store call that failed. Rank 0 serves the store, so on any other rank a store that is gone
// means rank 0 is.
Status Group::Impl::StoreFailure(const Status& error, const std::string& during) const {
  if (rank != 0 && error.code() == StatusCode::kUnavailable) {
    return UnavailableError(me() +
                            ": rank 0 died or is unreachable (it serves the bootstrap store: " +
                            error.message() + ") while " + during);
  }
  return error.WithContext(me() + " while " + during);
}

// A transport error about `peer` (-1: none named). When a rank died, that is the cause worth
// reporting (a survivor's transport often fails only as a consequence: a peer that gave up on
// the dead rank closed its connections), so the store is asked first. The transport may see a
// death before the store's server does (a reset connection against that server's next poll), so
// the store gets a short while, bounded by the liveness period, to confirm it. That grace polls
// Abort: each question to the store is bounded by kAbortPoll, so a stopped rank 0 holds it no
// longer. After an Abort (a transport wait that saw it, too) the failure no longer matters.
Status Group::Impl::TransportFailure(const Status& error, int peer) {
  constexpr auto kAbortPoll = std::chrono::milliseconds(20);
  const auto until =
      Clock::now() + std::chrono::milliseconds(std::clamp(2 * options.liveness_check_ms, 20, 1000));
  for (;;) {
    if (Aborted()) return AbortedStatus("the transport reported: " + error.message());
    const auto ask_by = std::min(until, Clock::now() + kAbortPoll);
    Status dead =
        DeadRanksStatus([] { return std::string("the transport failed"); }, Deadline::At(ask_by));
    if (!dead.ok())
      return Status(dead.code(),
                    dead.message() + " (the transport reported: " + error.message() + ")");
    // Without a peer named, one answer is enough; an unanswered question is asked again.
    const bool answered = liveness.store_silent_since == Clock::time_point{};
    if ((peer < 0 && answered) || Clock::now() >= until) break;
    if (answered) usleep(2000);
  }
  std::string who = peer >= 0 ? "lost " + RankName(peer) + ": " : "";
  return Status(error.code(), me() + ": " + who + error.message());
}

// Fails (sticky) if any rank of the group died: a group is one fault domain, since a rank that
// only talks to live peers still waits on them, and they on the dead one.
Status Group::Impl::CheckRanksAlive(const WaitText& what, Deadline check_by) {
  Status dead = DeadRanksStatus(what, check_by);
  return dead.ok() ? dead : Fail(std::move(dead));
}

// kUnavailable naming the ranks that left without a goodbye, or OK. Rank 0 serves the store, so
// a store that is gone means rank 0 is.
// A store that does not answer by `check_by` is not an error here (the caller's own deadline
// decides); it is remembered for the timeout's message.
Status Group::Impl::DeadRanksStatus(const WaitText& what, Deadline check_by) {
  if (!store) return OkStatus();
  auto dead = store->DeadRanks(check_by);
  if (!dead.ok() && dead.status().code() == StatusCode::kDeadlineExceeded) {
    if (liveness.store_silent_since == Clock::time_point{})
      liveness.store_silent_since = Clock::now();
    return OkStatus();
  }
  if (!dead.ok()) return StoreFailure(dead.status(), what());
  liveness.store_silent_since = Clock::time_point{};
  std::vector<int> gone;
  for (int r : *dead) {
    if (r != rank) gone.push_back(r);
  }
  if (gone.empty()) return OkStatus();
  return UnavailableError(me() + ": " + (gone.size() == 1 ? "rank " : "ranks ") + JoinRanks(gone) +
                          " died" + " (bootstrap connection closed without a goodbye) while " +
                          what());
}

// How long one liveness question may wait for the store's answer: a stopped or stalled rank 0
// (which serves the store) must hold neither a call past its own deadline nor Abort past one
// liveness period.
Deadline Group::Impl::LivenessBound(Deadline call) const {
  const auto period = std::chrono::milliseconds(std::clamp(options.liveness_check_ms, 10, 1000));
  return Deadline::At(std::min(call.time(), Clock::now() + period));
}

// The question asked once a call's deadline has passed: a short grace, so a call ends at most
// this long after its deadline.
Deadline Group::Impl::LastLivenessBound() const {
  return Deadline::After(std::chrono::milliseconds(std::clamp(options.liveness_check_ms, 10, 100)));
}

// Said in a timeout when the store has not been answering: the wait may have run out because
// rank 0 is stopped, not because of the peers it waited on.
std::string Group::Impl::StoreSilence() const {
  if (liveness.store_silent_since == Clock::time_point{}) return "";
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() -
                                                                        liveness.store_silent_since)
                      .count();
  return "; the bootstrap store on rank 0 has not answered a liveness check for " +
         std::to_string(ms) + " ms either (rank 0 stopped or overloaded?)";
}

// A barrier through the store that keeps the transport moving while it waits, so that peers
// still finishing their sends (which may need our progress) are not stalled by it.
Status Group::Impl::StoreBarrier(const std::string& name, Deadline deadline) {
  const std::string key = "m2n/barrier/" + name;
  auto what = [&] { return "waiting in barrier '" + name + "'"; };
  auto arrived = store->Add(key, 1);
  if (!arrived.ok()) return Fail(StoreFailure(arrived.status(), what()));
  int64_t count = *arrived;
  auto spin_until = Clock::now() + std::chrono::microseconds(options.spin_us);
  while (count < world) {
    M2N_RETURN_IF_ERROR(Progress());
    if (Aborted()) return AbortedStatus(what());
    if (deadline.Expired()) {
      M2N_RETURN_IF_ERROR(CheckRanksAlive(what, LastLivenessBound()));
      return DeadlineExceededError(me() + ": barrier '" + name + "': " + std::to_string(count) +
                                   " of " + std::to_string(world) +
                                   " ranks arrived by the deadline");
    }
    auto now = Clock::now();
    if (LivenessCheckDue(now)) M2N_RETURN_IF_ERROR(CheckRanksAlive(what, LivenessBound(deadline)));
    auto current = store->Add(key, 0);
    if (!current.ok()) return Fail(StoreFailure(current.status(), what()));
    count = *current;
    if (now >= spin_until) usleep(50);
  }
  return OkStatus();
}

}  // namespace m2n

// Closing a Group (Close, the destructor, a failed creation). A clean teardown hands back every
// slot we still hold, waits for our messages to be released, meets every rank in a barrier (so
// nobody writes into slots that are about to go away), then closes the transport and says goodbye
// to the store. An unclean one (destructor without Close, failed creation) skips the waits. After
// a failure (`fatal`) or an abort there is nobody worth waiting for: the transport is closed at
// once and Close succeeds, since the failure was reported already. Only an abort leaves without a
// goodbye: the peers, which may still be waiting on this rank, then see it gone and fail by name
// instead of by timeout. Every wait here polls Abort, so an Abort during Close (from another
// thread) ends it promptly the same way.
#include <unistd.h>

#include "group/impl.h"

namespace m2n {

Group::~Group() {
  if (!impl_->closed) (void)impl_->Teardown(Deadline::AfterMs(2000), /*clean=*/false);
}

Status Group::Close(Deadline deadline) {
  if (impl_->closed) return FailedPreconditionError(impl_->me() + ": the group is already closed");
  return impl_->Teardown(deadline, /*clean=*/true);
}

Status Group::Impl::Teardown(Deadline deadline, bool clean) {
  closed = true;
  const bool aborted_before = Aborted();
  const bool failed = !fatal.ok() || aborted_before;
  Status result;
  if (clean && !failed && core) {
    result = DrainForClose(deadline);
    if (result.ok()) result = StoreBarrier("close", deadline);
    if (result.ok()) result = LeaveCloseBarrier(deadline);
  }
  // An Abort during the waits above cut them short: the rest goes as after an Abort before Close.
  const bool aborted = Aborted();
  staging_region.reset();
  device.peers.reset();
  device.cursors.reset();
  if (core && core->transport) {
    // After a failure nobody is owed a flush: the transport closes at once (forcing what is left).
    const bool at_once = failed || aborted;
    Status s = core->transport->Close(at_once ? Deadline::AfterMs(0)
                                              : deadline.Min(Deadline::AfterMs(2000)));
    if (result.ok() && clean && !at_once) result = s;
  }
  slots.reset();
  remote_slots.clear();
  if (store && !aborted && (clean || fatal.ok())) (void)store->Goodbye();
  // An aborted rank drops its store connection now, not when the Group is destroyed: that is how
  // its peers learn that it left.
  if (aborted) store.reset();
  // A Close that Abort cut short says so: it did not wait for the peers.
  if (clean && aborted && !aborted_before && result.ok()) result = AbortedStatus("closing");
  return result;
}

// Releases the messages still queued or held by the user (the peer waits for those credits), then
// waits until every peer has released ours and our last writes are done.
Status Group::Impl::DrainForClose(Deadline deadline) {
  for (size_t i = 0; i < receive.size(); ++i) {
    for (int slot : receive[i].ReleaseAll())
      M2N_RETURN_IF_ERROR(PostAck(static_cast<int>(i), slot));
  }
  return WaitUntil(
      [&] {
        for (auto& c : credits) {
          if (c.available() != c.depth()) return false;
        }
        return writes_in_flight == 0;
      },
      deadline, [] { return std::string("closing: waiting for peers to release our messages"); });
}

// Says this rank has left the close barrier. Rank 0 serves the store: it keeps it up until every
// rank has left.
Status Group::Impl::LeaveCloseBarrier(Deadline deadline) {
  (void)store->Add("m2n/barrier/close-left", 1);
  if (rank != 0 || AwaitCount("m2n/barrier/close-left", deadline)) return OkStatus();
  return AbortedStatus("closing: waiting for the other ranks to leave");
}

// Rank 0 serves the store, so before it leaves (and the store with it) it waits until counter
// `key` says that every rank is done with the store, the deadline passes or the store fails (then
// there is nobody to wait for), polling Abort: false when aborted. The counter is read through
// the store rank 0 serves itself, so each read is answered at once.
bool Group::Impl::AwaitCount(const std::string& key, Deadline deadline) {
  while (!deadline.Expired()) {
    if (Aborted()) return false;
    auto count = store->Add(key, 0);
    if (!count.ok() || *count >= world) break;
    usleep(200);
  }
  return !Aborted();
}

}  // namespace m2n

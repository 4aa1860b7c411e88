// Closing a Group (Close, the destructor, a failed creation). A clean teardown hands back every
// slot we still hold, waits for our messages to be released, meets every rank in a barrier (so
// nobody writes into slots that are about to go away), then closes the transport and says goodbye
// to the store. An unclean one (destructor without Close, failed creation) skips the waits. After
// a failure (`fatal`) or an abort there is nobody worth waiting for: the transport is closed at
// once and Close succeeds, since the failure was reported already. Only an abort leaves without a
// goodbye: the peers, which may still be waiting on this rank, then see it gone and fail by name
// instead of by timeout.
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
  const bool was_aborted = aborted.load(std::memory_order_acquire);
  const bool failed = !fatal.ok() || was_aborted;
  Status result;
  if (clean && !failed && core) {
    result = DrainForClose(deadline);
    if (result.ok()) result = StoreBarrier("close", deadline);
    if (result.ok()) LeaveCloseBarrier(deadline);
  }
  staging_region.reset();
  if (core && core->transport) {
    // After a failure nobody is owed a flush: the transport closes at once (forcing what is left).
    Status s = core->transport->Close(failed ? Deadline::AfterMs(0) : deadline.Min(Deadline::AfterMs(2000)));
    if (result.ok() && clean && !failed) result = s;
  }
  slots.reset();
  remote_slots.clear();
  if (store && !was_aborted) {
    if (clean || fatal.ok()) (void)store->Goodbye();
  }
  // An aborted rank drops its store connection now, not when the Group is destroyed: that is how
  // its peers learn that it left.
  if (was_aborted) store.reset();
  return result;
}

// Releases the messages still queued or held by the user (the peer waits for those credits), then
// waits until every peer has released ours and our last writes are done.
Status Group::Impl::DrainForClose(Deadline deadline) {
  for (size_t i = 0; i < receive.size(); ++i) {
    for (int slot : receive[i].ReleaseAll()) M2N_RETURN_IF_ERROR(PostAck(static_cast<int>(i), slot));
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
void Group::Impl::LeaveCloseBarrier(Deadline deadline) {
  (void)store->Add("m2n/barrier/close-left", 1);
  if (rank != 0) return;
  while (!deadline.Expired()) {
    auto left = store->Add("m2n/barrier/close-left", 0);
    if (!left.ok() || *left >= world) break;
    usleep(200);
  }
}

}  // namespace m2n

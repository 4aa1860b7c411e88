// The Group's small public calls: what it is (rank, role, peers, options, counters), Barrier,
// Progress, CheckPeersAlive and Abort. The larger jobs have files of their own (see impl.h).
#include "group/impl.h"

namespace m2n {

std::string_view RoleName(Role role) { return role == Role::kSender ? "sender" : "receiver"; }

int Group::rank() const { return impl_->rank; }
int Group::world_size() const { return impl_->world; }
Role Group::role() const { return impl_->role; }
int Group::num_senders() const { return impl_->options.num_senders; }
int Group::num_receivers() const { return impl_->options.num_receivers; }
std::span<const int> Group::peers() const { return impl_->peers; }
const Options& Group::options() const { return impl_->options; }
std::string_view Group::transport_name() const { return impl_->transport_name; }
GroupStats Group::stats() const { return impl_->stats; }

Status Group::Barrier(Deadline deadline) {
  M2N_RETURN_IF_ERROR(impl_->CheckOpen());
  return impl_->StoreBarrier("user/" + std::to_string(impl_->barrier_count++), deadline);
}

Status Group::Progress() {
  M2N_RETURN_IF_ERROR(impl_->CheckOpen());
  M2N_RETURN_IF_ERROR(impl_->DeviceWaitError());
  return impl_->Progress();
}

Status Group::CheckPeersAlive(Deadline deadline) {
  M2N_RETURN_IF_ERROR(impl_->CheckOpen());
  return impl_->CheckRanksAlive(
      [] { return std::string("checking the peers' liveness (Group::CheckPeersAlive)"); },
      impl_->LivenessBound(deadline));
}

void Group::Abort() { impl_->abort.Abort(); }
AbortToken Group::abort_token() const { return impl_->abort; }

}  // namespace m2n

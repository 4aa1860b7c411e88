// Creating a Group: Group::Create and GroupFactory::Create (the tests' seam for wrapping the
// transport) run the set-up steps of setup.cc and transport_choice.cc in order, and tear down
// what was made if connecting fails or the caller's AbortToken aborted it.
#include "group/impl.h"

namespace m2n {

StatusOr<std::unique_ptr<Group>> Group::Create(const Options& requested) {
  return GroupFactory::Create(requested, nullptr);
}

StatusOr<std::unique_ptr<Group>> Group::Create(const Options& requested, const AbortToken& abort) {
  return GroupFactory::Create(requested, nullptr, abort);
}

StatusOr<std::unique_ptr<Group>> GroupFactory::Create(const Options& requested,
                                                      const TransportWrapper& wrap,
                                                      const AbortToken& abort) {
  M2N_ASSIGN_OR_RETURN(Options options, ResolveOptions(requested));
  Deadline deadline = Deadline::After(options.bootstrap.timeout);
  auto impl = std::make_unique<Group::Impl>();
  impl->abort = abort;
  impl->SetRanks(options);
  M2N_RETURN_IF_ERROR(impl->CheckOptions());
  if (impl->Aborted()) return impl->AbortedStatus("creating the group");
  M2N_RETURN_IF_ERROR(impl->ConnectStore(deadline));
  // The choice is checked with the configuration: a rank that has no usable transport still
  // publishes (the reason, as its transport name), so the others report the mismatch too.
  auto chosen = ChooseTransport(options.transport, options.slot_memory);
  std::string transport_name =
      chosen.ok() ? std::string((*chosen)->name) : "<" + chosen.status().message() + ">";
  M2N_RETURN_IF_ERROR(impl->AgreeOnConfiguration(transport_name, deadline));
  if (!chosen.ok()) return chosen.status().WithContext(impl->me());
  impl->transport_name = transport_name;
  M2N_RETURN_IF_ERROR(impl->CreateTransport(**chosen, wrap));
  Status connected = impl->Connect(deadline);
  // An Abort that came while connecting (whose last wait may have finished first) fails Create.
  if (connected.ok() && impl->Aborted()) connected = impl->AbortedStatus("creating the group");
  if (!connected.ok()) {
    (void)impl->Teardown(Deadline::AfterMs(1000), /*clean=*/false);
    return connected;
  }
  return std::unique_ptr<Group>(new Group(std::move(impl)));
}

Group::Group(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

}  // namespace m2n

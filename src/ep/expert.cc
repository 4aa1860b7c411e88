// The expert rank's calls of m2n::ExpertParallel: ReceiveDispatch (receive the call's message from
// every attention rank, group the rows by local expert, copy them out, release the slots) and
// Combine (send every attention rank its rows of the experts' output).
#include <cstring>
#include <string>

#include "ep/layer.h"

namespace m2n {

namespace {

// Checks the received messages and fills views; the error names the sender.
Status ReadAll(ExpertParallel::Impl& impl, std::vector<ep::DispatchView>* views) {
  views->resize(impl.peers.size());
  for (size_t m = 0; m < impl.peers.size(); ++m) {
    const Message& msg = impl.received[m];
    auto read = ep::ReadDispatch(impl.layer.format, impl.next_call, msg.peer, msg.data, msg.length);
    if (!read.ok()) return read.status();
    (*views)[m] = *read;
  }
  return OkStatus();
}

// The batch's per-row sources and per-expert counts from the grouping.
void DescribeRows(ExpertParallel::Impl& impl, std::span<const ep::DispatchView> views) {
  const ep::ExpertGrouping& g = impl.grouping;
  impl.sources.resize(size_t(g.rows()));
  const size_t k = size_t(impl.options.top_k);
  for (size_t i = 0; i < impl.sources.size(); ++i) {
    const ep::DispatchView& v = views[size_t(g.message[i])];
    const size_t row = size_t(g.row[i]);
    // The message's arrays may sit at any byte offset of the slot: read them by memcpy.
    int32_t token;
    float weight;
    std::memcpy(&token, reinterpret_cast<const std::byte*>(v.token) + row * sizeof token,
                sizeof token);
    std::memcpy(&weight,
                reinterpret_cast<const std::byte*>(v.weight) +
                    (row * k + size_t(g.slot[i])) * sizeof weight,
                sizeof weight);
    impl.sources[i] = ExpertRowSource{v.source, token, g.slot[i], weight};
  }
  impl.counts.resize(g.offsets.size() - 1);
  for (size_t l = 0; l < impl.counts.size(); ++l) impl.counts[l] = g.offsets[l + 1] - g.offsets[l];
}

}  // namespace

StatusOr<ExpertBatch> ExpertParallel::ReceiveDispatch(Deadline deadline) {
  Impl& impl = *impl_;
  if (impl.attention) return impl.WrongSide("ReceiveDispatch", false);
  M2N_RETURN_IF_ERROR(impl.CheckPath("ReceiveDispatch", false));
  if (impl.combine_due) {
    return FailedPreconditionError(impl.me() + ": ReceiveDispatch: call " +
                                   std::to_string(impl.next_call - 1) +
                                   " has not been combined; call Combine first");
  }
  M2N_RETURN_IF_ERROR(impl.ReceiveAll("ReceiveDispatch", impl.next_call, deadline));
  std::vector<ep::DispatchView> views;
  Status s = ReadAll(impl, &views);
  if (s.ok()) {
    std::vector<ep::ReceivedRows> rows;
    for (const ep::DispatchView& v : views) rows.push_back({v.source, v.rows, v.expert});
    s = ep::GroupByExpert(impl.layer.placement, impl.receiver, impl.options.top_k, rows,
                          &impl.grouping);
  }
  if (s.ok()) {
    impl.grouped_x.resize(size_t(impl.grouping.rows()) * impl.layer.format.row_bytes());
    ep::GatherRows(impl.layer.format, impl.grouping, views, impl.grouped_x.data());
    DescribeRows(impl, views);
  }
  // The rows are copied out: the slots go back to the attention ranks now.
  s = impl.ReleaseAll(s);
  if (!s.ok()) return s.WithContext(impl.me() + ": ReceiveDispatch");
  ExpertBatch batch;
  batch.call = impl.next_call++;
  impl.combine_due = true;
  batch.x = impl.grouped_x.data();
  batch.rows = impl.grouping.rows();
  batch.experts = impl.layer.placement.experts_of[size_t(impl.receiver)];
  batch.counts = impl.counts;
  batch.offsets = impl.grouping.offsets;
  batch.sources = impl.sources;
  return batch;
}

Status ExpertParallel::Combine(const void* y, Deadline deadline) {
  Impl& impl = *impl_;
  if (impl.attention) return impl.WrongSide("Combine", false);
  M2N_RETURN_IF_ERROR(impl.CheckPath("Combine", false));
  if (!impl.combine_due) {
    return FailedPreconditionError(impl.me() +
                                   ": Combine: no received dispatch is waiting for its combine");
  }
  if (impl.grouping.rows() > 0 && y == nullptr)
    return InvalidArgumentError(impl.me() + ": Combine: y is null");
  const uint32_t call = impl.next_call - 1;
  impl.requests.clear();
  for (size_t m = 0; m < impl.peers.size(); ++m) {
    std::byte* msg = impl.send_slot(m);
    const size_t length = ep::WriteCombine(impl.layer.format, call, impl.grouping, int(m),
                                           static_cast<const std::byte*>(y), msg);
    impl.requests.push_back({impl.peers[m], msg, length});
  }
  M2N_RETURN_IF_ERROR(impl.SendAll("Combine", call, deadline));
  impl.combine_due = false;
  return OkStatus();
}

}  // namespace m2n

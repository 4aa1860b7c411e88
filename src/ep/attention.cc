// The attention rank's calls of m2n::ExpertParallel: Dispatch (plan, write one message per expert
// rank, send) and ReceiveCombine (receive every expert rank's combine of the oldest call in
// flight, weighted sum per token).
#include <string>

#include "ep/combine.h"
#include "ep/layer.h"

namespace m2n {

namespace {

Status CheckDispatchInput(const ExpertParallel::Impl& impl, const void* x, int tokens,
                          std::span<const int32_t> topk_ids, std::span<const float> topk_weights) {
  const ExpertParallelOptions& o = impl.options;
  if (tokens < 0 || tokens > o.max_tokens) {
    return InvalidArgumentError(impl.me() + ": Dispatch of " + std::to_string(tokens) +
                                " tokens; this layer takes " +
                                "0 to max_tokens = " + std::to_string(o.max_tokens) + " per call");
  }
  if (tokens > 0 && x == nullptr) return InvalidArgumentError(impl.me() + ": Dispatch: x is null");
  const size_t pairs = size_t(tokens) * size_t(o.top_k);
  if (topk_weights.size() != pairs) {
    return InvalidArgumentError(impl.me() + ": Dispatch: topk_weights has " +
                                std::to_string(topk_weights.size()) +
                                " entries; tokens x top_k = " + std::to_string(pairs));
  }
  const int depth = impl.group.options().slot_depth;
  if (int(impl.in_flight.size()) >= depth) {
    return FailedPreconditionError(impl.me() + ": Dispatch: " + std::to_string(depth) +
                                   " calls are in flight " +
                                   "(slot_depth); receive the oldest one's combine first");
  }
  return OkStatus();
}

}  // namespace

Status ExpertParallel::Dispatch(const void* x, int tokens, std::span<const int32_t> topk_ids,
                                std::span<const float> topk_weights, Deadline deadline) {
  Impl& impl = *impl_;
  if (!impl.attention) return impl.WrongSide("Dispatch", true);
  M2N_RETURN_IF_ERROR(impl.CheckPath("Dispatch", false));
  M2N_RETURN_IF_ERROR(CheckDispatchInput(impl, x, tokens, topk_ids, topk_weights));
  Impl::Call call;
  Status planned =
      ep::PlanDispatch(impl.layer.placement, tokens, impl.options.top_k, topk_ids, &call.plan);
  if (!planned.ok()) return planned.WithContext(impl.me() + ": Dispatch");
  call.ids.assign(topk_ids.begin(), topk_ids.end());
  call.weights.assign(topk_weights.begin(), topk_weights.end());
  impl.requests.clear();
  for (size_t d = 0; d < impl.peers.size(); ++d) {
    std::byte* msg = impl.send_slot(d);
    const size_t length =
        ep::WriteDispatch(impl.layer.format, impl.next_dispatch, impl.layer.placement, call.plan,
                          int(d), static_cast<const std::byte*>(x), topk_ids, topk_weights, msg);
    impl.requests.push_back({impl.peers[d], msg, length});
  }
  M2N_RETURN_IF_ERROR(impl.SendAll("Dispatch", impl.next_dispatch, deadline));
  ++impl.next_dispatch;
  impl.in_flight.push_back(std::move(call));
  return OkStatus();
}

Status ExpertParallel::ReceiveCombine(void* out, Deadline deadline) {
  Impl& impl = *impl_;
  if (!impl.attention) return impl.WrongSide("ReceiveCombine", true);
  M2N_RETURN_IF_ERROR(impl.CheckPath("ReceiveCombine", false));
  if (impl.in_flight.empty()) {
    return FailedPreconditionError(impl.me() +
                                   ": ReceiveCombine: no Dispatch is waiting for its combine");
  }
  const Impl::Call& call = impl.in_flight.front();
  if (call.plan.tokens > 0 && out == nullptr)
    return InvalidArgumentError(impl.me() + ": ReceiveCombine: out is null");
  M2N_RETURN_IF_ERROR(impl.ReceiveAll("ReceiveCombine", impl.next_combine, deadline));
  std::vector<const std::byte*> y(impl.peers.size());
  Status s;
  for (size_t d = 0; d < impl.peers.size() && s.ok(); ++d) {
    const Message& m = impl.received[d];
    auto read = ep::ReadCombine(impl.layer.format, impl.next_combine, m.peer,
                                call.plan.pair_count[d], m.data, m.length);
    if (read.ok())
      y[d] = *read;
    else
      s = read.status().WithContext(impl.me() + ": ReceiveCombine");
  }
  if (s.ok()) {
    ep::WeightedSum(impl.layer.format, impl.layer.placement, call.plan, call.ids, call.weights, y,
                    static_cast<std::byte*>(out));
  }
  M2N_RETURN_IF_ERROR(impl.ReleaseAll(s));
  ++impl.next_combine;
  impl.in_flight.pop_front();
  return OkStatus();
}

}  // namespace m2n

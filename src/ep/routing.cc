// The routing of the expert-parallel layer: placement, the attention rank's dispatch plan and the
// expert rank's grouping (routing.h says what each computes and in which order).
#include "ep/routing.h"

#include <algorithm>
#include <cstring>

namespace m2n::ep {

StatusOr<Placement> MakePlacement(int num_experts, std::span<const int> ranks, int num_senders,
                                  int num_receivers) {
  if (num_senders < 1 || num_receivers < 1) {
    return InvalidArgumentError(
        "expert parallelism needs at least one attention rank (sender) and one expert "
        "rank (receiver); the group has " +
        std::to_string(num_senders) + " and " + std::to_string(num_receivers));
  }
  if (num_experts < 1)
    return InvalidArgumentError("num_experts is " + std::to_string(num_experts) + ", must be >= 1");
  if (!ranks.empty() && ranks.size() != size_t(num_experts)) {
    return InvalidArgumentError("placement has " + std::to_string(ranks.size()) +
                                " entries; it needs one per expert (" +
                                std::to_string(num_experts) + ") or none (contiguous blocks)");
  }
  Placement p;
  p.num_experts = num_experts;
  p.num_senders = num_senders;
  p.num_receivers = num_receivers;
  p.owner.resize(size_t(num_experts));
  p.local_index.resize(size_t(num_experts));
  p.experts_of.resize(size_t(num_receivers));
  for (int e = 0; e < num_experts; ++e) {
    int d = int(int64_t(e) * num_receivers / num_experts);
    if (!ranks.empty()) {
      const int rank = ranks[size_t(e)];
      if (rank < num_senders || rank >= num_senders + num_receivers) {
        return InvalidArgumentError(
            "placement[" + std::to_string(e) + "] = " + std::to_string(rank) +
            " is not an expert rank: expert ranks are the receivers, [" +
            std::to_string(num_senders) + ", " + std::to_string(num_senders + num_receivers) + ")");
      }
      d = rank - num_senders;
    }
    p.owner[size_t(e)] = d;
    p.local_index[size_t(e)] = int(p.experts_of[size_t(d)].size());
    p.experts_of[size_t(d)].push_back(e);  // ascending, as e ascends
  }
  for (const auto& experts : p.experts_of)
    p.max_local_experts = std::max(p.max_local_experts, int(experts.size()));
  return p;
}

Status PlanDispatch(const Placement& placement, int tokens, int top_k,
                    std::span<const int32_t> topk_ids, DispatchPlan* plan) {
  const int n = placement.num_receivers;
  const size_t pairs = size_t(tokens) * size_t(top_k);
  if (topk_ids.size() != pairs) {
    return InvalidArgumentError("topk_ids has " + std::to_string(topk_ids.size()) +
                                " entries; tokens x top_k = " + std::to_string(tokens) + " x " +
                                std::to_string(top_k) + " = " + std::to_string(pairs));
  }
  for (size_t i = 0; i < pairs; ++i) {
    if (topk_ids[i] < 0 || topk_ids[i] >= placement.num_experts) {
      return InvalidArgumentError(
          "topk_ids[" + std::to_string(i / size_t(top_k)) + "][" +
          std::to_string(i % size_t(top_k)) + "] = " + std::to_string(topk_ids[i]) +
          " is not an expert id in [0, " + std::to_string(placement.num_experts) + ")");
    }
  }
  plan->tokens = tokens;
  plan->top_k = top_k;
  plan->row_offset.assign(size_t(n) + 1, 0);
  plan->pair_count.assign(size_t(n), 0);
  plan->pair_index.resize(pairs);
  // last[d]: the last token counted for d, so that a token with several experts on d counts once.
  std::vector<int> last(size_t(n), -1);
  for (int t = 0; t < tokens; ++t) {
    for (int j = 0; j < top_k; ++j) {
      const size_t at = size_t(t) * size_t(top_k) + size_t(j);
      const int d = placement.owner[size_t(topk_ids[at])];
      plan->pair_index[at] = plan->pair_count[size_t(d)]++;
      if (last[size_t(d)] != t) {
        last[size_t(d)] = t;
        ++plan->row_offset[size_t(d) + 1];
      }
    }
  }
  for (int d = 0; d < n; ++d) plan->row_offset[size_t(d) + 1] += plan->row_offset[size_t(d)];
  plan->row_token.resize(size_t(plan->row_offset[size_t(n)]));
  std::vector<int32_t> cursor(plan->row_offset.begin(), plan->row_offset.end() - 1);
  std::fill(last.begin(), last.end(), -1);
  for (int t = 0; t < tokens; ++t) {
    for (int j = 0; j < top_k; ++j) {
      const int d = placement.owner[size_t(topk_ids[size_t(t) * size_t(top_k) + size_t(j)])];
      if (last[size_t(d)] == t) continue;
      last[size_t(d)] = t;
      plan->row_token[size_t(cursor[size_t(d)]++)] = t;
    }
  }
  return OkStatus();
}

namespace {

// The local index of `expert` on `receiver`, or why a row from `source` may not name it.
StatusOr<int> LocalExpert(const Placement& placement, int receiver, int source, int32_t expert) {
  if (expert < 0 || expert >= placement.num_experts ||
      placement.owner[size_t(expert)] != receiver) {
    return DataLossError("the dispatch from rank " + std::to_string(source) +
                         " routes a row to expert " + std::to_string(expert) +
                         ", which this expert rank does not hold (do all ranks pass the "
                         "same placement?)");
  }
  return placement.local_index[size_t(expert)];
}

// Id i of a received message: the ids may sit at any byte offset of the slot, so read by memcpy.
int32_t LoadId(const int32_t* ids, size_t i) {
  int32_t id;
  std::memcpy(&id, reinterpret_cast<const std::byte*>(ids) + i * sizeof id, sizeof id);
  return id;
}

}  // namespace

Status GroupByExpert(const Placement& placement, int receiver, int top_k,
                     std::span<const ReceivedRows> messages, ExpertGrouping* grouping) {
  const size_t local = placement.experts_of[size_t(receiver)].size();
  std::vector<int> counts(local, 0);
  for (const ReceivedRows& m : messages) {
    for (int i = 0; i < m.rows * top_k; ++i) {
      const int32_t e = LoadId(m.expert, size_t(i));
      if (e == -1) continue;
      M2N_ASSIGN_OR_RETURN(int l, LocalExpert(placement, receiver, m.source, e));
      ++counts[size_t(l)];
    }
  }
  grouping->offsets.assign(local + 1, 0);
  for (size_t l = 0; l < local; ++l) grouping->offsets[l + 1] = grouping->offsets[l] + counts[l];
  const size_t rows = size_t(grouping->offsets[local]);
  grouping->message.resize(rows);
  grouping->row.resize(rows);
  grouping->slot.resize(rows);
  grouping->pair.resize(rows);
  grouping->pair_count.assign(messages.size(), 0);
  std::vector<int> cursor(grouping->offsets.begin(), grouping->offsets.end() - 1);
  for (size_t m = 0; m < messages.size(); ++m) {
    for (int r = 0; r < messages[m].rows; ++r) {
      for (int j = 0; j < top_k; ++j) {
        const int32_t expert = LoadId(messages[m].expert, size_t(r) * size_t(top_k) + size_t(j));
        if (expert == -1) continue;
        const size_t at = size_t(cursor[size_t(placement.local_index[size_t(expert)])]++);
        grouping->message[at] = int32_t(m);
        grouping->row[at] = r;
        grouping->slot[at] = j;
        grouping->pair[at] = grouping->pair_count[m]++;
      }
    }
  }
  return OkStatus();
}

}  // namespace m2n::ep

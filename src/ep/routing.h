// The routing of the expert-parallel layer, as pure functions on indices (no bytes, no Group):
//   - Placement: which expert rank holds which expert, from ExpertParallelOptions::placement;
//   - PlanDispatch (attention rank): per expert rank, which tokens go there (each token once per
//     rank, however many of its top-k experts that rank holds), and where each (token, j) pair's
//     output row will be in that rank's combine message;
//   - GroupByExpert (expert rank): the received rows in grouped order (by local expert, then by
//     attention rank, then by row), and where each goes in the combine message to its sender.
// The CUDA path computes the same plans on the device; tests/ep_test.cc checks these against a
// plain reference, and a device version can be checked against these.
//
// Orders (both sides rely on them; src/ep/README.md):
//   rows of the dispatch message to expert rank d: the tokens with any expert on d, ascending;
//   pairs of the combine message from d: the dispatch rows in order, and within a row j ascending
//   over the top-k slots whose expert is on d.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "m2n/status.h"

namespace m2n::ep {

struct Placement {
  int num_experts = 0;
  int num_senders = 0;  // M: attention ranks are [0, M)
  int num_receivers = 0;  // N: expert ranks are [M, M + N)
  std::vector<int> owner;  // per expert: its expert rank's index in [0, N)
  std::vector<int> local_index;  // per expert: its index among its owner's experts
  std::vector<std::vector<int>> experts_of;  // per expert rank index: its experts, ascending
  int max_local_experts = 0;
};

// `ranks` as ExpertParallelOptions::placement (global ranks; empty: contiguous blocks). Errors name
// the expert and the rank that is not an expert rank.
StatusOr<Placement> MakePlacement(int num_experts, std::span<const int> ranks, int num_senders,
                                  int num_receivers);

// One attention rank's call.
struct DispatchPlan {
  int tokens = 0;
  int top_k = 0;
  std::vector<int32_t>
      row_offset;  // N + 1: rows for expert rank d are row_token[row_offset[d], row_offset[d+1])
  std::vector<int32_t> row_token;  // token of each row, grouped by expert rank, ascending within
  std::vector<int32_t>
      pair_count;  // N: (row, j) pairs to expert rank d = rows of its combine message
  std::vector<int32_t>
      pair_index;  // tokens * top_k: index of (t, j)'s output row in its owner's combine
  int rows(int d) const { return row_offset[size_t(d) + 1] - row_offset[size_t(d)]; }
};

// topk_ids: [tokens, top_k]. kInvalidArgument names the first id out of [0, num_experts).
Status PlanDispatch(const Placement& placement, int tokens, int top_k,
                    std::span<const int32_t> topk_ids, DispatchPlan* plan);

// The expert ids of one received dispatch message: rows x top_k, -1 for experts on other ranks.
struct ReceivedRows {
  int source = -1;  // the attention rank, for error messages
  int rows = 0;
  const int32_t* expert = nullptr;
};

// One expert rank's call: the rows of every received message in grouped order.
struct ExpertGrouping {
  std::vector<int> offsets;  // L + 1: rows of local expert l are [offsets[l], offsets[l+1])
  std::vector<int32_t> message;  // per grouped row: index of the message it came from
  std::vector<int32_t> row;  // its row in that message
  std::vector<int32_t> slot;  // its top-k slot j
  std::vector<int32_t> pair;  // its row in the combine message back to that message's sender
  std::vector<int32_t> pair_count;  // per message: rows of the combine message back to its sender
  int rows() const { return static_cast<int>(row.size()); }
};

// `receiver`: this expert rank's index in [0, N). kDataLoss names a message that routes a row to an
// expert this rank does not hold (the ranks disagree on the placement).
Status GroupByExpert(const Placement& placement, int receiver, int top_k,
                     std::span<const ReceivedRows> messages, ExpertGrouping* grouping);

}  // namespace m2n::ep

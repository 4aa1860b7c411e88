// A plain reference of expert-parallel dispatch and combine (m2n/ep.h), for tests/ep_test.cc and
// tests/ep_ucx_test.cc: the routings the tests send, what each expert rank must receive (rows per
// local expert, in the documented order) and what each attention rank must get back, written
// without any of src/ep/'s code (only its bf16 rounding, which ep_test checks on its own).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "m2n/ep.h"

namespace m2n::testing {

struct EpCase {
  int m = 1, n = 1;  // attention ranks [0, m), expert ranks [m, m + n)
  ExpertParallelOptions options;
};
std::string EpCaseName(const EpCase& c);  // "2x3_bf16_e8_k2"

// The global rank of the expert rank holding expert e.
int ExpertOwner(const EpCase& c, int expert);

// What one attention rank dispatches in one call.
enum class RoutingKind {
  kRandom,  // random tokens in [1, max_tokens], distinct top-k experts per token
  kOneExpert,  // every token's first expert is the same one
  kSameRank,  // every token's experts all on one expert rank (where one holds >= top_k experts)
  kNoTokens,  // tokens = 0
  kMaxTokens,  // tokens = max_tokens
  kSkipLastRank,  // no token to the last expert rank (where the others hold >= top_k experts)
};
const char* RoutingKindName(RoutingKind kind);

struct Routing {
  int tokens = 0;
  std::vector<std::byte> x;  // [tokens, hidden] of dtype
  std::vector<int32_t> ids;  // [tokens, top_k]
  std::vector<float> weights;
};
// Deterministic in (case, kind, attention rank, call): every rank can rebuild every other's.
Routing MakeRouting(const EpCase& c, RoutingKind kind, int rank, uint64_t call);

// The test's expert e applied to a row of dtype: y[i] = x[i] * (1 + (e % 5) / 4) + e / 8, in fp32,
// stored as dtype.
void ApplyExpert(const EpCase& c, int expert, const std::byte* x, std::byte* y);

// One row an expert rank must receive.
struct ExpectedRow {
  int rank, token, slot;
  float weight;
  const std::byte* x;  // in the routing it came from
};
// Per local expert of expert rank `rank` (ascending global id), its rows: attention ranks
// ascending, then tokens ascending, then top-k slots ascending. routings[a]: rank a's call.
std::vector<std::vector<ExpectedRow>> ExpectedRows(const EpCase& c, int rank,
                                                   const std::vector<Routing>& routings);

// out[tokens, hidden] of dtype: sum over j in order of weight * ApplyExpert(expert j, x[t]),
// accumulated in fp32, rounded once.
std::vector<std::byte> ExpectedOutput(const EpCase& c, const Routing& routing);

// "" when equal, else the first difference (token, element, got, want).
std::string CompareRows(const EpCase& c, const std::byte* got, const std::byte* want, int rows);

}  // namespace m2n::testing

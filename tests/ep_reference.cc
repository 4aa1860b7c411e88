// The plain expert-parallel reference (ep_reference.h).
#include "ep_reference.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "ep/dtype.h"

namespace m2n::testing {

std::string EpCaseName(const EpCase& c) {
  const ExpertParallelOptions& o = c.options;
  return std::to_string(c.m) + "x" + std::to_string(c.n) + "_" +
         std::string(DataTypeName(o.dtype)) + "_e" + std::to_string(o.num_experts) + "_k" +
         std::to_string(o.top_k);
}

int ExpertOwner(const EpCase& c, int expert) {
  const ExpertParallelOptions& o = c.options;
  if (!o.placement.empty()) return o.placement[size_t(expert)];
  return c.m + int(int64_t(expert) * c.n / o.num_experts);
}

const char* RoutingKindName(RoutingKind kind) {
  switch (kind) {
    case RoutingKind::kRandom:
      return "random";
    case RoutingKind::kOneExpert:
      return "one expert";
    case RoutingKind::kSameRank:
      return "same rank";
    case RoutingKind::kNoTokens:
      return "no tokens";
    case RoutingKind::kMaxTokens:
      return "max tokens";
    case RoutingKind::kSkipLastRank:
      return "skip last rank";
  }
  return "?";
}

namespace {

float Element(const EpCase& c, const std::byte* row, int i) {
  return ep::LoadElement(row, i, c.options.dtype);
}

// The experts a token may pick under `kind`: all, one rank's, or all but the last rank's.
std::vector<int> Candidates(const EpCase& c, RoutingKind kind) {
  const int k = c.options.top_k, experts = c.options.num_experts;
  std::vector<int> all(static_cast<size_t>(experts));
  std::iota(all.begin(), all.end(), 0);
  for (int d = c.m; d < c.m + c.n && kind == RoutingKind::kSameRank; ++d) {
    std::vector<int> on_d;
    for (int e : all)
      if (ExpertOwner(c, e) == d) on_d.push_back(e);
    if (int(on_d.size()) >= k) return on_d;
  }
  if (kind == RoutingKind::kSkipLastRank) {
    std::vector<int> rest;
    for (int e : all)
      if (ExpertOwner(c, e) != c.m + c.n - 1) rest.push_back(e);
    if (int(rest.size()) >= k) return rest;
  }
  return all;
}

}  // namespace

Routing MakeRouting(const EpCase& c, RoutingKind kind, int rank, uint64_t call) {
  const ExpertParallelOptions& o = c.options;
  std::mt19937_64 rng(call * 1000003 + uint64_t(rank) * 7919 + uint64_t(kind) * 104729 +
                      uint64_t(o.hidden));
  Routing r;
  r.tokens = kind == RoutingKind::kNoTokens ? 0
             : kind == RoutingKind::kMaxTokens
                 ? o.max_tokens
                 : int(1 + rng() % uint64_t(std::max(o.max_tokens, 1)));
  r.tokens = std::min(r.tokens, o.max_tokens);
  const size_t k = size_t(o.top_k), row_bytes = size_t(o.hidden) * DataTypeBytes(o.dtype);
  r.x.resize(size_t(r.tokens) * row_bytes);
  for (int t = 0; t < r.tokens; ++t) {
    for (int i = 0; i < o.hidden; ++i) {
      ep::StoreElement(float(int(rng() % 512) - 256) / 64.0f, i, o.dtype,
                       r.x.data() + size_t(t) * row_bytes);
    }
  }
  std::vector<int> candidates = Candidates(c, kind);
  const int first = candidates[rng() % candidates.size()];
  for (int t = 0; t < r.tokens; ++t) {
    std::shuffle(candidates.begin(), candidates.end(), rng);
    if (kind == RoutingKind::kOneExpert)
      std::iter_swap(candidates.begin(), std::find(candidates.begin(), candidates.end(), first));
    for (size_t j = 0; j < k; ++j) {
      r.ids.push_back(candidates[j]);
      r.weights.push_back(float(rng() % 1000) / 997.0f);
    }
  }
  return r;
}

void ApplyExpert(const EpCase& c, int expert, const std::byte* x, std::byte* y) {
  const float scale = 1.0f + float(expert % 5) / 4.0f, bias = float(expert) / 8.0f;
  for (int i = 0; i < c.options.hidden; ++i)
    ep::StoreElement(Element(c, x, i) * scale + bias, i, c.options.dtype, y);
}

std::vector<std::vector<ExpectedRow>> ExpectedRows(const EpCase& c, int rank,
                                                   const std::vector<Routing>& routings) {
  const ExpertParallelOptions& o = c.options;
  const size_t k = size_t(o.top_k), row_bytes = size_t(o.hidden) * DataTypeBytes(o.dtype);
  std::vector<std::vector<ExpectedRow>> rows;
  for (int e = 0; e < o.num_experts; ++e) {
    if (ExpertOwner(c, e) != rank) continue;
    rows.emplace_back();
    for (size_t a = 0; a < routings.size(); ++a) {
      const Routing& r = routings[a];
      for (size_t t = 0; t < size_t(r.tokens); ++t) {
        for (size_t j = 0; j < k; ++j) {
          if (r.ids[t * k + j] != e) continue;
          rows.back().push_back(
              {int(a), int(t), int(j), r.weights[t * k + j], r.x.data() + t * row_bytes});
        }
      }
    }
  }
  return rows;
}

std::vector<std::byte> ExpectedOutput(const EpCase& c, const Routing& r) {
  const ExpertParallelOptions& o = c.options;
  const size_t k = size_t(o.top_k), row_bytes = size_t(o.hidden) * DataTypeBytes(o.dtype);
  std::vector<std::byte> out(size_t(r.tokens) * row_bytes), y(row_bytes);
  for (size_t t = 0; t < size_t(r.tokens); ++t) {
    std::vector<float> sum(size_t(o.hidden), 0.0f);
    for (size_t j = 0; j < k; ++j) {
      ApplyExpert(c, r.ids[t * k + j], r.x.data() + t * row_bytes, y.data());
      for (int i = 0; i < o.hidden; ++i)
        sum[size_t(i)] += r.weights[t * k + j] * Element(c, y.data(), i);
    }
    for (int i = 0; i < o.hidden; ++i)
      ep::StoreElement(sum[size_t(i)], i, o.dtype, out.data() + t * row_bytes);
  }
  return out;
}

std::string CompareRows(const EpCase& c, const std::byte* got, const std::byte* want, int rows) {
  const size_t row_bytes = size_t(c.options.hidden) * DataTypeBytes(c.options.dtype);
  for (int t = 0; t < rows; ++t) {
    const std::byte* g = got + size_t(t) * row_bytes;
    const std::byte* w = want + size_t(t) * row_bytes;
    if (std::memcmp(g, w, row_bytes) == 0) continue;
    for (int i = 0; i < c.options.hidden; ++i) {
      if (Element(c, g, i) != Element(c, w, i)) {
        return "row " + std::to_string(t) + " element " + std::to_string(i) + ": got " +
               std::to_string(Element(c, g, i)) + ", want " + std::to_string(Element(c, w, i));
      }
    }
    return "row " + std::to_string(t) + " differs in its bytes (a NaN?)";
  }
  return "";
}

}  // namespace m2n::testing

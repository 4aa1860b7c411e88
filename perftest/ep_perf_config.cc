// m2n_ep_perf's command line, sweep and routings (ep_perf.h).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <utility>

#include "ep_perf.h"

namespace m2n::perf::ep {
namespace {

StatusOr<int> ParseInt(const std::string& flag, const std::string& text, int min) {
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v < min || v > (1 << 30)) {
    return InvalidArgumentError(flag + " " + text +
                                ": expected an integer >= " + std::to_string(min));
  }
  return int(v);
}

StatusOr<std::vector<int>> ParseList(const std::string& flag, const std::string& text, int min) {
  std::vector<int> values;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    M2N_ASSIGN_OR_RETURN(int v, ParseInt(flag, text.substr(start, comma - start), min));
    values.push_back(v);
    start = comma + 1;
  }
  return values;
}

}  // namespace

StatusOr<EpPerfConfig> ParseEpPerfArgs(int argc, char** argv, EpPerfConfig defaults) {
  EpPerfConfig c = std::move(defaults);
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc)
      return InvalidArgumentError(flag +
                                  ": unknown flag or missing value (see perftest/README.md)");
    const std::string value = argv[++i];
    if (flag == "-M") {
      M2N_ASSIGN_OR_RETURN(c.m, ParseInt(flag, value, 1));
    } else if (flag == "-N") {
      M2N_ASSIGN_OR_RETURN(c.n, ParseInt(flag, value, 1));
    } else if (flag == "--tokens") {
      M2N_ASSIGN_OR_RETURN(c.tokens, ParseList(flag, value, 0));
    } else if (flag == "--hidden") {
      M2N_ASSIGN_OR_RETURN(c.hidden, ParseList(flag, value, 1));
    } else if (flag == "--top_k") {
      M2N_ASSIGN_OR_RETURN(c.top_k, ParseList(flag, value, 1));
    } else if (flag == "--experts") {
      M2N_ASSIGN_OR_RETURN(c.experts, ParseList(flag, value, 1));
    } else if (flag == "-n") {
      M2N_ASSIGN_OR_RETURN(c.iterations, ParseInt(flag, value, 1));
    } else if (flag == "-w") {
      M2N_ASSIGN_OR_RETURN(c.warmup, ParseInt(flag, value, 0));
    } else if (flag == "--timeout_ms") {
      M2N_ASSIGN_OR_RETURN(int ms, ParseInt(flag, value, 1));
      c.timeout_ms = ms;
    } else if (flag == "--dtype" && (value == "bf16" || value == "fp32")) {
      c.dtype = value == "bf16" ? DataType::kBFloat16 : DataType::kFloat32;
    } else {
      return InvalidArgumentError(flag + " " + value +
                                  ": unknown flag or bad value (see perftest/README.md)");
    }
  }
  return c;
}

EpPerfConfig GpuEpPerfDefaults() {
  EpPerfConfig c;
  c.tokens = {64, 128, 256, 512};
  c.hidden = {4096, 7168};
  c.iterations = 100;
  c.warmup = 10;
  return c;
}

ExpertParallelOptions LayerOptions(const EpPerfConfig& c, const Shape& s) {
  return ExpertParallelOptions{.num_experts = s.experts,
                               .top_k = s.top_k,
                               .hidden = s.hidden,
                               .dtype = c.dtype,
                               .max_tokens = s.tokens,
                               .placement = {}};
}

StatusOr<size_t> SlotBytesForSweep(const EpPerfConfig& c) {
  size_t bytes = 0;
  for (const Shape& s : Shapes(c)) {
    M2N_ASSIGN_OR_RETURN(size_t need,
                         ExpertParallel::SlotBytesNeeded(LayerOptions(c, s), c.m, c.n));
    bytes = std::max(bytes, need);
  }
  return bytes;
}

float LoadElement(const std::byte* row, int i, DataType dtype) {
  if (dtype == DataType::kFloat32) {
    float f;
    std::memcpy(&f, row + size_t(i) * 4, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, row + size_t(i) * 2, 2);
  const uint32_t bits = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void StoreElement(float f, int i, DataType dtype, std::byte* row) {
  if (dtype == DataType::kFloat32) {
    std::memcpy(row + size_t(i) * 4, &f, 4);
    return;
  }
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7FFFu + ((bits >> 16) & 1u);  // round to nearest even (no NaNs in the benchmark)
  const uint16_t h = uint16_t(bits >> 16);
  std::memcpy(row + size_t(i) * 2, &h, 2);
}

std::vector<Shape> Shapes(const EpPerfConfig& c) {
  std::vector<Shape> shapes;
  for (int experts : c.experts) {
    for (int top_k : c.top_k) {
      if (top_k > experts) continue;
      for (int hidden : c.hidden) {
        for (int tokens : c.tokens) shapes.push_back({tokens, hidden, top_k, experts});
      }
    }
  }
  return shapes;
}

std::vector<RankRouting> MakeRoutings(const EpPerfConfig& c, const Shape& s, int rank, int count) {
  std::vector<RankRouting> routings(static_cast<size_t>(count));
  const size_t row_bytes = size_t(s.hidden) * DataTypeBytes(c.dtype);
  std::vector<int> experts(size_t(s.experts));
  for (int i = 0; i < count; ++i) {
    std::mt19937 rng(uint32_t(rank * 7919 + i * 104729 + s.tokens * 31 + s.hidden * 17 +
                              s.top_k * 13 + s.experts));
    RankRouting& r = routings[size_t(i)];
    r.tokens = s.tokens;
    r.x.resize(size_t(s.tokens) * row_bytes);
    // Small integers / 64: exact in bf16, so both sides' sums are comparable bit for bit.
    for (size_t e = 0; e < size_t(s.tokens) * size_t(s.hidden); ++e) {
      const float v = float(int(rng() % 64) - 32) / 64.0f;
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      const uint16_t top = uint16_t(bits >> 16);
      if (c.dtype == DataType::kFloat32)
        std::memcpy(r.x.data() + e * 4, &v, 4);
      else
        std::memcpy(r.x.data() + e * 2, &top, 2);
    }
    for (int t = 0; t < s.tokens; ++t) {
      std::iota(experts.begin(), experts.end(), 0);
      for (int j = 0; j < s.top_k; ++j) {  // a partial Fisher-Yates: distinct experts, uniform
        std::swap(experts[size_t(j)], experts[size_t(j) + rng() % size_t(s.experts - j)]);
        r.ids.push_back(experts[size_t(j)]);
        r.weights.push_back(float(rng() % 1000) / 997.0f);
      }
    }
  }
  return routings;
}

}  // namespace m2n::perf::ep

// Command-line lists of the offloading tools (moe_offload_sim, moe_offload_bench): "a,b,c" flags.
#pragma once

#include <cstdlib>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "m2n/status.h"

namespace moe::offload {

inline std::vector<std::string> SplitCommas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, ',');) out.push_back(part);
  return out;
}

// "0.25,0.5" -> {0.25, 0.5}: every item a number in (0, max], else an error naming the flag.
inline m2n::StatusOr<std::vector<double>> ParsePositiveNumbers(
    const std::string& flag, const std::string& value,
    double max = std::numeric_limits<double>::max()) {
  std::vector<double> numbers;
  for (const std::string& item : SplitCommas(value)) {
    char* end = nullptr;
    const double n = std::strtod(item.c_str(), &end);
    if (end == item.c_str() || *end != '\0' || !(n > 0 && n <= max)) {
      std::ostringstream bound;
      bound << max;
      return m2n::InvalidArgumentError(
          flag + " needs numbers in (0, " +
          (max == std::numeric_limits<double>::max() ? "inf" : bound.str()) +
          "], comma-separated; got \"" + value + "\"");
    }
    numbers.push_back(n);
  }
  if (numbers.empty()) return m2n::InvalidArgumentError(flag + " needs a value");
  return numbers;
}

}  // namespace moe::offload

// The environment reader of src/base/env.h: one parser per kind of value, one error rule.
#include "src/base/env.h"

#include <cctype>
#include <charconv>
#include <cstdlib>
#include <string_view>

namespace m2n::env {
namespace {

const char* Value(const char* name) {
  const char* text = std::getenv(name);
  return text != nullptr && *text != '\0' ? text : nullptr;
}

Status NotA(const char* name, const std::string& text, const char* what) {
  return InvalidArgumentError(std::string(name) + "='" + text + "' is not " + what);
}

template <typename T>
Status Outside(const char* name, const std::string& text, T min, T max) {
  return InvalidArgumentError(std::string(name) + "=" + text + " is outside [" +
                              std::to_string(min) + ", " + std::to_string(max) + "]");
}

std::string Lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

bool IsSet(const char* name) { return Value(name) != nullptr; }

StatusOr<int64_t> ParseInt(const char* name, const std::string& text, int64_t min, int64_t max) {
  std::string_view digits(text);
  bool negative = false;
  if (!digits.empty() && digits.front() == '-') {
    negative = true;
    digits.remove_prefix(1);
  }
  int base = 10;
  if (digits.size() > 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) {
    base = 16;
    digits.remove_prefix(2);
  }
  // Parsed unsigned so that "-" and "+" signs inside the digits are refused; the sign is ours.
  uint64_t magnitude = 0;
  const char* end = digits.data() + digits.size();
  auto [stop, ec] = std::from_chars(digits.data(), end, magnitude, base);
  if (digits.empty() || ec == std::errc::invalid_argument || stop != end)
    return NotA(name, text, "an integer");
  constexpr uint64_t kLimit = uint64_t{1}
                              << 62;  // far beyond any range asked for; keeps the negation exact
  if (ec == std::errc::result_out_of_range || magnitude > kLimit)
    return Outside(name, text, min, max);
  const int64_t value =
      negative ? -static_cast<int64_t>(magnitude) : static_cast<int64_t>(magnitude);
  if (value < min || value > max) return Outside(name, text, min, max);
  return value;
}

StatusOr<uint64_t> ParseSize(const char* name, const std::string& text, uint64_t min,
                             uint64_t max) {
  std::string_view digits(text);
  int shift = 0;
  if (!digits.empty()) {
    switch (digits.back()) {
      case 'k':
      case 'K':
        shift = 10;
        break;
      case 'm':
      case 'M':
        shift = 20;
        break;
      case 'g':
      case 'G':
        shift = 30;
        break;
      default:
        break;
    }
    if (shift > 0) digits.remove_suffix(1);
  }
  uint64_t count = 0;
  const char* end = digits.data() + digits.size();
  auto [stop, ec] = std::from_chars(digits.data(), end, count);
  if (digits.empty() || ec == std::errc::invalid_argument || stop != end) {
    return NotA(name, text, "a size in bytes (digits, optionally with a K, M or G suffix)");
  }
  if (ec == std::errc::result_out_of_range || count > (max >> shift))
    return Outside(name, text, min, max);
  const uint64_t bytes = count << shift;
  if (bytes < min) return Outside(name, text, min, max);
  return bytes;
}

StatusOr<bool> ParseBool(const char* name, const std::string& text) {
  const std::string word = Lower(text);
  if (word == "1" || word == "true" || word == "yes" || word == "on") return true;
  if (word == "0" || word == "false" || word == "no" || word == "off") return false;
  return NotA(name, text, "a boolean (1 / 0, true / false, yes / no, on / off)");
}

StatusOr<int64_t> Int(const char* name, int64_t min, int64_t max, int64_t fallback) {
  const char* text = Value(name);
  if (text == nullptr) return fallback;
  return ParseInt(name, text, min, max);
}

StatusOr<uint64_t> Size(const char* name, uint64_t min, uint64_t max, uint64_t fallback) {
  const char* text = Value(name);
  if (text == nullptr) return fallback;
  return ParseSize(name, text, min, max);
}

StatusOr<bool> Bool(const char* name, bool fallback) {
  const char* text = Value(name);
  if (text == nullptr) return fallback;
  return ParseBool(name, text);
}

std::string String(const char* name, std::string fallback) {
  const char* text = Value(name);
  return text != nullptr ? std::string(text) : std::move(fallback);
}

}  // namespace m2n::env

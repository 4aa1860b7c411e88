#include "protocol/config_check.h"

namespace m2n::protocol {
namespace {

// A field or value as it appears in a message: bytes from another rank may be long or binary, so
// they are cut and their control bytes escaped.
std::string Shown(const std::string& text) {
  constexpr size_t kMaxShown = 80;
  std::string out;
  size_t i = 0;
  for (; i < text.size() && out.size() < kMaxShown; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  if (i < text.size()) out += "... (" + std::to_string(text.size()) + " bytes)";
  return out;
}

}  // namespace

// "field=value\n" per pair; fields and values never contain '=' or '\n' (checked).
std::string EncodeFingerprint(const Fingerprint& fingerprint) {
  std::string out;
  for (const auto& [field, value] : fingerprint) {
    out += field;
    out += '=';
    out += value;
    out += '\n';
  }
  return out;
}

StatusOr<Fingerprint> DecodeFingerprint(const std::string& text) {
  Fingerprint out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) return DataLossError("configuration fingerprint is truncated");
    std::string line = text.substr(pos, end - pos);
    size_t eq = line.find('=');
    if (eq == std::string::npos || eq == 0) {
      return DataLossError("configuration fingerprint has a malformed line '" + Shown(line) + "'");
    }
    out.emplace_back(line.substr(0, eq), line.substr(eq + 1));
    pos = end + 1;
  }
  return out;
}

Status CheckFingerprints(const std::vector<Fingerprint>& fingerprints) {
  if (fingerprints.empty()) return OkStatus();
  const Fingerprint& ref = fingerprints[0];
  std::string problems;
  int count = 0;
  auto add = [&](const std::string& text) {
    if (count++ > 0) problems += "; ";
    problems += text;
  };
  for (size_t r = 1; r < fingerprints.size(); ++r) {
    const Fingerprint& fp = fingerprints[r];
    if (fp.size() != ref.size()) {
      add("rank " + std::to_string(r) + " sent " + std::to_string(fp.size()) +
          " fields, rank 0 sent " + std::to_string(ref.size()) + " (different m2n versions?)");
    }
  }
  for (size_t f = 0; f < ref.size(); ++f) {
    for (size_t r = 1; r < fingerprints.size(); ++r) {
      const Fingerprint& fp = fingerprints[r];
      if (f >= fp.size()) continue;
      if (fp[f].first != ref[f].first) {
        add("field " + std::to_string(f) + " is '" + Shown(ref[f].first) + "' on rank 0 but '" +
            Shown(fp[f].first) + "' on rank " + std::to_string(r));
        break;
      }
      if (fp[f].second != ref[f].second) {
        int others = 0;
        for (size_t q = r + 1; q < fingerprints.size(); ++q) {
          if (f < fingerprints[q].size() && fingerprints[q][f].second != ref[f].second) ++others;
        }
        add(Shown(ref[f].first) + " is " + Shown(ref[f].second) + " on rank 0 but " +
            Shown(fp[f].second) + " on rank " + std::to_string(r) +
            (others > 0 ? " (and differs on " + std::to_string(others) + " more rank(s))" : ""));
        break;
      }
    }
  }
  if (count == 0) return OkStatus();
  return FailedPreconditionError("configuration differs between ranks: " + problems);
}

}  // namespace m2n::protocol

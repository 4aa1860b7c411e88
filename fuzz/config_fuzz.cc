// Fuzzes the configuration fingerprint check (src/protocol/config_check.h): every rank decodes the
// fingerprint text every other rank put in the store, and compares them all.
//
// The input is split at its first NUL into two ranks' texts. Decoding either may fail but not
// crash; what decodes re-encodes to the same text; a fingerprint agrees with itself; and two that
// differ are a kFailedPrecondition whose message stays short whatever the bytes were.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz/fuzz_check.h"
#include "protocol/config_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace m2n::protocol;
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string first = input.substr(0, nul);
  const std::string second = nul == std::string::npos ? first : input.substr(nul + 1);

  std::vector<Fingerprint> decoded;
  for (const std::string& text : {first, second}) {
    m2n::StatusOr<Fingerprint> fp = DecodeFingerprint(text);
    if (!fp.ok()) {
      M2N_FUZZ_CHECK(fp.status().code() == m2n::StatusCode::kDataLoss);
      M2N_FUZZ_CHECK(fp.status().message().size() < 512);
      continue;
    }
    M2N_FUZZ_CHECK(EncodeFingerprint(*fp) == text);
    M2N_FUZZ_CHECK(CheckFingerprints({*fp, *fp}).ok());
    decoded.push_back(std::move(*fp));
  }
  if (decoded.size() == 2) {
    m2n::Status agreed = CheckFingerprints({decoded[0], decoded[1], decoded[0]});
    M2N_FUZZ_CHECK(agreed.ok() == (decoded[0] == decoded[1]));
    if (!agreed.ok()) {
      M2N_FUZZ_CHECK(agreed.code() == m2n::StatusCode::kFailedPrecondition);
      // One entry per differing field plus one per rank whose field count differs, each bounded.
      M2N_FUZZ_CHECK(agreed.message().size() <
                     1024 + 512 * (decoded[0].size() + decoded[1].size()));
    }
  }
  return 0;
}

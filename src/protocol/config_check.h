// The configuration every rank of a group must agree on, and the check that they do.
// Each rank publishes its fingerprint; every rank compares all of them, so a mismatch is reported
// on every rank, naming the field, the values and the ranks.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "m2n/status.h"

namespace m2n::protocol {

// (field, value) pairs, in a fixed order.
using Fingerprint = std::vector<std::pair<std::string, std::string>>;

std::string EncodeFingerprint(const Fingerprint& fingerprint);
StatusOr<Fingerprint> DecodeFingerprint(const std::string& text);

// fingerprints[r] is rank r's. OK when all equal; otherwise kFailedPrecondition naming, for every
// field that differs, the value on rank 0 and on the first rank that disagrees.
Status CheckFingerprints(const std::vector<Fingerprint>& fingerprints);

}  // namespace m2n::protocol

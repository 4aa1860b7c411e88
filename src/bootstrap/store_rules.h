// Rules every Store applies the same way, so the in-memory store used by unit tests behaves like
// the TCP store of real jobs: which keys and values are allowed, and how Add keeps a counter.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "bootstrap/store.h"
#include "m2n/status.h"

namespace m2n::bootstrap {

// A key is 1 to wire::kMaxKeyBytes bytes; kInvalidArgument otherwise.
Status CheckKey(const std::string& key);
// A value is at most wire::kMaxValueBytes bytes; kInvalidArgument otherwise.
Status CheckValue(std::span<const std::byte> value);
// The keys of one Wait: at most wire::kMaxWaitKeys, each a valid key.
Status CheckWaitKeys(std::span<const std::string> keys);

// Which rank owns a key: "m2n/<name>/<r>" and "m2n/<name>/<r>/<anything>" belong to rank r (r in
// decimal, no leading zero); this is how the group publishes each rank's host, configuration,
// connection addresses and slot keys (src/group/setup.cc). Other keys under "m2n/" are shared
// counters (barriers). -1 for a key no rank owns.
int KeyOwner(const std::string& key);
// Whether the store lets `rank` SET (`is_set`) or ADD to `key`: a rank writes only keys it owns,
// may ADD to shared counters but not SET them, and may not touch another rank's keys, so no rank
// can redirect another's connections. Keys outside "m2n/" are not the library's and stay open.
// kFailedPrecondition naming the key and its owner.
Status CheckWriter(int rank, const std::string& key, bool is_set);

// A counter is stored as decimal ASCII ("42"), so GetString on a counter key reads naturally.
// Adds `delta` to the counter held in `value` (nullptr: the key is absent, which counts as 0) and
// returns the new count. kInvalidArgument when `value` is not a counter, kOutOfRange on overflow.
StatusOr<int64_t> AddToCounter(const std::string& key, const Bytes* value, int64_t delta);
Bytes CounterBytes(int64_t count);

// "'a', 'b'" for messages that name keys; long lists are cut with "... (N in all)".
std::string QuoteKeys(std::span<const std::string> keys);

}  // namespace m2n::bootstrap

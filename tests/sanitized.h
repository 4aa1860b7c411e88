// Whether this test build runs under a sanitizer (ASan, TSan). Its own header, not harness.h:
// bootstrap_test defines a CHILD_CHECK of its own.
#pragma once

namespace m2n::testing {

// Resident memory is not comparable under a sanitizer (quarantine, shadow memory): there the tests
// that bound it check everything else.
inline constexpr bool kSanitized =
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    true;
#else
    false;
#endif

}  // namespace m2n::testing

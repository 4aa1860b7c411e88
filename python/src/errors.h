// m2n::Status to Python: an error Status becomes an exception of m2n.errors (m2n.Error and one
// subclass per code, e.g. m2n.DeadlineExceededError, also a TimeoutError), carrying .code and
// .message. The classes are Python (python/m2n/errors.py) so that users can subclass and pickle
// them.
#pragma once

#include <utility>

#include "m2n/status.h"

namespace m2n::python {

// Raises the exception for `status` (which must not be OK). Call with the GIL held.
[[noreturn]] void ThrowStatus(const Status& status);

inline void Check(const Status& status) {
  if (!status.ok()) ThrowStatus(status);
}

template <typename T>
T Check(StatusOr<T> result) {
  if (!result.ok()) ThrowStatus(result.status());
  return std::move(result).value();
}

}  // namespace m2n::python

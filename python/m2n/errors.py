"""The exceptions of m2n: one per m2n::StatusCode, all subclasses of m2n.Error.

Every failing call raises the class of its Status code with the C++ message, which names the rank,
the peer and the transport. Each class also derives from the builtin exception a Python user would
catch for that situation (DeadlineExceededError is a TimeoutError, UnavailableError a
ConnectionError, InvalidArgumentError a ValueError), so generic handlers work too.
"""

from __future__ import annotations


class Error(Exception):
    """An m2n call failed. ``code`` is the m2n::StatusCode name, ``message`` the C++ message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self):
        return (type(self), (self.code, self.message))


class InvalidArgumentError(Error, ValueError):
    """The caller passed something wrong; the same call fails again."""


class DeadlineExceededError(Error, TimeoutError):
    """The timeout passed before the call could finish; it may be retried."""


class NotFoundError(Error, LookupError):
    """Something named does not exist (e.g. a transport not built)."""


class FailedPreconditionError(Error):
    """The group is not in a state for this call (closed, a message released twice, ranks disagree)."""


class AbortedError(Error):
    """The group was aborted; close it."""


class OutOfRangeError(Error, IndexError):
    """A value is outside the range the call accepts."""


class UnimplementedError(Error, NotImplementedError):
    """This build or transport does not support the call."""


class InternalError(Error):
    """A transport or system call failed in a way m2n did not expect."""


class UnavailableError(Error, ConnectionError):
    """A peer or the bootstrap store cannot be reached or died; the group is unusable."""


class DataLossError(Error):
    """Bytes arrived that fail a check (a corrupted immediate, a bad checksum)."""


_BY_CODE = {
    3: InvalidArgumentError,
    4: DeadlineExceededError,
    5: NotFoundError,
    9: FailedPreconditionError,
    10: AbortedError,
    11: OutOfRangeError,
    12: UnimplementedError,
    13: InternalError,
    14: UnavailableError,
    15: DataLossError,
}


def error_for(code: int, name: str, message: str) -> Error:
    """The exception for a Status (called by the extension; codes as m2n::StatusCode)."""
    return _BY_CODE.get(code, Error)(name, message)

"""The closed set of protocol error codes and the one exception type that carries them.

Every failure a user can meet ends as an :class:`OffcutError` whose message is a sentence they
can act on. The same codes travel over the wire (docs/protocol.md), so the sidecar, the batch CLI
and the plug-in client all report problems the same way.
"""

from __future__ import annotations

BAD_REQUEST = "bad_request"
UNAUTHORIZED = "unauthorized"
UNSUPPORTED_VERSION = "unsupported_version"
TOO_LARGE = "too_large"
MODEL_MISSING = "model_missing"
MODEL_INVALID = "model_invalid"
BUSY = "busy"
CANCELLED = "cancelled"
INTERNAL = "internal"

ERROR_CODES: frozenset[str] = frozenset(
    {
        BAD_REQUEST,
        UNAUTHORIZED,
        UNSUPPORTED_VERSION,
        TOO_LARGE,
        MODEL_MISSING,
        MODEL_INVALID,
        BUSY,
        CANCELLED,
        INTERNAL,
    }
)


class OffcutError(Exception):
    """A failure with a protocol error code and a user-facing message."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            code = INTERNAL
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"OffcutError({self.code!r}, {self.message!r})"


def bad_request(message: str) -> OffcutError:
    return OffcutError(BAD_REQUEST, message)

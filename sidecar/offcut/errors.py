"""The one exception type that carries the protocol's closed set of error codes.

Every failure a user can meet ends as an :class:`OffcutError` whose message is a sentence they
can act on. The same codes travel over the wire (docs/protocol.md), so the sidecar, the batch CLI
and the plug-in client all report problems the same way.
"""

from __future__ import annotations

# The codes themselves are written once, in offcut.client.wire; name them from there.
from offcut.client.wire import BAD_REQUEST, ERROR_CODES, INTERNAL


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

"""The one exception type that carries the protocol's closed set of error codes.

Every failure a user can meet ends as an :class:`OffcutError` whose message is a sentence they
can act on. The same codes travel over the wire (docs/protocol.md), so the sidecar, the batch CLI
and the plug-in client all report problems the same way.

A sentence a plug-in user can meet has a key in :mod:`offcut.client.messages` and travels as that
key and its parameters next to the English message, so the plug-in shows it in the editor's
language; the English message is the template filled in, so it has one home. Sentences only the
command line shows may stay plain English messages without a key (docs/translations.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from offcut.client import messages, wire

# The codes themselves are written once, in offcut.client.wire; name them from there.
from offcut.client.wire import BAD_REQUEST, ERROR_CODES, INTERNAL


class OffcutError(Exception):
    """A failure with a protocol error code and a user-facing message.

    Either ``message`` (an English sentence only the CLI shows) or ``key`` and ``params`` (a
    sentence of :data:`offcut.client.messages.MESSAGES`, whose English is then the message).
    """

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        key: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        if code not in ERROR_CODES:
            code = INTERNAL
        params = dict(params or {})
        if message is None:
            if key is None:
                raise TypeError("OffcutError needs a message or a key")
            message = messages.english(key, params)
        super().__init__(message)
        self.code = code
        self.message = message
        self.key = key
        self.params = params

    def fields(self) -> dict[str, Any]:
        """The fields of the ``error`` reply that reports it (wire.py writes the header)."""
        return wire.error_fields(self.code, self.message, self.key, self.params)

    def __repr__(self) -> str:
        return f"OffcutError({self.code!r}, {self.message!r})"


def error(code: str, key: str, **params: Any) -> OffcutError:
    """The error ``key`` of :mod:`offcut.client.messages` with its parameters."""
    return OffcutError(code, key=key, params=params)


def bad_request(key: str, **params: Any) -> OffcutError:
    return error(BAD_REQUEST, key, **params)

"""The one exception type plug-ins catch, carrying the protocol's closed set of error codes.

The codes themselves are written in :mod:`.wire`, which ``offcut.errors`` reads too; the
package re-exports them for the plug-ins.
"""

from typing import Any, Dict, Mapping, Optional

from . import messages
from .wire import ERROR_CODES, INTERNAL


class OffcutClientError(Exception):
    """A failure a plug-in can show to the user as is.

    ``code`` is one of the protocol codes (an unknown code from the wire becomes ``internal``).
    ``connection`` is True when the sidecar could not be reached, could not be started, went
    silent or died: the plug-in may offer to retry; the next call re-discovers (and, with
    ``start=True``, restarts) the sidecar.

    ``key`` and ``params`` name the sentence in :mod:`.messages` (None for a sidecar that sent
    no key); :meth:`text` renders it in the user's language, ``message`` is the English one.
    """

    def __init__(
        self,
        code: str,
        message: str,
        connection: bool = False,
        key: Optional[str] = None,
        params: Optional[Dict[str, Any]] = None,
    ) -> None:
        if code not in ERROR_CODES:
            code = INTERNAL
        super().__init__(message)
        self.code = code
        self.message = message
        self.connection = connection
        self.key = key
        self.params = dict(params or {})

    def text(self) -> str:
        """The sentence to show the user: translated when a catalog has it, else English."""
        return messages.text(self.key, self.params, self.message)

    def __repr__(self) -> str:
        return "OffcutClientError(%r, %r)" % (self.code, self.message)


def error(code: str, key: str, connection: bool = False, **params: Any) -> OffcutClientError:
    """The client's own error ``key`` (:data:`.messages.MESSAGES`) with its parameters.

    The English ``message`` is the template filled in, so each sentence is written once and a
    plug-in can show it translated (:meth:`OffcutClientError.text`).
    """
    return OffcutClientError(
        code, messages.english(key, params), connection=connection, key=key, params=params
    )


def from_reply(head: Mapping[str, Any]) -> OffcutClientError:
    """The error an ``error`` reply header describes (docs/protocol.md, "Errors").

    ``key`` and ``params`` are read when well-formed (:func:`.messages.wire_params`); a sidecar
    that sends none, or sends them malformed, still gets its English ``message`` shown.
    """
    code = str(head.get("code") or INTERNAL)
    message = head.get("message")
    if not isinstance(message, str) or not message:
        return error(code, "sidecar_error")
    key, params = messages.wire_params(head.get("key"), head.get("params"))
    return OffcutClientError(code, message, key=key, params=params)


class ConnectionLost(Exception):
    """Internal: the transport lost (or never had) its connection. Mapped by the client."""

    def __init__(self, reason: str, refused: bool = False, peer_error: Optional[str] = None):
        super().__init__(reason)
        self.reason = reason
        self.refused = refused
        self.peer_error = peer_error


class CredentialsRefused(ConnectionLost):
    """Internal: the sidecar's ZeroMQ handshake refused our PLAIN credentials (the token).

    Either transport raises it; the client then re-reads the connection file, since the usual
    cause is a sidecar that restarted with a new token since the file was read.
    """


class SidecarFull(ConnectionLost):
    """Internal: the handshake was refused with ZAP status 500 (or 300): the sidecar did not
    admit another connection, typically because it holds as many as it allows. Starting another
    sidecar would not help. (libzmq sends no ERROR for 300: the peer just waits, then closes.)"""


def handshake_auth_failure(status: int) -> ConnectionLost:
    """The error for a ZAP status code in a handshake ERROR (``400`` is a wrong password)."""
    if status == 400:
        return CredentialsRefused(
            "the sidecar refused the credentials (authentication status 400)",
            False,
            str(status),
        )
    return SidecarFull(
        "the sidecar did not admit the connection (authentication status %d)" % status,
        False,
        str(status),
    )

"""The one exception type plug-ins catch, carrying the protocol's closed set of error codes.

Duplicated from ``offcut.errors`` on purpose: this package is copied into editor plug-ins as
``offcut_client`` and must not import anything from ``offcut`` outside ``client/``.
"""

from typing import Optional

BAD_REQUEST = "bad_request"
UNAUTHORIZED = "unauthorized"
UNSUPPORTED_VERSION = "unsupported_version"
TOO_LARGE = "too_large"
MODEL_MISSING = "model_missing"
MODEL_INVALID = "model_invalid"
BUSY = "busy"
CANCELLED = "cancelled"
INTERNAL = "internal"

ERROR_CODES = frozenset(
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


class OffcutClientError(Exception):
    """A failure a plug-in can show to the user as is.

    ``code`` is one of the protocol codes (an unknown code from the wire becomes ``internal``).
    ``connection`` is True when the sidecar could not be reached, could not be started, went
    silent or died: the plug-in may offer to retry; the next call re-discovers (and, with
    ``start=True``, restarts) the sidecar.
    """

    def __init__(self, code: str, message: str, connection: bool = False) -> None:
        if code not in ERROR_CODES:
            code = INTERNAL
        super().__init__(message)
        self.code = code
        self.message = message
        self.connection = connection

    def __repr__(self) -> str:
        return "OffcutClientError(%r, %r)" % (self.code, self.message)


class ConnectionLost(Exception):
    """Internal: the transport lost (or never had) its connection. Mapped by the client."""

    def __init__(self, reason: str, refused: bool = False, peer_error: Optional[str] = None):
        super().__init__(reason)
        self.reason = reason
        self.refused = refused
        self.peer_error = peer_error


class CredentialsRefused(ConnectionLost):
    """Internal: the sidecar refused the handshake's PLAIN credentials (the token is stale)."""

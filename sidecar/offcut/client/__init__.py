"""Offcut's plug-in client: finds or starts the sidecar and speaks its protocol.

Standard library only (pyzmq and msgpack are used when both import), Python 3.8+, relative
imports only: the installer copies this package into each editor plug-in as ``offcut_client``.
See docs/client.md.
"""

from .api import CLIENT_VERSION, FORMATS, MASK_FORMATS, PROTOCOL, Client, SegmentResult
from .errors import OffcutClientError
from .wire import (
    BAD_REQUEST,
    BUSY,
    CANCELLED,
    ERROR_CODES,
    INTERNAL,
    MODEL_INVALID,
    MODEL_MISSING,
    TOO_LARGE,
    UNAUTHORIZED,
    UNSUPPORTED_VERSION,
)

__version__ = CLIENT_VERSION

__all__ = [
    "BAD_REQUEST",
    "BUSY",
    "CANCELLED",
    "CLIENT_VERSION",
    "ERROR_CODES",
    "FORMATS",
    "INTERNAL",
    "MASK_FORMATS",
    "MODEL_INVALID",
    "MODEL_MISSING",
    "PROTOCOL",
    "TOO_LARGE",
    "UNAUTHORIZED",
    "UNSUPPORTED_VERSION",
    "Client",
    "OffcutClientError",
    "SegmentResult",
]

"""Offcut: private, local background removal for GIMP 3 and Krita 5."""

import os as _os

# Written once, in the client's wire module (which imports no onnxruntime; see below).
from offcut.client.wire import VERSION as __version__  # noqa: F401

# ONNX Runtime (1.2x+, all platforms) ships Microsoft 1DS telemetry: it writes a device id and an
# event queue under ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ and uploads it to
# mobile.events.data.microsoft.com. Offcut promises no network and no stray files, and only this
# variable, set before onnxruntime is first imported, stops both (the Python
# disable_telemetry_events() call alone does not; see docs/decisions.md). Every Offcut entry point
# imports this package first, so this line runs before any `import onnxruntime`.
_os.environ["ORT_DISABLE_TELEMETRY"] = "1"

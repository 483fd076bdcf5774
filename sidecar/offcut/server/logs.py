"""The sidecar's log: one JSON line per event on stderr, bounded in rate, line length and size.

stderr is usually ``sidecar.log`` in the runtime directory, which on most desktops is a small
RAM-backed tmpfs shared with the whole session. Whatever a client does, the log must stay small:
each kind of event may burst and then is rate-limited (the number suppressed is reported on the
next line of that kind), a line is cut to a fixed length, and a log file grown past its bound is
emptied and restarted rather than left to fill the disk. Lines never carry pixel data or paths.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import time
from typing import TextIO

MAX_LINE = 2048  # characters; a traceback is cut here too
MAX_FILE = 4 << 20  # bytes a log file may reach before it is emptied
BURST = 20  # lines of one event kind in a row before rate limiting starts
PER_SECOND = 2.0  # then this many per second, per kind


class Every:
    """True at most once per ``seconds`` (for summary lines)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True


class _Bucket:
    __slots__ = ("stamp", "suppressed", "tokens")

    def __init__(self) -> None:
        self.tokens = float(BURST)
        self.stamp = time.monotonic()
        self.suppressed = 0


class BoundedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that rate-limits per event kind, cuts long lines and caps the file."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream or sys.stderr)
        self.setFormatter(logging.Formatter("%(message)s"))
        self._buckets: dict[str, _Bucket] = {}

    def emit(self, record: logging.LogRecord) -> None:
        kind = _kind(record)
        bucket = self._buckets.get(kind)
        if bucket is None:
            if len(self._buckets) > 256:  # kinds are ours, but never let the table grow
                self._buckets.clear()
            bucket = self._buckets[kind] = _Bucket()
        now = time.monotonic()
        bucket.tokens = min(BURST, bucket.tokens + (now - bucket.stamp) * PER_SECOND)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            bucket.suppressed += 1
            return
        bucket.tokens -= 1.0
        if bucket.suppressed:
            record.msg = _with_suppressed(record.getMessage(), bucket.suppressed)
            record.args = None
            bucket.suppressed = 0
        self._cap_file()
        super().emit(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if len(text) > MAX_LINE:
            text = text[: MAX_LINE - 14] + " …[truncated]"
        return text

    def _cap_file(self) -> None:
        """Empty the log file once it is past ``MAX_FILE`` (a pipe or terminal is left alone)."""
        try:
            fd = self.stream.fileno()
            st = os.fstat(fd)
        except (AttributeError, OSError, ValueError):
            return
        if not stat.S_ISREG(st.st_mode) or st.st_size < MAX_FILE:
            return
        try:
            self.stream.flush()
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)  # without O_APPEND the next write would leave a hole
        except OSError:
            return
        self.stream.write(json.dumps({"event": "log_truncated", "bytes": st.st_size}) + "\n")


def _kind(record: logging.LogRecord) -> str:
    msg = record.msg
    if isinstance(msg, str) and msg.startswith('{"event": '):
        end = msg.find('"', 11)
        if end > 11:
            return msg[11:end]
    return f"{record.name}:{record.levelno}"


def _with_suppressed(message: str, count: int) -> str:
    try:
        data = json.loads(message)
    except ValueError:
        return f"{message} (and {count} more like it suppressed)"
    if isinstance(data, dict):
        data["suppressed"] = count
        return json.dumps(data)
    return message


def setup() -> None:
    """Send the ``offcut`` loggers to stderr through one :class:`BoundedHandler`."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(BoundedHandler())
    root.setLevel(logging.INFO)

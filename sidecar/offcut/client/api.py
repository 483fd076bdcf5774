"""The plug-ins' view of the sidecar: one :class:`Client`, a few calls, one exception type.

The client hides discovery (connection file, starting ``offcut serve``), the wire protocol
(docs/protocol.md) and its failure modes: a dead or restarted sidecar is found again and the call
retried once when that is safe; everything else ends as an :class:`OffcutClientError`.
"""

import contextlib
import itertools
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import discovery, errors, wire
from .codec import CodecError
from .errors import ConnectionLost, CredentialsRefused, OffcutClientError, SidecarFull, error
from .transport import make_transport
from .wire import (
    BAD_REQUEST,
    BUSY,
    CANCELLED,
    DEFAULT_MAX_FRAME,
    INTERNAL,
    PLAIN_USERNAME,
    TOO_LARGE,
    UNAUTHORIZED,
    UNSUPPORTED_VERSION,
)

CLIENT_VERSION = wire.VERSION
PROTOCOL = wire.PROTOCOL
#: Bytes per pixel of the formats the protocol defines, to catch a wrong buffer before sending.
FORMATS = wire.FORMATS
MASK_FORMATS = wire.MASK_FORMATS
CUTOUT_FORMATS = wire.CUTOUT_FORMATS

ProgressCallback = Callable[[str, float], None]
Roi = Union[Tuple[int, int, int, int], Dict[str, int]]

_ids = itertools.count(1)


class SegmentResult:
    """What ``segment`` returns.

    ``mask`` is a bytes-like object (``bytes`` or ``bytearray``) of ``mask_info['width'] ×
    mask_info['height']`` samples in ``mask_info['format']``, placed at ``mask_info['x'/'y']``.
    ``cutout``/``cutout_info`` are the same for the RGBA cutout, or None when not asked for.
    ``meta`` holds the rest of the reply: ``model``, ``sha256``, ``provider``, ``timings``.
    """

    __slots__ = ("cutout", "cutout_info", "mask", "mask_info", "meta")

    def __init__(
        self,
        mask: Any,
        mask_info: Dict[str, Any],
        cutout: Any,
        cutout_info: Optional[Dict[str, Any]],
        meta: Dict[str, Any],
    ) -> None:
        self.mask = mask
        self.mask_info = mask_info
        self.cutout = cutout
        self.cutout_info = cutout_info
        self.meta = meta

    def __repr__(self) -> str:
        return "SegmentResult(mask_info=%r, cutout_info=%r, meta=%r)" % (
            self.mask_info,
            self.cutout_info,
            self.meta,
        )


class _Silent(Exception):
    """The sidecar sent nothing for longer than allowed."""


class Client:
    """A connection to the user's sidecar; starts it on first use when ``start`` is true.

    Calls are serialised (one request in flight per client); use one client per thread for
    parallel work. :meth:`cancel` is the one method meant to be called from another thread.

    Time-outs, in seconds: ``connect_timeout`` for connecting plus the ``hello`` that proves a
    sidecar alive; ``start_timeout`` for a newly started sidecar to print its readiness line;
    ``request_timeout`` for the short ops; ``progress_timeout`` for ``segment``, which has no
    overall limit unless given one but fails after this long without any message.
    """

    def __init__(
        self,
        app: str = "offcut",
        start: bool = True,
        connect_timeout: float = 5.0,
        start_timeout: float = 60.0,
        request_timeout: float = 60.0,
        progress_timeout: float = 120.0,
        transport: Optional[str] = None,
        runtime_dir: Optional[Union[str, Path]] = None,
        command: Optional[Sequence[str]] = None,
    ) -> None:
        self.app = app
        self.start = start
        self.connect_timeout = connect_timeout
        self.start_timeout = start_timeout
        self.request_timeout = request_timeout
        self.progress_timeout = progress_timeout
        self._runtime_dir = Path(runtime_dir) if runtime_dir is not None else None
        self._command = list(command) if command is not None else None
        self._transport, (self._pack, self._unpack) = make_transport(transport)
        self._info = None  # type: Optional[discovery.ConnectionInfo]
        self.server_info = {}  # type: Dict[str, Any]
        self.spawned = None  # type: Optional[discovery.Spawned]
        self._lock = threading.RLock()
        self._state = threading.Lock()
        self._active = False
        self._inflight = None  # type: Optional[str]
        self._cancel_wanted = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._closed = False

    # -- public API -----------------------------------------------------------------------

    @property
    def transport_name(self) -> str:
        """``"pyzmq"`` or ``"builtin"``: which transport this client uses."""
        return self._transport.name

    @property
    def sidecar_pid(self) -> Optional[int]:
        """The pid of the sidecar this client is connected to, if connected."""
        return self._info.pid if self._info is not None else None

    def hello(self) -> Dict[str, Any]:
        """Versions, models, providers, formats and limits of the sidecar."""
        header, _ = self._call("hello", {"client": self._client_name()})
        self._check_protocol(header)
        self.server_info = header
        return header

    def models(self) -> List[Dict[str, Any]]:
        """The catalog with install state (``name``, ``installed``, ``state``, ...)."""
        header, _ = self._call("models", {})
        return list(header.get("models") or [])

    def status(self) -> Dict[str, Any]:
        """Queue, loaded models and memory of the sidecar."""
        header, _ = self._call("status", {})
        return header

    def shutdown(self) -> bool:
        """Ask the running sidecar to exit; False when none was running. Never starts one."""
        if self._closed:
            raise error(INTERNAL, "client_closed")
        with self._lock:
            start, self.start = self.start, False
            try:
                self._ensure_connected()
            except OffcutClientError as exc:
                if exc.connection and exc.code != UNAUTHORIZED:
                    return False
                raise
            finally:
                self.start = start
            try:
                self._exchange("shutdown", {}, (), None, None, None, [])
            except (ConnectionLost, _Silent):
                pass  # it went away before its reply got out: that is what was asked
            finally:
                self._drop()
            return True

    def segment(
        self,
        pixels: Any,
        width: int,
        height: int,
        fmt: str,
        colorspace: str = "srgb",
        model: Optional[str] = None,
        roi: Optional[Roi] = None,
        refine: bool = False,
        decontaminate: bool = False,
        mask_format: str = "GRAY8",
        cutout: bool = False,
        threshold: Optional[float] = None,
        on_progress: Optional[ProgressCallback] = None,
        timeout: Optional[float] = None,
    ) -> SegmentResult:
        """Segment one image: ``pixels`` is any C-contiguous buffer, tightly packed, row-major.

        The buffer is sent without a copy and must not change until this returns.
        ``on_progress(stage, fraction)`` runs in this thread for every progress message; if it
        raises, the request is cancelled and the exception propagates. ``timeout`` (seconds)
        bounds the whole call; without it only ``progress_timeout`` of silence ends it.
        """
        try:
            view = memoryview(pixels).cast("B")
        except (TypeError, ValueError) as exc:
            raise error(BAD_REQUEST, "bad_pixels", error=str(exc)) from exc
        bpp = FORMATS.get(fmt)
        if bpp is not None and view.nbytes != width * height * bpp:
            raise error(
                BAD_REQUEST,
                "pixels_size",
                size=view.nbytes,
                width=width,
                height=height,
                format=fmt,
                expected=width * height * bpp,
            )
        options = {
            "refine": bool(refine),
            "decontaminate": bool(decontaminate),
            "mask_format": mask_format,
            "cutout": bool(cutout),
        }  # type: Dict[str, Any]
        if threshold is not None:
            options["threshold"] = float(threshold)
        args = {
            "image": {"width": width, "height": height, "format": fmt, "colorspace": colorspace},
            "options": options,
        }  # type: Dict[str, Any]
        if model is not None:
            args["model"] = model
        if roi is not None:
            if isinstance(roi, dict):
                args["roi"] = {k: int(roi[k]) for k in ("x", "y", "w", "h")}
            else:
                x, y, w, h = roi
                args["roi"] = {"x": int(x), "y": int(y), "w": int(w), "h": int(h)}
        header, frames = self._call(
            "segment",
            args,
            frames=[view],
            on_progress=on_progress,
            silence=self.progress_timeout,
            overall=timeout,
        )
        return self._segment_result(header, frames, cutout)

    def cancel(self) -> bool:
        """Cancel the call in progress (from any thread); False when nothing was running.

        The call then raises ``OffcutClientError`` with code ``cancelled``.
        """
        with self._state:
            if not self._active:
                return False
            self._cancel_wanted = True
        with contextlib.suppress(OSError):  # full: a wake-up is already pending
            self._wake_w.send(b"c")
        return True

    def close(self) -> None:
        """Drop the connection (the sidecar keeps running for other editors)."""
        with self._lock:
            self._drop()
            if not self._closed:
                self._closed = True
                self._wake_r.close()
                self._wake_w.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- calls, retries -------------------------------------------------------------------

    def _client_name(self) -> str:
        return "offcut-%s/%s" % (self.app, CLIENT_VERSION)

    def _call(
        self,
        op: str,
        args: Dict[str, Any],
        frames: Sequence[Any] = (),
        on_progress: Optional[ProgressCallback] = None,
        silence: Optional[float] = None,
        overall: Optional[float] = None,
        retry: bool = True,
    ) -> Tuple[Dict[str, Any], List[Any]]:
        """One request with the one transparent retry the design allows.

        Retried once after re-discovery: a connection that turns out dead before the sidecar
        acknowledged anything, and ``unauthorized`` when the connection file now holds another
        sidecar. Not retried: a request the sidecar had started on (it may be what killed it).
        """
        if self._closed:
            raise error(INTERNAL, "client_closed")
        with self._lock:
            with self._state:
                self._active = True
                self._cancel_wanted = False
            try:
                for attempt in (0, 1):
                    last = attempt == 1 or not retry
                    self._ensure_connected()
                    used = self._info
                    assert used is not None
                    progressed = []  # type: List[bool]
                    try:
                        return self._exchange(
                            op, args, frames, on_progress, silence, overall, progressed
                        )
                    except ConnectionLost as exc:
                        self._drop()
                        if not last and not progressed:
                            continue
                        raise self._lost_error(op, exc, bool(progressed)) from exc
                    except _Silent as exc:
                        raise error(
                            INTERNAL,
                            "sidecar_silent",
                            connection=True,
                            pid=self._pid_text(),
                            seconds="%.0f" % exc.args[0],
                            op=op,
                        ) from exc
                    except OffcutClientError as exc:
                        if exc.code == UNAUTHORIZED and not last and self._restarted(used):
                            self._drop()
                            continue
                        raise
                raise AssertionError("unreachable")
            finally:
                with self._state:
                    self._active = False
                    self._cancel_wanted = False

    def _restarted(self, used: discovery.ConnectionInfo) -> bool:
        try:
            fresh = discovery.read_connection_file(self._conn_path())
        except OffcutClientError:
            return False
        return fresh is not None and not fresh.same_as(used)

    def _pid_text(self) -> str:
        return " (pid %d)" % self._last_pid if self._last_pid else ""

    def _lost_error(self, op: str, exc: ConnectionLost, progressed: bool) -> OffcutClientError:
        # ``reason`` is the transport's own English detail (or the system's error text).
        pid = self._pid_text()
        if progressed:
            return error(INTERNAL, "sidecar_stopped", connection=True, pid=pid, reason=exc.reason)
        return error(
            INTERNAL, "connection_lost", connection=True, pid=pid, op=op, reason=exc.reason
        )

    _last_pid = 0

    # -- discovery ------------------------------------------------------------------------

    def _conn_path(self) -> Path:
        return (self._runtime_dir or discovery.runtime_dir()) / wire.CONNECTION_FILE

    def _ensure_connected(self) -> None:
        if self._info is not None and self._transport.connected:
            return
        self._drop()
        refused = None  # type: Optional[discovery.ConnectionInfo]
        for _attempt in (0, 1):
            info = discovery.read_connection_file(self._conn_path())
            if info is None or not discovery.sidecar_alive(info, self._conn_path()):
                break
            if info.same_as(refused):
                raise self._refused_error(info)
            try:
                self._open(info)
                return
            except CredentialsRefused:
                # Read the file again: a sidecar that restarted since has a new token. Starting
                # one would not help: the running sidecar holds the lock and stays.
                self._drop()
                refused = info
            except SidecarFull as exc:
                self._drop()
                raise self._full_error(info) from exc
            except ConnectionLost:
                self._drop()
                break
        else:
            assert refused is not None
            raise self._refused_error(refused)
        if not self.start:
            raise error(INTERNAL, "not_running", connection=True)
        self._start_sidecar()

    def _start_sidecar(self) -> None:
        # A command given here or in $OFFCUT_SIDECAR_COMMAND runs in the caller's environment;
        # the recorded one in a clean one (discovery.spawn_plan).
        given = self._command is not None or discovery.user_command() is not None
        if self._command is not None:
            cmd, env = list(self._command), {}  # type: List[str], Dict[str, str]
        else:
            cmd, env = discovery.sidecar_command()
        if self._runtime_dir is not None:
            env[wire.ENV_RUNTIME_DIR] = str(self._runtime_dir)
        rundir = self._runtime_dir or discovery.runtime_dir()
        spawned = discovery.spawn_sidecar(cmd, env, rundir, clean=not given)
        self.spawned = spawned
        readiness = spawned.wait_ready(self.start_timeout, self._cancel_requested)
        # With "already_running" the line is the running sidecar's; either way the connection
        # file is the truth, and it is written before the line is printed.
        deadline = time.monotonic() + self.connect_timeout
        info = None
        while True:
            info = discovery.read_connection_file(self._conn_path())
            if info is not None and info.pid == readiness.get("pid", info.pid):
                break
            if time.monotonic() >= deadline:
                raise error(
                    INTERNAL,
                    "ready_file_missing" if info is None else "ready_file_other",
                    connection=True,
                    path=str(self._conn_path()),
                )
            time.sleep(0.05)
        try:
            self._open(info)
        except CredentialsRefused as exc:
            self._drop()
            raise self._refused_error(info) from exc
        except SidecarFull as exc:
            self._drop()
            raise self._full_error(info) from exc
        except ConnectionLost as exc:
            self._drop()
            said = spawned.last_output()
            if said:
                raise error(
                    INTERNAL,
                    "no_answer_output",
                    connection=True,
                    pid=info.pid,
                    reason=exc.reason,
                    output=said,
                ) from exc
            raise error(
                INTERNAL, "no_answer", connection=True, pid=info.pid, reason=exc.reason
            ) from exc

    def _refused_error(self, info: discovery.ConnectionInfo) -> OffcutClientError:
        return error(
            UNAUTHORIZED, "credentials_refused", connection=True, pid=info.pid, path=str(info.path)
        )

    def _full_error(self, info: discovery.ConnectionInfo) -> OffcutClientError:
        return error(BUSY, "sidecar_full", connection=True, pid=info.pid)

    def _open(self, info: discovery.ConnectionInfo) -> None:
        """Connect and prove the sidecar alive with ``hello`` (a silent one counts as dead).

        Frames from the sidecar are bounded by the protocol's default limit until ``hello``
        states the sidecar's own ``limits.max_message_bytes``, then by that.
        """
        self._transport.max_frame_bytes = DEFAULT_MAX_FRAME
        self._transport.connect(
            info.ip, info.port, self.connect_timeout, PLAIN_USERNAME, info.token.encode("ascii")
        )
        self._info = info
        self._last_pid = info.pid
        try:
            header, _ = self._exchange(
                "hello",
                {"client": self._client_name()},
                (),
                None,
                self.connect_timeout,
                None,
                [],
            )
        except _Silent as exc:
            raise ConnectionLost("no answer to hello within %.1f s" % self.connect_timeout) from exc
        self._check_protocol(header)
        self.server_info = header
        limits = header.get("limits")
        limit = limits.get("max_message_bytes") if isinstance(limits, dict) else None
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            self._transport.set_max_frame_bytes(limit)

    def _check_protocol(self, header: Dict[str, Any]) -> None:
        proto = header.get("protocol")
        if proto != PROTOCOL:
            self._drop()
            raise error(
                UNSUPPORTED_VERSION, "protocol_mismatch", protocol=repr(proto), ours=PROTOCOL
            )

    def _drop(self) -> None:
        self._info = None
        with contextlib.suppress(Exception):
            self._transport.close()

    # -- one exchange ---------------------------------------------------------------------

    def _cancel_requested(self) -> bool:
        with self._state:
            return self._cancel_wanted

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass

    def _check_size(self, frames: Sequence[Any]) -> None:
        limit = (self.server_info.get("limits") or {}).get("max_message_bytes")
        if not isinstance(limit, int) or limit <= 0:
            return
        for frame in frames:
            size = memoryview(frame).nbytes
            if size > limit:
                raise error(TOO_LARGE, "too_large_for_sidecar", size=size, limit=limit)

    def _exchange(
        self,
        op: str,
        args: Dict[str, Any],
        frames: Sequence[Any],
        on_progress: Optional[ProgressCallback],
        silence: Optional[float],
        overall: Optional[float],
        progressed: List[bool],
    ) -> Tuple[Dict[str, Any], List[Any]]:
        info = self._info
        assert info is not None
        if op != "hello" and self._cancel_requested():
            raise error(CANCELLED, "cancelled")
        rid = "%s-%d-%d" % (self.app[:40], os.getpid(), next(_ids))
        header = wire.request(op, rid, info.token, args)
        self._check_size(frames)
        self._drain_wakeups()
        self._transport.send([self._pack(header), *list(frames)])
        silence = self.request_timeout if silence is None else silence
        now = time.monotonic()
        last_heard = now
        deadline = now + overall if overall is not None else None
        cancel_sent = False
        stage = ""
        probe_id = rid + "-probe"
        probe_until = None  # type: Optional[float]
        while True:
            now = time.monotonic()
            limit = last_heard + silence if probe_until is None else probe_until
            wait = max(0.0, limit - now)
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            readable = self._transport.wait(wait, self._wake_r)
            self._drain_wakeups()
            if not cancel_sent and op != "hello" and self._cancel_requested():
                self._send_cancel(info, rid)
                cancel_sent = True
            if not readable:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self._send_cancel(info, rid)
                    raise error(INTERNAL, "call_timeout", op=op, seconds="%.0f" % (overall or 0))
                if now >= limit:
                    if op == "segment" and stage == "queued" and probe_until is None:
                        # Waiting behind other images says nothing for as long as they take:
                        # ask whether the sidecar is alive instead of giving up on it.
                        self._send_probe(info, probe_id)
                        probe_until = now + min(silence, self.request_timeout)
                        continue
                    self._drop()
                    raise _Silent(silence)
                continue
            reply = self._transport.recv()
            if reply is None:
                continue  # only transport chatter (a heartbeat)
            last_heard = time.monotonic()
            head = self._decode(reply[0] if reply else b"")
            rid_got = head.get("id")
            kind = head.get("kind")
            if rid_got == probe_id:
                probe_until = None  # alive: wait on
                continue
            if rid_got != rid and not (rid_got is None and kind == "error"):
                continue  # a reply to our cancel, or to a request we gave up on
            probe_until = None
            if kind == "progress":
                progressed.append(True)
                stage = str(head.get("stage", ""))
                if on_progress is not None:
                    try:
                        on_progress(stage, float(head.get("progress") or 0))
                    except BaseException:
                        if not cancel_sent:
                            self._send_cancel(info, rid)
                        raise
                continue
            if kind == "error":
                raise errors.from_reply(head)
            if kind == "result":
                if cancel_sent:
                    raise error(CANCELLED, "cancelled")
                for key in ("v", "id", "kind"):
                    head.pop(key, None)
                return head, reply[1:]
            self._drop()
            raise error(INTERNAL, "unknown_reply", kind=repr(kind))

    def _send_probe(self, info: discovery.ConnectionInfo, probe_id: str) -> None:
        header = wire.request("status", probe_id, info.token)
        with contextlib.suppress(ConnectionLost):  # the wait that follows reports it
            self._transport.send([self._pack(header)])

    def _send_cancel(self, info: discovery.ConnectionInfo, target: str) -> None:
        header = wire.request("cancel", "%s-cancel" % target, info.token, {"target": target})
        with contextlib.suppress(ConnectionLost):  # the wait that follows reports it
            self._transport.send([self._pack(header)])

    def _decode(self, data: Any) -> Dict[str, Any]:
        try:
            head = self._unpack(data)
        except (CodecError, ValueError, TypeError) as exc:
            self._drop()
            raise error(INTERNAL, "malformed_header") from exc
        except Exception as exc:  # msgpack's own exception types vary between versions
            self._drop()
            raise error(INTERNAL, "malformed_header") from exc
        if not isinstance(head, dict):
            self._drop()
            raise error(INTERNAL, "header_not_a_map")
        return head

    def _segment_result(
        self, header: Dict[str, Any], frames: List[Any], want_cutout: bool
    ) -> SegmentResult:
        mask_info = header.pop("mask", None)
        cutout_info = header.pop("cutout", None)
        if not isinstance(mask_info, dict) or not frames:
            raise error(INTERNAL, "no_mask")
        _check_frame("mask", frames[0], mask_info, MASK_FORMATS)
        cutout = None
        if want_cutout:
            if not isinstance(cutout_info, dict) or len(frames) < 2:
                raise error(INTERNAL, "no_cutout")
            cutout = frames[1]
            _check_frame("cutout", cutout, cutout_info, CUTOUT_FORMATS)
        return SegmentResult(frames[0], mask_info, cutout, cutout_info, header)


def _check_frame(what: str, frame: Any, info: Dict[str, Any], formats: Dict[str, int]) -> None:
    bpp = formats.get(str(info.get("format")))
    try:
        want = int(info["width"]) * int(info["height"]) * bpp if bpp else None
    except (KeyError, TypeError, ValueError):
        want = -1
    if want is not None and len(frame) != want:
        raise error(
            INTERNAL,
            "mask_size" if what == "mask" else "cutout_size",
            size=len(frame),
            expected=want,
        )

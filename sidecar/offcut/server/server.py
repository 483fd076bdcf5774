"""``offcut serve``: the ZeroMQ ROUTER loop on 127.0.0.1, one inference worker, a bounded queue.

Threads: the main thread owns the ROUTER socket and does everything cheap (parsing, validation,
hello/models/status, cancel); one worker thread runs segment jobs one at a time, because ONNX
Runtime already uses every core for one inference and two at once only fight over them. The worker
never touches the ROUTER (ZeroMQ sockets are not thread-safe): it hands finished frames to the
main thread over an inproc PUSH/PULL pair, zero-copy.

Who may talk to it is settled before any message arrives: the ROUTER is a ZMTP PLAIN server whose
ZAP handler (:mod:`offcut.server.auth`) admits only the connection file's token. Whom a reply goes
to is settled by :mod:`offcut.server.peers`: a job belongs to the TCP connection that sent it, is
cancelled when that connection ends, and its replies are dropped rather than sent to whoever holds
the routing id by then (docs/security.md).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import itertools
import json
import logging
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq

from offcut import errors
from offcut.client import wire
from offcut.engine import formats
from offcut.engine.engine import CancelToken, Engine, SegmentRequest
from offcut.errors import OffcutError
from offcut.models.catalog import Catalog
from offcut.models.store import ModelStore
from offcut.server import audit, auth, logs, peers, protocol
from offcut.server import instance as connection

log = logging.getLogger("offcut.sidecar")

LOOPBACK = "127.0.0.1"
_EVENTS = "inproc://offcut-events"
# A job that has said nothing for this long (waiting in the queue, or inside one long model run)
# repeats its last progress message, so a client can tell "busy" from "gone" by silence alone.
KEEPALIVE_SECONDS = float(os.environ.get("OFFCUT_KEEPALIVE_SECONDS", "5"))
# A loopback handshake takes milliseconds; an unauthenticated peer is dropped after this long.
HANDSHAKE_MS = 5000
MAX_PEERS = 64  # authenticated connections at once (each editor holds one)
MAX_PENDING = 256  # connections still in the handshake; the oldest beyond this are shut down
_SERIAL = struct.Struct("<Q")


def check_bind_host(host: str) -> None:
    """Privacy invariant 1: only the IPv4 loopback address may ever be bound."""
    if host != LOOPBACK:
        raise SystemExit(
            f"offcut serve: refusing to listen on {host!r}. The sidecar only ever binds "
            f"{LOOPBACK}, so no other machine can reach it; drop --host or pass --host {LOOPBACK}."
        )


def waiting(sock: zmq.Socket, copy: bool = True) -> Iterator[list[Any]]:
    """Each message ``sock`` holds now, without blocking: the main loop drains its sockets."""
    while True:
        try:
            yield sock.recv_multipart(zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            return


def generated_routing_id(identity: bytes) -> bool:
    """libzmq's own ids are 5 bytes, a zero then a counter; a peer-chosen id is anything else.

    A peer could still pick one of that shape, but only after authenticating (with the token),
    and :mod:`offcut.server.peers` ties every reply to the connection, not to the id.
    """
    return len(identity) == 5 and identity[0] == 0


@dataclass(eq=False)
class Job:
    identity: bytes
    rid: str
    request: SegmentRequest
    frames: list[zmq.Frame]  # keeps the pixel buffer alive while the job waits
    conn: peers.Connection
    serial: int = 0
    size: int = 0  # pixel bytes it holds, counted against its connection
    cancel: CancelToken = field(default_factory=CancelToken)
    stage: str = "queued"  # last progress sent (written by the worker, read for keepalives)
    fraction: float = 0.0
    last_sent: float = field(default_factory=time.monotonic)
    done: bool = False  # set before the final reply is pushed: no keepalive may follow it


class Server:
    def __init__(
        self,
        catalog: Catalog,
        store: ModelStore,
        port: int = 0,
        idle_timeout: float = 600.0,
        limits: protocol.Limits | None = None,
        threads: int | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.limits = limits or protocol.Limits()
        self.idle_timeout = idle_timeout
        self.engine = Engine(catalog, store, threads=threads)
        self.token = connection.new_token()
        self.started = time.time()
        self.requests = 0
        # Resolved now, before audit mode may forbid looking up a native function (Windows).
        self._memory = memory_reader()
        self._port = port
        self._queue: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._running: Job | None = None
        self._stop = threading.Event()
        self._last_activity = time.monotonic()
        # A context of its own: the ZAP endpoint is one fixed inproc name per context.
        self._ctx = zmq.Context()
        self.peers = peers.Peers(MAX_PEERS, MAX_PENDING)
        self._serials = itertools.count(1)
        self._live: dict[int, Job] = {}  # by serial: every job whose final reply is not out yet
        self._auth_log = logs.Every(seconds=10.0)

    # ----------------------------------------------------------------- lifecycle
    def bind(self) -> int:
        # The ZAP handler must exist before the first connection, or libzmq lets it in unchecked.
        self.zap = auth.ZapHandler(self._ctx, self.token, self.peers.admit)
        self.router = self._ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.PLAIN_SERVER, 1)
        self.router.setsockopt(zmq.ZAP_DOMAIN, auth.DOMAIN)
        self.router.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        # Sending to an id with no connection fails instead of vanishing: that is how a job
        # learns its client left, even before the monitor says so.
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        self.monitor = self.router.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self.router.setsockopt(zmq.RCVHWM, 64)
        self.router.setsockopt(zmq.SNDHWM, 1000)
        if self._port:
            self.router.bind(f"tcp://{LOOPBACK}:{self._port}")
            self.port = self._port
        else:
            self.port = self.router.bind_to_random_port(f"tcp://{LOOPBACK}")
        self.events = self._ctx.socket(zmq.PULL)
        self.events.setsockopt(zmq.LINGER, 0)
        self.events.bind(_EVENTS)
        return self.port

    def connection_info(self) -> dict[str, Any]:
        return wire.connection_record(LOOPBACK, self.port, self.token, os.getpid(), self.started)

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def serve_forever(self) -> None:
        worker = threading.Thread(target=self._worker, name="offcut-worker", daemon=True)
        worker.start()
        poller = zmq.Poller()
        for sock in (self.monitor, self.zap.socket, self.events, self.router):
            poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                # Handshaking peers are checked often: that is when one can make us buffer.
                ready = dict(poller.poll(50 if self.peers.pending_count else 200))
                if self.monitor in ready:
                    self._monitor_events()
                if self.zap.socket in ready:
                    self._authenticate()
                if self.events in ready:
                    self._forward_events()
                if self.router in ready:
                    self._receive()
                if self.peers.pending_count:
                    self.peers.police()
                self._keepalive()
                if self._idle_expired():
                    log.info(json.dumps({"event": "idle_timeout", "seconds": self.idle_timeout}))
                    break
        finally:
            self._stop.set()  # the worker waits on this; without it idle exit took 10 s
            self._shutdown_jobs()
            with self._cv:
                self._cv.notify_all()
            worker.join(timeout=10)
            self._forward_events()
            # Linger briefly so the reply to `shutdown` (and last results) still reach clients.
            self.router.close(linger=1000)
            self.events.close(0)
            self.monitor.close(0)
            self.zap.close()
            self._ctx.term()

    # ----------------------------------------------------------------- connections
    def _monitor_events(self) -> None:
        from zmq.utils.monitor import parse_monitor_message

        for frames in waiting(self.monitor):
            msg = parse_monitor_message(frames)
            if msg["event"] == zmq.EVENT_ACCEPTED:
                gone = self.peers.accepted(int(msg["value"]))
            elif msg["event"] == zmq.EVENT_DISCONNECTED:
                gone = self.peers.disconnected(int(msg["value"]))
            else:
                continue
            if gone is not None:
                self._abandon(gone)

    def _authenticate(self) -> None:
        if self.zap.handle() and self._auth_log.due():
            # Counts only: nothing a peer sent is written down, so refusals cannot fill the log.
            log.info(json.dumps({"event": "auth_refused", "total": self.zap.denied}))

    def _abandon(self, conn: peers.Connection) -> None:
        """The client on ``conn`` is gone: drop its queued jobs, cancel its running one."""
        with self._cv:
            dropped = [j for j in self._queue if j.conn is conn]
            for job in dropped:
                self._queue.remove(job)
                job.cancel.cancel()
                self._release(job)
            running = self._running if self._running and self._running.conn is conn else None
            if running is not None:
                running.cancel.cancel()
        if dropped or running is not None:
            jobs = len(dropped) + (running is not None)
            log.info(json.dumps({"event": "client_gone", "jobs": jobs}))

    def _release(self, job: Job) -> None:
        """Forget a finished or dropped job (call with ``_cv`` held)."""
        if self._live.pop(job.serial, None) is not None:
            job.conn.bytes_in_flight -= job.size

    def _keepalive(self) -> None:
        now = time.monotonic()
        with self._cv:
            jobs = self._jobs()
        for job in jobs:
            if job.conn.open and not job.done and now - job.last_sent >= KEEPALIVE_SECONDS:
                job.last_sent = now
                self._reply(
                    job.identity,
                    job.rid,
                    "progress",
                    {"stage": job.stage, "progress": job.fraction},
                )

    def _idle_expired(self) -> bool:
        if self.idle_timeout <= 0:
            return False
        with self._cv:
            busy = self._running is not None or bool(self._queue)
        return not busy and time.monotonic() - self._last_activity > self.idle_timeout

    # ----------------------------------------------------------------- receiving
    def _receive(self) -> None:
        for frames in waiting(self.router, copy=False):
            self.requests += 1
            identity = frames[0].bytes
            conn = self._connection_of(identity, frames[-1])
            if conn is None:
                continue
            rid: str | None = None
            try:
                if len(frames) < 2:
                    raise errors.bad_request("no_header")
                header = protocol.decode_header(frames[1].buffer)
                rid = protocol.request_id(header)
                op = protocol.authorize(header, self.token)
                # Only an authorised request keeps the sidecar from its idle exit.
                self._last_activity = time.monotonic()
                self._dispatch(op, conn, identity, rid or "", header, frames)
            except OffcutError as exc:
                self._reply_error(identity, rid, exc)
            except Exception:  # a bug: answer, log without pixel data, keep serving
                log.exception(json.dumps({"event": "internal_error", "id": rid}))
                self._reply_error(
                    identity,
                    rid,
                    errors.error(wire.INTERNAL, "internal_error"),
                )

    def _connection_of(self, identity: bytes, frame: zmq.Frame) -> peers.Connection | None:
        """The connection a message came from, or None when the message must be ignored."""
        if not generated_routing_id(identity):
            # A peer-chosen routing id: refused outright (ours never set one), so no client can
            # aim at an id the sidecar will hand out or has handed out.
            self._reply_error(
                identity,
                None,
                errors.bad_request("routing_id"),
            )
            return None
        if self.peers.current(identity) is None:
            self._monitor_events()  # its ACCEPTED is queued already: read it first
        try:
            fd = int(frame.get(zmq.SRCFD))
            user_id = str(frame.get("User-Id"))
        except (zmq.ZMQError, ValueError, TypeError):
            return None  # no connection properties: not from an authenticated peer
        conn, ended = self.peers.owner(identity, fd, user_id)
        for old in ended:
            self._abandon(old)
        return conn

    def _dispatch(
        self,
        op: str,
        conn: peers.Connection,
        identity: bytes,
        rid: str,
        header: dict[str, Any],
        frames: list[zmq.Frame],
    ) -> None:
        if op == "segment":
            self._enqueue(conn, identity, rid, header, frames)
        elif op == "cancel":
            target = header.get("target")
            if not isinstance(target, str):
                raise errors.bad_request("bad_cancel")
            self._reply(identity, rid, "result", {"found": self._cancel(conn, identity, target)})
        elif op == "hello":
            self._reply(identity, rid, "result", self._hello())
        elif op == "models":
            self._reply(
                identity, rid, "result", {"models": self._models(), "aliases": self._aliases()}
            )
        elif op == "status":
            self._reply(identity, rid, "result", self._status())
        elif op == "shutdown":
            self._reply(identity, rid, "result", {})
            log.info(json.dumps({"event": "shutdown_requested"}))
            self._stop.set()

    def _enqueue(
        self,
        conn: peers.Connection,
        identity: bytes,
        rid: str,
        header: dict[str, Any],
        frames: list[zmq.Frame],
    ) -> None:
        req = protocol.parse_segment(header, [f.buffer for f in frames[2:]], self.limits)
        size = sum(len(f.buffer) for f in frames[2:])
        with self._cv:
            if any(j.conn is conn and j.rid == rid for j in self._jobs()):
                raise errors.bad_request("duplicate_id", id=repr(rid))
            if len(self._queue) >= self.limits.queue_depth:
                raise errors.error(wire.BUSY, "queue_full", count=self.limits.queue_depth)
            if conn.bytes_in_flight + size > self.limits.max_message_bytes:
                raise errors.error(wire.BUSY, "connection_full")
            job = Job(identity, rid, req, frames, conn, serial=next(self._serials), size=size)
            conn.bytes_in_flight += size
            self._live[job.serial] = job
            self._queue.append(job)
            self._cv.notify()
        self._reply(identity, rid, "progress", {"stage": "queued", "progress": 0.0})

    def _jobs(self) -> list[Job]:
        return list(self._queue) + ([self._running] if self._running else [])

    def _cancel(self, conn: peers.Connection, identity: bytes, target: str) -> bool:
        with self._cv:
            for job in list(self._queue):
                if job.conn is conn and job.rid == target:
                    self._queue.remove(job)
                    job.cancel.cancel()
                    self._release(job)
                    self._reply_error(
                        identity,
                        target,
                        errors.error(wire.CANCELLED, "request_cancelled"),
                    )
                    return True
            running = self._running
            if running is not None and running.conn is conn and running.rid == target:
                running.cancel.cancel()  # the worker answers `cancelled`
                return True
        return False

    def _shutdown_jobs(self) -> None:
        with self._cv:
            while self._queue:
                job = self._queue.popleft()
                self._release(job)
                if not job.conn.open or self.peers.current(job.identity) is not job.conn:
                    continue
                self._reply_error(
                    job.identity,
                    job.rid,
                    errors.error(wire.CANCELLED, "shutting_down"),
                )
            if self._running is not None:
                self._running.cancel.cancel()

    # ----------------------------------------------------------------- replies
    def _reply(
        self,
        identity: bytes,
        rid: str | None,
        kind: str,
        fields: dict[str, Any],
        buffers: tuple[Any, ...] = (),
    ) -> None:
        self._send([identity, protocol.encode(wire.reply(rid, kind, fields)), *buffers])

    def _send(self, frames: list[Any]) -> bool:
        """Send to the connection holding ``frames[0]``; False (and its jobs dropped) if gone."""
        try:
            self.router.send_multipart(frames, zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            reason = "not_reading"  # a thousand replies unread: it stopped listening
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            reason = "unreachable"
        gone = self.peers.lost(frames[0] if isinstance(frames[0], bytes) else frames[0].bytes)
        if gone is not None:
            log.info(json.dumps({"event": "reply_dropped", "reason": reason}))
            self._abandon(gone)
        return False

    def _reply_error(self, identity: bytes, rid: str | None, exc: OffcutError) -> None:
        log.info(json.dumps({"event": "error", "id": rid, "code": exc.code}))
        self._reply(identity, rid, "error", exc.fields())

    def _forward_events(self) -> None:
        """Pass the worker's replies on, only to the very connection that sent the job."""
        for frames in waiting(self.events, copy=False):
            (serial,) = _SERIAL.unpack(frames[0].bytes)
            final = frames[1].bytes == b"f"
            if final:
                self._monitor_events()  # a connection that just ended must not get a result
            with self._cv:
                job = self._live.get(serial)
                if final and job is not None:
                    self._release(job)
            if job is None or not job.conn.open or self.peers.current(job.identity) is not job.conn:
                continue  # its client left: the reply goes nowhere, not to the id's next holder
            self._send([job.identity, *frames[2:]])

    # ----------------------------------------------------------------- ops
    def _models(self) -> list[dict[str, Any]]:
        states = {spec.name: self.store.state(spec) for spec in self.catalog}
        now = self._aliases_now(states)
        out = []
        for spec in self.catalog:
            state = states[spec.name]
            out.append(
                {
                    "name": spec.name,
                    "family": spec.family,
                    "description": spec.description,
                    "license": spec.license,
                    "input_size": spec.input_size,
                    "size": spec.size,
                    "installed": state == "installed",
                    "state": state,
                    "default": spec.name == self.catalog.default,
                    "derived_from": spec.derived.source if spec.derived else None,
                    # the aliases this model serves right now (a plug-in labels it by them)
                    "aliases": [a for a, target in now.items() if target == spec.name],
                }
            )
        return out

    def _aliases_now(self, states: dict[str, str]) -> dict[str, str]:
        """Each alias and the model it resolves to, from the states already read."""
        return {
            name: self.catalog.resolve(name, lambda s: states[s.name] == "installed").name
            for name in self.catalog.aliases
        }

    def _aliases(self) -> list[dict[str, Any]]:
        states = {spec.name: self.store.state(spec) for spec in self.catalog}
        now = self._aliases_now(states)
        return [
            {
                "name": alias.name,
                "label": alias.label,
                "description": alias.description,
                "model": now[alias.name],
                "installed": states[now[alias.name]] == "installed",
                "models": list(alias.models),
            }
            for alias in self.catalog.aliases.values()
        ]

    def _hello(self) -> dict[str, Any]:
        return {
            "protocol": wire.PROTOCOL,
            "sidecar_version": wire.VERSION,
            "default_model": self.catalog.default,
            "models": self._models(),
            "aliases": self._aliases(),
            "providers": self.engine.available_providers,
            "provider": self.engine.provider,
            "formats": list(formats.FORMATS),
            "limits": self.limits.as_dict(),
            "idle_timeout": self.idle_timeout,
        }

    def _status(self) -> dict[str, Any]:
        with self._cv:
            queue, running = len(self._queue), self._running is not None
        rss, rss_kind = self._memory()
        return {
            "pid": os.getpid(),
            "uptime": time.time() - self.started,
            "queue": queue,
            "running": running,
            "loaded_models": self.engine.loaded_models(),
            "rss_bytes": rss,
            "rss_kind": rss_kind,
            "requests": self.requests,
            "idle_timeout": self.idle_timeout,
            "provider": self.engine.provider,
            "audit_violations": audit.violations(),
        }

    # ----------------------------------------------------------------- worker
    def _worker(self) -> None:
        push = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        push.connect(_EVENTS)
        try:
            while True:
                with self._cv:
                    while not self._queue and not self._stop.is_set():
                        self._cv.wait(0.5)
                    if self._stop.is_set() and not self._queue:
                        return
                    job = self._queue.popleft()
                    self._running = job
                try:
                    self._run_job(push, job)
                finally:
                    with self._cv:
                        self._running = None
                    # Let go of the layer now: held here until the next job arrived, a large
                    # frame stayed resident while idle and doubled the next request's peak.
                    job = None  # type: ignore[assignment]
                    self._last_activity = time.monotonic()
        finally:
            push.close()

    def _run_job(self, push: zmq.Socket, job: Job) -> None:
        serial = _SERIAL.pack(job.serial)

        def send(kind: str, fields: dict[str, Any], buffers: tuple[Any, ...] = ()) -> None:
            final = kind != "progress"
            if final:
                job.done = True
            header = protocol.encode(wire.reply(job.rid, kind, fields))
            push.send_multipart([serial, b"f" if final else b"p", header, *buffers], copy=False)

        def progress(stage: str, fraction: float) -> None:
            job.stage, job.fraction, job.last_sent = stage, fraction, time.monotonic()
            send("progress", {"stage": stage, "progress": fraction})

        started = time.perf_counter()
        try:
            result = self.engine.segment(job.request, progress, job.cancel)
        except OffcutError as exc:
            log.info(json.dumps({"event": "error", "id": job.rid, "code": exc.code}))
            send("error", exc.fields())
            return
        except MemoryError:
            send("error", errors.error(wire.TOO_LARGE, "out_of_memory").fields())
            return
        except Exception:
            log.exception(json.dumps({"event": "internal_error", "id": job.rid}))
            send("error", errors.error(wire.INTERNAL, "internal_error_image").fields())
            return
        finally:
            job.frames.clear()
        fields: dict[str, Any] = {
            "mask": result.mask_info,
            "model": result.model,
            "sha256": result.sha256,
            "provider": result.provider,
            "timings": result.timings,
        }
        buffers: tuple[Any, ...] = (result.mask,)
        if result.cutout is not None:
            fields["cutout"] = result.cutout_info
            buffers = (result.mask, result.cutout)
        send("result", fields, buffers)
        log.info(
            json.dumps(
                {
                    "event": "segment",
                    "id": job.rid,
                    "model": result.model,
                    "pixels": job.request.width * job.request.height,
                    "seconds": round(time.perf_counter() - started, 4),
                }
            )
        )


def memory_reader(platform: str | None = None) -> Callable[[], tuple[int, str]]:
    """How ``status`` reads the sidecar's memory: a function returning (bytes, what they are).

    What each system offers without a dependency: the resident set now ("current") from
    ``/proc/self/statm`` on Linux and the working set from ``GetProcessMemoryInfo`` on Windows;
    elsewhere (macOS, the BSDs) only the most that was ever resident, ``getrusage``'s
    ``ru_maxrss`` ("peak": bytes on macOS, KiB elsewhere), which ``status`` labels as such
    rather than pass off as current. "unknown" with 0 when even that fails. Anything native is
    looked up here, once, so that reading later needs no lookup that audit mode would refuse.
    """
    platform = platform or sys.platform
    if platform.startswith("linux"):
        page = os.sysconf("SC_PAGE_SIZE")

        def linux() -> tuple[int, str]:
            try:
                with open("/proc/self/statm", "rb") as f:
                    return int(f.read().split()[1]) * page, "current"
            except (OSError, ValueError, IndexError):
                return _peak(platform)

        return linux
    if platform == "win32":
        try:
            working_set = windows_working_set()
        except (OSError, AttributeError, ImportError):
            return lambda: (0, "unknown")

        def windows() -> tuple[int, str]:
            try:
                return working_set(), "current"
            except OSError:
                return 0, "unknown"

        return windows
    return lambda: _peak(platform)


def _peak(platform: str) -> tuple[int, str]:
    try:
        import resource
    except ImportError:
        return 0, "unknown"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if platform == "darwin" else 1024), "peak"


def windows_working_set(kernel32: Any = None) -> Callable[[], int]:
    """A reader of this process's working set (``K32GetProcessMemoryInfo``, kernel32, Windows 7+).

    ``kernel32`` is a parameter so a test elsewhere can check the structure handed over and the
    field read back; on Windows it is the real library.
    """
    import ctypes

    class Counters(ctypes.Structure):
        """``PROCESS_MEMORY_COUNTERS`` (psapi.h)."""

        _fields_ = [
            ("cb", ctypes.c_uint32),
            ("PageFaultCount", ctypes.c_uint32),
            ("PeakWorkingSetSize", ctypes.c_size_t),
            ("WorkingSetSize", ctypes.c_size_t),
            ("QuotaPeakPagedPoolUsage", ctypes.c_size_t),
            ("QuotaPagedPoolUsage", ctypes.c_size_t),
            ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t),
            ("QuotaNonPagedPoolUsage", ctypes.c_size_t),
            ("PagefileUsage", ctypes.c_size_t),
            ("PeakPagefileUsage", ctypes.c_size_t),
        ]

    if kernel32 is None:
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    get_info = kernel32.K32GetProcessMemoryInfo
    get_info.argtypes = [ctypes.c_void_p, ctypes.POINTER(Counters), ctypes.c_uint32]
    current = kernel32.GetCurrentProcess
    current.restype = ctypes.c_void_p

    def read() -> int:
        counters = Counters()
        counters.cb = ctypes.sizeof(Counters)
        if not get_info(current(), ctypes.byref(counters), counters.cb):
            raise OSError(ctypes.get_last_error(), "GetProcessMemoryInfo failed")
        return int(counters.WorkingSetSize)

    return read


def raise_descriptor_limit() -> None:
    """Lift the soft limit on open files to the hard one (POSIX).

    Each connection costs a descriptor; at the common soft limit of 1024 a thousand idle peers
    filled the table and libzmq's accept loop spun. The hard limit is what the user's session
    allows anyway; the peer bounds in :mod:`offcut.server.peers` keep real use far below it.
    """
    try:
        import resource
    except ImportError:  # Windows: no such limit on sockets
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def run(
    port: int = 0,
    idle_timeout: float = 600.0,
    limits: protocol.Limits | None = None,
    threads: int | None = None,
    audit_mode: bool = False,
) -> int:
    """The whole ``offcut serve`` life: lock, bind, connection file, readiness, serve, clean up."""
    from offcut.models.catalog import load_catalog

    logs.setup()
    raise_descriptor_limit()
    try:
        runtime = connection.ensure_runtime_dir()
    except RuntimeError as exc:  # another user's directory: refuse with the advice, no traceback
        print(f"offcut serve: {exc}", file=sys.stderr)
        return 1
    lock = connection.InstanceLock()
    if not lock.acquire():
        try:
            info = connection.wait_for_running(lock)
        except RuntimeError as exc:  # a tampered connection file: never repeat what it says
            print(f"offcut serve: {exc}", file=sys.stderr)
            return 1
        if info is not None:
            _print_ready(info, already_running=True)
            return 0
        if not lock.held:
            print(
                "offcut serve: another sidecar holds the lock but never became ready; "
                f"remove {runtime} and try again.",
                file=sys.stderr,
            )
            return 1
    server = Server(
        load_catalog(),
        ModelStore(),
        port=port,
        idle_timeout=idle_timeout,
        limits=limits,
        threads=threads,
    )
    try:
        server.bind()
    except zmq.ZMQError as exc:
        print(
            f"offcut serve: cannot listen on {LOOPBACK}:{port} ({exc.strerror}); choose another "
            "--port or leave it out to use a free one.",
            file=sys.stderr,
        )
        lock.release()
        return 1
    path = connection.write(server.connection_info())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, server.request_stop)
    if audit_mode:
        audit.enable()
    _print_ready(server.connection_info(), already_running=False, path=str(path))
    log.info(
        json.dumps(
            {
                "event": "serving",
                "port": server.port,
                "pid": os.getpid(),
                "provider": server.engine.provider,
                "audit": audit_mode,
            }
        )
    )
    try:
        server.serve_forever()
    finally:
        if audit_mode:
            audit.disable()
        connection.remove(path, pid=os.getpid())
        lock.release()
        log.info(json.dumps({"event": "stopped"}))
    return 0


def _print_ready(info: dict[str, Any], already_running: bool, path: str | None = None) -> None:
    from offcut import paths

    line = {
        "ready": True,
        "pid": info.get("pid"),
        "port": info.get("port"),
        "protocol": info.get("protocol"),
        "sidecar_version": info.get("sidecar_version"),
        "connection_file": path or str(paths.connection_file()),
        "already_running": already_running,
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()

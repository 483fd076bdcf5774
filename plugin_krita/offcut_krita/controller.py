"""The one Offcut controller per Krita process: sidecar connection, settings and the running job.

Krita makes one docker per main window and the action lives in every window, but there is one
sidecar and at most one job at a time, so that state lives here and the dockers only show it.

Threading: every call that talks to the sidecar (connect, models, segment, shutdown, status)
runs on one daemon worker thread, in order, so Krita's UI thread never waits on the network.
Results come back to the UI thread through a queued Qt signal, and only there do we touch
Krita's API (reading the layer before, writing the result after). ``cancel`` is the exception:
the client documents it as thread-safe, and it must reach the sidecar while the worker is
blocked in ``segment``. The worker is a daemon so that a sidecar that never answers cannot keep
Krita from exiting; on quit we cancel the job and wait briefly for it to end.
"""

import contextlib
import queue
import threading
import time
import traceback

from krita import Krita

from . import job
from .i18n import _
from .qt import QApplication, QIcon, QObject, Qt, QTimer, pyqtSignal

try:  # installed by `offcut install krita` next to this file
    from .offcut_client import Client
except ImportError as _exc:  # pragma: no cover - a broken install; reported in the docker
    Client = None
    _CLIENT_IMPORT_ERROR = "%s: %s" % (type(_exc).__name__, _exc)
else:
    _CLIENT_IMPORT_ERROR = None

VERSION = "0.1.0"
SETTINGS_GROUP = "offcut"

STOPPED = "stopped"
STARTING = "starting"
CONNECTED = "connected"
ERROR = "error"

POLL_MS = 15000  # how often an idle docker checks that the sidecar is still there


class _Bridge(QObject):
    """Carries callables from the worker thread to the UI thread (queued connection)."""

    call = pyqtSignal(object)


class _Worker:
    """One daemon thread running sidecar calls in order."""

    def __init__(self, bridge):
        self._bridge = bridge
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="offcut-worker", daemon=True)
        self._thread.start()
        self.pending = 0

    def submit(self, fn, on_done=None, on_error=None):
        """Run ``fn()`` here, then ``on_done(value)`` or ``on_error(exc, tb)`` on the UI."""
        self.pending += 1
        self._queue.put((fn, on_done, on_error))

    def _loop(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, on_done, on_error = item
            try:
                value = fn()
            except BaseException as exc:  # everything must reach the UI, never kill the thread
                tb = traceback.format_exc()
                self._post(on_error, exc, tb)
            else:
                self._post(on_done, value)

    def _post(self, callback, *args):
        def run():
            self.pending -= 1
            if callback is not None:
                callback(*args)

        self._bridge.call.emit(run)

    def stop(self, wait_s):
        """Ask the thread to end after its current call; True if it ended within ``wait_s``."""
        self._queue.put(None)
        self._thread.join(wait_s)
        return not self._thread.is_alive()


class Controller(QObject):
    """Shared state behind every Offcut docker and action; lives on the UI thread."""

    state_changed = pyqtSignal()
    models_changed = pyqtSignal()
    busy_changed = pyqtSignal(bool)
    progress = pyqtSignal(str, float)
    # kind ("info", "error" or "cancelled"), the sentence to show, the full text to copy
    message = pyqtSignal(str, str, str)
    settings_changed = pyqtSignal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._bridge = _Bridge()
        self._bridge.call.connect(self._run_on_ui, Qt.ConnectionType.QueuedConnection)
        self._worker = _Worker(self._bridge)
        self._client = None
        self._cancel = threading.Event()
        self._closing = False
        self._actions = []
        self._job_started = None
        self._plan = None
        self.state = STOPPED
        self.state_detail = ""
        self.hello = {}
        self.limits = None
        self.models = []
        self.busy = False
        self.last_error = ""
        self.settings = self._load_settings()
        self._poll_timer = QTimer(self)
        self._poll_timer.timeout.connect(self.poll)
        self._poll_timer.start(POLL_MS)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.close)
        # applicationClosing comes before windows close; aboutToQuit is the last chance.
        with contextlib.suppress(AttributeError):
            Krita.instance().notifier().applicationClosing.connect(self.close)
        if _CLIENT_IMPORT_ERROR:
            self._set_state(ERROR, _client_missing())
        else:
            QTimer.singleShot(0, self.poll)

    # -- plumbing ---------------------------------------------------------------------------

    def _run_on_ui(self, fn):
        if not self._closing:
            fn()

    def _set_state(self, state, detail=""):
        self.state, self.state_detail = state, detail
        self.state_changed.emit()

    def _set_busy(self, busy):
        self.busy = busy
        for action in self._actions:
            with contextlib.suppress(RuntimeError):  # its window may be gone
                action.setEnabled(not busy)
        self.busy_changed.emit(busy)

    def register_action(self, action):
        """Keep the per-window action disabled while a job runs, like the docker's button."""
        self._actions.append(action)
        action.setEnabled(not self.busy)

    def _load_settings(self):
        k = Krita.instance()
        read = lambda key, default: k.readSetting(SETTINGS_GROUP, key, default)  # noqa: E731
        return job.Settings.from_dict(
            {
                "model": read("model", ""),
                "output": read("output", job.OUTPUT_MASK),
                "refine": read("refine", "false") == "true",
                "decontaminate": read("decontaminate", "false") == "true",
            }
        )

    def update_settings(self, **changes):
        """Change and persist settings (docker controls); the action uses the same ones."""
        d = self.settings.as_dict()
        d.update(changes)
        self.settings = job.Settings.from_dict(d)
        k = Krita.instance()
        k.writeSetting(SETTINGS_GROUP, "model", self.settings.model or "")
        k.writeSetting(SETTINGS_GROUP, "output", self.settings.output)
        k.writeSetting(SETTINGS_GROUP, "refine", "true" if self.settings.refine else "false")
        k.writeSetting(
            SETTINGS_GROUP, "decontaminate", "true" if self.settings.decontaminate else "false"
        )
        self.settings_changed.emit()

    # -- sidecar: runs on the worker ------------------------------------------------------

    def _ensure_client(self):
        """Connect, starting the sidecar if none runs. Worker thread only."""
        if Client is None:
            raise job.JobError(_client_missing())
        if self._client is None:
            starting = _("Starting the sidecar…")
            self._bridge.call.emit(lambda: self._set_state(STARTING, starting))
            self._client = Client(app="krita")
            self._refresh_info()
        return self._client

    def _refresh_info(self):
        hello = self._client.hello()
        models = self._client.models()
        # Set here too, not only on the UI thread: the job that triggered this connection
        # checks the limits on this thread before the UI has seen the update.
        self.limits = hello.get("limits") or {}
        self._bridge.call.emit(lambda: self._connected(hello, models))

    def _connected(self, hello, models):
        self.hello = hello
        self.limits = self.hello.get("limits") or {}
        self.models = [m for m in models if isinstance(m, dict) and m.get("name")]
        parts = []
        if self.hello.get("sidecar_version"):
            parts.append(_("sidecar {version}", version=self.hello["sidecar_version"]))
        if self.hello.get("provider"):
            parts.append(str(self.hello["provider"]).replace("ExecutionProvider", ""))
        self._set_state(CONNECTED, ", ".join(parts))
        self.models_changed.emit()

    def _drop_client(self):
        client, self._client = self._client, None
        if client is not None:
            close = getattr(client, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    # -- sidecar: UI entry points -----------------------------------------------------------

    def start(self):
        """Start (or find) the sidecar now rather than on the first job."""
        if self.state == STARTING:
            return
        self._set_state(STARTING, _("Starting the sidecar…"))
        self._worker.submit(self._ensure_client, on_error=self._sidecar_failed)

    def stop(self):
        """Ask the sidecar to exit. It is shared: GIMP's plug-in will start it again if needed."""
        if self.busy:
            return

        def shutdown():
            if self._client is None and Client is not None:
                self._client = self._find_running()
            if self._client is not None:
                try:
                    self._client.shutdown()
                finally:
                    self._drop_client()

        self._worker.submit(
            shutdown,
            on_done=lambda _result: self._set_state(STOPPED, ""),
            on_error=self._sidecar_failed,
        )

    def _find_running(self):
        """A client for an already-running sidecar, without starting one; None if none runs.

        Used by the status poll: merely opening the docker must not launch a process.
        """
        probe = Client(app="krita", start=False)
        try:
            probe.hello()
        except Exception:
            probe.close()
            return None
        probe.start = True  # from now on a job may restart it if it dies
        return probe

    def poll(self):
        """Refresh the status line without disturbing a job or starting a sidecar."""
        if self.busy or self._worker.pending or self.state == STARTING or _CLIENT_IMPORT_ERROR:
            return

        def check():
            if self._client is None:
                self._client = self._find_running()
                if self._client is None:
                    return STOPPED
                self._refresh_info()
                return CONNECTED
            self._client.start = False  # a poll must never start a sidecar
            try:
                self._client.status()
            except Exception:
                self._drop_client()
                return STOPPED
            finally:
                if self._client is not None:
                    self._client.start = True
            return CONNECTED

        def done(state):
            if state == STOPPED and self.state != ERROR:
                self._set_state(STOPPED, "")

        self._worker.submit(check, on_done=done, on_error=lambda exc, tb: None)

    def _sidecar_failed(self, exc, tb):
        self._drop_client()
        text = _message_of(exc)
        self._set_state(ERROR, text)
        self._report("error", text, _details(text, exc, tb))

    # -- jobs -------------------------------------------------------------------------------

    def run_active(self):
        """Remove the background of the active layer of the active document (docker, action)."""
        k = Krita.instance()
        doc = k.activeDocument()
        self.run(doc, doc.activeNode() if doc is not None else None)

    def run(self, doc, node):
        if self.busy:
            self._report(
                "error", _("Offcut is already working on a layer; wait for it or press Cancel."), ""
            )
            return
        settings = self.settings
        try:
            # Limits known from an earlier connection are checked before the layer is read;
            # on the very first job the worker checks them after connecting.
            plan = job.plan_job(doc, node, settings, self.limits)
        except job.JobError as exc:
            text = _message_of(exc)
            self._report("error", text, _details(text, exc, None))
            return
        except Exception as exc:
            text = _("Offcut could not read the layer: {error}", error=_message_of(exc))
            self._report("error", text, _details(text, exc, traceback.format_exc()))
            return
        self._cancel.clear()
        self._job_started = time.monotonic()
        self._plan = plan  # stays here, on the UI thread; the worker gets plain data only
        req = plan.request()
        self._set_busy(True)
        self.progress.emit("reading", 0.0)

        def work():
            client = self._ensure_client()
            if self._cancel.is_set():
                raise job.JobError(_("Cancelled."), code="cancelled")
            job.check_limits(req.width, req.height, self.limits)
            return job.request(client, req, on_progress=self._progress_from_worker)

        self._worker.submit(work, on_done=self._job_done, on_error=self._job_failed)

    def _progress_from_worker(self, stage, fraction):
        self._bridge.call.emit(lambda: self.progress.emit(str(stage), float(fraction or 0.0)))

    def _job_done(self, reply):
        plan, self._plan = self._plan, None
        try:
            if self._cancel.is_set() or plan is None:
                raise job.JobError(_("Cancelled."), code="cancelled")
            outcome = job.apply_result(plan, reply, self._job_started)
        except Exception as exc:
            self._finish_failed(plan, exc, traceback.format_exc())
            return
        self.progress.emit("done", 1.0)
        self._report("info", outcome.summary(), "")
        self._set_busy(False)

    def _job_failed(self, exc, tb):
        plan, self._plan = self._plan, None
        self._finish_failed(plan, exc, tb)

    def _finish_failed(self, plan, exc, tb):
        # Report first, then re-enable the controls: whoever watches busy sees the outcome.
        try:
            self._explain_failure(plan, exc, tb)
        finally:
            self._set_busy(False)

    def _explain_failure(self, plan, exc, tb):
        code = getattr(exc, "code", None)
        if code == "cancelled" or self._cancel.is_set():
            self.progress.emit("cancelled", 0.0)
            self._report("cancelled", _("Cancelled; nothing was changed."), "")
            return
        text = _message_of(exc)
        if code in (None, "internal") and not isinstance(exc, job.JobError):
            text = _("Offcut failed: {error}", error=text)
        lost = getattr(exc, "connection", False) or not isinstance(exc, job.JobError)
        if lost or code in ("unauthorized", "unsupported_version"):
            # the sidecar is unreachable or speaks another protocol: reconnect next time
            self._drop_client()
            self._set_state(ERROR, text)
        self.progress.emit("failed", 0.0)
        self._report("error", text, _details(text, exc, tb, plan))

    def cancel(self):
        """Cancel the running job. UI thread; reaches the sidecar while the worker waits."""
        if not self.busy:
            return
        self._cancel.set()
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                client.cancel()

    def close(self):
        """Krita is closing: cancel a running job and let the worker end, briefly."""
        if self._closing:
            return
        self.cancel()
        self._closing = True
        self._plan = None  # let go of Krita objects while Krita can still destroy them
        self._poll_timer.stop()
        if self._worker.stop(3.0):
            self._drop_client()
        # else: a sidecar that ignores the cancel still holds the client; closing it would
        # wait for that call, so leave it to the daemon thread, which ends with the process.

    def _report(self, kind, text, details):
        if kind == "error":
            self.last_error = details or text
        self.message.emit(kind, text, details or text)
        _floating(text, kind)


def _client_missing():
    return _(
        "The Offcut client is missing ({error}). Reinstall the plug-in with "
        "`offcut install krita`.",
        error=_CLIENT_IMPORT_ERROR,
    )


def _message_of(exc):
    """The sentence to show for ``exc``: the client's, in the user's language (``text()``).

    Errors of the client and the sidecar carry a message key that ``text()`` renders in the
    plug-in's language (English when the catalog lacks it); other exceptions have only their
    English message.
    """
    render = getattr(exc, "text", None)
    if callable(render):
        try:
            text = render()
        except Exception:  # a sentence that cannot be rendered: the English message
            text = None
        if isinstance(text, str) and text:
            return text
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


def _details(text, exc, tb, plan=None):
    """The full error text the docker's Copy button puts on the clipboard."""
    lines = [text, ""]
    code = getattr(exc, "code", None)
    if code:
        lines.append("code: %s" % code)
    lines.append("error: %s: %s" % (type(exc).__name__, exc))
    if plan is not None:
        lines.append("layer: %s" % plan.describe())
        lines.append("settings: %r" % (plan.settings.as_dict(),))
    lines.append("krita: %s, offcut plug-in %s" % (Krita.instance().version(), VERSION))
    if tb:
        lines += ["", tb.rstrip()]
    return "\n".join(lines)


def _floating(text, kind):
    """Krita's on-canvas message, so the action gives feedback even with the docker closed."""
    try:
        window = Krita.instance().activeWindow()
        view = window.activeView() if window is not None else None
        if view is not None:
            view.showFloatingMessage(
                _("Offcut: {message}", message=text),
                QIcon(),
                6000 if kind == "error" else 3000,
                1 if kind == "error" else 2,
            )
    except Exception:
        pass


_CONTROLLER = None


def get():
    """The process-wide controller, created on first use (on the UI thread)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = Controller()
    return _CONTROLLER

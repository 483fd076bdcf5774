"""The GIMP plug-in's run logic on plain values: the sidecar session, the request, the messages.

Nothing here imports ``gi``: the registration script reads pixels and GIMP facts (names, sizes,
precision) and hands them over as plain values, and writes back what ``request`` returns. So the
decisions — which sidecar to talk to, which models to offer, what to send, how to read the
answer, when to refuse and in which words — can be tested without GIMP.

Cancelling: GIMP 3.0.4 has no cancel callback for plug-ins. When the user presses the cancel
button of the progress bar, GIMP (app/plug-in/gimpplugin-progress.c) sends GP_QUIT down the
plug-in's pipe, waits 10 ms and SIGKILLs the plug-in. libgimp turns a GP_QUIT read during a PDB
call into ``GimpPlugIn.do_quit()``; while we wait for the sidecar no PDB call is running, so the
main thread watches GIMP's pipe itself and sends ``cancel`` the moment it becomes readable.
Either way the sidecar stops working for a request nobody will read.
"""

import contextlib
import json
import os
import queue
import select
import socket
import stat
import sys
import threading
import time
from typing import NamedTuple, Optional

from . import pixels as px

# Starts the line debug_line writes; the e2e tests and bench/gimp.py read the records by it.
DEBUG_PREFIX = "OFFCUT-GIMP-DEBUG "

PLUGIN_VERSION = "0.1.0"
FALLBACK_MODEL = "u2netp"

OUTPUT_NEW_LAYER = "new-layer"
OUTPUT_LAYER_MASK = "layer-mask"
OUTPUT_SELECTION = "selection"
OUTPUT_MASK_LAYER = "mask-layer"
# (nick, label, help) in the order the dialog lists them; the first one is the default.
OUTPUTS = (
    (
        OUTPUT_NEW_LAYER,
        "_New layer with mask (original hidden)",
        "Duplicate the layer, give the copy the result as its layer mask and hide the original.",
    ),
    (
        OUTPUT_LAYER_MASK,
        "La_yer mask on the layer",
        "Add the result as a layer mask to the selected layer itself.",
    ),
    (
        OUTPUT_SELECTION,
        "Selec_tion",
        "Replace the selection with the foreground (intersected with the current selection).",
    ),
    (
        OUTPUT_MASK_LAYER,
        "Mask as a _grayscale layer",
        "Add a new layer holding the mask as gray levels (white = foreground).",
    ),
)
# Outputs that replace a layer mask (and so may carry decontaminated colours).
MASK_OUTPUTS = (OUTPUT_NEW_LAYER, OUTPUT_LAYER_MASK)

# Share of the progress bar spent outside the sidecar (reading and writing pixels).
IO_SHARE = 0.1

RECORD_FILE = "offcut_sidecar.json"


class UserError(Exception):
    """A failure the user can act on; its text is shown as is and returned as the PDB error."""


class Cancelled(Exception):
    """The user cancelled (dialog, mask question, or GIMP's progress cancel)."""


class Options(NamedTuple):
    """The procedure's arguments, as the dialog or the caller set them."""

    model: str
    output: str
    refine: bool = False
    decontaminate: bool = False

    @property
    def wants_cutout(self):
        """Decontaminated colours are asked for only where a layer mask does the cut."""
        return bool(self.decontaminate) and self.output in MASK_OUTPUTS


class Colours(NamedTuple):
    """Decontaminated colours to write over the layer, in babl format ``fmt``."""

    fmt: str
    data: bytes


class Result(NamedTuple):
    """What one layer's request produced, ready to be written back."""

    rect: tuple  # (x, y, w, h) in layer coordinates
    mask: bytes  # w*h samples of ``sample``
    sample: str  # babl component type of ``mask``: "u8", "u16" or "float"
    colours: Optional[Colours]  # None unless decontaminated colours were asked for and came
    record: dict  # the debug record (no pixels)


def client_error_text(exc):
    """The user-facing sentence of a client error (``.message``), else its string."""
    return getattr(exc, "message", None) or str(exc) or exc.__class__.__name__


def _names(names):
    return ", ".join("“%s”" % n for n in names)


def _has(names):
    return "has" if len(names) == 1 else "have"


def _connect_bundled(start):
    """A client of the ``offcut_client`` copy installed next to the plug-in."""
    try:
        import offcut_client
    except ImportError as exc:  # a missing client is an install problem, so say so
        raise UserError(
            "The Offcut client is missing next to the GIMP plug-in (%s). Reinstall the plug-in "
            "with `offcut install gimp`." % exc
        ) from exc
    return offcut_client.Client(app="gimp", start=start)


def is_run(argv):
    """Whether GIMP started this process to run a procedure (not to query or init it).

    libgimp's command line is ``prog -gimp PROTOCOL READ_FD WRITE_FD -run|-query|-init ...``.
    """
    return "-run" in argv[1:7]


def installer_record(folder):
    """Read ``offcut_sidecar.json`` (written by ``offcut install``); {} when absent or broken."""
    try:
        with open(os.path.join(folder, RECORD_FILE), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def gimp_read_fd(argv, platform=None):
    """File descriptor GIMP writes to this plug-in, or None where it cannot be watched.

    libgimp is started as ``prog -gimp PROTOCOL READ_FD WRITE_FD -run STACKTRACE``. On Windows
    that is a pipe, which select() does not take there (only sockets): GIMP's cancel then
    reaches the request only through ``do_quit``.
    """
    if (platform or sys.platform) == "win32":
        return None
    try:
        fd = int(argv[argv.index("-gimp") + 2])
        mode = os.fstat(fd).st_mode
    except (ValueError, IndexError, OSError):
        return None
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return None
    return fd


class Session:
    """The plug-in process's state: GIMP spawns one process per query and per run.

    It holds the one client connection (reused by ``do_create_procedure`` and the run), whether
    this process only answers GIMP's query, and the request in flight so that ``do_quit`` can
    cancel it from libgimp's callback.
    """

    def __init__(self, folder, connect=_connect_bundled, argv=None):
        self.folder = folder  # the installed plug-in's folder: the installer's record is there
        self.querying = False
        self.client = None
        self._connect = connect
        self._argv = sys.argv if argv is None else argv
        self._busy_client = None  # the client while a request runs
        self._worker = None
        self._cancelled = False
        self._prefetch = None  # the thread connecting while GIMP and the imports start up
        self._hello = None  # its answer, or the exception it raised

    # ---- the client ----
    def get_client(self, start=True):
        """Return a connected client, starting the sidecar only when ``start`` is true.

        GIMP queries plug-ins at start-up; starting a model server then would slow every GIMP
        launch, so query time only talks to a sidecar that is already running.
        """
        if self.client is not None:
            if start and not self.client.start:
                self.client.start = True
            return self.client
        self.client = self._connect(start)
        return self.client

    def prefetch(self):
        """Connect to the sidecar (starting it) and ask ``hello`` in a thread, for a run.

        GIMP starts a new plug-in process for every run, and importing the client, connecting
        and the handshake come before any pixel can be sent; started from the process's first
        line, they can overlap the main thread's ``gi`` imports and the procedure's
        registration instead of following them (what that gains on a busy machine:
        docs/benchmarks.md, "In GIMP"). ``model_catalog`` and ``connect`` collect the answer.
        """

        def work():
            try:
                self._hello = self.get_client(start=True).hello() or {}
            except BaseException as exc:  # re-raised by connect() on the main thread
                self._hello = exc

        self._prefetch = threading.Thread(target=work, name="offcut-connect", daemon=True)
        self._prefetch.start()

    def _collect(self):
        """Wait for the prefetch if one runs; its ``hello`` (or exception) stays for connect."""
        if self._prefetch is not None:
            self._prefetch.join()
            self._prefetch = None
        return self._hello

    def connect(self):
        """The client and its ``hello`` for a run; any client failure becomes a UserError."""
        hello, self._hello = self._collect(), None
        try:
            if isinstance(hello, BaseException):
                raise hello
            client = self.get_client(start=True)
            if hello is None:
                hello = client.hello() or {}
        except UserError:
            raise
        except Exception as exc:  # any client failure is reported as text
            raise UserError(client_error_text(exc)) from exc
        return client, hello

    def model_catalog(self):
        """Return ``(models, default)`` for the model choice.

        ``models`` is a list of dicts with at least ``name`` and ``installed``. Sources, best
        first: a sidecar (started at run time, only if already running at query time), the model
        names the installer recorded, and finally the catalog default alone so the procedure
        always registers.
        """
        models, default = [], None
        # A prefetched hello lists the models too, and stays for connect(): one request.
        hello = self._collect()
        try:
            if isinstance(hello, dict):
                listed = hello.get("models") or []
            elif hello is None:
                listed = self.get_client(start=not self.querying).models()
            else:
                listed = []  # connect() reports the failure; the fallbacks register the procedure
            models = [m for m in listed if isinstance(m, dict) and m.get("name")]
            default = next((m["name"] for m in models if m.get("default")), None)
        except Exception:  # any failure here just means "use the fallbacks"
            models = []
        if not models:
            record = installer_record(self.folder)
            for entry in record.get("models") or []:  # names, or maps like the sidecar's
                entry = {"name": entry} if isinstance(entry, str) else entry
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    models.append(
                        {
                            "name": entry["name"],
                            "installed": entry.get("installed", True),
                            "description": entry.get("description") or "",
                        }
                    )
            default = record.get("default_model")
            if not isinstance(default, str):
                default = None
        if not any(m["name"] == (default or FALLBACK_MODEL) for m in models):
            models.insert(
                0,
                {
                    "name": default or FALLBACK_MODEL,
                    "installed": True,
                    "description": "Default model",
                },
            )
        return models, default or FALLBACK_MODEL

    # ---- the request in flight ----
    def cancel(self):
        """Tell the sidecar to drop the request in flight (once); a no-op when none runs."""
        client = self._busy_client
        if client is None or self._cancelled:
            return
        self._cancelled = True
        with contextlib.suppress(Exception):  # we are being killed; nothing to report
            client.cancel()
        # The client sends the cancel from the thread running the request; GIMP kills us 10 ms
        # after asking us to quit, so give that thread the GIL for a moment right now.
        worker = self._worker
        if worker is not None:
            worker.join(0.005)

    def segment(self, client, kwargs, on_progress):
        """Run ``client.segment`` in a worker thread; relay progress and GIMP's cancel.

        libgimp is not thread-safe, so progress events are queued and handed to
        ``on_progress(stage, fraction)`` on the calling (main) thread, which meanwhile watches
        GIMP's pipe.
        """
        events = queue.Queue()
        # A socket pair, not a pipe: select() takes only sockets on Windows.
        wake_r, wake_w = socket.socketpair()
        wake_w.setblocking(False)
        box = {}

        def poke():
            with contextlib.suppress(OSError):  # full: the main thread is awake already
                wake_w.send(b"!")

        def progress(stage, fraction):
            events.put((stage, fraction))
            poke()

        def work():
            try:
                box["result"] = client.segment(on_progress=progress, **kwargs)
            except BaseException as exc:  # re-raised on the main thread
                box["error"] = exc
            finally:
                events.put(None)
                poke()

        gimp_fd = gimp_read_fd(self._argv)
        watched = [wake_r] + ([gimp_fd] if gimp_fd is not None else [])
        worker = threading.Thread(target=work, name="offcut-segment", daemon=True)
        self._busy_client, self._worker, self._cancelled = client, worker, False
        worker.start()
        try:
            finished = False
            while not finished:
                ready, _, _ = select.select(watched, [], [], 0.5)
                if gimp_fd is not None and gimp_fd in ready:
                    # GIMP only writes to a running plug-in to quit it (progress cancel).
                    self.cancel()
                    watched.remove(gimp_fd)
                if wake_r in ready:
                    wake_r.recv(4096)
                while True:
                    try:
                        event = events.get_nowait()
                    except queue.Empty:
                        break
                    if event is None:
                        finished = True
                    else:
                        on_progress(*event)
            worker.join()
        finally:
            self._busy_client = self._worker = None
            wake_r.close()
            wake_w.close()
        if "error" in box:
            raise box["error"]
        return box["result"]


def request(session, client, name, rect, depth, data, mask_sample, options, on_progress):
    """Ask the sidecar for the mask of one layer's ``rect`` and check the answer.

    ``data`` holds the area's pixels read at ``depth``; ``mask_sample`` is the component type
    the mask is asked in (``pixels.mask_sample``). Returns a ``Result``; raises ``Cancelled``
    when the request was cancelled and ``UserError`` for any other sidecar refusal.
    """
    x, y, w, h = rect
    mask_format = px.MASK_WIRE[mask_sample]
    want_cutout = options.wants_cutout
    kwargs = {
        "pixels": data,
        "width": w,
        "height": h,
        "fmt": depth.wire_format,
        "colorspace": "srgb",
        "model": options.model,
        "refine": options.refine,
        "decontaminate": want_cutout,
        "mask_format": mask_format,
        "cutout": want_cutout,
    }
    try:
        result = session.segment(client, kwargs, on_progress)
    except Exception as exc:
        if getattr(exc, "code", None) == "cancelled":
            raise Cancelled() from exc
        if hasattr(exc, "code"):
            raise UserError(client_error_text(exc)) from exc
        raise
    info = result.mask_info or {}
    sample = px.WIRE_SAMPLE.get(info.get("format"), mask_sample)
    if (info.get("width"), info.get("height")) != (w, h):
        raise UserError(
            "The sidecar returned a %sx%s mask for a %dx%d area; update Offcut."
            % (info.get("width"), info.get("height"), w, h)
        )
    record = {
        "layer": name,
        "rect": [x, y, w, h],
        "format": depth.wire_format,
        "mask_format": info.get("format"),
        "meta": {k: v for k, v in (result.meta or {}).items() if k != "timings"},
    }
    colours = None
    if want_cutout and getattr(result, "cutout", None) is not None:
        cutout_format = (getattr(result, "cutout_info", None) or {}).get("format")
        colours = Colours(
            px.cutout_babl_format(cutout_format, depth),
            px.keep_alpha(result.cutout, cutout_format, data, depth),
        )
    return Result((x, y, w, h), result.mask, sample, colours, record)


class Phases:
    """Where one run's time goes, for the OFFCUT_DEBUG line (bench/gimp.py reads it).

    ``marks`` are wall-clock epochs (``time.time()``), comparable with the caller's clock in
    another process: when this process started running Python, when the procedure body began
    and ended. ``totals`` are seconds summed per phase over the run's layers (``with
    phases("read"):``). Timings only: no pixels, no paths.
    """

    def __init__(self, **marks):
        self.marks = dict(marks)
        self.totals = {}

    def mark(self, name):
        self.marks[name] = time.time()

    @contextlib.contextmanager
    def __call__(self, name):
        started = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - started
            self.totals[name] = self.totals.get(name, 0.0) + spent

    def record(self):
        return {"marks": dict(self.marks), "totals": dict(self.totals)}


def progress_fraction(index, count, base, share, fraction):
    """Overall progress of layer ``index`` of ``count`` at ``fraction`` of its sidecar share."""
    return min(1.0, (index + base + share * float(fraction)) / count)


# ---- checks and their sentences -------------------------------------------------------------

INDEXED_MESSAGE = (
    "Indexed images are not supported: convert the image to RGB or Grayscale first (Image ▸ Mode)."
)
NO_LAYER_MESSAGE = "No layer is selected: select one or more layers first."


def channel_message(name):
    return (
        "“%s” is a channel, not a layer: select one or more layers to remove their "
        "background." % name
    )


def group_message(name):
    return (
        "“%s” is a layer group: select the layers inside it, or merge the group "
        "(Layer ▸ Merge Down) first." % name
    )


def masked_message(names):
    """Why a non-interactive run refuses layers that already have a mask."""
    return (
        "%s already %s a layer mask: apply or delete it first (Layer ▸ Mask), "
        "or choose the “selection” or “mask-layer” output." % (_names(names), _has(names))
    )


def replace_question(names):
    """The secondary text of the interactive "Replace the existing layer mask?" question."""
    return (
        "%s already %s a layer mask. Offcut will replace it with the new mask; the old mask is "
        "kept in the undo history." % (_names(names), _has(names))
    )


def check_limits(name, rect, limits):
    """Refuse an area the sidecar would refuse, before reading any pixel."""
    _, _, w, h = rect
    max_pixels = limits.get("max_pixels")
    max_side = limits.get("max_side")
    if (max_pixels and w * h > max_pixels) or (max_side and max(w, h) > max_side):
        parts = []
        if max_pixels:
            parts.append("%.1f megapixels" % (max_pixels / 1e6))
        if max_side:
            parts.append("%d pixels per side" % max_side)
        raise UserError(
            "“%s” is too large to process: %d × %d pixels, the sidecar accepts at most %s. "
            "Select a smaller area, or scale the image down (Image ▸ Scale Image)."
            % (name, w, h, " and ".join(parts))
        )


def no_overlap_message(count):
    return (
        "The selection does not overlap the selected layer%s: select an area on the "
        "layer, or Select ▸ None to process the whole layer." % ("" if count == 1 else "s")
    )


def skipped_message(names):
    return "Offcut skipped %s: the selection does not overlap %s." % (
        _names(names),
        "it" if len(names) == 1 else "them",
    )


def unexpected_message(exc):
    return "Offcut failed unexpectedly: %s: %s. Please report this." % (type(exc).__name__, exc)


def debug_line(client, output, jobs, environ=None, stream=None, phases=None):
    """With OFFCUT_DEBUG set, print one JSON line on stderr for tests and bug reports."""
    if not (os.environ if environ is None else environ).get("OFFCUT_DEBUG"):
        return
    record = {
        "offcut_gimp": PLUGIN_VERSION,
        "transport": getattr(client, "transport_name", None),
        "output": output,
        "jobs": jobs,
    }
    if phases is not None:
        record["phases"] = phases.record()
    stream = sys.stderr if stream is None else stream
    stream.write(DEBUG_PREFIX + json.dumps(record, default=str) + "\n")
    stream.flush()

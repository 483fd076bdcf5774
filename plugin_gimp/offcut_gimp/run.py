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
from .i18n import N_, _, ngettext

# Starts the line debug_line writes; the e2e tests and bench/gimp.py read the records by it.
DEBUG_PREFIX = "OFFCUT-GIMP-DEBUG "

PLUGIN_VERSION = "0.1.0"
FALLBACK_MODEL = "u2netp"

OUTPUT_NEW_LAYER = "new-layer"
OUTPUT_LAYER_MASK = "layer-mask"
OUTPUT_SELECTION = "selection"
OUTPUT_MASK_LAYER = "mask-layer"
# (nick, label, help) in the order the dialog lists them; the first one is the default. The
# texts are marked here and translated where the choice is built (``_(label)``).
OUTPUTS = (
    (
        OUTPUT_NEW_LAYER,
        N_("_New layer with mask (original hidden)"),
        N_(
            "Duplicate the layer, give the copy the result as its layer mask and hide the original."
        ),
    ),
    (
        OUTPUT_LAYER_MASK,
        N_("La_yer mask on the layer"),
        N_("Add the result as a layer mask to the selected layer itself."),
    ),
    (
        OUTPUT_SELECTION,
        N_("Selec_tion"),
        N_("Replace the selection with the foreground (intersected with the current selection)."),
    ),
    (
        OUTPUT_MASK_LAYER,
        N_("Mask as a _grayscale layer"),
        N_("Add a new layer holding the mask as gray levels (white = foreground)."),
    ),
)

# The catalog's aliases (models/catalog.json) the plug-in knows how to name in the user's
# language: alias → (label, help). An alias of a newer catalog that is not listed here is
# offered under the sidecar's (English) label.
ALIAS_TEXTS = {
    "fast": (
        N_("Fast"),
        N_("The quickest model: good on clear subjects, softer edges."),
    ),
    "best": (
        N_("Best quality"),
        N_("Sharper, more detailed edges; slower."),
    ),
}
# The alias preferred as the dialog's default when it stands for the catalog's default model.
DEFAULT_ALIAS = "fast"

# The sidecar's progress stages (docs/protocol.md) as the progress bar names them.
STAGES = {
    "queued": N_("waiting for the sidecar"),
    "decode": N_("reading the pixels"),
    "inference": N_("running the model"),
    "postprocess": N_("shaping the mask"),
    "refine": N_("refining the edges"),
    "decontaminate": N_("cleaning the edge colours"),
    "encode": N_("sending the result"),
}
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
    """The user-facing sentence of a client error in the user's language.

    ``text()`` renders the error's message key in the catalog's language (offcut_client);
    an error without it gives its English ``message``, then its string, then its type.
    """
    render = getattr(exc, "text", None)
    if callable(render):
        try:
            shown = render()
        except Exception:  # a rendering problem must not hide the error itself
            shown = None
        if shown:
            return shown
    return getattr(exc, "message", None) or str(exc) or exc.__class__.__name__


def stage_text(stage):
    """A sidecar progress stage as the progress bar shows it (unknown stages as they are)."""
    return _(STAGES[stage]) if stage in STAGES else str(stage)


def _names(names):
    """Layer names quoted as the language quotes them, in a list."""
    return _(", ").join(_("“{name}”", name=n) for n in names)


def _connect_bundled(start):
    """A client of the ``offcut_client`` copy installed next to the plug-in."""
    try:
        import offcut_client
    except ImportError as exc:  # a missing client is an install problem, so say so
        raise UserError(
            _(
                "The Offcut client is missing next to the GIMP plug-in ({error}). Reinstall the "
                "plug-in with `offcut install gimp`.",
                error=exc,
            )
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
        """Return ``(models, default)`` for the model choice (``catalog`` without the aliases)."""
        models, default, _aliases = self.catalog()
        return models, default

    def model_choice(self):
        """The model choice's ``(nick, label, help)`` entries and its default nick."""
        return model_choices(*self.catalog())

    def catalog(self):
        """Return ``(models, default, aliases)`` for the model choice.

        ``models`` is a list of dicts with at least ``name`` and ``installed``; ``aliases`` a
        list of dicts with at least ``name`` and ``model`` (the model it stands for now).
        Sources, best first: a sidecar (started at run time, only if already running at query
        time), the models and aliases the installer recorded, and finally the catalog default
        alone so the procedure always registers.
        """
        models, default, aliases = [], None, []
        # A prefetched hello lists the models too, and stays for connect(): one request.
        hello = self._collect()
        try:
            if isinstance(hello, dict):
                listed = hello.get("models") or []
                aliases = _alias_entries(hello.get("aliases"))
            elif hello is None:
                listed = self.get_client(start=not self.querying).models()
            else:
                listed = []  # connect() reports the failure; the fallbacks register the procedure
            models = [m for m in listed if isinstance(m, dict) and m.get("name")]
            default = next((m["name"] for m in models if m.get("default")), None)
            if not aliases:  # a models reply names each model's aliases, not their order
                aliases = _aliases_of(models)
        except Exception:  # any failure here just means "use the fallbacks"
            models, aliases = [], []
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
            aliases = _alias_entries(record.get("aliases"))
            default = record.get("default_model")
            if not isinstance(default, str):
                default = None
        if not any(m["name"] == (default or FALLBACK_MODEL) for m in models):
            models.insert(
                0,
                {
                    "name": default or FALLBACK_MODEL,
                    "installed": True,
                    "description": _("Default model"),
                },
            )
        names = {m["name"] for m in models}
        aliases = [a for a in aliases if a["name"] not in names and a["model"] in names]
        return models, default or FALLBACK_MODEL, aliases

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
                ready, _writable, _failed = select.select(watched, [], [], 0.5)
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


def _alias_entries(listed):
    """Aliases as the sidecar (``hello``) or the installer's record list them, checked.

    Each is ``{"name", "label", "description", "model", "installed"}``; ``model`` is the model
    the alias stands for (the record's first candidate when it names no ``model``).
    """
    out = []
    for entry in listed if isinstance(listed, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        candidates = entry.get("models") if isinstance(entry.get("models"), list) else []
        model = entry.get("model") or (candidates[0] if candidates else None)
        if not isinstance(model, str) or any(a["name"] == entry["name"] for a in out):
            continue
        out.append(
            {
                "name": entry["name"],
                "label": str(entry.get("label") or entry["name"]),
                "description": str(entry.get("description") or ""),
                "model": model,
                "installed": entry.get("installed", True),
            }
        )
    return out


def _aliases_of(models):
    """Aliases from a ``models`` reply, where each model lists the aliases it serves now."""
    out = []
    for model in models:
        for name in model.get("aliases") or []:
            if isinstance(name, str) and all(a["name"] != name for a in out):
                out.append(
                    {
                        "name": name,
                        "label": name,
                        "description": "",
                        "model": model["name"],
                        "installed": model.get("installed", True),
                    }
                )
    known = list(ALIAS_TEXTS)  # the catalog's order for the aliases the plug-in knows
    out.sort(key=lambda a: known.index(a["name"]) if a["name"] in known else len(known))
    return out


def model_choices(models, default, aliases):
    """The model choice's ``(nick, label, help)`` entries, aliases first, and its default.

    The aliases lead, named in the user's language ("Fast", "Best quality") so that nobody
    has to know model names; every model follows by name. An entry whose model is not
    installed says so and stays selectable: GIMP rejects an insensitive choice with a bare
    "calling error", while the sidecar says which command installs it. The default is the
    ``DEFAULT_ALIAS`` ("fast") when it stands for the catalog's default model, so that the
    dialog opens on a word rather than a model name; otherwise the default model itself.
    """
    entries = []
    for alias in aliases:
        label, help_text = ALIAS_TEXTS.get(alias["name"], (alias["label"], alias["description"]))
        label = _(label)
        if not alias.get("installed", True):
            label = _("{model} (not installed)", model=label)
        entries.append((alias["name"], label, _(help_text) if help_text else ""))
    for model in models:
        label = model["name"]
        if not model.get("installed", True):
            label = _("{model} (not installed)", model=label)
        entries.append((model["name"], label, model.get("description") or ""))
    chosen = default
    if any(a["name"] == DEFAULT_ALIAS and a["model"] == default for a in aliases):
        chosen = DEFAULT_ALIAS
    return entries, chosen


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
            _(
                "The sidecar returned a {got} mask for a {wanted} area; update Offcut.",
                got="%sx%s" % (info.get("width"), info.get("height")),
                wanted="%dx%d" % (w, h),
            )
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


def indexed_message():
    return _(
        "Indexed images are not supported: convert the image to RGB or Grayscale first "
        "(Image ▸ Mode)."
    )


def no_layer_message():
    return _("No layer is selected: select one or more layers first.")


def channel_message(name):
    return _(
        "{name} is a channel, not a layer: select one or more layers to remove their background.",
        name=_names([name]),
    )


def group_message(name):
    return _(
        "{name} is a layer group: select the layers inside it, or merge the group "
        "(Layer ▸ Merge Down) first.",
        name=_names([name]),
    )


def masked_message(names):
    """Why a non-interactive run refuses layers that already have a mask."""
    return ngettext(
        "{names} already has a layer mask: apply or delete it first (Layer ▸ Mask), "
        "or choose the “selection” or “mask-layer” output.",
        "{names} already have a layer mask: apply or delete them first (Layer ▸ Mask), "
        "or choose the “selection” or “mask-layer” output.",
        len(names),
        names=_names(names),
    )


def replace_question(names):
    """The secondary text of the interactive "Replace the existing layer mask?" question."""
    return ngettext(
        "{names} already has a layer mask. Offcut will replace it with the new mask; the old "
        "mask is kept in the undo history.",
        "{names} already have a layer mask. Offcut will replace them with the new masks; the "
        "old masks are kept in the undo history.",
        len(names),
        names=_names(names),
    )


def check_limits(name, rect, limits):
    """Refuse an area the sidecar would refuse, before reading any pixel."""
    _x, _y, w, h = rect
    max_pixels = limits.get("max_pixels")
    max_side = limits.get("max_side")
    if (max_pixels and w * h > max_pixels) or (max_side and max(w, h) > max_side):
        megapixels = "%.1f" % (max_pixels / 1e6) if max_pixels else None
        if max_pixels and max_side:
            limit = _(
                "{megapixels} megapixels and {side} pixels per side",
                megapixels=megapixels,
                side=max_side,
            )
        elif max_pixels:
            limit = _("{megapixels} megapixels", megapixels=megapixels)
        else:
            limit = _("{side} pixels per side", side=max_side)
        raise UserError(
            _(
                "{name} is too large to process: {width} × {height} pixels, the sidecar accepts "
                "at most {limit}. Select a smaller area, or scale the image down "
                "(Image ▸ Scale Image).",
                name=_names([name]),
                width=w,
                height=h,
                limit=limit,
            )
        )


def no_overlap_message(count):
    return ngettext(
        "The selection does not overlap the selected layer: select an area on the layer, or "
        "Select ▸ None to process the whole layer.",
        "The selection does not overlap the selected layers: select an area on the layers, or "
        "Select ▸ None to process the whole layers.",
        count,
    )


def skipped_message(names):
    return ngettext(
        "Offcut skipped {names}: the selection does not overlap it.",
        "Offcut skipped {names}: the selection does not overlap them.",
        len(names),
        names=_names(names),
    )


def unexpected_message(exc):
    return _(
        "Offcut failed unexpectedly: {error}. Please report this.",
        error="%s: %s" % (type(exc).__name__, exc),
    )


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

#!/usr/bin/env python3
"""Offcut for GIMP 3: remove the background of the selected layers with a local model.

The plug-in is a thin GIMP front end. All image analysis happens in the Offcut sidecar (a separate
process found or started by ``offcut_client``), so this file only has to:

* register ``plug-in-offcut-remove-background`` under Layer ▸ Transparency with a
  ``GimpUi.ProcedureDialog`` (model, output, refine, decontaminate);
* read each layer's pixels through a Gegl buffer (``R'G'B'A u8`` for 8-bit images, ``float`` for
  deeper ones), send them over loopback, and write the returned mask back through Gegl buffers;
* keep GIMP's undo, progress bar, selection, layer offsets and error reporting working.

Pixels never touch the disk: no temporary files are written, no image is exported; buffers go
straight from GIMP's tiles into the socket and back (docs/gimp.md, DESIGN §3).
"""

import contextlib
import json
import os
import queue
import select
import stat
import sys
import threading
from array import array

# The installer puts ``offcut_client/`` and ``offcut_sidecar.json`` next to this file; GIMP does
# not add a plug-in's own folder to sys.path, so do it before importing the client.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gegl", "0.4")
gi.require_version("Gtk", "3.0")
from gi.repository import Gegl, Gimp, GimpUi, GLib, GObject, Gtk

try:  # Babl names a drawable's own pixel format; without it we fall back to GIMP 3.0's facts.
    gi.require_version("Babl", "0.1")
    from gi.repository import Babl
except (ImportError, ValueError):  # pragma: no cover - depends on the GIMP build
    Babl = None

PROC_NAME = "plug-in-offcut-remove-background"
PLUGIN_VERSION = "0.1.0"
FALLBACK_MODEL = "u2netp"
MENU_PATH = "<Image>/Layer/Transparency/"

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

# Share of the progress bar spent outside the sidecar (reading and writing pixels).
_IO_SHARE = 0.1


class UserError(Exception):
    """A failure the user can act on; its text is shown as is and returned as the PDB error."""


class Cancelled(Exception):
    """The user cancelled (dialog, mask question, or GIMP's progress cancel)."""


# --------------------------------------------------------------------------------------------
# Sidecar access
# --------------------------------------------------------------------------------------------

_CLIENT = None  # one connection per plug-in process, reused by create_procedure and run


def _client_module():
    """Import the bundled client; a missing client is an install problem, so say so."""
    try:
        import offcut_client
    except ImportError as exc:
        raise UserError(
            "The Offcut client is missing next to the GIMP plug-in (%s). Reinstall the plug-in "
            "with `offcut install gimp`." % exc
        ) from exc
    return offcut_client


def _get_client(start=True):
    """Return a connected client, starting the sidecar only when ``start`` is true.

    GIMP queries plug-ins at start-up; starting a model server then would slow every GIMP launch,
    so query time only talks to a sidecar that is already running.
    """
    global _CLIENT
    if _CLIENT is not None:
        if start and not _CLIENT.start:
            _CLIENT.start = True
        return _CLIENT
    mod = _client_module()
    _CLIENT = mod.Client(app="gimp", start=start)
    return _CLIENT


def _client_error_text(exc):
    """The user-facing sentence of a client error (``.message``), else its string."""
    return getattr(exc, "message", None) or str(exc) or exc.__class__.__name__


def _installer_record():
    """Read ``offcut_sidecar.json`` (written by ``offcut install``); {} when absent or broken."""
    try:
        with open(os.path.join(_HERE, "offcut_sidecar.json"), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _model_catalog(querying):
    """Return ``(models, default)`` for the model choice.

    ``models`` is a list of dicts with at least ``name`` and ``installed``. Sources, best first: a
    sidecar (started at run time, only if already running at query time), the model names the
    installer recorded, and finally the catalog default alone so the procedure always registers.
    """
    models, default = [], None
    try:
        client = _get_client(start=not querying)
        if client is not None:
            models = [m for m in client.models() if isinstance(m, dict) and m.get("name")]
            default = next((m["name"] for m in models if m.get("default")), None)
    except Exception:  # any failure here just means "use the fallbacks"
        models = []
    if not models:
        record = _installer_record()
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


# --------------------------------------------------------------------------------------------
# Cancellation: GIMP 3.0.4 has no cancel callback for plug-ins
# --------------------------------------------------------------------------------------------
#
# When the user presses the cancel button of the progress bar, GIMP (app/plug-in/
# gimpplugin-progress.c) sends GP_QUIT down the plug-in's pipe, waits 10 ms and SIGKILLs the
# plug-in. libgimp turns a GP_QUIT read during a PDB call into GimpPlugIn.do_quit(); while we wait
# for the sidecar no PDB call is running, so the main thread watches GIMP's pipe itself and sends
# ``cancel`` the moment it becomes readable. Either way the sidecar stops working for a request
# nobody will read.


class _ActiveJob:
    """The request in flight, so that ``do_quit`` can cancel it from libgimp's callback."""

    client = None
    worker = None
    cancelled = False

    @classmethod
    def cancel(cls):
        client = cls.client
        if client is None or cls.cancelled:
            return
        cls.cancelled = True
        with contextlib.suppress(Exception):  # we are being killed; nothing to report
            client.cancel()
        # The client sends the cancel from the thread running the request; GIMP kills us 10 ms
        # after asking us to quit, so give that thread the GIL for a moment right now.
        worker = cls.worker
        if worker is not None:
            worker.join(0.005)


def _gimp_read_fd():
    """File descriptor GIMP writes to this plug-in, or None where it cannot be watched.

    libgimp is started as ``prog -gimp PROTOCOL READ_FD WRITE_FD -run STACKTRACE``.
    """
    if sys.platform == "win32":  # select() only takes sockets there
        return None
    try:
        fd = int(sys.argv[sys.argv.index("-gimp") + 2])
        mode = os.fstat(fd).st_mode
    except (ValueError, IndexError, OSError):
        return None
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return None
    return fd


def _segment_watched(client, kwargs, on_progress):
    """Run ``client.segment`` in a worker thread; relay progress and GIMP's cancel.

    libgimp is not thread-safe, so progress events are queued and turned into
    ``Gimp.progress_update`` calls on the main thread, which meanwhile watches GIMP's pipe.
    """
    events = queue.Queue()
    wake_r, wake_w = os.pipe()
    box = {}

    def poke():
        with contextlib.suppress(OSError):
            os.write(wake_w, b"!")

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

    gimp_fd = _gimp_read_fd()
    watched = [wake_r] + ([gimp_fd] if gimp_fd is not None else [])
    worker = threading.Thread(target=work, name="offcut-segment", daemon=True)
    _ActiveJob.client, _ActiveJob.worker, _ActiveJob.cancelled = client, worker, False
    worker.start()
    try:
        finished = False
        while not finished:
            ready, _, _ = select.select(watched, [], [], 0.5)
            if gimp_fd is not None and gimp_fd in ready:
                # GIMP only writes to a running plug-in to quit it (progress cancel).
                _ActiveJob.cancel()
                watched.remove(gimp_fd)
            if wake_r in ready:
                os.read(wake_r, 4096)
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
        _ActiveJob.client = _ActiveJob.worker = None
        os.close(wake_r)
        os.close(wake_w)
    if "error" in box:
        raise box["error"]
    return box["result"]


# --------------------------------------------------------------------------------------------
# Pixel formats
# --------------------------------------------------------------------------------------------


class _Depth:
    """How one image precision travels: read format, wire formats, mask format, array codes."""

    def __init__(self, gray, sample):
        self.gray = gray
        self.sample = sample  # "u8", "u16" or "float": the Gegl/babl component type we read
        self.channels = 2 if gray else 4
        wire = {"u8": "8", "u16": "16", "float": "F32"}[sample]
        self.wire_format = ("GRAYA" if gray else "RGBA") + wire
        self.read_format = ("Y'A " if gray else "R'G'B'A ") + sample
        self.typecode = {"u8": "B", "u16": "H", "float": "f"}[sample]
        self.bytes_per_sample = {"u8": 1, "u16": 2, "float": 4}[sample]
        self.bytes_per_pixel = self.channels * self.bytes_per_sample


_MASK_WIRE = {"u8": "GRAY8", "u16": "GRAY16", "float": "GRAYF32"}
_WIRE_SAMPLE = {"GRAY8": "u8", "GRAY16": "u16", "GRAYF32": "float"}
_CUTOUT_SAMPLE = {"RGBA8": "u8", "RGBA16": "u16", "RGBAF32": "float"}


def _precision_sample(image):
    """GIMP precision → component type: 8-bit stays u8, anything deeper is read as float."""
    component = int(image.get_precision()) // 100  # 1 u8, 2 u16, 3 u32, 5 half, 6 float, 7 double
    return "u8" if component == 1 else "float"


def _mask_sample(image):
    """Mask component type asked from the sidecar: as deep as the image, never deeper than f32."""
    component = int(image.get_precision()) // 100
    return {1: "u8", 2: "u16"}.get(component, "float")


def _pick_depth(image, pixels, limits):
    """Choose the read format; deep images fall back to u16 then u8 if float would be too big."""
    gray = image.get_base_type() == Gimp.ImageBaseType.GRAY
    ladder = ["u8"] if _precision_sample(image) == "u8" else ["float", "u16", "u8"]
    max_bytes = limits.get("max_message_bytes")
    for sample in ladder:
        depth = _Depth(gray, sample)
        if not max_bytes or pixels * depth.bytes_per_pixel + 65536 <= max_bytes:
            return depth
    return _Depth(gray, "u8")


def _babl_model(drawable, fallback):
    """Colour model of a drawable's own format ("Y" for masks in GIMP 3.0), e.g. "Y u8" → "Y".

    Masks are linear in GIMP 3.0 even in perceptual images (DESIGN §8): writing through "Y'"
    would store 55 for 128. Using the drawable's own model lets babl convert only the type.
    """
    if Babl is not None:
        try:
            encoding = Babl.format_get_encoding(drawable.get_format())
            if encoding and " " in encoding:
                return encoding.rsplit(" ", 1)[0]
        except Exception:  # fall back to the documented GIMP 3.0 behaviour
            pass
    return fallback


# --------------------------------------------------------------------------------------------
# Reading and writing pixels through Gegl buffers
# --------------------------------------------------------------------------------------------


def _read(drawable, rect, fmt):
    """Read ``rect`` (x, y, w, h in drawable coordinates) in babl format ``fmt`` as bytes."""
    x, y, w, h = rect
    buf = drawable.get_buffer()
    data = buf.get(Gegl.Rectangle.new(x, y, w, h), 1.0, fmt, Gegl.AbyssPolicy.NONE)
    return bytes(data)


def _write_merged(drawable, rect, fmt, data):
    """Write through the shadow buffer and merge it with undo.

    ``merge_shadow`` applies the shadow only inside the selection (feathered edges blend), so the
    mask outside the selection is left untouched without any pixel arithmetic in Python.
    """
    x, y, w, h = rect
    shadow = drawable.get_shadow_buffer()
    shadow.set(Gegl.Rectangle.new(x, y, w, h), fmt, data)
    shadow.flush()
    drawable.merge_shadow(True)
    drawable.update(x, y, w, h)


def _write_direct(drawable, rect, fmt, data):
    """Write straight into a drawable that this run created (no separate undo step needed)."""
    x, y, w, h = rect
    buf = drawable.get_buffer()
    buf.set(Gegl.Rectangle.new(x, y, w, h), fmt, data)
    buf.flush()
    drawable.update(x, y, w, h)


def _crop_rows(data, width, bpp, x0, y0, w, h):
    """Cut a ``w``×``h`` window at (x0, y0) out of a row-major buffer ``width`` pixels wide."""
    if x0 == 0 and w == width:
        return data[y0 * width * bpp : (y0 + h) * width * bpp]
    row = width * bpp
    parts = []
    for r in range(y0, y0 + h):
        start = r * row + x0 * bpp
        parts.append(data[start : start + w * bpp])
    return b"".join(parts)


def _keep_alpha(cutout, cutout_sample, source, depth):
    """Cutout colours with the layer's own alpha: the layer mask, not the alpha, does the cut."""
    if _CUTOUT_SAMPLE.get(cutout_sample) != depth.sample:
        return cutout
    code = depth.typecode
    out = array(code)
    out.frombytes(cutout)
    src = array(code)
    src.frombytes(source)
    if len(out) // 4 != len(src) // depth.channels:
        return cutout
    out[3::4] = src[depth.channels - 1 :: depth.channels]
    return out.tobytes()


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _layers_of(image, drawables):
    """Map the selected drawables to layers; groups and channels get a clear error."""
    if image.get_base_type() == Gimp.ImageBaseType.INDEXED:
        raise UserError(
            "Indexed images are not supported: convert the image to RGB or Grayscale first "
            "(Image ▸ Mode)."
        )
    layers, seen = [], set()
    for drawable in drawables or []:
        if drawable.is_layer_mask():
            layer = Gimp.Layer.from_mask(drawable)
        elif drawable.is_layer():
            layer = drawable
        else:
            raise UserError(
                "“%s” is a channel, not a layer: select one or more layers to remove their "
                "background." % drawable.get_name()
            )
        if layer.is_group_layer():
            raise UserError(
                "“%s” is a layer group: select the layers inside it, or merge the group "
                "(Layer ▸ Merge Down) first." % layer.get_name()
            )
        if layer.get_id() not in seen:
            seen.add(layer.get_id())
            layers.append(layer)
    if not layers:
        raise UserError("No layer is selected: select one or more layers first.")
    return layers


def _confirm_replace_masks(names):
    """Ask whether existing layer masks may be replaced (interactive runs only)."""
    dialog = Gtk.MessageDialog(
        message_type=Gtk.MessageType.QUESTION,
        buttons=Gtk.ButtonsType.NONE,
        text="Replace the existing layer mask?",
    )
    dialog.set_title("Replace Layer Mask (Offcut)")
    dialog.format_secondary_text(
        "%s already %s a layer mask. Offcut will replace it with the new mask; the old mask is "
        "kept in the undo history."
        % (", ".join("“%s”" % n for n in names), "has" if len(names) == 1 else "have")
    )
    dialog.add_button("_Cancel", Gtk.ResponseType.CANCEL)
    dialog.add_button("_Replace", Gtk.ResponseType.OK)
    dialog.set_default_response(Gtk.ResponseType.OK)
    response = dialog.run()
    dialog.destroy()
    while Gtk.events_pending():
        Gtk.main_iteration()
    return response == Gtk.ResponseType.OK


def _check_limits(layer, rect, hello):
    """Refuse an area the sidecar would refuse, before reading any pixel."""
    limits = hello.get("limits") or {}
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
            % (layer.get_name(), w, h, " and ".join(parts))
        )


class _Run:
    """One invocation: its image, options, client and the results it accumulates."""

    def __init__(self, image, layers, options, client, hello):
        self.image = image
        self.layers = layers
        self.model = options["model"]
        self.output = options["output"]
        self.refine = options["refine"]
        self.decontaminate = options["decontaminate"]
        self.replace_masks = options.get("replace_masks", False)
        self.client = client
        self.hello = hello
        self.limits = hello.get("limits") or {}
        self.created = []
        self.selection_channels = []
        self.debug = []

    # ---- progress ----
    def _progress(self, index, base, share):
        n = len(self.layers)

        def update(stage, fraction):
            Gimp.progress_set_text("Offcut: %s (%s)" % (self.layers[index].get_name(), stage))
            Gimp.progress_update(min(1.0, (index + base + share * float(fraction)) / n))

        return update

    # ---- main loop ----
    def execute(self):
        rects = []
        for layer in self.layers:
            ok, x, y, w, h = layer.mask_intersect()
            rects.append((x, y, w, h) if ok and w > 0 and h > 0 else None)
            if rects[-1] is not None:
                _check_limits(layer, rects[-1], self.hello)
        if all(r is None for r in rects):
            raise UserError(
                "The selection does not overlap the selected layer%s: select an area on the "
                "layer, or Select ▸ None to process the whole layer."
                % ("" if len(self.layers) == 1 else "s")
            )
        skipped = [la.get_name() for i, la in enumerate(self.layers) if rects[i] is None]
        if skipped:
            Gimp.message(
                "Offcut skipped %s: the selection does not overlap %s."
                % (", ".join("“%s”" % n for n in skipped), "it" if len(skipped) == 1 else "them")
            )
        had_selection = not Gimp.Selection.is_empty(self.image)
        Gimp.progress_init("Offcut: removing the background")
        # Phase 1, no undo group open: read and segment every layer. Cancelling here (GIMP
        # kills the plug-in) or failing on a later layer leaves the image exactly as it was;
        # an undo group left open by a killed plug-in makes GIMP warn about "inconsistent undo".
        results = []
        for index, layer in enumerate(self.layers):
            if rects[index] is not None:
                results.append(self._segment(index, layer, rects[index]))
        # Phase 2: write everything as one undo step.
        Gimp.progress_set_text("Offcut: writing the results")
        self.image.undo_group_start()
        try:
            for layer, rect, mask, sample, colours in results:
                self._write(layer, rect, mask, sample, colours)
            if self.output == OUTPUT_SELECTION:
                self._apply_selection(had_selection)
            elif self.created:
                self.image.set_selected_layers(self.created)
        finally:
            self.image.undo_group_end()
            Gimp.displays_flush()
        Gimp.progress_update(1.0)
        Gimp.progress_end()

    def _segment(self, index, layer, rect):
        """Read ``rect`` of ``layer`` and ask the sidecar; returns what ``_write`` needs."""
        x, y, w, h = rect
        depth = _pick_depth(self.image, w * h, self.limits)
        Gimp.progress_set_text("Offcut: reading “%s”" % layer.get_name())
        pixels = _read(layer, rect, depth.read_format)
        want_cutout = self.decontaminate and self.output in (OUTPUT_NEW_LAYER, OUTPUT_LAYER_MASK)
        mask_format = _MASK_WIRE[_mask_sample(self.image)]
        kwargs = {
            "pixels": pixels,
            "width": w,
            "height": h,
            "fmt": depth.wire_format,
            "colorspace": "srgb",
            "model": self.model,
            "refine": self.refine,
            "decontaminate": want_cutout,
            "mask_format": mask_format,
            "cutout": want_cutout,
        }
        on_progress = self._progress(index, _IO_SHARE / 2, 1.0 - _IO_SHARE)
        try:
            result = _segment_watched(self.client, kwargs, on_progress)
        except Exception as exc:
            if getattr(exc, "code", None) == "cancelled":
                raise Cancelled() from exc
            if hasattr(exc, "code"):
                raise UserError(_client_error_text(exc)) from exc
            raise
        info = result.mask_info or {}
        mask_sample = _WIRE_SAMPLE.get(info.get("format"), _WIRE_SAMPLE[mask_format])
        if (info.get("width"), info.get("height")) != (w, h):
            raise UserError(
                "The sidecar returned a %sx%s mask for a %dx%d area; update Offcut."
                % (info.get("width"), info.get("height"), w, h)
            )
        self.debug.append(
            {
                "layer": layer.get_name(),
                "rect": [x, y, w, h],
                "format": depth.wire_format,
                "mask_format": info.get("format"),
                "meta": {k: v for k, v in (result.meta or {}).items() if k != "timings"},
            }
        )
        colours = None
        if want_cutout and getattr(result, "cutout", None) is not None:
            cutout_info = getattr(result, "cutout_info", None) or {}
            cutout_fmt = "R'G'B'A " + _CUTOUT_SAMPLE.get(cutout_info.get("format"), depth.sample)
            colours = (
                cutout_fmt,
                _keep_alpha(result.cutout, cutout_info.get("format"), pixels, depth),
            )
        return layer, rect, result.mask, mask_sample, colours

    def _write(self, layer, rect, mask, sample, colours):
        if self.output == OUTPUT_NEW_LAYER:
            self._to_new_layer(layer, rect, mask, sample, colours)
        elif self.output == OUTPUT_LAYER_MASK:
            self._to_layer_mask(layer, rect, mask, sample, colours)
        elif self.output == OUTPUT_MASK_LAYER:
            self._to_mask_layer(layer, rect, mask, sample)
        else:
            self._to_channel(layer, rect, mask, sample)

    # ---- outputs ----
    def _add_mask(self, layer, rect, mask, sample):
        existing = layer.get_mask()
        if existing is not None:
            layer.remove_mask(Gimp.MaskApplyMode.DISCARD)
        new_mask = layer.create_mask(Gimp.AddMaskType.WHITE)
        layer.add_mask(new_mask)
        model = _babl_model(new_mask, "Y")
        _write_merged(new_mask, rect, "%s %s" % (model, sample), mask)

    def _to_new_layer(self, layer, rect, mask, sample, colours):
        copy = layer.copy()
        copy.set_name("%s (no background)" % layer.get_name())
        self.image.insert_layer(copy, layer.get_parent(), self.image.get_item_position(layer))
        self._add_mask(copy, rect, mask, sample)
        if colours:
            _write_merged(copy, rect, colours[0], colours[1])
        copy.set_visible(True)
        layer.set_visible(False)
        self.created.append(copy)

    def _to_layer_mask(self, layer, rect, mask, sample, colours):
        self._add_mask(layer, rect, mask, sample)
        if colours:
            _write_merged(layer, rect, colours[0], colours[1])
        self.created.append(layer)

    def _to_mask_layer(self, layer, rect, mask, sample):
        gray = self.image.get_base_type() == Gimp.ImageBaseType.GRAY
        kind = Gimp.ImageType.GRAY_IMAGE if gray else Gimp.ImageType.RGB_IMAGE
        out = Gimp.Layer.new(
            self.image,
            "%s (mask)" % layer.get_name(),
            layer.get_width(),
            layer.get_height(),
            kind,
            100.0,
            Gimp.LayerMode.NORMAL,
        )
        self.image.insert_layer(out, layer.get_parent(), self.image.get_item_position(layer))
        ox, oy = layer.get_offsets()[1:]
        out.set_offsets(ox, oy)
        out.fill(Gimp.FillType.WHITE)
        # A mask *layer* is an image of the mask: its gray level as seen in an exported file or
        # the colour picker equals the mask value (128 = half opaque), hence the perceptual "Y'".
        _write_merged(out, rect, "Y' %s" % sample, mask)
        self.created.append(out)

    def _to_channel(self, layer, rect, mask, sample):
        """Place the layer's result in an image-sized channel (clipped to the canvas)."""
        img_w, img_h = self.image.get_width(), self.image.get_height()
        x, y, w, h = rect
        ox, oy = layer.get_offsets()[1:]
        ax, ay = ox + x, oy + y
        cx0, cy0 = max(ax, 0), max(ay, 0)
        cx1, cy1 = min(ax + w, img_w), min(ay + h, img_h)
        if cx1 <= cx0 or cy1 <= cy0:
            return
        bps = {"u8": 1, "u16": 2, "float": 4}[sample]
        data = _crop_rows(mask, w, bps, cx0 - ax, cy0 - ay, cx1 - cx0, cy1 - cy0)
        channel = Gimp.Channel.new(
            self.image, "Offcut selection", img_w, img_h, 100.0, Gegl.Color.new("black")
        )
        self.image.insert_channel(channel, None, 0)
        model = _babl_model(channel, "Y")
        _write_direct(channel, (cx0, cy0, cx1 - cx0, cy1 - cy0), "%s %s" % (model, sample), data)
        self.selection_channels.append(channel)

    def _apply_selection(self, had_selection):
        """Union of the layers' results, intersected with the selection the user had."""
        if not self.selection_channels:
            return
        saved = None
        if had_selection:  # keep the user's selection as a channel to intersect with
            saved = self.image.get_selection().copy()
            self.image.insert_channel(saved, None, 0)
        Gimp.context_push()
        try:
            Gimp.context_set_feather(False)
            Gimp.context_set_antialias(False)
            for i, channel in enumerate(self.selection_channels):
                op = Gimp.ChannelOps.REPLACE if i == 0 else Gimp.ChannelOps.ADD
                self.image.select_item(op, channel)
            if saved is not None:
                self.image.select_item(Gimp.ChannelOps.INTERSECT, saved)
        finally:
            Gimp.context_pop()
            for channel in self.selection_channels:
                self.image.remove_channel(channel)
            if saved is not None:
                self.image.remove_channel(saved)


def _debug_line(run):
    """With OFFCUT_DEBUG set, print one JSON line on stderr for tests and bug reports."""
    if not os.environ.get("OFFCUT_DEBUG"):
        return
    transport = getattr(run.client, "transport_name", None)
    record = {
        "offcut_gimp": PLUGIN_VERSION,
        "transport": transport,
        "output": run.output,
        "jobs": run.debug,
    }
    sys.stderr.write("OFFCUT-GIMP-DEBUG " + json.dumps(record, default=str) + "\n")
    sys.stderr.flush()


def _fail(procedure, text):
    """Return ``text`` as the PDB error; GIMP itself shows it to the user.

    GIMP 3.0.4 displays the error of a failed plug-in procedure in every mode we tested (a
    dialog "Execution error for 'Remove Background (Offcut)'" after a menu run, "Calling error"
    on the console for batch calls), so calling Gimp.message() as well would show it twice.
    Gimp.message is kept for notes on runs that succeed (a layer skipped, for example).
    """
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(text))


def _run(procedure, run_mode, image, drawables, config, data):
    """The procedure body: dialog, checks, one undo group, per-layer processing."""
    interactive = run_mode == Gimp.RunMode.INTERACTIVE
    try:
        if interactive:
            GimpUi.init(PROC_NAME)
            dialog = GimpUi.ProcedureDialog.new(procedure, config, "Remove Background (Offcut)")
            # Radio buttons show all four outputs with their labels at once, unlike a combo.
            dialog.get_widget("output", GimpUi.IntRadioFrame)
            dialog.fill(["model", "output", "refine", "decontaminate"])
            accepted = dialog.run()
            dialog.destroy()
            if not accepted:
                raise Cancelled()
        options = {
            "model": config.get_property("model"),
            "output": config.get_property("output"),
            "refine": bool(config.get_property("refine")),
            "decontaminate": bool(config.get_property("decontaminate")),
        }
        layers = _layers_of(image, drawables)
        if options["output"] in (OUTPUT_NEW_LAYER, OUTPUT_LAYER_MASK):
            masked = [layer.get_name() for layer in layers if layer.get_mask() is not None]
            if masked:
                if not interactive:
                    raise UserError(
                        "%s already %s a layer mask: apply or delete it first (Layer ▸ Mask), "
                        "or choose the “selection” or “mask-layer” output."
                        % (
                            ", ".join("“%s”" % n for n in masked),
                            "has" if len(masked) == 1 else "have",
                        )
                    )
                if not _confirm_replace_masks(masked):
                    raise Cancelled()
                options["replace_masks"] = True
        try:
            client = _get_client(start=True)
            hello = client.hello() or {}
        except UserError:
            raise
        except Exception as exc:  # any client failure is reported as text
            raise UserError(_client_error_text(exc)) from exc
        run = _Run(image, layers, options, client, hello)
        run.execute()
        _debug_line(run)
    except Cancelled:
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    except UserError as exc:
        return _fail(procedure, str(exc))
    except Exception as exc:  # a bug: still a message, never a Python trace only
        return _fail(
            procedure,
            "Offcut failed unexpectedly: %s: %s. Please report this." % (type(exc).__name__, exc),
        )
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


class OffcutRemoveBackground(Gimp.PlugIn):
    """Registers the procedure; GIMP spawns one process per query and per run."""

    _querying = False

    def do_query_procedures(self):
        # Only called when GIMP (re)registers plug-ins at start-up: do not start a sidecar now.
        OffcutRemoveBackground._querying = True
        return [PROC_NAME]

    def do_set_i18n(self, name):
        return False

    def do_quit(self):
        # libgimp calls this when GIMP sends GP_QUIT during one of our PDB calls (progress
        # cancel); it is our last chance to stop the sidecar's work before SIGKILL.
        _ActiveJob.cancel()

    def do_create_procedure(self, name):
        if name != PROC_NAME:
            return None
        Gegl.init(None)
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, _run, None)
        procedure.set_image_types("*")
        procedure.set_sensitivity_mask(
            Gimp.ProcedureSensitivityMask.DRAWABLE | Gimp.ProcedureSensitivityMask.DRAWABLES
        )
        procedure.set_menu_label("Remove _Background (Offcut)...")
        procedure.add_menu_path(MENU_PATH)
        procedure.set_documentation(
            "Remove the background of the selected layers with a local AI model",
            "Segments the foreground of each selected layer (only inside the selection, if "
            "there is one) with a model run by the local Offcut sidecar, and writes the result "
            "as a new masked layer, a layer mask, the selection, or a grayscale mask layer. "
            "Nothing leaves the computer and nothing is written to disk.",
            name,
        )
        procedure.set_attribution("Offcut contributors", "Apache-2.0", "2025")

        models, default = _model_catalog(OffcutRemoveBackground._querying)
        choice = Gimp.Choice.new()
        for i, model in enumerate(models):
            label = model["name"]
            if not model.get("installed", True):
                label += " (not installed)"
            choice.add(model["name"], i, label, model.get("description") or "")
        # Uninstalled models stay selectable (no set_sensitive): GIMP rejects an insensitive
        # choice with a bare "calling error", while the sidecar says which command installs it.
        procedure.add_choice_argument(
            "model",
            "_Model",
            "Segmentation model run by the Offcut sidecar",
            choice,
            default,
            GObject.ParamFlags.READWRITE,
        )
        outputs = Gimp.Choice.new()
        for i, (nick, label, help_text) in enumerate(OUTPUTS):
            outputs.add(nick, i, label, help_text)
        procedure.add_choice_argument(
            "output",
            "_Output",
            "Where the result goes",
            outputs,
            OUTPUT_NEW_LAYER,
            GObject.ParamFlags.READWRITE,
        )
        procedure.add_boolean_argument(
            "refine",
            "Refine _edges",
            "Refine the mask edges against the image (slower, better hair and fur)",
            False,
            GObject.ParamFlags.READWRITE,
        )
        procedure.add_boolean_argument(
            "decontaminate",
            "_Decontaminate colours",
            "Replace edge colours with estimated foreground colours so no background halo "
            "remains (new-layer and layer-mask outputs)",
            False,
            GObject.ParamFlags.READWRITE,
        )
        return procedure


if __name__ == "__main__":
    Gimp.main(OffcutRemoveBackground.__gtype__, sys.argv)

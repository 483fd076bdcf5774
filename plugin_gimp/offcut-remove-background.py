#!/usr/bin/env python3
"""Offcut for GIMP 3: remove the background of the selected layers with a local model.

The plug-in is a thin GIMP front end. All image analysis happens in the Offcut sidecar (a separate
process found or started by ``offcut_client``), so this file only has to:

* register ``plug-in-offcut-remove-background`` under Layer ▸ Transparency with a
  ``GimpUi.ProcedureDialog`` (model, output, refine, decontaminate);
* read each layer's pixels through a Gegl buffer (``R'G'B'A u8`` for 8-bit images, ``float`` for
  deeper ones), send them over loopback, and write the returned mask back through Gegl buffers;
* keep GIMP's undo, progress bar, selection, layer offsets and error reporting working.

Everything decided on plain values — formats, cropping, the sidecar session and request, the
messages — lives in the ``offcut_gimp`` package next to this file (``pixels`` and ``run``),
which does not import ``gi`` and is unit-tested on its own.

Pixels never touch the disk: no temporary files are written, no image is exported; buffers go
straight from GIMP's tiles into the socket and back (docs/gimp.md, docs/architecture.md §3).
"""

import time

# When this process began running Python code: the OFFCUT_DEBUG line reports it so that a
# caller's clock can split GIMP's wall time into process start, imports and the run itself.
_PROCESS_STARTED = time.time()

import os
import sys

# The installer puts ``offcut_gimp/``, ``offcut_client/`` and ``offcut_sidecar.json`` next to
# this file; GIMP does not add a plug-in's own folder to sys.path, so do it before importing them.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from offcut_gimp import pixels as px
from offcut_gimp import run
from offcut_gimp.i18n import _
from offcut_gimp.run import Cancelled, UserError

# This process's one piece of state: the client, the query flag and the request in flight.
SESSION = run.Session(_HERE)
if run.is_run(sys.argv):  # connect while gi loads and GIMP registers the procedure
    SESSION.prefetch()

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gegl", "0.4")
gi.require_version("Gtk", "3.0")
from gi.repository import Gegl, Gimp, GLib, GObject

# GimpUi and Gtk are imported by the interactive path only (_ui): scripts and batch runs show no
# window, so they need not load the UI libraries at all.

try:  # Babl names a drawable's own pixel format; without it we fall back to GIMP 3.0's facts.
    gi.require_version("Babl", "0.1")
    from gi.repository import Babl
except (ImportError, ValueError):  # pragma: no cover - depends on the GIMP build
    Babl = None

PROC_NAME = "plug-in-offcut-remove-background"
MENU_PATH = "<Image>/Layer/Transparency/"
# Offcut's own gettext domain and the plug-in's catalog folder (compiled by `offcut install`),
# relative to this file's folder as GIMP 3 requires (docs/translations.md).
I18N_DOMAIN = "offcut"
LOCALE_DIR = "locale"

# Where this process's time goes, reported in the OFFCUT_DEBUG line (docs/benchmarks.md).
PHASES = run.Phases(process=_PROCESS_STARTED, imported=time.time())


# --------------------------------------------------------------------------------------------
# Reading and writing pixels through Gegl buffers
# --------------------------------------------------------------------------------------------


def _babl_model(drawable, fallback):
    """Colour model of a drawable's own format ("Y" for masks in GIMP 3.0), e.g. "Y u8" → "Y".

    Masks are linear in GIMP 3.0 even in perceptual images (docs/architecture.md §8): writing
    through "Y'" would store 55 for 128. Using the drawable's own model lets babl convert only the
    type.
    """
    if Babl is not None:
        try:
            encoding = Babl.format_get_encoding(drawable.get_format())
            if encoding and " " in encoding:
                return encoding.rsplit(" ", 1)[0]
        except Exception:  # fall back to the documented GIMP 3.0 behaviour
            pass
    return fallback


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
    """Write straight into a drawable that this run created (no separate undo step needed).

    Undoing the run removes the drawable (or the mask) as a whole, and redo brings back the
    same object with these pixels, so the write needs no undo copy of its own, and skipping the
    shadow buffer spares GIMP a second pass over the pixels.
    """
    x, y, w, h = rect
    buf = drawable.get_buffer()
    buf.set(Gegl.Rectangle.new(x, y, w, h), fmt, data)
    buf.flush()
    drawable.update(x, y, w, h)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _layers_of(image, drawables):
    """Map the selected drawables to layers; groups and channels get a clear error."""
    if image.get_base_type() == Gimp.ImageBaseType.INDEXED:
        raise UserError(run.indexed_message())
    layers, seen = [], set()
    for drawable in drawables or []:
        if drawable.is_layer_mask():
            layer = Gimp.Layer.from_mask(drawable)
        elif drawable.is_layer():
            layer = drawable
        else:
            raise UserError(run.channel_message(drawable.get_name()))
        if layer.is_group_layer():
            raise UserError(run.group_message(layer.get_name()))
        if layer.get_id() not in seen:
            seen.add(layer.get_id())
            layers.append(layer)
    if not layers:
        raise UserError(run.no_layer_message())
    return layers


def _ui():
    """GimpUi and Gtk, imported on first use: only interactive runs show a window."""
    from gi.repository import GimpUi, Gtk

    return GimpUi, Gtk


def _confirm_replace_masks(names):
    """Ask whether existing layer masks may be replaced (interactive runs only)."""
    Gtk = _ui()[1]
    dialog = Gtk.MessageDialog(
        message_type=Gtk.MessageType.QUESTION,
        buttons=Gtk.ButtonsType.NONE,
        text=_("Replace the existing layer mask?"),
    )
    dialog.set_title(_("Replace Layer Mask (Offcut)"))
    dialog.format_secondary_text(run.replace_question(names))
    dialog.add_button(_("_Cancel"), Gtk.ResponseType.CANCEL)
    dialog.add_button(_("_Replace"), Gtk.ResponseType.OK)
    dialog.set_default_response(Gtk.ResponseType.OK)
    response = dialog.run()
    dialog.destroy()
    while Gtk.events_pending():
        Gtk.main_iteration()
    return response == Gtk.ResponseType.OK


class _Run:
    """One invocation: its image, options, client and the results it accumulates."""

    def __init__(self, image, layers, options, client, hello):
        self.image = image
        self.layers = layers
        self.options = options
        self.client = client
        self.limits = hello.get("limits") or {}
        self.created = []
        self.selection_channels = []
        self.had_selection = False
        self.debug = []

    # ---- progress ----
    def _progress(self, index, base, share):
        n = len(self.layers)

        def update(stage, fraction):
            name = self.layers[index].get_name()
            text = _("Offcut: {layer} ({stage})", layer=name, stage=run.stage_text(stage))
            Gimp.progress_set_text(text)
            Gimp.progress_update(run.progress_fraction(index, n, base, share, fraction))

        return update

    # ---- main loop ----
    def execute(self):
        rects = []
        for layer in self.layers:
            ok, x, y, w, h = layer.mask_intersect()
            rects.append((x, y, w, h) if ok and w > 0 and h > 0 else None)
            if rects[-1] is not None:
                run.check_limits(layer.get_name(), rects[-1], self.limits)
        if all(r is None for r in rects):
            raise UserError(run.no_overlap_message(len(self.layers)))
        skipped = [la.get_name() for i, la in enumerate(self.layers) if rects[i] is None]
        if skipped:
            Gimp.message(run.skipped_message(skipped))
        had_selection = self.had_selection = not Gimp.Selection.is_empty(self.image)
        Gimp.progress_init(_("Offcut: removing the background"))
        # Phase 1, no undo group open: read and segment every layer. Cancelling here (GIMP
        # kills the plug-in) or failing on a later layer leaves the image exactly as it was;
        # an undo group left open by a killed plug-in makes GIMP warn about "inconsistent undo".
        results = []
        for index, layer in enumerate(self.layers):
            if rects[index] is not None:
                results.append((layer, self._segment(index, layer, rects[index])))
        # Phase 2: write everything as one undo step.
        Gimp.progress_set_text(_("Offcut: writing the results"))
        self.image.undo_group_start()
        try:
            with PHASES("write"):
                for layer, result in results:
                    self._write(layer, result)
                if self.options.output == run.OUTPUT_SELECTION:
                    self._apply_selection(had_selection)
                elif self.created:
                    self.image.set_selected_layers(self.created)
        finally:
            with PHASES("finish"):
                self.image.undo_group_end()
                Gimp.displays_flush()
        Gimp.progress_update(1.0)
        Gimp.progress_end()

    def _segment(self, index, layer, rect):
        """Read ``rect`` of ``layer`` and ask the sidecar; returns a ``run.Result``."""
        w, h = rect[2], rect[3]
        precision = int(self.image.get_precision())
        gray = self.image.get_base_type() == Gimp.ImageBaseType.GRAY
        depth = px.pick_depth(gray, precision, w * h, self.limits)
        Gimp.progress_set_text(_("Offcut: reading “{layer}”", layer=layer.get_name()))
        with PHASES("read"):
            data = _read(layer, rect, depth.read_format)
        on_progress = self._progress(index, run.IO_SHARE / 2, 1.0 - run.IO_SHARE)
        with PHASES("roundtrip"):
            result = run.request(
                SESSION,
                self.client,
                layer.get_name(),
                rect,
                depth,
                data,
                px.mask_sample(precision),
                self.options,
                on_progress,
            )
        self.debug.append(result.record)
        return result

    def _write(self, layer, result):
        output = self.options.output
        if output == run.OUTPUT_NEW_LAYER:
            self._to_new_layer(layer, result)
        elif output == run.OUTPUT_LAYER_MASK:
            self._to_layer_mask(layer, result)
        elif output == run.OUTPUT_MASK_LAYER:
            self._to_mask_layer(layer, result)
        else:
            self._to_channel(layer, result)

    # ---- outputs ----
    def _add_mask(self, layer, result):
        existing = layer.get_mask()
        if existing is not None:
            layer.remove_mask(Gimp.MaskApplyMode.DISCARD)
        new_mask = layer.create_mask(Gimp.AddMaskType.WHITE)
        layer.add_mask(new_mask)
        fmt = "%s %s" % (_babl_model(new_mask, "Y"), result.sample)
        if self.had_selection:  # only merge_shadow confines the write to the selection
            _write_merged(new_mask, result.rect, fmt, result.mask)
        else:  # a mask this run created: its addition is the undo step
            _write_direct(new_mask, result.rect, fmt, result.mask)

    def _to_new_layer(self, layer, result):
        copy = layer.copy()
        copy.set_name(_("{layer} (no background)", layer=layer.get_name()))
        self.image.insert_layer(copy, layer.get_parent(), self.image.get_item_position(layer))
        self._add_mask(copy, result)
        if result.colours:
            _write_merged(copy, result.rect, result.colours.fmt, result.colours.data)
        copy.set_visible(True)
        layer.set_visible(False)
        self.created.append(copy)

    def _to_layer_mask(self, layer, result):
        self._add_mask(layer, result)
        if result.colours:
            _write_merged(layer, result.rect, result.colours.fmt, result.colours.data)
        self.created.append(layer)

    def _to_mask_layer(self, layer, result):
        gray = self.image.get_base_type() == Gimp.ImageBaseType.GRAY
        kind = Gimp.ImageType.GRAY_IMAGE if gray else Gimp.ImageType.RGB_IMAGE
        out = Gimp.Layer.new(
            self.image,
            _("{layer} (mask)", layer=layer.get_name()),
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
        _write_merged(out, result.rect, "Y' %s" % result.sample, result.mask)
        self.created.append(out)

    def _to_channel(self, layer, result):
        """Place the layer's result in an image-sized channel (clipped to the canvas)."""
        img_w, img_h = self.image.get_width(), self.image.get_height()
        placed = px.clip_to_canvas(result.rect, layer.get_offsets()[1:], (img_w, img_h))
        if placed is None:
            return
        canvas_rect, (x0, y0, w, h) = placed
        bps = px.SAMPLE_BYTES[result.sample]
        data = px.crop_rows(result.mask, result.rect[2], bps, x0, y0, w, h)
        channel = Gimp.Channel.new(
            self.image, _("Offcut selection"), img_w, img_h, 100.0, Gegl.Color.new("black")
        )
        self.image.insert_channel(channel, None, 0)
        model = _babl_model(channel, "Y")
        _write_direct(channel, canvas_rect, "%s %s" % (model, result.sample), data)
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
    PHASES.mark("body")
    interactive = run_mode == Gimp.RunMode.INTERACTIVE
    try:
        if interactive:
            GimpUi = _ui()[0]
            GimpUi.init(PROC_NAME)
            dialog = GimpUi.ProcedureDialog.new(procedure, config, _("Remove Background (Offcut)"))
            # Radio buttons show all four outputs with their labels at once, unlike a combo.
            dialog.get_widget("output", GimpUi.IntRadioFrame)
            dialog.fill(["model", "output", "refine", "decontaminate"])
            accepted = dialog.run()
            dialog.destroy()
            if not accepted:
                raise Cancelled()
        options = run.Options(
            model=config.get_property("model"),
            output=config.get_property("output"),
            refine=bool(config.get_property("refine")),
            decontaminate=bool(config.get_property("decontaminate")),
        )
        layers = _layers_of(image, drawables)
        if options.output in run.MASK_OUTPUTS:
            masked = [layer.get_name() for layer in layers if layer.get_mask() is not None]
            if masked:
                if not interactive:
                    raise UserError(run.masked_message(masked))
                if not _confirm_replace_masks(masked):
                    raise Cancelled()
        with PHASES("connect"):
            client, hello = SESSION.connect()
        job = _Run(image, layers, options, client, hello)
        job.execute()
        PHASES.mark("end")
        run.debug_line(client, options.output, job.debug, phases=PHASES)
    except Cancelled:
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    except UserError as exc:
        return _fail(procedure, str(exc))
    except Exception as exc:  # a bug: still a message, never a Python trace only
        return _fail(procedure, run.unexpected_message(exc))
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


class OffcutRemoveBackground(Gimp.PlugIn):
    """Registers the procedure; GIMP spawns one process per query and per run."""

    def do_query_procedures(self):
        # Only called when GIMP (re)registers plug-ins at start-up: do not start a sidecar now.
        SESSION.querying = True
        return [PROC_NAME]

    def do_set_i18n(self, name):
        """GIMP 3's convention: Offcut's own domain, catalogs in the plug-in's ``locale/``.

        libgimp binds the domain before ``do_create_procedure`` and each run, and the plug-in
        translates every text it hands GIMP (menu label, help, arguments, choices), which GIMP
        registers in the language it runs in and registers again when that language changes.
        Without the folder (a plug-in copied by hand) it stays English without libgimp's
        warning. The sentences themselves are translated with the same catalogs by
        offcut_gimp.i18n.
        """
        if not os.path.isdir(os.path.join(_HERE, LOCALE_DIR)):
            return False
        return True, I18N_DOMAIN, LOCALE_DIR

    def do_quit(self):
        # libgimp calls this when GIMP sends GP_QUIT during one of our PDB calls (progress
        # cancel); it is our last chance to stop the sidecar's work before SIGKILL.
        SESSION.cancel()

    def do_create_procedure(self, name):
        if name != PROC_NAME:
            return None
        with PHASES("create_procedure"):
            return self._create_procedure(name)

    def _create_procedure(self, name):
        Gegl.init(None)
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, _run, None)
        procedure.set_image_types("*")
        procedure.set_sensitivity_mask(
            Gimp.ProcedureSensitivityMask.DRAWABLE | Gimp.ProcedureSensitivityMask.DRAWABLES
        )
        procedure.set_menu_label(_("Remove _Background (Offcut)..."))
        procedure.add_menu_path(MENU_PATH)
        procedure.set_documentation(
            _("Remove the background of the selected layers with a local AI model"),
            _(
                "Segments the foreground of each selected layer (only inside the selection, if "
                "there is one) with a model run by the local Offcut sidecar, and writes the "
                "result as a new masked layer, a layer mask, the selection, or a grayscale mask "
                "layer. Nothing leaves the computer and nothing is written to disk."
            ),
            name,
        )
        procedure.set_attribution("Offcut contributors", "Apache-2.0", "2025")

        # The aliases first ("Fast", "Best quality"), then the models (run.model_choices).
        entries, default = SESSION.model_choice()
        choice = Gimp.Choice.new()
        for i, (nick, label, help_text) in enumerate(entries):
            choice.add(nick, i, label, help_text)
        procedure.add_choice_argument(
            "model",
            _("_Model"),
            _("Segmentation model run by the Offcut sidecar"),
            choice,
            default,
            GObject.ParamFlags.READWRITE,
        )
        outputs = Gimp.Choice.new()
        for i, (nick, label, help_text) in enumerate(run.OUTPUTS):
            outputs.add(nick, i, _(label), _(help_text))
        procedure.add_choice_argument(
            "output",
            _("_Output"),
            _("Where the result goes"),
            outputs,
            run.OUTPUT_NEW_LAYER,
            GObject.ParamFlags.READWRITE,
        )
        procedure.add_boolean_argument(
            "refine",
            _("Refine _edges"),
            _("Refine the mask edges against the image (slower, better hair and fur)"),
            False,
            GObject.ParamFlags.READWRITE,
        )
        procedure.add_boolean_argument(
            "decontaminate",
            _("_Decontaminate colours"),
            _(
                "Replace edge colours with estimated foreground colours so no background halo "
                "remains (new-layer and layer-mask outputs)"
            ),
            False,
            GObject.ParamFlags.READWRITE,
        )
        return procedure


if __name__ == "__main__":
    Gimp.main(OffcutRemoveBackground.__gtype__, sys.argv)

"""One background-removal job: read a layer, ask the sidecar for a mask, write the result.

The job is split in three steps because of Krita's threading rule: Krita's API may only be
called on the UI thread, and the sidecar request may take seconds, so it must not run there.

- ``plan_job`` (UI thread) checks the layer, works out the area to process and reads its pixels;
- ``request`` (any thread, normally a worker) sends them to the sidecar and waits for the mask;
- ``apply_result`` (UI thread) writes the mask into the document as the chosen output.

``run_job`` chains the three synchronously. The docker and the action run them across threads;
scripts and the end-to-end tests call ``run_job`` directly, so the tests exercise exactly the code
the UI runs. Nothing here imports Qt widgets, and ``krita`` is only imported where a Krita
object must be constructed, so the module also loads outside Krita.

Undo: Krita's scripting API records adding a node as one undoable "Add Layer" step, but writes
pixels, changes visibility and sets the global selection outside the undo stack. So every node
we create is filled with pixels *before* it is added to the image; the add is then the single
undo step that removes the whole result. See ``docs/krita.md`` for what is not undoable.
"""

import time

from . import pixels
from .i18n import N_, _

OUTPUT_MASK = "mask"
OUTPUT_CUTOUT = "cutout"
OUTPUT_SELECTION = "selection"
OUTPUT_GRAYSCALE = "grayscale"

# Order and wording of the docker's "Output" choices (translated where the docker shows them).
OUTPUTS = (
    (OUTPUT_MASK, N_("Transparency mask on the layer")),
    (OUTPUT_CUTOUT, N_("New cutout layer (original hidden)")),
    (OUTPUT_SELECTION, N_("Selection")),
    (OUTPUT_GRAYSCALE, N_("Mask as a grayscale layer")),
)
OUTPUT_IDS = tuple(output for output, _label in OUTPUTS)

# Layer types that have pixels of their own we may read.
_PIXEL_LAYERS = ("paintlayer",)
_MASK_TYPES = ("transparencymask", "filtermask", "transformmask", "selectionmask", "colorizemask")
_WHY_NOT = {
    "grouplayer": N_(
        "“{name}” is a group layer, which has no pixels of its own. Select a paint layer inside "
        "it, or merge the group into one layer first (Layer ▸ Merge with Layer Below, or "
        "right-click ▸ Convert ▸ to Paint Layer)."
    ),
    "filelayer": N_(
        "“{name}” is a file layer: its pixels live in another file that Offcut cannot change. "
        "Convert it first (right-click the layer ▸ Convert ▸ to Paint Layer)."
    ),
    "clonelayer": N_(
        "“{name}” is a clone layer, which shows another layer's pixels. Run Offcut on the "
        "original layer, or convert the clone first (right-click ▸ Convert ▸ to Paint Layer)."
    ),
    "vectorlayer": N_(
        "“{name}” is a vector layer. Offcut works on pixels: convert it first (right-click "
        "the layer ▸ Convert ▸ to Paint Layer)."
    ),
    "filllayer": N_(
        "“{name}” is a fill layer, generated rather than painted. Convert it first (right-click "
        "the layer ▸ Convert ▸ to Paint Layer)."
    ),
    "filterlayer": N_(
        "“{name}” is a filter layer, which has no pixels of its own. Select the paint layer "
        "below it instead."
    ),
}


class JobError(Exception):
    """A job that cannot go on, with a sentence for the user and the full story for a bug report.

    ``code`` is the sidecar's error code when the sidecar said no (``cancelled``,
    ``too_large``, ``model_missing``, ...), else None.
    """

    def __init__(self, message, details=None, code=None):
        super().__init__(message)
        self.message = message
        self.details = details or message
        self.code = code
        self.connection = False


class Settings:
    """What the docker's controls say: model, output, refine, decontaminate."""

    def __init__(self, model=None, output=OUTPUT_MASK, refine=False, decontaminate=False):
        if output not in OUTPUT_IDS:
            raise ValueError("unknown output %r; use one of %s" % (output, ", ".join(OUTPUT_IDS)))
        self.model = model or None
        self.output = output
        self.refine = bool(refine)
        self.decontaminate = bool(decontaminate)

    @property
    def uses_decontaminate(self):
        """Decontamination changes colours, so only the cutout layer, which has colours, uses it."""
        return self.decontaminate and self.output == OUTPUT_CUTOUT

    def as_dict(self):
        return {
            "model": self.model,
            "output": self.output,
            "refine": self.refine,
            "decontaminate": self.decontaminate,
        }

    @classmethod
    def from_dict(cls, d):
        output = d.get("output") or OUTPUT_MASK
        if output not in OUTPUT_IDS:
            output = OUTPUT_MASK
        return cls(d.get("model"), output, d.get("refine", False), d.get("decontaminate", False))

    def __repr__(self):
        return "Settings(%r)" % (self.as_dict(),)


class Request:
    """The part of a plan a worker thread may hold: bytes, numbers and strings only.

    No Krita object may travel to the worker: a libkis wrapper that ends its life there, or in a
    queued Qt event still pending when Krita quits, is destroyed off the UI thread, and Krita
    deadlocks in its shutdown (seen in 5.2.9 with a job running at quit).
    """

    __slots__ = (
        "color_model",
        "colorspace",
        "cutout",
        "decontaminate",
        "depth",
        "fmt",
        "gray_layout",
        "height",
        "mask_format",
        "model",
        "output",
        "pixels",
        "refine",
        "width",
    )

    def __init__(self, plan):
        self.pixels = plan.pixels
        self.width, self.height = plan.width, plan.height
        self.fmt, self.colorspace = plan.fmt, plan.colorspace
        self.model = plan.settings.model
        self.refine = plan.settings.refine
        self.decontaminate = plan.settings.uses_decontaminate
        self.mask_format, self.cutout = plan.mask_format, plan.cutout
        self.output = plan.settings.output
        self.color_model, self.depth = plan.color_model, plan.depth
        self.gray_layout = plan.gray_layout


class Plan:
    """Everything ``request`` and ``apply_result`` need, gathered on the UI thread.

    It holds the document, so it stays on the UI thread; ``request()`` gives the worker's part.
    """

    def __init__(self, **kw):
        self.doc = kw["doc"]
        self.node_id = kw["node_id"]  # the layer the result belongs to, found again at the end
        self.node_name = kw["node_name"]
        self.settings = kw["settings"]
        self.x, self.y, self.width, self.height = kw["region"]
        self.pixels = kw["pixels"]
        self.fmt = kw["fmt"]
        self.colorspace = kw["colorspace"]
        self.color_model = kw["color_model"]  # of the pixels sent (after any conversion)
        self.depth = kw["depth"]
        self.converted_from = kw.get("converted_from")  # (model, depth, profile) or None
        self.mask_format = kw["mask_format"]
        self.cutout = kw["cutout"]
        self.gray_layout = kw.get("gray_layout")  # (model, depth) of the grayscale layer
        self.clipped_by_selection = kw.get("clipped_by_selection", False)

    @property
    def region(self):
        return (self.x, self.y, self.width, self.height)

    def request(self):
        return Request(self)

    def describe(self):
        sel = ", selection bounds" if self.clipped_by_selection else ""
        return "%s: %d×%d at (%d, %d)%s, %s" % (
            self.node_name,
            self.width,
            self.height,
            self.x,
            self.y,
            sel,
            self.fmt,
        )


def _rect(qrect):
    return (qrect.x(), qrect.y(), qrect.width(), qrect.height())


def _intersect(a, b):
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


def target_layer(node):
    """The layer a job works on: the active layer, or the layer that owns the active mask.

    Raises ``JobError`` with a sentence the user can act on for layers without pixels of their
    own (groups, file, clone, vector, fill and filter layers).
    """
    if node is None:
        raise JobError(
            _("There is no active layer: click a paint layer in the Layers docker first.")
        )
    kind = node.type()
    if kind in _MASK_TYPES:
        parent = node.parentNode()
        if parent is None:
            raise JobError(_("The active mask belongs to no layer; select a paint layer."))
        node, kind = parent, parent.type()
    if kind in _PIXEL_LAYERS:
        return node
    why = _WHY_NOT.get(kind)
    if why is None:
        raise JobError(
            _(
                "“{name}” is a {kind}, not a paint layer; select a paint layer.",
                name=node.name(),
                kind=kind or "node",
            )
        )
    raise JobError(_(why, name=node.name()))


def _buffer(qbytearray):
    """Krita's pixels without a second copy: QByteArray exposes its memory (PyQt5 and PyQt6).

    The view keeps the QByteArray alive; it is a plain value, safe to hand to the worker.
    Copying instead costs as much again as reading (0.4 s for 30 megapixels in 5.2.9).
    """
    try:
        return memoryview(qbytearray)
    except TypeError:  # a PyQt without the buffer protocol on QByteArray
        return bytes(qbytearray)


def _selection_rect(doc):
    sel = doc.selection()
    if sel is None or sel.width() <= 0 or sel.height() <= 0:
        return None
    return (sel.x(), sel.y(), sel.width(), sel.height())


def _convert_for_reading(node, region):
    """Pixels of a CMYK, Lab, XYZ or YCbCr layer as RGBA of the same depth.

    Krita converts a detached duplicate of the layer, so the document is not touched and
    nothing lands on the undo stack.
    """
    model, depth, profile = node.colorModel(), node.colorDepth(), node.colorProfile()
    rgba_model, rgba_depth, rgba_profile = pixels.rgba_layout_for_conversion(depth)
    dup = node.duplicate()
    ok = dup is not None and dup.setColorSpace(rgba_model, rgba_depth, rgba_profile)
    if not ok or (dup.colorModel(), dup.colorDepth()) != (rgba_model, rgba_depth):
        raise JobError(
            _(
                "Offcut cannot read {model} {depth} layers, and Krita could not convert this "
                "one to RGB. Convert the image first (Image ▸ Convert Image Color Space ▸ "
                "RGB/Alpha).",
                model=model,
                depth=depth,
            )
        )
    data = _buffer(dup.pixelData(*region))
    return data, (rgba_model, rgba_depth), (model, depth, profile)


def plan_job(doc, node, settings, limits=None):
    """Check the layer, choose the area and read its pixels. UI thread only.

    The area is the layer's exact bounds (so its offset is honoured), clipped to the canvas and,
    when there is a selection, to the selection's bounding rectangle. Only that rectangle is
    sent; outside it the result counts as background. With the sidecar's ``limits`` known, an
    area it would refuse is refused here, before a huge layer is copied into memory.
    """
    if doc is None:
        raise JobError(_("There is no open image: open or create one first."))
    layer = target_layer(node)
    bounds = layer.bounds()
    if bounds.isEmpty():
        raise JobError(_("“{name}” is empty: there is nothing to cut out.", name=layer.name()))
    region = _intersect(_rect(bounds), (0, 0, doc.width(), doc.height()))
    if region is None:
        raise JobError(_("“{name}” lies entirely outside the canvas.", name=layer.name()))
    sel = _selection_rect(doc)
    if sel is not None:
        region = _intersect(region, sel)
        if region is None:
            raise JobError(
                _(
                    "The selection does not overlap “{name}”. Select part of the layer, or "
                    "deselect (Select ▸ Deselect) to process the whole layer.",
                    name=layer.name(),
                )
            )
    check_limits(region[2], region[3], limits)

    model, depth = layer.colorModel(), layer.colorDepth()
    converted_from = None
    if pixels.layout(model, depth) is None:
        data, (model, depth), converted_from = _convert_for_reading(layer, region)
        colorspace = "srgb"
    else:
        data = _buffer(layer.pixelData(*region))
        colorspace = "linear" if pixels.is_linear_profile(layer.colorProfile()) else "srgb"
    fmt, bpp, _sample = pixels.layout(model, depth)
    size = memoryview(data).nbytes
    if size != region[2] * region[3] * bpp:
        raise JobError(
            _(
                "Krita returned {size} bytes for a {width}×{height} {model} {depth} area; "
                "expected {expected}.",
                size=size,
                width=region[2],
                height=region[3],
                model=model,
                depth=depth,
                expected=region[2] * region[3] * bpp,
            )
        )

    gray_layout = None
    mask_format = "GRAY8"  # transparency masks and selections are 8-bit in Krita
    if settings.output == OUTPUT_GRAYSCALE:
        gray_layout = _gray_layout(doc)
        mask_format = pixels.MASK_FORMAT_FOR_DEPTH[gray_layout[1]]
    return Plan(
        doc=doc,
        node_id=layer.uniqueId(),
        node_name=layer.name(),
        settings=settings,
        region=region,
        pixels=data,
        fmt=fmt,
        colorspace=colorspace,
        color_model=model,
        depth=depth,
        converted_from=converted_from,
        mask_format=mask_format,
        cutout=settings.output == OUTPUT_CUTOUT,
        gray_layout=gray_layout,
        clipped_by_selection=sel is not None,
    )


def _gray_layout(doc):
    """Model and depth the grayscale mask layer is written in: the document's when we can."""
    model, depth = doc.colorModel(), doc.colorDepth()
    if pixels.layout(model, depth) is None:
        return ("GRAYA", depth)
    return (model, depth)


def check_limits(width, height, limits):
    """Refuse, with a clear sentence, an area the sidecar would refuse as ``too_large``.

    Checking here saves sending hundreds of megabytes only to be told no.
    """
    limits = limits or {}
    max_pixels = int(limits.get("max_pixels") or 0)
    max_side = int(limits.get("max_side") or 0)
    w, h = width, height
    if max_pixels and w * h > max_pixels:
        raise JobError(
            _(
                "The area to process is {width}×{height} ({megapixels} megapixels), more than "
                "the sidecar's limit of {limit} megapixels. Select a smaller area, or scale the "
                "image down (Image ▸ Scale Image To New Size), then try again.",
                width=w,
                height=h,
                megapixels="%.1f" % (w * h / 1e6),
                limit="%.1f" % (max_pixels / 1e6),
            ),
            code="too_large",
        )
    if max_side and max(w, h) > max_side:
        raise JobError(
            _(
                "The area to process is {width}×{height}, and the sidecar accepts at most "
                "{limit} pixels on a side. Select a smaller area, or scale the image down, then "
                "try again.",
                width=w,
                height=h,
                limit=max_side,
            ),
            code="too_large",
        )


def _client_error(exc):
    code = getattr(exc, "code", None) or "internal"
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    # The sentence shown is the client's, in the user's language (OffcutClientError.text());
    # the details for a bug report keep the sidecar's English message.
    shown = message
    render = getattr(exc, "text", None)
    if callable(render):
        try:
            shown = render() or message
        except Exception:
            shown = message
    err = JobError(shown, details="%s: %s" % (code, message), code=code)
    # The client marks failures to reach the sidecar at all; the docker shows them as its state.
    err.connection = bool(getattr(exc, "connection", False))
    return err


class Reply:
    """The sidecar's answer and the bytes to write, already in the target layout."""

    __slots__ = ("data", "meta", "model")

    def __init__(self, result, data):
        self.meta = result.meta or {}
        self.model = self.meta.get("model")
        self.data = data


def encode_output(req, result):
    """The bytes ``apply_result`` writes: the mask as is, or pixels in the layer's layout.

    Pure Python and possibly slow for big float layers (half-float packing), so it runs on the
    worker with the request rather than on Krita's UI thread.
    """
    if req.output == OUTPUT_CUTOUT:
        return pixels.cutout_to_layout(
            result.cutout, result.cutout_info["format"], req.color_model, req.depth
        )
    if req.output == OUTPUT_GRAYSCALE:
        return pixels.gray_layer_pixels(result.mask, req.mask_format, *req.gray_layout)
    return result.mask


def request(client, req, on_progress=None, timeout=None):
    """Send a ``Request``'s pixels to the sidecar; return its ``Reply``. Safe on any thread."""
    try:
        result = client.segment(
            req.pixels,
            req.width,
            req.height,
            req.fmt,
            colorspace=req.colorspace,
            model=req.model,
            refine=req.refine,
            decontaminate=req.decontaminate,
            mask_format=req.mask_format,
            cutout=req.cutout,
            on_progress=on_progress,
            timeout=timeout,
        )
    except JobError:
        raise
    except Exception as exc:
        if hasattr(exc, "code"):
            raise _client_error(exc) from exc
        raise
    _check_result(req, result)
    return Reply(result, bytes(encode_output(req, result)))


def _check_result(req, result):
    """Catch a reply that does not fit the request before it is written into the document."""
    info = result.mask_info
    w, h, fmt = info.get("width"), info.get("height"), info.get("format")
    need = req.width * req.height * pixels.MASK_SAMPLE_BYTES.get(fmt, 0)
    if (w, h) != (req.width, req.height) or fmt != req.mask_format or len(result.mask) != need:
        raise JobError(
            _(
                "The sidecar sent a mask that does not fit the request ({width}x{height} "
                "{format}, {size} bytes); please report this as a bug.",
                width=w,
                height=h,
                format=fmt,
                size=len(result.mask),
            ),
        )
    if req.cutout:
        cut, cinfo = result.cutout, result.cutout_info
        if cut is None or cinfo is None:
            raise JobError(_("The sidecar sent no cutout; please report this as a bug."))
        size = pixels.CUTOUT_SAMPLE_BYTES.get(cinfo.get("format"), 0)
        if len(cut) != req.width * req.height * 4 * size:
            raise JobError(_("The sidecar sent a cutout that does not fit the request."))


def _still_there(plan):
    """The plan's layer if the document still holds it; the user may have deleted it meanwhile."""
    try:
        node = plan.doc.nodeByUniqueID(plan.node_id)
    except Exception:
        node = None
    if node is None:
        raise JobError(
            _(
                "“{name}” was deleted, or its image closed, while Offcut was working; nothing "
                "was changed.",
                name=plan.node_name,
            )
        )
    return node


def _name(plan, reply, what):
    model = reply.model or plan.settings.model
    return "%s (%s)" % (what, model) if model else what


def _match_colorspace(new, model, depth, profile):
    current = (new.colorModel(), new.colorDepth(), new.colorProfile())
    if current != (model, depth, profile) and not new.setColorSpace(model, depth, profile):
        raise JobError(
            _(
                "Krita could not create a {model} {depth} layer for the result.",
                model=model,
                depth=depth,
            )
        )


def _apply_mask(plan, reply, node):
    mask = plan.doc.createTransparencyMask(_name(plan, reply, _("Offcut mask")))
    # A new mask hides everything until written: outside the processed area is background.
    mask.setPixelData(reply.data, *plan.region)
    node.addChildNode(mask, None)
    return [mask]


def _apply_cutout(plan, reply, node):
    layer = plan.doc.createNode(_("{layer} (cutout)", layer=plan.node_name), "paintlayer")
    if plan.converted_from is None:
        _match_colorspace(layer, node.colorModel(), node.colorDepth(), node.colorProfile())
    else:
        _match_colorspace(layer, plan.color_model, plan.depth, pixels.CONVERSION_PROFILE["RGBA"])
    layer.setPixelData(reply.data, *plan.region)
    if plan.converted_from is not None:
        _match_colorspace(layer, *plan.converted_from)
    parent = node.parentNode()
    parent.addChildNode(layer, node)
    node.setVisible(False)
    return [layer]


def _apply_selection(plan, reply, node):
    from krita import Selection

    sel = Selection()
    sel.setPixelData(reply.data, *plan.region)
    plan.doc.setSelection(sel)
    return []


def _apply_grayscale(plan, reply, node):
    model, depth = plan.gray_layout
    layer = plan.doc.createNode(
        _name(plan, reply, _("{layer} mask", layer=plan.node_name)), "paintlayer"
    )
    final = (layer.colorModel(), layer.colorDepth(), layer.colorProfile())
    if (final[0], final[1]) != (model, depth):
        _match_colorspace(layer, model, depth, pixels.CONVERSION_PROFILE[model])
    layer.setPixelData(reply.data, *plan.region)
    if (final[0], final[1]) != (model, depth):
        _match_colorspace(layer, *final)
    node.parentNode().addChildNode(layer, node)
    return [layer]


_APPLY = {
    OUTPUT_MASK: _apply_mask,
    OUTPUT_CUTOUT: _apply_cutout,
    OUTPUT_SELECTION: _apply_selection,
    OUTPUT_GRAYSCALE: _apply_grayscale,
}


# What each output did, for the message after a job (translated where it is shown).
_DONE = {
    OUTPUT_MASK: N_("added a transparency mask to “{layer}”"),
    OUTPUT_CUTOUT: N_("added a cutout of “{layer}” and hid the original"),
    OUTPUT_SELECTION: N_("selected the subject of “{layer}”"),
    OUTPUT_GRAYSCALE: N_("added the mask of “{layer}” as a grayscale layer"),
}


class Outcome:
    """What a finished job did, for the docker's message line and for tests."""

    def __init__(self, plan, reply, nodes, seconds):
        self.plan = plan
        self.reply = reply
        self.nodes = nodes
        self.seconds = seconds
        self.model = reply.model or plan.settings.model

    def summary(self):
        what = _(_DONE[self.plan.settings.output], layer=self.plan.node_name)
        seconds = "%.1f" % self.seconds
        if self.model:
            return _(
                "Done with {model} in {seconds} s: {what}.",
                model=self.model,
                seconds=seconds,
                what=what,
            )
        return _("Done in {seconds} s: {what}.", seconds=seconds, what=what)


def apply_result(plan, reply, started=None):
    """Write the sidecar's ``Reply`` into the document as the chosen output. UI thread only."""
    node = _still_there(plan)
    nodes = _APPLY[plan.settings.output](plan, reply, node)
    plan.doc.waitForDone()
    plan.pixels = reply.data = None  # neither copy of the pixels is needed any more
    return Outcome(plan, reply, nodes, time.monotonic() - (started or time.monotonic()))


def hello_limits(client):
    """The sidecar's declared limits (max_pixels, max_side, ...) from ``hello``."""
    return client.hello().get("limits") or {}


def run_job(doc, node, settings, client, on_progress=None, timeout=None, limits=None):
    """Plan, request and apply in one go, on the calling (UI) thread.

    For scripts and tests; the docker runs the same three steps with ``request`` on a worker
    thread so that Krita stays responsive.
    """
    started = time.monotonic()
    plan = plan_job(doc, node, settings, hello_limits(client) if limits is None else limits)
    req = plan.request()
    reply = request(client, req, on_progress=on_progress, timeout=timeout)
    return apply_result(plan, reply, started)

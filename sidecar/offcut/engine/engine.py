"""Inference: ONNX Runtime sessions kept warm, and the one segmentation pipeline.

decode → resize to the model input (8-bit, before any float conversion) → normalise → ONNX
Runtime → activation → upsample to the ROI → refine → threshold → cutout/decontaminate → encode.

Each stage reports progress and checks for cancellation; a running ``InferenceSession.run`` is
stopped through ``RunOptions.terminate`` so a cancel does not wait for the model. Pre- and
post-processing are chosen per model *family* from the catalog, so a new model of a known family is
a catalog entry, not new code (docs/architecture.md §4).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from offcut.client import wire
from offcut.engine import formats, resample
from offcut.engine.refine import estimate_foreground, refine_mask
from offcut.errors import error
from offcut.models.catalog import Catalog, ModelSpec

if TYPE_CHECKING:
    from offcut.models.store import ModelStore

ProgressFn = Callable[[str, float], None]

# Preference order when several execution providers are present. CPU is always last.
_PROVIDER_ORDER = (
    "CUDAExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "CPUExecutionProvider",
)

# Fraction of the overall progress at which each stage starts (inference dominates).
_STAGE_START = {
    "decode": 0.0,
    "inference": 0.1,
    "postprocess": 0.8,
    "refine": 0.85,
    "decontaminate": 0.9,
    "encode": 0.95,
}


class CancelToken:
    """Shared between the server thread (which cancels) and the worker (which checks)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._run_options: Any = None

    def cancel(self) -> None:
        with self._lock:
            self._event.set()
            if self._run_options is not None:
                self._run_options.terminate = True

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise error(wire.CANCELLED, "request_cancelled")

    def attach(self, run_options: Any) -> None:
        with self._lock:
            self._run_options = run_options
            if self._event.is_set():
                run_options.terminate = True


@dataclass
class SegmentRequest:
    """A validated ``segment`` request (server.py builds it from the wire header)."""

    pixels: memoryview | bytes | bytearray
    width: int
    height: int
    fmt: formats.PixelFormat
    colorspace: str = "srgb"
    model: str | None = None
    roi: tuple[int, int, int, int] | None = None
    refine: bool = False
    decontaminate: bool = False
    mask_format: str = "GRAY8"
    cutout: bool = False
    threshold: float | None = None


@dataclass
class SegmentResult:
    mask: bytes | memoryview
    mask_info: dict[str, Any]
    model: str
    sha256: str
    provider: str
    timings: dict[str, float] = field(default_factory=dict)
    cutout: bytes | memoryview | None = None
    cutout_info: dict[str, Any] | None = None


@dataclass
class LoadedModel:
    spec: ModelSpec
    session: Any
    input_name: str
    sha256: str
    provider: str


def choose_providers(available: list[str], forced: str | None = None) -> list[str]:
    """The provider list handed to ONNX Runtime: the best accelerator present, then CPU.

    ``forced`` (``OFFCUT_PROVIDER``, e.g. ``CPUExecutionProvider``) overrides the choice; a forced
    provider that is not available is an error rather than a silent fallback.
    """
    if forced:
        if forced not in available:
            raise error(
                wire.INTERNAL,
                "provider_unavailable",
                provider=forced,
                available=", ".join(available),
            )
        return [forced] if forced == "CPUExecutionProvider" else [forced, "CPUExecutionProvider"]
    for name in _PROVIDER_ORDER:
        if name in available and name != "CPUExecutionProvider":
            return [name, "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class Engine:
    """Owns the ONNX Runtime sessions (kept warm, a few at a time) and runs the pipeline."""

    def __init__(
        self,
        catalog: Catalog,
        store: ModelStore,
        max_loaded: int = 2,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        ort.disable_telemetry_events()  # belt and braces: offcut/__init__.py already disabled it
        self._ort = ort
        self.catalog = catalog
        self.store = store
        self.max_loaded = max_loaded
        self.threads = threads
        self.available_providers: list[str] = list(ort.get_available_providers())
        self.providers = choose_providers(
            self.available_providers, os.environ.get("OFFCUT_PROVIDER") or None
        )
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def provider(self) -> str:
        """The provider sessions are created with (what a loaded session really uses may differ:
        the result of each request reports the session's actual provider)."""
        return self.providers[0]

    def loaded_models(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def load(self, name: str | None) -> LoadedModel:
        """The warm session for ``name``, creating it on first use (sha256-verified).

        ``name`` may be an alias (``fast``, ``best``); the catalog resolves it against what is
        installed now, so a model derived while the sidecar runs is used from the next request.
        """
        spec = self.catalog.resolve(name or self.catalog.default, self.store.is_installed)
        with self._lock:
            if spec.name in self._loaded:
                self._loaded.move_to_end(spec.name)
                return self._loaded[spec.name]
        path, sha256 = self.store.open_verified(spec)
        opts = self._ort.SessionOptions()
        opts.log_severity_level = 3
        # Measured in bench/ (docs/benchmarks.md): without the memory pattern planner the peak
        # RSS of a run drops by about a third at the same speed. Thread spinning stays on:
        # turning it off made u2netp slower on a quiet machine (threads must be woken for each
        # of its many small operators), though faster where other processes keep every core busy.
        opts.enable_mem_pattern = False
        # Spinning helps inside a run, but after it ONNX Runtime's threads keep spinning for a
        # while and take the cores from the mask upsample that follows: stopping them when the
        # run returns speeds the upsample up at the same inference time (docs/benchmarks.md).
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        if self.threads:
            opts.intra_op_num_threads = self.threads
        try:
            session = self._ort.InferenceSession(
                str(path), sess_options=opts, providers=self.providers
            )
        except Exception as exc:  # ONNX Runtime raises its own exception types
            raise error(
                wire.MODEL_INVALID,
                "model_load_failed",
                model=spec.name,
                error=type(exc).__name__,
            ) from None
        loaded = LoadedModel(
            spec=spec,
            session=session,
            input_name=session.get_inputs()[0].name,
            sha256=sha256,
            provider=session.get_providers()[0],
        )
        with self._lock:
            self._loaded[spec.name] = loaded
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
        return loaded

    def segment(
        self,
        req: SegmentRequest,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
    ) -> SegmentResult:
        cancel = cancel or CancelToken()
        timings: dict[str, float] = {}

        def stage(name: str) -> None:
            cancel.check()
            if progress is not None:
                progress(name, _STAGE_START[name])

        t = time.perf_counter()
        model = self.load(req.model)
        timings["load"] = time.perf_counter() - t
        roi = req.roi or (0, 0, req.width, req.height)
        _, _, rw, rh = roi

        stage("decode")
        t = time.perf_counter()
        image = formats.to_model_image(
            req.pixels, req.fmt, req.width, req.height, roi, req.colorspace
        )
        tensor = preprocess(image, model.spec)
        timings["preprocess"] = time.perf_counter() - t

        stage("inference")
        t = time.perf_counter()
        raw = self._run(model, tensor, cancel)
        timings["inference"] = time.perf_counter() - t

        stage("postprocess")
        t = time.perf_counter()
        small = activate(raw, model.spec)
        need_float = req.refine or req.mask_format != "GRAY8" or req.cutout
        mask_u8: Image.Image | None = None
        mask_f: np.ndarray | None = None
        if need_float:
            mask_f = upsample_float(small, (rw, rh))
        else:
            mask_u8 = upsample_u8(small, (rw, rh))
        timings["postprocess"] = time.perf_counter() - t

        if req.refine:
            stage("refine")
            t = time.perf_counter()
            assert mask_f is not None
            mask_f = refine_mask(mask_f, image)
            timings["refine"] = time.perf_counter() - t
        if req.threshold is not None:
            if mask_f is not None:
                mask_f = (mask_f >= req.threshold).astype(np.float32)
            else:
                assert mask_u8 is not None
                cut = int(np.ceil(req.threshold * 255.0))
                mask_u8 = mask_u8.point(lambda v: 255 if v >= cut else 0)

        cutout = cutout_info = None
        if req.cutout:
            assert mask_f is not None
            if req.decontaminate:
                stage("decontaminate")
            else:
                cancel.check()
            t = time.perf_counter()
            cutout, cutout_info = make_cutout(req, roi, mask_f, req.decontaminate)
            timings["decontaminate" if req.decontaminate else "cutout"] = time.perf_counter() - t

        stage("encode")
        t = time.perf_counter()
        mask_bytes = encode_mask(mask_u8, mask_f, req.mask_format)
        timings["encode"] = time.perf_counter() - t
        return SegmentResult(
            mask=mask_bytes,
            mask_info={
                "width": rw,
                "height": rh,
                "format": req.mask_format,
                "x": roi[0],
                "y": roi[1],
            },
            model=model.spec.name,
            sha256=model.sha256,
            provider=model.provider,
            timings=timings,
            cutout=cutout,
            cutout_info=cutout_info,
        )

    def _run(self, model: LoadedModel, tensor: np.ndarray, cancel: CancelToken) -> np.ndarray:
        run_options = self._ort.RunOptions()
        cancel.attach(run_options)
        try:
            # Only the first output: IS-Net also returns five side maps and six feature maps
            # that would be copied out for nothing, a noticeable share of its run.
            first = model.session.get_outputs()[0].name
            outputs = model.session.run([first], {model.input_name: tensor}, run_options)
        except Exception as exc:
            if cancel.cancelled:
                raise error(wire.CANCELLED, "request_cancelled") from None
            raise error(
                wire.INTERNAL,
                "inference_failed",
                model=model.spec.name,
                error=type(exc).__name__,
            ) from exc
        cancel.check()
        return np.asarray(outputs[0])


def preprocess(image: Image.Image, spec: ModelSpec) -> np.ndarray:
    """8-bit resize to the model input, then one float32 NCHW tensor (the only float copy).

    Resizing the 8-bit image first is both what rembg does and the cheapest order: the float
    tensor is input_size² × 3, whatever the layer's size. The resize is Pillow's LANCZOS with a
    box pre-reduction along sides of 8 × the input size or more (:func:`resample.model_resize`;
    smaller layers get exactly rembg's resize), and the normalisation is rembg's float64
    arithmetic rounded once to float32.
    """
    size = spec.input_size
    small = resample.model_resize(image, (size, size))
    if small.mode != "RGB":
        small = small.convert("RGB")
    x = np.asarray(small, dtype=np.float64)  # input_size² × 3: small whatever the layer
    if spec.scale == "max":
        x /= max(float(x.max()), 1e-6)
    else:
        x /= 255.0
    x -= np.asarray(spec.mean, dtype=np.float64)
    x /= np.asarray(spec.std, dtype=np.float64)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def activate(raw: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The model's first output as a float32 (S, S) map in 0..1.

    ``activation`` (from the catalog family): ``minmax`` stretches the output to 0..1 as rembg
    does; ``sigmoid`` applies a logistic; ``sigmoid_minmax`` does both, in that order; ``none``
    only clips (the graph already ends in a sigmoid).
    """
    pred = raw.reshape(raw.shape[-2], raw.shape[-1]).astype(np.float32)
    if spec.activation.startswith("sigmoid"):
        pred = (1.0 / (1.0 + np.exp(-pred))).astype(np.float32)
        if spec.activation == "sigmoid":
            return pred
    if spec.activation == "none":
        return np.clip(pred, 0.0, 1.0)
    lo, hi = float(pred.min()), float(pred.max())
    if hi - lo < 1e-12:
        return np.zeros_like(pred)
    return (pred - lo) / (hi - lo)


def upsample_u8(small: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """The 8-bit mask at ROI size: quantise at model resolution, then one 8-bit resize.

    Quantisation rounds to the nearest level; rembg truncates (``* 255`` then ``astype``), which
    biases every mask down by half a level: rounding lowers MAE and SAD on both eval sets and
    both models (docs/quality.md). The resize (Pillow's LANCZOS, exactly) writes into a numpy
    array that the returned image wraps without a copy; :func:`encode_mask` sends it as it is.
    """
    img = Image.fromarray((small * 255.0 + 0.5).astype(np.uint8), "L")
    out = resample.lanczos_resize_into(img, np.empty((size[1], size[0]), dtype=np.uint8))
    mask = Image.frombuffer("L", size, out, "raw", "L", 0, 1)
    mask._offcut_array = out  # type: ignore[attr-defined]
    return mask


def upsample_float(small: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(small.astype(np.float32), "F")
    out = resample.lanczos_resize_into(img, np.empty((size[1], size[0]), dtype=np.float32))
    np.clip(out, 0.0, 1.0, out=out)
    return out


# Rows converted at a time when a float mask is quantised: bounds the float scratch memory.
_ENCODE_ROWS = 256


def _quantise(mask_f: np.ndarray, top: float, dtype: Any) -> np.ndarray:
    """``(mask_f * top + 0.5).astype(dtype)``, the same values, in bands of rows."""
    h = mask_f.shape[0]
    out = np.empty(mask_f.shape, dtype=dtype)
    scratch = np.empty((min(h, _ENCODE_ROWS), *mask_f.shape[1:]), dtype=np.float32)
    for r0 in range(0, h, _ENCODE_ROWS):
        band = mask_f[r0 : r0 + _ENCODE_ROWS]
        tmp = scratch[: band.shape[0]]
        np.multiply(band, np.float32(top), out=tmp)
        tmp += np.float32(0.5)
        np.copyto(out[r0 : r0 + _ENCODE_ROWS], tmp, casting="unsafe")
    return out


def _as_frame(arr: np.ndarray) -> memoryview:
    """A C-contiguous array as a flat byte view: sent over ZeroMQ without a copy."""
    return memoryview(np.ascontiguousarray(arr)).cast("B")


def encode_mask(
    mask_u8: Image.Image | None, mask_f: np.ndarray | None, fmt: str
) -> bytes | memoryview:
    if fmt == "GRAY8":
        if mask_u8 is not None:
            arr = getattr(mask_u8, "_offcut_array", None)
            if arr is not None and mask_u8.readonly:  # still the untouched upsample output
                return _as_frame(arr)
            return mask_u8.tobytes()
        assert mask_f is not None
        return _as_frame(_quantise(mask_f, 255.0, np.uint8))
    assert mask_f is not None
    if fmt == "GRAY16":
        return _as_frame(_quantise(mask_f, 65535.0, np.dtype("<u2")))
    return _as_frame(mask_f.astype("<f4", copy=False))


def make_cutout(
    req: SegmentRequest, roi: tuple[int, int, int, int], mask: np.ndarray, decontaminate: bool
) -> tuple[bytes, dict[str, Any]]:
    """RGBA of the input's depth class: colours (decontaminated if asked), alpha = mask × alpha."""
    colour = formats.colour_of(req.pixels, req.fmt, req.width, req.height, roi)
    alpha = mask
    in_alpha = formats.alpha_of(req.pixels, req.fmt, req.width, req.height, roi)
    if in_alpha is not None:
        alpha = alpha * in_alpha
    name = formats.CUTOUT_FORMAT_FOR_DEPTH[req.fmt.depth]
    h, w = mask.shape
    if req.fmt.depth == "8":
        top, dtype = 255.0, np.uint8
    elif req.fmt.depth == "16":
        top, dtype = 65535.0, np.dtype("<u2")
    else:
        top, dtype = 1.0, np.dtype("<f4")
    out = np.empty((h, w, 4), dtype=dtype)
    if decontaminate:
        col_f = colour.astype(np.float32) / top
        if req.fmt.depth == "float":
            col_f = np.clip(np.nan_to_num(col_f, nan=0.0), 0.0, 1.0)
        fg = estimate_foreground(col_f, mask)
        out[..., :3] = fg * top + (0.5 if top > 1 else 0.0)
    else:
        out[..., :3] = colour
    out[..., 3] = alpha * top + (0.5 if top > 1 else 0.0)
    return out.tobytes(), {"width": w, "height": h, "format": name, "x": roi[0], "y": roi[1]}

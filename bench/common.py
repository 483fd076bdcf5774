"""Helpers shared by the benchmark sections: images, timing, processes, memory, rembg.

Nothing here writes pixel data anywhere but the bench's own temporary directory (the batch
section needs image files; everything else stays in memory).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SIDECAR_SRC = REPO / "sidecar"
for _path in (SIDECAR_SRC, REPO, REPO / "plugin_gimp"):  # offcut, tests.harness, offcut_gimp
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import offcut  # noqa: E402,F401  (sets ORT_DISABLE_TELEMETRY before onnxruntime is imported)
from tests import harness  # noqa: E402

EVAL_DIR = REPO.parent / "shared" / "eval" / "ecssd200" / "images"
DEFAULT_MODELS_DIR = Path("/var/cache/offcut/models")

# Offcut model name -> (rembg session name, the file name rembg looks for in U2NET_HOME).
REMBG_NAMES = {
    "u2netp": ("u2netp", "u2netp.onnx"),
    "u2net": ("u2net", "u2net.onnx"),
    "isnet-general-use": ("isnet-general-use", "isnet-general-use.onnx"),
    "isnet-general-use-fp16": ("isnet-general-use", "isnet-general-use.onnx"),
}


def models_dir() -> Path:
    return Path(os.environ.get("OFFCUT_MODELS_DIR") or DEFAULT_MODELS_DIR)


# ----------------------------------------------------------------------------- images


def layer_size(megapixels: float) -> tuple[int, int]:
    """A 4:3 landscape layer of about ``megapixels`` million pixels."""
    w = max(4, round((megapixels * 1e6 * 4 / 3) ** 0.5))
    h = max(3, round(megapixels * 1e6 / w))
    return w, h


def make_layer(megapixels: float) -> tuple[bytes, int, int]:
    """RGBA8 pixels of a real photo (ecssd200) scaled to the size, or a synthetic scene."""
    from PIL import Image

    w, h = layer_size(megapixels)
    photos = sorted(EVAL_DIR.glob("*.jpg")) if EVAL_DIR.is_dir() else []
    if photos:
        with Image.open(photos[1 if len(photos) > 1 else 0]) as im:
            src = im.convert("RGB")
    else:
        src = synthetic_photo(400, 300)
    img = src.resize((w, h), Image.Resampling.BICUBIC).convert("RGBA")
    return img.tobytes(), w, h


def synthetic_photo(w: int, h: int, seed: int = 0) -> Any:
    """A photo-like RGB image: a bright disc on a textured, graded background."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[...] = rng.integers(20, 90, size=(h, w, 3), dtype=np.uint8)
    img[..., 2] = (40 + 100 * yy / max(h - 1, 1)).astype(np.uint8)
    disc = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) < (min(w, h) / 3) ** 2
    img[disc] = (230, 120, 40)
    return Image.fromarray(img, "RGB")


# ----------------------------------------------------------------------------- timing


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def round_robin(
    funcs: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each function ``warmup`` times, then ``repeats`` rounds of all of them in turn.

    Interleaving means a burst of load from elsewhere on the machine hits every contender in
    the same round rather than one of them for all of its repeats. Each round starts one place
    further along, so no contender always runs right after the same other one: on the reference
    VM the first request after a pause of a second or so (rembg's turn, the raw sessions) was
    often the slow one, and the transport always placed there carried all of it.
    """
    for _ in range(warmup):
        for f in funcs.values():
            f()
    keys = list(funcs)
    out: dict[str, list[float]] = {k: [] for k in funcs}
    for r in range(repeats):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            t = time.perf_counter()
            funcs[k]()
            out[k].append(time.perf_counter() - t)
    return out


def loadavg() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} {five:.2f} {fifteen:.2f}"
    except OSError:
        return "?"


# ----------------------------------------------------------------------------- memory


def proc_status_bytes(pid: int, key: str) -> int:
    """``VmHWM`` (peak RSS) or ``VmRSS`` of a process, in bytes (0 where /proc is missing)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# ----------------------------------------------------------------------------- sidecar


def sidecar_env(runtime_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the plug-in client gives a sidecar it starts (huge pages included)."""
    from offcut.client.discovery import with_huge_pages

    return with_huge_pages(harness.sidecar_env(runtime_dir, models_dir(), **(extra or {})))


class Sidecar(harness.Sidecar):
    """A fresh ``offcut serve`` (no ``--audit``) in its own runtime directory, timed from spawn
    to readiness (``started``, ``ready_s``): the tests' launcher, tests/harness.py."""

    @classmethod
    def start(cls, runtime_dir: Path, threads: int | None = None) -> Sidecar:
        runtime_dir.mkdir(parents=True, exist_ok=True)
        args = ["--idle-timeout", "0"]
        if threads:
            args += ["--threads", str(threads)]
        return cls(runtime_dir, models_dir(), args, env=sidecar_env(runtime_dir), audit=False)

    def client(self, transport: str) -> Any:
        from offcut.client import Client

        return Client(
            app="bench",
            start=False,
            runtime_dir=self.runtime_dir,
            transport=transport,
            progress_timeout=600.0,
        )

    def stop(self, timeout: float = 20.0) -> int:
        return super().stop(timeout)


@contextlib.contextmanager
def scratch_dir(prefix: str = "offcut-bench-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- rembg

# Prepended to every piece of code that runs rembg: it may read the model files we link into
# U2NET_HOME, never download one (pooch is rembg's only downloader).
REMBG_GUARD = (
    "import pooch\n"
    "def _no_download(*a, **k):\n"
    "    raise RuntimeError('benchmark: rembg tried to download a model')\n"
    "pooch.retrieve = _no_download\n"
)


# `rembg p` itself, minus rembg.cli's other commands: rembg/commands/__init__.py imports the
# web server command too (fastapi, aiohttp, gradio...), which `p` does not use. The command
# object and everything it runs are rembg's own.
REMBG_P_MAIN = (
    "import os, sys, types\n"
    "import rembg\n"
    "pkg = types.ModuleType('rembg.commands')\n"
    "pkg.__path__ = [os.path.join(os.path.dirname(rembg.__file__), 'commands')]\n"
    "sys.modules['rembg.commands'] = pkg\n"
    "from rembg.commands.p_command import p_command\n"
    "p_command.main(sys.argv[1:], prog_name='rembg p')\n"
)


def rembg_p_missing() -> list[str]:
    """The modules ``rembg p`` needs that are not installed (rembg's "cli" extra)."""
    import importlib.util

    return [m for m in ("click", "filetype", "watchdog") if importlib.util.find_spec(m) is None]


def rembg_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("rembg") is not None


def rembg_home(root: Path, models: list[str]) -> Path:
    """A U2NET_HOME with links named as rembg expects, to the very files Offcut runs."""
    home = root / "u2net"
    home.mkdir(parents=True, exist_ok=True)
    for name in models:
        if name not in REMBG_NAMES:
            continue
        target = models_dir() / model_file(name)
        link = home / REMBG_NAMES[name][1]
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return home


def rembg_session(name: str, home: Path, providers: list[str]) -> Any:
    """An in-process rembg session on the same file, with the download path disabled."""
    os.environ["U2NET_HOME"] = str(home)
    exec(REMBG_GUARD, {})
    from rembg import new_session

    sess = new_session(REMBG_NAMES[name][0], providers=providers)
    used = os.path.realpath(sess.inner_session._model_path)
    want = os.path.realpath(models_dir() / model_file(name))
    if used != want:
        raise RuntimeError(f"rembg loaded {used}, not {want}")
    return sess


def model_file(name: str) -> str:
    from offcut.models.catalog import load_catalog

    return load_catalog().get(name).file


def editor_bench_main(
    description: str | None,
    editor: str,
    bench: Callable[..., dict[str, Any]],
    markdown: Callable[[dict[str, Any]], list[str]],
    extra: Callable[[Any], None] | None = None,
) -> int:
    """A standalone run of an in-editor bench (bench/gimp.py, bench/krita.py): the same options
    and output for each editor, so their numbers are taken and read the same way."""
    import argparse
    import json

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--sizes", default="1,4,16,64")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(f"--{editor}-rootfs", default=os.environ.get("OFFCUT_E2E_ROOTFS", "trixie"))
    p.add_argument("--json", default=None)
    p.add_argument("--baseline", default=None, help="git ref: its plug-in takes turns too")
    if extra is not None:
        extra(p)
    a = p.parse_args()
    a.sizes = [float(s) for s in a.sizes.split(",")]
    with scratch_dir() as scratch:
        result = bench(a, scratch, Sidecar)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    print("\n".join(markdown(result)))
    return 0

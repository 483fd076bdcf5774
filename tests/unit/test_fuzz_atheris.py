"""Coverage-guided fuzzing (atheris/libFuzzer) of the request decoder and pixel decoding.

Hypothesis (tests/unit/test_fuzz_protocol.py) explores shapes we thought of; libFuzzer explores the
branches of ``offcut.server.protocol`` and ``offcut.engine.formats`` it has not reached yet, from
raw bytes. This file is both the pytest test and the fuzz harness: pytest runs it as a script in a
subprocess (libFuzzer owns the process and exits when done) for a fixed number of runs with a fixed
seed, so CI is deterministic and bounded. For a long local run:

    OFFCUT_MODELS_DIR=... .venv/bin/python tests/unit/test_fuzz_atheris.py -max_total_time=600

Any exception other than :class:`OffcutError` with a documented code is a crash: libFuzzer
prints the traceback, writes the input to ``crash-*`` and exits non-zero.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNS = 60_000


def _harness() -> None:  # pragma: no cover - runs in the subprocess
    import atheris
    import msgpack
    import numpy as np  # imported before instrumentation: not ours to fuzz
    import PIL.Image  # noqa: F401

    with atheris.instrument_imports(include=["offcut"]):
        from offcut.engine import formats
        from offcut.errors import ERROR_CODES, OffcutError
        from offcut.server import protocol

    token = "a" * 64
    limits = protocol.Limits(max_pixels=1 << 20, max_side=4096, queue_depth=4)
    names = sorted(formats.FORMATS)
    selftest = os.environ.get("OFFCUT_FUZZ_SELFTEST") == "1"

    def run(frame: bytes, buffers: list[memoryview]) -> None:
        try:
            header = protocol.decode_header(memoryview(frame))
            protocol.request_id(header)
            protocol.check_token(header, token)
            op = protocol.check_envelope(header)
            if op != "segment":
                return
            req = protocol.parse_segment(header, buffers, limits)
        except OffcutError as exc:
            if exc.code not in ERROR_CODES or len(exc.message) < 20:
                raise AssertionError(f"bad error {exc!r}") from None
            return
        if selftest:
            raise RuntimeError("self-test: a request was accepted")
        roi = req.roi or (0, 0, req.width, req.height)
        img = formats.to_model_image(
            req.pixels, req.fmt, req.width, req.height, roi, req.colorspace
        )
        if img.size != (roi[2], roi[3]):
            raise AssertionError(f"decoded {img.size} for ROI {roi}")
        alpha = formats.alpha_of(req.pixels, req.fmt, req.width, req.height, roi)
        clean = alpha is None or (
            np.isfinite(alpha).all() and alpha.min() >= 0.0 and alpha.max() <= 1.0
        )
        if not clean:
            raise AssertionError("alpha not clean")

    def one_input(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        mode = fdp.ConsumeIntInRange(0, 2)
        if mode == 0:  # raw bytes as the header frame
            run(fdp.ConsumeBytes(fdp.remaining_bytes()), [])
            return
        # a structured segment request whose numbers, names and sizes come from the fuzzer
        w = fdp.ConsumeIntInRange(-2, 70) if fdp.ConsumeBool() else fdp.ConsumeInt(8)
        h = fdp.ConsumeIntInRange(-2, 70) if fdp.ConsumeBool() else fdp.ConsumeInt(8)
        fmt = (
            names[fdp.ConsumeIntInRange(0, len(names) - 1)]
            if fdp.ConsumeBool()
            else (fdp.ConsumeUnicodeNoSurrogates(8))
        )
        spaces = ["srgb", "linear", fdp.ConsumeUnicodeNoSurrogates(4)]
        image = {"width": w, "height": h, "format": fmt}
        image["colorspace"] = spaces[fdp.ConsumeIntInRange(0, 2)]
        rid = fdp.ConsumeUnicodeNoSurrogates(6) or "x"
        header: dict = {"v": 1, "id": rid, "op": "segment", "token": token, "image": image}
        if fdp.ConsumeBool():
            header["roi"] = {k: fdp.ConsumeIntInRange(-1, 70) for k in "xywh"}
        if fdp.ConsumeBool():
            header["options"] = {
                "threshold": fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeFloat(),
                "mask_format": ["GRAY8", "GRAY16", "GRAYF32", fdp.ConsumeUnicodeNoSurrogates(5)][
                    fdp.ConsumeIntInRange(0, 3)
                ],
                "cutout": fdp.ConsumeBool(),
            }
        buffers = [memoryview(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 70 * 70 * 16)))]
        if fdp.ConsumeIntInRange(0, 7) == 0:
            buffers = buffers * fdp.ConsumeIntInRange(0, 3)
        frame = msgpack.packb(header, use_bin_type=True)
        if mode == 2 and frame:  # then corrupt a few bytes of the encoding itself
            frame = bytearray(frame)
            for _ in range(fdp.ConsumeIntInRange(1, 4)):
                frame[fdp.ConsumeIntInRange(0, len(frame) - 1)] = fdp.ConsumeIntInRange(0, 255)
            frame = bytes(frame)
        # Only the width*height*bpp bytes matter: pad the fuzzer's bytes to the declared size now
        # and then, so accepted requests (and so the pixel decoders) are reached often.
        if (
            fdp.ConsumeBool()
            and isinstance(w, int)
            and isinstance(h, int)
            and fmt in formats.FORMATS
        ):
            need = w * h * formats.FORMATS[fmt].bytes_per_pixel
            if 0 < need <= 70 * 70 * 16:
                raw = bytes(buffers[0]) if buffers else b""
                buffers = [memoryview((raw * (need // max(len(raw), 1) + 1))[:need] or bytes(need))]
        run(frame, buffers)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


def _run_harness(tmp_path: Path, *args: str, selftest: bool = False) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT / "sidecar"), str(ROOT)]),
        OFFCUT_FUZZ_SELFTEST="1" if selftest else "0",
    )
    # libFuzzer's memory limit is checked against the peak RSS (getrusage), and Linux carries
    # the forking process's size across fork and execve into that peak: spawned from a pytest
    # process that has grown (earlier in-process tests), the harness would start "out of
    # memory". So the limit is the usual 2 GiB on top of what this process already holds.
    inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return subprocess.run(
        [
            sys.executable,
            __file__,
            f"-artifact_prefix={tmp_path}/",
            "-max_len=4096",
            f"-rss_limit_mb={inherited_mb + 2048}",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


def _need_atheris() -> None:
    import importlib.util
    import platform

    import pytest

    from tests.conftest import need

    if not (sys.platform == "linux" and platform.machine() == "x86_64"):
        pytest.skip("atheris has wheels for Linux x86_64 only")
    need(
        importlib.util.find_spec("atheris") is not None,
        "atheris is not installed (pip install -e '.[test]')",
    )


def test_libfuzzer_finds_no_crash(tmp_path: Path) -> None:
    """A fixed-seed, bounded libFuzzer run over the decoder and the pixel decoders."""
    _need_atheris()
    out = _run_harness(tmp_path, f"-runs={RUNS}", "-seed=20240601")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    assert f"Done {RUNS} runs" in out.stderr, out.stderr[-2000:]
    assert not list(tmp_path.glob("crash-*"))


def test_the_harness_reports_a_crash(tmp_path: Path) -> None:
    """The harness must be able to fail: in self-test mode an accepted request is a 'crash'."""
    _need_atheris()
    out = _run_harness(tmp_path, "-runs=200000", "-seed=1", selftest=True)
    assert out.returncode != 0
    assert "self-test: a request was accepted" in out.stdout + out.stderr
    assert list(tmp_path.glob("crash-*")), "libFuzzer wrote no reproducer"


if __name__ == "__main__":  # pragma: no cover
    _harness()

"""The real ``offcut serve`` process, real ZeroMQ, the real u2netp model: every op, every pixel
format, progress, cancel, bad input of every kind — and the sidecar keeps serving after each."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from tests.conftest import RawClient, Sidecar, sample_rgba, sidecar_env

U2NETP_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"


def seg(image_fmt: str, w: int, h: int, **extra: object) -> dict:
    return {"op": "segment", "image": {"width": w, "height": h, "format": image_fmt}, **extra}


def mask_of(header: dict, bufs: list[bytes]) -> np.ndarray:
    m = header["mask"]
    dtype = {"GRAY8": np.uint8, "GRAY16": "<u2", "GRAYF32": "<f4"}[m["format"]]
    return np.frombuffer(bufs[0], dtype=dtype).reshape(m["height"], m["width"])


def still_serving(raw: RawClient) -> None:
    h, _ = raw.call({"op": "status"})
    assert h["kind"] == "result", h


# ------------------------------------------------------------------------- basic ops
def test_readiness_line_and_connection_file(sidecar: Sidecar) -> None:
    assert sidecar.ready["ready"] is True
    assert sidecar.ready["protocol"] == 1
    assert sidecar.ready["already_running"] is False
    assert sidecar.ready["port"] == sidecar.port
    assert "token" not in sidecar.ready
    cf = sidecar.runtime_dir / "sidecar.json"
    assert cf.stat().st_mode & 0o777 == 0o600
    assert len(sidecar.info["token"]) == 64
    assert sidecar.info["ip"] == "127.0.0.1"
    assert sidecar.info["pid"] == sidecar.proc.pid


def test_hello(raw: RawClient) -> None:
    h, _ = raw.call({"op": "hello", "client": "tests/1"})
    assert h["kind"] == "result" and h["protocol"] == 1
    assert h["default_model"] == "u2netp"
    assert "CPUExecutionProvider" in h["providers"]
    assert set(h["limits"]) == {"max_pixels", "max_side", "max_message_bytes", "queue_depth"}
    assert {"RGBA8", "BGRA16", "RGBAF16", "GRAYAF32"} <= set(h["formats"])
    names = {m["name"]: m for m in h["models"]}
    assert names["u2netp"]["installed"] and names["u2netp"]["state"] == "installed"
    assert names["u2netp"]["default"] is True


def test_models_op_lists_the_catalog(raw: RawClient) -> None:
    h, _ = raw.call({"op": "models"})
    names = {m["name"] for m in h["models"]}
    assert {"u2netp", "u2net", "isnet-general-use", "birefnet-general"} <= names
    for m in h["models"]:
        assert m["state"] in {"installed", "missing", "unverified", "invalid"}


def test_models_op_offers_fast_and_best(raw: RawClient) -> None:
    """Plug-ins offer "Fast" and "Best quality" from this reply, without knowing model names."""
    h, _ = raw.call({"op": "models"})
    aliases = {a["name"]: a for a in h["aliases"]}
    assert list(aliases) == ["fast", "best"]
    assert (aliases["fast"]["label"], aliases["fast"]["model"]) == ("Fast", "u2netp")
    assert aliases["fast"]["installed"] is True
    best = aliases["best"]
    assert best["label"] == "Best quality"
    assert best["models"] == [
        "isnet-general-use-int8",
        "isnet-general-use-fp32",
        "isnet-general-use-fp16",
    ]
    by_name = {m["name"]: m for m in h["models"]}
    installed = [n for n in best["models"] if by_name[n]["installed"]]
    assert best["model"] == (installed or best["models"])[0]
    assert best["installed"] is bool(installed)
    assert by_name["u2netp"]["aliases"] == ["fast"]
    assert by_name[best["model"]]["aliases"] == ["best"]
    assert by_name["isnet-general-use-fp32"]["derived_from"] == "isnet-general-use-fp16"
    assert by_name["u2netp"]["derived_from"] is None
    hello, _ = raw.call({"op": "hello"})
    assert hello["aliases"] == h["aliases"]


def test_segment_with_an_alias_runs_its_model(raw: RawClient) -> None:
    w, h_ = 96, 64
    header, _ = raw.call(seg("RGBA8", w, h_, model="fast"), sample_rgba(w, h_))
    assert header["kind"] == "result", header
    assert header["model"] == "u2netp" and header["sha256"] == U2NETP_SHA256


def test_status_op(raw: RawClient, sidecar: Sidecar) -> None:
    h, _ = raw.call({"op": "status"})
    assert h["pid"] == sidecar.proc.pid
    assert h["queue"] == 0 and h["rss_bytes"] > 10_000_000
    current = sys.platform.startswith("linux") or sys.platform == "win32"
    assert h["rss_kind"] == ("current" if current else "peak")  # docs/protocol.md, `status`
    assert h["audit_violations"] == 0


# ------------------------------------------------------------------------- segment
def test_segment_rgba8_with_progress(raw: RawClient) -> None:
    w, h_ = 96, 64
    raw.send(seg("RGBA8", w, h_), sample_rgba(w, h_))
    header, bufs, progress = raw.final()
    assert header["kind"] == "result", header
    assert header["model"] == "u2netp" and header["sha256"] == U2NETP_SHA256
    assert header["provider"] == "CPUExecutionProvider"
    assert header["mask"] == {"width": w, "height": h_, "format": "GRAY8", "x": 0, "y": 0}
    stages = [p["stage"] for p in progress]
    assert stages[0] == "queued" and "inference" in stages and stages[-1] == "encode"
    fractions = [p["progress"] for p in progress]
    assert fractions == sorted(fractions)
    m = mask_of(header, bufs)
    # the disc in the middle is foreground, the corners are background
    assert m[h_ // 2, w // 2] > 200 and m[0, 0] < 50
    assert set(header["timings"]) >= {"preprocess", "inference", "postprocess", "encode"}


def _as_format(rgba: np.ndarray, fmt: str) -> bytes:
    """The same RGBA8 image expressed in another wire format."""
    rgb, a = rgba[..., :3], rgba[..., 3:]
    gray = np.round(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    gray = gray.astype(np.uint8)
    table = {
        "RGBA8": rgba,
        "BGRA8": rgba[..., [2, 1, 0, 3]],
        "RGB8": rgb,
        "GRAY8": gray,
        "GRAYA8": np.concatenate([gray, a], 2),
        "RGBA16": rgba.astype("<u2") * 257,
        "BGRA16": rgba[..., [2, 1, 0, 3]].astype("<u2") * 257,
        "GRAYA16": np.concatenate([gray, a], 2).astype("<u2") * 257,
        "RGBAF16": (rgba / 255.0).astype("<f2"),
        "RGBAF32": (rgba / 255.0).astype("<f4"),
        "GRAYAF16": (np.concatenate([gray, a], 2) / 255.0).astype("<f2"),
        "GRAYAF32": (np.concatenate([gray, a], 2) / 255.0).astype("<f4"),
    }
    return np.ascontiguousarray(table[fmt]).tobytes()


ALL_FORMATS = [
    "RGBA8",
    "BGRA8",
    "RGB8",
    "GRAY8",
    "GRAYA8",
    "RGBA16",
    "BGRA16",
    "GRAYA16",
    "RGBAF16",
    "RGBAF32",
    "GRAYAF16",
    "GRAYAF32",
]


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_every_pixel_format_decodes_to_the_same_mask(raw: RawClient, fmt: str) -> None:
    w, h_ = 80, 56
    rgba = np.frombuffer(sample_rgba(w, h_, seed=3), np.uint8).reshape(h_, w, 4)
    ref_fmt = "GRAY8" if fmt.startswith("GRAY") else "RGBA8"
    ref_h, ref_b = raw.call(seg(ref_fmt, w, h_), _as_format(rgba, ref_fmt))
    got_h, got_b = raw.call(seg(fmt, w, h_), _as_format(rgba, fmt))
    assert got_h["kind"] == "result", got_h
    diff = np.abs(mask_of(got_h, got_b).astype(int) - mask_of(ref_h, ref_b).astype(int))
    assert diff.max() <= 2, (fmt, diff.max())


def test_bgra_is_not_read_as_rgba(raw: RawClient) -> None:
    """A wrong channel order must change the result, or the format test above proves nothing."""
    w, h_ = 80, 56
    rgba = np.frombuffer(sample_rgba(w, h_, seed=3), np.uint8).reshape(h_, w, 4)
    a, ab = raw.call(seg("RGBA8", w, h_), _as_format(rgba, "RGBA8"))
    b, bb = raw.call(seg("RGBA8", w, h_), _as_format(rgba, "BGRA8"))
    assert np.abs(mask_of(a, ab).astype(int) - mask_of(b, bb).astype(int)).max() > 2


def test_linear_colorspace_is_encoded_to_srgb(raw: RawClient) -> None:
    w, h_ = 80, 56
    rgba = np.frombuffer(sample_rgba(w, h_, seed=4), np.uint8).reshape(h_, w, 4)
    srgb = rgba / 255.0
    lin = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    lin[..., 3] = srgb[..., 3]
    ref_h, ref_b = raw.call(seg("RGBA8", w, h_), rgba.tobytes())
    img = {"width": w, "height": h_, "format": "RGBAF32", "colorspace": "linear"}
    got_h, got_b = raw.call({"op": "segment", "image": img}, lin.astype("<f4").tobytes())
    assert np.abs(mask_of(got_h, got_b).astype(int) - mask_of(ref_h, ref_b).astype(int)).max() <= 2


def test_roi_equals_segmenting_the_crop(raw: RawClient) -> None:
    w, h_ = 120, 90
    rgba = np.frombuffer(sample_rgba(w, h_, seed=5), np.uint8).reshape(h_, w, 4)
    roi = {"x": 10, "y": 20, "w": 70, "h": 50}
    a, ab = raw.call(seg("RGBA8", w, h_, roi=roi), rgba.tobytes())
    assert a["mask"] == {"width": 70, "height": 50, "format": "GRAY8", "x": 10, "y": 20}
    crop = np.ascontiguousarray(rgba[20:70, 10:80])
    b, bb = raw.call(seg("RGBA8", 70, 50), crop.tobytes())
    assert np.array_equal(mask_of(a, ab), mask_of(b, bb))


def test_mask_formats_agree(raw: RawClient) -> None:
    w, h_ = 64, 48
    px = sample_rgba(w, h_, seed=6)
    m8 = mask_of(*raw.call(seg("RGBA8", w, h_), px)).astype(np.float32) / 255
    h16, b16 = raw.call(seg("RGBA8", w, h_, options={"mask_format": "GRAY16"}), px)
    hf, bf = raw.call(seg("RGBA8", w, h_, options={"mask_format": "GRAYF32"}), px)
    m16 = mask_of(h16, b16).astype(np.float32) / 65535
    mf = mask_of(hf, bf)
    assert mf.dtype == np.dtype("<f4") and mf.min() >= 0.0 and mf.max() <= 1.0
    assert np.abs(m16 - mf).max() < 1e-4
    assert np.abs(m8 - mf).max() < 0.03


def test_cutout_has_input_colours_and_mask_alpha(raw: RawClient) -> None:
    w, h_ = 64, 48
    px = sample_rgba(w, h_, seed=7)
    h, bufs = raw.call(seg("BGRA8", w, h_, options={"cutout": True, "mask_format": "GRAY8"}), px)
    assert h["cutout"]["format"] == "RGBA8" and len(bufs) == 2
    cut = np.frombuffer(bufs[1], np.uint8).reshape(h_, w, 4)
    src = np.frombuffer(px, np.uint8).reshape(h_, w, 4)
    assert np.array_equal(cut[..., :3], src[..., [2, 1, 0]])  # BGRA in, RGBA out
    assert np.abs(cut[..., 3].astype(int) - mask_of(h, bufs).astype(int)).max() <= 1


@pytest.mark.parametrize(("fmt", "cut_fmt"), [("RGBA16", "RGBA16"), ("RGBAF32", "RGBAF32")])
def test_cutout_keeps_the_depth_class(raw: RawClient, fmt: str, cut_fmt: str) -> None:
    w, h_ = 32, 24
    rgba = np.frombuffer(sample_rgba(w, h_), np.uint8).reshape(h_, w, 4)
    h, bufs = raw.call(
        seg(fmt, w, h_, options={"cutout": True, "decontaminate": True}), _as_format(rgba, fmt)
    )
    assert h["cutout"]["format"] == cut_fmt
    assert len(bufs[1]) == w * h_ * 4 * (2 if cut_fmt == "RGBA16" else 4)


def test_threshold_binarises(raw: RawClient) -> None:
    h, bufs = raw.call(seg("RGBA8", 64, 48, options={"threshold": 0.5}), sample_rgba(64, 48))
    assert set(np.unique(mask_of(h, bufs)).tolist()) <= {0, 255}


def test_refine_option_runs(raw: RawClient) -> None:
    h, bufs = raw.call(seg("RGBA8", 96, 64, options={"refine": True}), sample_rgba(96, 64))
    assert h["kind"] == "result" and "refine" in h["timings"]
    m = mask_of(h, bufs)
    assert m[32, 48] > 200 and m[0, 0] < 50


# ------------------------------------------------------------------------- cancel / busy
def test_cancel_a_running_request(raw: RawClient) -> None:
    w = h_ = 3000
    rid = raw.send(
        seg("RGBA8", w, h_, options={"refine": True, "cutout": True, "decontaminate": True}),
        bytes(w * h_ * 4),
    )
    raw.recv()  # queued
    raw.send({"op": "cancel", "target": rid, "id": "c1"})
    replies = {}
    deadline = time.monotonic() + 60
    while len(replies) < 2 and time.monotonic() < deadline:
        hdr, _ = raw.recv()
        if hdr["kind"] != "progress":
            replies[hdr["id"]] = hdr
    assert replies["c1"]["kind"] == "result" and replies["c1"]["found"] is True
    assert replies[rid]["kind"] == "error" and replies[rid]["code"] == "cancelled"
    still_serving(raw)


def test_cancel_unknown_target(raw: RawClient) -> None:
    h, _ = raw.call({"op": "cancel", "target": "nope"})
    assert h["kind"] == "result" and h["found"] is False


def test_queue_limit_answers_busy(raw: RawClient, sidecar: Sidecar) -> None:
    w = h_ = 1500
    px = sample_rgba(w, h_)
    ids = [raw.send(seg("RGBA8", w, h_, options={"refine": True}), px) for _ in range(8)]
    finals: dict[str, dict] = {}
    deadline = time.monotonic() + 120
    while len(finals) < len(ids) and time.monotonic() < deadline:
        hdr, _ = raw.recv(60)
        if hdr["kind"] != "progress":
            finals[hdr["id"]] = hdr
    codes = [finals[i]["kind"] if finals[i]["kind"] == "result" else finals[i]["code"] for i in ids]
    assert codes.count("busy") >= 1, codes
    assert codes.count("result") >= 5, codes  # one running + queue_depth (4) waiting
    assert set(codes) <= {"result", "busy"}
    still_serving(raw)


# ------------------------------------------------------------------------- bad input
def test_wrong_token_gets_unauthorized_and_no_work(raw: RawClient) -> None:
    raw.send({**seg("RGBA8", 8, 8), "token": "0" * 64}, bytes(256))
    h, _ = raw.recv()
    assert h["kind"] == "error" and h["code"] == "unauthorized"
    assert not raw.sock.poll(300), "no progress or result may follow an unauthorized request"
    for bad in (None, 12345, "", "x" * 64):
        h, _ = raw.call({"op": "hello", "token": bad})
        assert h["code"] == "unauthorized"
    still_serving(raw)


def test_missing_token(raw: RawClient) -> None:
    raw.sock.send_multipart([msgpack.packb({"v": 1, "id": "a", "op": "hello"})])
    h, _ = raw.recv()
    assert h["code"] == "unauthorized"


def test_unknown_version(raw: RawClient) -> None:
    for v in (0, 2, "1", None, True):
        h, _ = raw.call({"op": "hello", "v": v})
        assert h["code"] == "unsupported_version", (v, h)
        assert "update" in h["message"].lower()
    still_serving(raw)


def test_unknown_op(raw: RawClient) -> None:
    h, _ = raw.call({"op": "rm -rf"})
    assert h["code"] == "bad_request" and "hello" in h["message"]


def test_malformed_frames(raw: RawClient) -> None:
    bad_headers = [
        b"\xc1",  # never-used msgpack byte
        b"not msgpack at all",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({1: "int keys"}),
        msgpack.packb({"v": 1})[:-1],
        b"\xd9\x05\xff\xfe\xfd\xfc\xfb",  # str with invalid UTF-8
        msgpack.packb({"v": 1, "id": "x", "op": "hello", "token": "t", "pad": "x" * 70000}),
    ]
    for frame in bad_headers:
        raw.sock.send_multipart([frame])
        h, _ = raw.recv()
        assert h["kind"] == "error" and h["code"] in {"bad_request", "unauthorized"}, frame[:20]
    still_serving(raw)


@pytest.mark.parametrize(
    ("header", "buffers", "code"),
    [
        (seg("RGBA8", 8, 8), [], "bad_request"),  # no pixels
        (seg("RGBA8", 8, 8), [bytes(256), bytes(4)], "bad_request"),  # extra buffer
        (seg("RGBA8", 8, 8), [bytes(255)], "bad_request"),  # size lies
        (seg("RGBA16", 8, 8), [bytes(256)], "bad_request"),  # format lies
        (seg("CMYK8", 8, 8), [bytes(256)], "bad_request"),
        (seg("RGBA8", 0, 8), [b""], "bad_request"),
        (seg("RGBA8", -1, 8), [b""], "bad_request"),
        (seg("RGBA8", 8.5, 8), [bytes(256)], "bad_request"),
        (seg("RGBA8", 100_000, 100_000), [b""], "too_large"),
        (seg("RGBA8", 70_000, 10), [b""], "too_large"),
        (seg("RGBA8", 8, 8, roi={"x": 4, "y": 0, "w": 5, "h": 8}), [bytes(256)], "bad_request"),
        (seg("RGBA8", 8, 8, roi=[0, 0, 1, 1]), [bytes(256)], "bad_request"),
        (seg("RGBA8", 8, 8, options={"threshold": float("nan")}), [bytes(256)], "bad_request"),
        (seg("RGBA8", 8, 8, options={"threshold": 2}), [bytes(256)], "bad_request"),
        (seg("RGBA8", 8, 8, options={"mask_format": "GRAY4"}), [bytes(256)], "bad_request"),
        (seg("RGBA8", 8, 8, options={"refine": "yes"}), [bytes(256)], "bad_request"),
        (seg("RGBA8", 8, 8, model="no-such-model"), [bytes(256)], "model_missing"),
        ({"op": "segment", "image": "RGBA8"}, [bytes(256)], "bad_request"),
        ({"op": "hello", "id": ""}, [], "bad_request"),
        ({"op": "hello", "id": "x" * 200}, [], "bad_request"),
        ({"op": "cancel"}, [], "bad_request"),
    ],
)
def test_bad_segment_requests(
    raw: RawClient, header: dict, buffers: list[bytes], code: str
) -> None:
    h, _ = raw.call(header, *buffers)
    assert h["kind"] == "error" and h["code"] == code, h
    assert h["message"].endswith((".", ")")) and len(h["message"]) > 20
    still_serving(raw)


def test_uninstalled_model_says_how_to_fetch_it(raw: RawClient, sidecar: Sidecar) -> None:
    h, _ = raw.call({"op": "models"})
    missing = [m["name"] for m in h["models"] if m["state"] == "missing"]
    assert missing, "test needs at least one model that is not installed"
    h, _ = raw.call(seg("RGBA8", 8, 8, model=missing[0]), bytes(256))
    assert h["code"] == "model_missing"
    assert f"offcut models fetch {missing[0]}" in h["message"]
    still_serving(raw)


def test_unicode_everywhere(raw: RawClient) -> None:
    h, _ = raw.call({"op": "héllo☃", "id": "идентификатор-🙂"})
    assert h["code"] == "bad_request" and h["id"] == "идентификатор-🙂"
    h, _ = raw.call(seg("RGBA8", 8, 8, model="模型"), bytes(256))
    assert h["code"] == "model_missing"


def test_duplicate_id_in_flight(raw: RawClient) -> None:
    w = h_ = 1200
    px = sample_rgba(w, h_)
    raw.send({**seg("RGBA8", w, h_), "id": "same"}, px)
    raw.send({**seg("RGBA8", w, h_), "id": "same"}, px)
    kinds = []
    deadline = time.monotonic() + 60
    while len(kinds) < 2 and time.monotonic() < deadline:
        hdr, _ = raw.recv()
        if hdr["kind"] != "progress":
            kinds.append(hdr.get("code", hdr["kind"]))
    assert sorted(kinds) == ["bad_request", "result"]


# ------------------------------------------------------------------------- lifecycle
def test_second_serve_reports_the_running_one(sidecar: Sidecar, models_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "offcut", "serve"],
        env=sidecar.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["already_running"] is True and line["port"] == sidecar.port
    assert line["pid"] == sidecar.proc.pid


def test_non_loopback_bind_is_refused(tmp_path: Path, models_dir: Path) -> None:
    for host in ("0.0.0.0", "::", "192.168.1.10", "localhost"):
        out = subprocess.run(
            [sys.executable, "-m", "offcut", "serve", "--host", host],
            env=sidecar_env(tmp_path, models_dir),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode != 0 and "127.0.0.1" in out.stderr
        assert not (tmp_path / "sidecar.json").exists()


def test_shutdown_op_removes_connection_file(tmp_path: Path, models_dir: Path) -> None:
    s = Sidecar(tmp_path, models_dir)
    c = RawClient(s.port, s.token)
    h, _ = c.call({"op": "shutdown"})
    assert h["kind"] == "result"
    assert s.proc.wait(20) == 0
    assert not (tmp_path / "sidecar.json").exists()
    c.close()


def test_sigterm_and_sigint_stop_cleanly(tmp_path: Path, models_dir: Path) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        s = Sidecar(tmp_path, models_dir)
        s.proc.send_signal(sig)
        assert s.proc.wait(20) == 0
        assert not (tmp_path / "sidecar.json").exists()


def test_idle_timeout(tmp_path: Path, models_dir: Path) -> None:
    s = Sidecar(tmp_path, models_dir, ["--idle-timeout", "1"])
    assert s.proc.wait(20) == 0
    assert not (tmp_path / "sidecar.json").exists()
    assert any("idle_timeout" in ln for ln in s.stderr_lines)


def test_stale_connection_file_is_replaced(tmp_path: Path, models_dir: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"port": 1, "token": "f" * 64, "pid": dead.pid, "protocol": 1}
    cf = tmp_path / "sidecar.json"
    cf.write_text(json.dumps(stale))
    cf.chmod(0o600)
    s = Sidecar(tmp_path, models_dir)
    try:
        info = json.loads(cf.read_text())
        assert info["pid"] == s.proc.pid and info["token"] != stale["token"]
    finally:
        s.stop()


def test_port_already_taken(tmp_path: Path, models_dir: Path) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        out = subprocess.run(
            [sys.executable, "-m", "offcut", "serve", "--port", str(port)],
            env=sidecar_env(tmp_path, models_dir),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1 and "--port" in out.stderr
    finally:
        taken.close()


def test_model_sha256_is_the_catalogs(models_dir: Path) -> None:
    digest = hashlib.sha256((models_dir / "u2netp.onnx").read_bytes()).hexdigest()
    assert digest == U2NETP_SHA256


def test_keepalive_progress_while_queued_and_never_after_the_result(
    tmp_path: Path, models_dir: Path
) -> None:
    env = sidecar_env(tmp_path, models_dir, OFFCUT_KEEPALIVE_SECONDS="0.2")
    s = Sidecar(tmp_path, models_dir, env=env)
    c = RawClient(s.port, s.token)
    try:
        w = h_ = 2000
        slow = c.send(
            seg("RGBA8", w, h_, options={"cutout": True, "decontaminate": True, "refine": True}),
            sample_rgba(w, h_),
        )
        waiting = c.send(seg("RGBA8", 64, 48), sample_rgba(64, 48))
        seen: dict[str, list[str]] = {slow: [], waiting: []}
        finals: set[str] = set()
        after_final: list[dict] = []
        deadline = time.monotonic() + 120
        while len(finals) < 2 and time.monotonic() < deadline:
            hdr, _ = c.recv(60)
            if hdr["id"] in finals:
                after_final.append(hdr)
            elif hdr["kind"] == "progress":
                seen[hdr["id"]].append(hdr["stage"])
            else:
                assert hdr["kind"] == "result", hdr
                finals.add(hdr["id"])
        while c.sock.poll(600):
            after_final.append(c.recv()[0])
        assert finals == {slow, waiting}
        assert seen[waiting].count("queued") >= 2, seen[waiting]  # repeated while waiting
        assert len(seen[slow]) > len(set(seen[slow])), seen[slow]  # repeated while working
        assert not after_final, after_final
    finally:
        c.close()
        s.stop()

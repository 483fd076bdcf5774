"""The GIMP plug-in's run logic (``plugin_gimp/offcut_gimp/run.py``), without GIMP.

The session (one client per process, the query flag, cancel from GIMP's pipe), the model list
and its fallbacks, the request sent for one layer and the typed result read back, and the
sentences users see. A fake client stands in for the sidecar where an answer must be chosen;
the bundled-client import is checked against the real client package.
"""

from __future__ import annotations

import ast
import io
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from offcut_gimp import pixels as px
from offcut_gimp import run

PACKAGE_DIR = Path(run.__file__).resolve().parent
CLIENT_DIR = Path(__file__).resolve().parents[2] / "sidecar" / "offcut" / "client"


# -- the package's shape: it runs inside GIMP's Python -------------------------------------------


@pytest.mark.parametrize("path", sorted(PACKAGE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_imports_only_the_standard_library(path):
    """No gi (testable here), nothing a Flatpak/AppImage/Windows GIMP cannot import."""
    tree = ast.parse(path.read_text(), feature_version=(3, 8))
    stdlib = set(sys.stdlib_module_names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module.split(".")[0]]
        else:
            continue
        for name in names:
            assert name in stdlib or name == "offcut_client", f"{path.name} imports {name}"


def test_the_modules_load_without_gi():
    code = (
        "import sys; sys.modules['gi'] = None\n"  # any `import gi` now raises ImportError
        "from offcut_gimp import pixels, run\n"
        "assert 'gi' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_DIR.parent)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# -- fakes ----------------------------------------------------------------------------------------


class ClientError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


class FakeClient:
    """Answers ``segment`` with a mask of the requested size (or what ``answer`` says)."""

    transport_name = "fake"

    def __init__(self, start=True, models=(), hello=None, answer=None, error=None):
        self.start = start
        self._models = models if isinstance(models, Exception) else list(models)
        self._hello = hello if hello is not None else {"limits": {}}
        self.answer = answer
        self.error = error
        self.calls = []
        self.cancelled = threading.Event()

    def hello(self):
        return self._hello

    def models(self):
        if isinstance(self._models, Exception):
            raise self._models
        return self._models

    def cancel(self):
        self.cancelled.set()

    def segment(self, on_progress=None, **kwargs):
        self.calls.append(kwargs)
        on_progress("model", 0.5)
        if self.error is not None:
            raise self.error
        if self.answer is not None:
            return self.answer(kwargs)
        w, h = kwargs["width"], kwargs["height"]
        fmt = kwargs["mask_format"]
        size = px.SAMPLE_BYTES[px.WIRE_SAMPLE[fmt]]
        cutout = None
        if kwargs["cutout"]:
            cutout = bytes([200, 100, 50, 9]) * (w * h)
        return SimpleNamespace(
            mask=bytes([77]) * (w * h * size),
            mask_info={"width": w, "height": h, "format": fmt},
            meta={"model": kwargs["model"], "timings": {"total": 1.0}},
            cutout=cutout,
            cutout_info={"format": "RGBA8"} if cutout else None,
        )


def session_with(client, tmp_path, argv=()):
    made = []

    def connect(start):
        made.append(start)
        client.start = start
        return client

    session = run.Session(str(tmp_path), connect=connect, argv=list(argv))
    return session, made


# -- the session ----------------------------------------------------------------------------------


def test_one_client_per_process_and_start_only_when_running(tmp_path):
    client = FakeClient()
    session, made = session_with(client, tmp_path)
    assert session.get_client(start=False) is client
    assert client.start is False
    assert session.get_client(start=True) is client  # the run may start the sidecar
    assert client.start is True
    assert session.get_client(start=False) is client and client.start is True
    assert made == [False], "connected once"


def test_connect_turns_client_failures_into_user_errors(tmp_path):
    client = FakeClient(hello={"limits": {"max_pixels": 10}})
    session, _ = session_with(client, tmp_path)
    assert session.connect() == (client, {"limits": {"max_pixels": 10}})

    broken = FakeClient()
    broken.hello = lambda: (_ for _ in ()).throw(ClientError("busy", "The sidecar is busy."))
    session, _ = session_with(broken, tmp_path)
    with pytest.raises(run.UserError, match=r"^The sidecar is busy\.$"):
        session.connect()

    def missing(start):
        raise run.UserError("client missing")

    with pytest.raises(run.UserError, match="client missing"):
        run.Session(str(tmp_path), connect=missing).connect()


def test_the_bundled_client_is_imported_from_the_plugin_folder(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "offcut_client"]:
        monkeypatch.delitem(sys.modules, name)
    session = run.Session(str(tmp_path))
    with pytest.raises(run.UserError, match="offcut install gimp"):
        session.get_client(start=False)  # no offcut_client on sys.path here
    (tmp_path / "offcut_client").symlink_to(CLIENT_DIR, target_is_directory=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        client = session.get_client(start=False)
        assert type(client).__module__.startswith("offcut_client")
        assert client.start is False  # creating a client contacts nothing
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "offcut_client"]:
            del sys.modules[name]


def test_model_list_from_a_running_sidecar(tmp_path):
    models = [
        {"name": "u2netp", "installed": True},
        {"name": "birefnet", "installed": False, "default": True},
        {"no": "name"},
    ]
    client = FakeClient(models=models)
    session, made = session_with(client, tmp_path)
    session.querying = True
    listed, default = session.model_catalog()
    assert [m["name"] for m in listed] == ["u2netp", "birefnet"]
    assert default == "birefnet"
    assert made == [False], "GIMP's query never starts a sidecar"


def test_model_list_falls_back_to_the_installer_record(tmp_path):
    record = {
        "default_model": "isnet",
        "models": ["u2netp", {"name": "isnet", "description": "General"}, {"bad": 1}, 7],
    }
    (tmp_path / "offcut_sidecar.json").write_text(json.dumps(record))
    client = FakeClient(models=ClientError("not-running", "no sidecar"))
    session, _ = session_with(client, tmp_path)
    listed, default = session.model_catalog()
    assert listed == [
        {"name": "u2netp", "installed": True, "description": ""},
        {"name": "isnet", "installed": True, "description": "General"},
    ]
    assert default == "isnet"


def test_model_list_always_holds_the_default(tmp_path):
    client = FakeClient(models=ClientError("not-running", "no sidecar"))
    session, _ = session_with(client, tmp_path)
    (tmp_path / "offcut_sidecar.json").write_text("{broken")
    listed, default = session.model_catalog()
    assert default == run.FALLBACK_MODEL
    assert listed == [{"name": "u2netp", "installed": True, "description": "Default model"}]
    (tmp_path / "offcut_sidecar.json").write_text(
        json.dumps({"default_model": "isnet", "models": ["u2netp"]})
    )
    listed, default = session.model_catalog()
    assert default == "isnet"
    assert [m["name"] for m in listed] == ["isnet", "u2netp"]


def test_a_run_connects_while_gimp_starts_and_asks_once(tmp_path):
    """prefetch() connects in a thread; the catalog and the run share its one hello."""
    models = [{"name": "u2netp", "installed": True}, {"name": "isnet", "installed": False}]
    client = FakeClient(models=ClientError("unused", "models() must not be asked"))
    hellos = []
    gate = threading.Event()

    def hello():
        gate.wait(5)
        hellos.append(threading.current_thread().name)
        return {"limits": {"max_pixels": 9}, "models": models}

    client.hello = hello
    session, made = session_with(client, tmp_path)
    session.prefetch()  # returns at once: the thread waits on the gate
    gate.set()
    listed, default = session.model_catalog()
    assert [m["name"] for m in listed] == ["u2netp", "isnet"] and default == "u2netp"
    assert session.connect() == (client, {"limits": {"max_pixels": 9}, "models": models})
    assert made == [True], "started the sidecar if needed, as a run does"
    assert hellos == ["offcut-connect"], "one hello, from the prefetch thread"
    session.connect()  # a later connect asks afresh: the prefetched answer is used once
    assert hellos == ["offcut-connect", "MainThread"]


def test_a_failed_prefetch_falls_back_and_connect_says_why(tmp_path):
    (tmp_path / "offcut_sidecar.json").write_text(json.dumps({"models": ["isnet"]}))

    def cannot_start(start):
        raise ClientError("spawn-failed", "The sidecar could not be started.")

    session = run.Session(str(tmp_path), connect=cannot_start)
    session.prefetch()
    listed, _ = session.model_catalog()
    assert [m["name"] for m in listed] == ["u2netp", "isnet"]
    with pytest.raises(run.UserError, match=r"^The sidecar could not be started\.$"):
        session.connect()


def test_only_runs_prefetch():
    assert run.is_run(["prog", "-gimp", "0x0113", "5", "6", "-run", "0"])
    assert not run.is_run(["prog", "-gimp", "0x0113", "5", "6", "-query", "0"])
    assert not run.is_run(["prog", "-gimp", "0x0113", "5", "6", "-init", "0"])
    assert not run.is_run(["prog"])


# -- one layer's request --------------------------------------------------------------------------


def ask(session, client, options, rect=(3, 4, 2, 3), depth=None, sample="u8", progress=None):
    depth = depth or px.Depth(False, "u8")
    _, _, w, h = rect
    data = bytes(range(4)) * (w * h * depth.bytes_per_pixel // 4)
    events = progress if progress is not None else []
    return run.request(
        session,
        client,
        "Photo",
        rect,
        depth,
        data,
        sample,
        options,
        lambda stage, f: events.append((stage, f, threading.current_thread())),
    )


def test_request_sends_the_area_and_reads_a_typed_result(tmp_path):
    client = FakeClient()
    session, _ = session_with(client, tmp_path)
    events = []
    options = run.Options("u2netp", run.OUTPUT_MASK_LAYER, refine=True, decontaminate=True)
    result = ask(session, client, options, depth=px.Depth(True, "float"), progress=events)
    sent = client.calls[0]
    assert {k: v for k, v in sent.items() if k != "pixels"} == {
        "width": 2,
        "height": 3,
        "fmt": "GRAYAF32",
        "colorspace": "srgb",
        "model": "u2netp",
        "refine": True,
        "decontaminate": False,  # a mask layer has no colours to replace
        "mask_format": "GRAY8",
        "cutout": False,
    }
    assert len(sent["pixels"]) == 2 * 3 * 8
    assert isinstance(result, run.Result)
    assert result.rect == (3, 4, 2, 3)
    assert result.mask == bytes([77]) * 6 and result.sample == "u8"
    assert result.colours is None
    assert result.record == {
        "layer": "Photo",
        "rect": [3, 4, 2, 3],
        "format": "GRAYAF32",
        "mask_format": "GRAY8",
        "meta": {"model": "u2netp"},  # timings left out
    }
    assert events == [("model", 0.5, threading.main_thread())], "progress on the main thread"


def test_decontaminated_colours_keep_the_layers_alpha(tmp_path):
    client = FakeClient()
    session, _ = session_with(client, tmp_path)
    options = run.Options("u2netp", run.OUTPUT_NEW_LAYER, decontaminate=True)
    result = ask(session, client, options, rect=(0, 0, 2, 1), sample="u16")
    assert client.calls[0]["decontaminate"] is True and client.calls[0]["cutout"] is True
    assert client.calls[0]["mask_format"] == "GRAY16"
    assert result.sample == "u16" and len(result.mask) == 4
    # The pixels sent were 0, 1, 2, 3 per pixel: alpha 3 replaces the cutout's 9.
    assert result.colours == run.Colours("R'G'B'A u8", bytes([200, 100, 50, 3]) * 2)


def test_mask_format_follows_the_answer(tmp_path):
    def answer(kwargs):
        return SimpleNamespace(
            mask=b"\0" * 24,
            mask_info={"width": 2, "height": 3, "format": "GRAYF32"},
            meta=None,
        )

    client = FakeClient(answer=answer)
    session, _ = session_with(client, tmp_path)
    result = ask(session, client, run.Options("u2netp", run.OUTPUT_SELECTION))
    assert result.sample == "float" and result.record["meta"] == {}


def test_a_mask_of_another_size_is_refused(tmp_path):
    def answer(kwargs):
        return SimpleNamespace(mask=b"", mask_info={"width": 1, "height": 1}, meta={})

    client = FakeClient(answer=answer)
    session, _ = session_with(client, tmp_path)
    with pytest.raises(run.UserError, match="returned a 1x1 mask for a 2x3 area"):
        ask(session, client, run.Options("u2netp", run.OUTPUT_SELECTION))


def test_sidecar_errors_become_cancel_or_words(tmp_path):
    options = run.Options("u2netp", run.OUTPUT_NEW_LAYER)
    client = FakeClient(error=ClientError("cancelled", "Cancelled."))
    session, _ = session_with(client, tmp_path)
    with pytest.raises(run.Cancelled):
        ask(session, client, options)
    client.error = ClientError("model-missing", "Run `offcut models fetch isnet`.")
    with pytest.raises(run.UserError, match=r"^Run `offcut models fetch isnet`\.$"):
        ask(session, client, options)
    client.error = KeyError("bug")  # not a client error: a bug, re-raised as is
    with pytest.raises(KeyError):
        ask(session, client, options)


@pytest.mark.skipif(sys.platform == "win32", reason="GIMP's pipe is not watched on Windows")
def test_gimps_quit_message_cancels_the_request(tmp_path):
    """GIMP writes GP_QUIT on the plug-in's pipe when the progress bar's Cancel is pressed."""
    read_fd, write_fd = os.pipe()
    client = FakeClient()

    def answer(kwargs):
        assert client.cancelled.wait(10), "the sidecar was not told to cancel"
        raise ClientError("cancelled", "Cancelled.")

    client.answer = answer
    session, _ = session_with(client, tmp_path, ["prog", "-gimp", "3", str(read_fd), "9", "-run"])
    threading.Timer(0.1, os.write, (write_fd, b"quit")).start()
    try:
        started = time.monotonic()
        with pytest.raises(run.Cancelled):
            ask(session, client, run.Options("u2netp", run.OUTPUT_NEW_LAYER))
        assert time.monotonic() - started < 5
    finally:
        os.close(read_fd)
        os.close(write_fd)
    session.cancel()  # nothing in flight any more: a no-op


def test_cancel_from_do_quit_reaches_the_client_once(tmp_path):
    """libgimp calls do_quit on the main thread, inside a PDB call such as a progress update."""
    client = FakeClient()
    session, _ = session_with(client, tmp_path)
    session.cancel()
    assert not client.cancelled.is_set(), "no request in flight: nothing to cancel"
    counted = []
    real_cancel = client.cancel

    def cancel():
        counted.append(threading.current_thread())
        real_cancel()

    client.cancel = cancel

    def answer(kwargs):
        assert client.cancelled.wait(10), "the sidecar was not told to cancel"
        raise ClientError("cancelled", "Cancelled.")

    def on_progress(stage, fraction):  # GIMP quits us during Gimp.progress_update
        session.cancel()
        session.cancel()

    client.answer = answer
    options = run.Options("u2netp", run.OUTPUT_NEW_LAYER)
    depth = px.Depth(False, "u8")
    with pytest.raises(run.Cancelled):
        run.request(
            session, client, "P", (0, 0, 1, 1), depth, b"\0" * 4, "u8", options, on_progress
        )
    assert counted == [threading.main_thread()], "sent once"


def test_the_wait_loop_selects_only_sockets_as_on_windows(tmp_path, monkeypatch):
    """Windows' select() takes only sockets: with GIMP's pipe unwatched (as there), everything
    the loop waits on must be a socket, or every run would fail there."""
    real_select = select.select
    calls = []

    def windows_select(rlist, wlist, xlist, timeout=None):
        calls.append(list(rlist))
        for item in [*rlist, *wlist, *xlist]:
            if not isinstance(item, socket.socket):
                raise OSError(10038, "An operation was attempted on something that is not a socket")
        return real_select(rlist, wlist, xlist, timeout)

    monkeypatch.setattr(run.select, "select", windows_select)
    on_windows = run.gimp_read_fd
    monkeypatch.setattr(run, "gimp_read_fd", lambda argv: on_windows(argv, "win32"))
    read_fd, write_fd = os.pipe()  # GIMP's pipe, which must stay unwatched
    client = FakeClient()
    session, _ = session_with(client, tmp_path, ["prog", "-gimp", "3", str(read_fd), "9"])
    events = []
    try:
        result = ask(session, client, run.Options("u2netp", run.OUTPUT_NEW_LAYER), progress=events)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert result.mask is not None and calls, "the loop waited through select()"
    assert [e[:2] for e in events] == [("model", 0.5)], "progress crossed the socket pair"
    assert events[0][2] is threading.main_thread()


def test_gimp_read_fd(tmp_path):
    read_fd, write_fd = os.pipe()
    try:
        argv = ["p", "-gimp", "3", str(read_fd), str(write_fd)]
        assert run.gimp_read_fd(argv, "win32") is None  # a pipe: select() cannot take it there
        if sys.platform == "win32":
            return
        assert run.gimp_read_fd(argv) == read_fd
        assert run.gimp_read_fd(["p"]) is None
        assert run.gimp_read_fd(["p", "-gimp", "3", "x"]) is None
        with open(tmp_path / "f", "w") as fh:  # a regular file is not GIMP's pipe
            assert run.gimp_read_fd(["p", "-gimp", "3", str(fh.fileno())]) is None
    finally:
        os.close(read_fd)
        os.close(write_fd)


# -- options, progress, sentences -----------------------------------------------------------------


def test_only_mask_outputs_want_decontaminated_colours():
    for output in (run.OUTPUT_NEW_LAYER, run.OUTPUT_LAYER_MASK):
        assert run.Options("m", output, decontaminate=True).wants_cutout
        assert not run.Options("m", output).wants_cutout
    for output in (run.OUTPUT_SELECTION, run.OUTPUT_MASK_LAYER):
        assert not run.Options("m", output, decontaminate=True).wants_cutout
    assert [o[0] for o in run.OUTPUTS] == [
        run.OUTPUT_NEW_LAYER,
        run.OUTPUT_LAYER_MASK,
        run.OUTPUT_SELECTION,
        run.OUTPUT_MASK_LAYER,
    ]


def test_progress_fraction():
    base, share = run.IO_SHARE / 2, 1.0 - run.IO_SHARE
    assert run.progress_fraction(0, 1, base, share, 0.0) == pytest.approx(0.05)
    assert run.progress_fraction(0, 1, base, share, 1.0) == pytest.approx(0.95)
    assert run.progress_fraction(1, 2, base, share, 0.5) == pytest.approx((1 + 0.05 + 0.45) / 2)
    assert run.progress_fraction(1, 2, base, share, 5.0) == 1.0


def test_limits_are_checked_before_reading():
    run.check_limits("Photo", (0, 0, 100, 50), {})
    run.check_limits("Photo", (0, 0, 100, 50), {"max_pixels": 5000, "max_side": 100})
    with pytest.raises(run.UserError) as err:
        run.check_limits("Photo", (0, 0, 160, 120), {"max_pixels": 5000})
    assert str(err.value) == (
        "“Photo” is too large to process: 160 × 120 pixels, the sidecar accepts at most "
        "0.0 megapixels. Select a smaller area, or scale the image down (Image ▸ Scale Image)."
    )
    with pytest.raises(run.UserError, match=r"at most 1\.0 megapixels and 500 pixels per side"):
        run.check_limits("Big", (0, 0, 501, 10), {"max_pixels": 10**6, "max_side": 500})


def test_sentences_agree_in_number():
    assert "“A” already has a layer mask" in run.masked_message(["A"])
    assert "“A”, “B” already have a layer mask" in run.masked_message(["A", "B"])
    assert run.replace_question(["A"]).startswith("“A” already has a layer mask. Offcut will")
    assert run.skipped_message(["A"]).endswith("does not overlap it.")
    assert run.skipped_message(["A", "B"]) == (
        "Offcut skipped “A”, “B”: the selection does not overlap them."
    )
    assert "selected layer:" in run.no_overlap_message(1)
    assert "selected layers:" in run.no_overlap_message(3)
    assert run.channel_message("Alpha").startswith("“Alpha” is a channel, not a layer")
    assert run.group_message("G").startswith("“G” is a layer group")
    assert run.unexpected_message(KeyError("x")) == (
        "Offcut failed unexpectedly: KeyError: 'x'. Please report this."
    )
    assert run.client_error_text(ClientError("c", "Said.")) == "Said."

    class Keyed(ClientError):  # the client's errors render their key in the user's language
        def text(self):
            return "Gesagt." if self.code == "c" else 1 / 0

    assert run.client_error_text(Keyed("c", "Said.")) == "Gesagt."
    assert run.client_error_text(Keyed("x", "Said.")) == "Said.", "a failing text() falls back"
    assert run.client_error_text(ValueError("plain")) == "plain"
    assert run.client_error_text(ValueError()) == "ValueError"


def test_debug_line_only_when_asked():
    stream = io.StringIO()
    run.debug_line(FakeClient(), "selection", [{"layer": "A"}], environ={}, stream=stream)
    assert stream.getvalue() == ""
    env = {"OFFCUT_DEBUG": "1"}
    run.debug_line(FakeClient(), "selection", [{"layer": "A"}], environ=env, stream=stream)
    prefix, _, body = stream.getvalue().partition(" ")
    assert prefix == "OFFCUT-GIMP-DEBUG" and stream.getvalue().endswith("\n")
    assert json.loads(body) == {
        "offcut_gimp": run.PLUGIN_VERSION,
        "transport": "fake",
        "output": "selection",
        "jobs": [{"layer": "A"}],
    }


def test_phases_sum_per_phase_and_reach_the_debug_line():
    """The bench splits GIMP's wall time with these: totals add up, marks are epochs."""
    before = time.time()
    phases = run.Phases(process=before)
    for _ in range(2):
        with phases("read"):
            time.sleep(0.01)
    with pytest.raises(ValueError), phases("write"):  # a failing phase still counts
        raise ValueError("boom")
    phases.mark("end")
    record = phases.record()
    assert record["totals"]["read"] >= 0.02
    assert 0 <= record["totals"]["write"] < 0.01
    assert record["marks"]["process"] == before <= record["marks"]["end"] <= time.time()
    stream = io.StringIO()
    env = {"OFFCUT_DEBUG": "1"}
    run.debug_line(FakeClient(), "new-layer", [], environ=env, stream=stream, phases=phases)
    body = json.loads(stream.getvalue().partition(" ")[2])
    assert body["phases"] == json.loads(json.dumps(record))

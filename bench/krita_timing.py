"""Runs inside real Krita (bench/krita.py sends it through the e2e driver's ``run_file``).

For each layer it takes turns, round after round, between:

- ``roundtrip``: the plug-in's own client (``offcut_krita.offcut_client``) sending the very
  pixels the job reads, in the same format, from Krita's Python (the floor of any job);
- ``krita``: the docker's job, ``controller.run`` on the layer as the button and the action
  start it, from the call until the controller is no longer busy;
- ``baseline``: the same with the plug-in of another commit, installed as a second package.

While a job runs a 10 ms timer on the UI thread records the longest gap between its ticks:
how long Krita's UI thread was blocked. The script answers through ``reply`` once every round
has run. Globals from the driver: ``driver``, ``reply``, ``args`` and ``qt``.
"""

import importlib
import time

from krita import Krita

QTimer = qt.QTimer  # noqa: F821 - a global from the driver
SPEC = args  # noqa: F821
REPLY = reply  # noqa: F821
QUIET_MS = 500  # between two timed runs: Krita finishes rendering what the last one changed


def _load(package):
    job = importlib.import_module(package + ".job")
    controller = importlib.import_module(package + ".controller")
    client = importlib.import_module(package + ".offcut_client")
    return job, controller, client


JOB, CONTROLLER, CLIENT = _load("offcut_krita")
CTL = CONTROLLER.get()
CONTENDERS = {"krita": (JOB, CTL)}
BASELINE_TIMES = {}
if SPEC.get("baseline"):
    bjob, bcontroller, _ = _load("offcut_krita_baseline")
    bctl = bcontroller.Controller()  # its own worker and client; no docker, no action

    def _timed(name, fn):
        def wrapper(*a, **k):
            t = time.monotonic()
            try:
                return fn(*a, **k)
            finally:
                BASELINE_TIMES[name] = time.monotonic() - t

        return wrapper

    # The baseline's phases, measured around its three steps (read, request, write).
    bjob.plan_job = _timed("read", bjob.plan_job)
    bjob.request = _timed("roundtrip", bjob.request)
    bjob.apply_result = _timed("write", bjob.apply_result)
    CONTENDERS["baseline"] = (bjob, bctl)

for _job, _ctl in CONTENDERS.values():
    _ctl.update_settings(model=SPEC["model"], output="mask", refine=False, decontaminate=False)


def guarded(fn):
    """``fn`` for a Qt callback: an exception ends the run with the error as the reply."""

    def run(*a):
        try:
            fn(*a)
        except Exception:
            import traceback

            REPLY({"error": traceback.format_exc()}, ok=False)

    return run


RT_CLIENT = CLIENT.Client(app="krita-bench", start=False, progress_timeout=600.0)
CALLS = []


def make_doc(item):
    k = Krita.instance()
    w, h = item["width"], item["height"]
    doc = k.createDocument(w, h, item["id"], "RGBA", item["depth"], "", 72.0)
    root = doc.rootNode()
    for child in root.childNodes():
        child.remove()
    layer = doc.createNode("Subject", "paintlayer")
    with open(item["pixels"], "rb") as f:
        layer.setPixelData(f.read(), 0, 0, w, h)
    root.addChildNode(layer, None)
    window = k.activeWindow()
    view = window.addView(doc)
    window.showView(view)
    k.setActiveDocument(doc)
    doc.waitForDone()
    doc.setActiveNode(layer)
    return doc, layer


def run_roundtrip(state, done):
    item = state["item"]
    t0 = time.monotonic()
    RT_CLIENT.segment(
        state["pixels"],
        item["width"],
        item["height"],
        state["fmt"],
        colorspace=state["colorspace"],
        model=SPEC["model"],
        mask_format="GRAY8",
    )
    done({"wall": time.monotonic() - t0})


def run_job(who, state, done):
    _job, ctl = CONTENDERS[who]
    doc, layer = state["doc"], state["layer"]
    gaps = {"max": 0.0, "last": 0.0, "ticks": 0, "long": []}
    messages = []

    def tick():
        now = time.monotonic()
        gap = now - gaps["last"]
        gaps["max"] = max(gaps["max"], gap)
        if gap > 0.03:  # when the long ones ended, to tell which phase they fell in
            gaps["long"].append([round(gap, 4), round(now - t0, 4)])
        gaps["last"] = now
        gaps["ticks"] += 1

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)

    def on_message(kind, text, details):
        messages.append([kind, text])

    @guarded
    def on_busy(busy):
        if busy:
            return
        wall = time.monotonic() - t0
        timer.stop()
        tick()
        ctl.busy_changed.disconnect(on_busy)
        ctl.message.disconnect(on_message)
        if not messages or messages[-1][0] != "info":
            raise RuntimeError(f"the {who} job failed: {messages!r}")
        phases = dict(BASELINE_TIMES) if who == "baseline" else dict(ctl.last_phases)
        masks = [c for c in layer.childNodes() if c.type() == "transparencymask"]
        if len(masks) != 1:
            raise RuntimeError(f"the {who} job left {len(masks)} masks")
        for m in masks:
            m.remove()
        doc.waitForDone()
        call = {"wall": wall, "max_gap": gaps["max"], "ticks": gaps["ticks"], "phases": phases}
        done(dict(call, long_gaps=gaps["long"]))

    ctl.busy_changed.connect(on_busy)
    ctl.message.connect(on_message)
    BASELINE_TIMES.clear()
    t0 = time.monotonic()
    gaps["last"] = t0
    timer.start()
    ctl.run(doc, layer)
    if not ctl.busy:
        raise RuntimeError(f"the {who} job did not start: {messages!r}")


def rounds(item):
    whos = ["roundtrip", *CONTENDERS]
    for r in range(-SPEC["warmup"], SPEC["repeats"]):
        shift = r % len(whos)
        for who in whos[shift:] + whos[:shift]:
            yield r, who


def run_item(index):
    if index >= len(SPEC["items"]):
        RT_CLIENT.close()
        REPLY(
            {
                "calls": CALLS,
                "transport": RT_CLIENT.transport_name,
                "krita": Krita.instance().version(),
            }
        )
        return
    item = SPEC["items"][index]
    doc, layer = make_doc(item)
    pixels = JOB.pixels
    fmt = pixels.layout(layer.colorModel(), layer.colorDepth())[0]
    linear = pixels.is_linear_profile(layer.colorProfile())
    state = {
        "item": item,
        "doc": doc,
        "layer": layer,
        "fmt": fmt,
        "colorspace": "linear" if linear else "srgb",
        "pixels": bytes(layer.pixelData(0, 0, item["width"], item["height"])),
    }
    todo = rounds(item)

    @guarded
    def step():
        try:
            r, who = next(todo)
        except StopIteration:
            state.clear()
            doc.setModified(False)
            doc.close()
            QTimer.singleShot(QUIET_MS, guarded(lambda: run_item(index + 1)))
            return

        def done(call):
            call.update({"id": item["id"], "round": r, "who": who})
            CALLS.append(call)
            QTimer.singleShot(QUIET_MS, step)

        if who == "roundtrip":
            run_roundtrip(state, done)
        else:
            run_job(who, state, done)

    QTimer.singleShot(QUIET_MS, step)


QTimer.singleShot(0, guarded(lambda: run_item(0)))

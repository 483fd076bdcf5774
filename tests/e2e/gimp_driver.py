"""Host side of the GIMP end-to-end tests: install the plug-in, run real GIMP, read results.

GIMP runs from a Debian rootfs of the editor matrix (tests/e2e/rootfs.py) with its profile in
the test's temporary directory (``GIMP3_DIRECTORY``). The plug-in is installed there with
``offcut install gimp --profile PROFILE/plug-ins``, exactly as a user installs it. The sidecar
runs on the host; GIMP's plug-in finds it through the connection file in the runtime directory,
which is mounted at the same path inside the rootfs.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from offcut_gimp.run import DEBUG_PREFIX

from .plugins import install_plugin
from .rootfs import Rootfs, run_in_rootfs

REPO = Path(__file__).resolve().parents[2]
BATCH_SCRIPT = Path(__file__).with_name("gimp_batch.py")
PLUGIN_NAME = "offcut-remove-background"
MARK_RE = re.compile(r"^OFFCUT-E2E (RUN|DONE|CRASH) (\S+)(?: (.*))?$")

# Importing either of these fails inside GIMP's Python when this directory is on PYTHONPATH,
# which is how a user's system without python3-zmq / python3-msgpack looks to the client.
SHIM_TEXT = 'raise ImportError("hidden by the Offcut end-to-end tests")\n'


def install_gimp_plugin(plugins_dir: Path) -> Path:
    """``offcut install gimp --profile DIR``; returns the installed plug-in folder."""
    printed = install_plugin("gimp", plugins_dir)
    folder = plugins_dir / PLUGIN_NAME
    if not (folder / f"{PLUGIN_NAME}.py").is_file():
        raise RuntimeError(f"offcut install gimp did not create {folder}: {printed}")
    return folder


def make_shim(directory: Path) -> Path:
    """A PYTHONPATH directory whose ``zmq`` and ``msgpack`` refuse to import."""
    for name in ("zmq", "msgpack"):
        (directory / name).mkdir(parents=True, exist_ok=True)
        (directory / name / "__init__.py").write_text(SHIM_TEXT)
    return directory


@dataclass
class CaseOutput:
    """What one case left behind: the manifest, its files and the plug-in's debug records."""

    case_id: str
    directory: Path
    record: dict
    debug: list[dict] = field(default_factory=list)

    def raw(self, entry: dict) -> bytes:
        return (self.directory / entry["file"]).read_bytes()

    def layer(self, name: str) -> dict:
        for entry in self.record["layers"]:
            if entry["name"] == name:
                return entry
        names = [e["name"] for e in self.record["layers"]]
        raise AssertionError(f"no layer named {name!r} in {names}")

    @property
    def transports(self) -> set[str]:
        return {d.get("transport") for d in self.debug}

    @property
    def jobs(self) -> list[dict]:
        return [job for d in self.debug for job in d.get("jobs", [])]


@dataclass
class BatchRun:
    output: str
    returncode: int
    cases: dict[str, CaseOutput]
    crashes: dict[str, str]


class GimpHarness:
    """One GIMP profile with the plug-in installed, reused by every GIMP run of a module."""

    def __init__(self, rootfs: Rootfs, work: Path, runtime_dir: Path) -> None:
        self.rootfs = rootfs
        self.work = work
        self.runtime_dir = runtime_dir
        self.profile = work / "profile"
        self.home = work / "home"
        self.plugins = self.profile / "plug-ins"
        for d in (self.profile, self.home, self.plugins):
            d.mkdir(parents=True, exist_ok=True)
        self.plugin_dir = install_gimp_plugin(self.plugins)
        self.shim = make_shim(work / "shim")
        self.runs = 0

    def env(self, shim: bool, runtime_dir: Path | None = None, **extra: str) -> dict[str, str]:
        env = {
            "HOME": str(self.home),
            "GIMP3_DIRECTORY": str(self.profile),
            "OFFCUT_RUNTIME_DIR": str(runtime_dir or self.runtime_dir),
            "OFFCUT_DEBUG": "1",
            "PYTHONUNBUFFERED": "1",
        }
        if shim:
            env["PYTHONPATH"] = str(self.shim)
        env.update(extra)
        return env

    def binds(self, runtime_dir: Path | None = None) -> list[Path]:
        return [self.work, runtime_dir or self.runtime_dir]

    def console(
        self,
        batch: str,
        interpreter: str = "python-fu-eval",
        shim: bool = False,
        runtime_dir: Path | None = None,
        timeout: float = 600,
        **extra_env: str,
    ) -> subprocess.CompletedProcess[str]:
        """``gimp-console-3.x -i --quit --batch-interpreter INTERPRETER -b BATCH``."""
        argv = [
            self.rootfs.gimp_console,
            "-i",
            "--quit",
            "--batch-interpreter",
            interpreter,
            "-b",
            batch,
        ]
        return run_in_rootfs(
            self.rootfs,
            argv,
            binds=self.binds(runtime_dir),
            env=self.env(shim, runtime_dir, **extra_env),
            timeout=timeout,
        )

    def run_cases(
        self,
        cases: list[dict],
        files: dict[str, bytes],
        shim: bool = False,
        runtime_dir: Path | None = None,
        timeout: float = 600,
        **extra_env: str,
    ) -> BatchRun:
        """Run ``gimp_batch.py`` over ``cases``; ``files`` are the raw layer pixels it loads.

        ``extra_env`` reaches GIMP and so its plug-ins (``LANGUAGE=de`` runs GIMP in German).
        """
        self.runs += 1
        run_dir = self.work / f"run-{self.runs}"
        out_dir = run_dir / "out"
        out_dir.mkdir(parents=True)
        for name, data in files.items():
            (run_dir / name).write_bytes(data)
        spec = run_dir / "spec.json"
        spec.write_text(json.dumps({"cases": cases, "out": str(out_dir)}))
        script = run_dir / "gimp_batch.py"
        script.write_text(BATCH_SCRIPT.read_text())
        batch = f"exec(open({str(script)!r}).read())"
        proc = self.console(
            batch,
            shim=shim,
            runtime_dir=runtime_dir,
            timeout=timeout,
            OFFCUT_E2E_SPEC=str(spec),
            **extra_env,
        )
        return parse_batch(proc.stdout, proc.returncode, out_dir)


def parse_batch(output: str, returncode: int, out_dir: Path) -> BatchRun:
    """Split GIMP's merged output into cases and attribute the plug-in's debug lines."""
    debug: dict[str, list[dict]] = {}
    crashes: dict[str, str] = {}
    current = None
    for line in output.splitlines():
        m = MARK_RE.match(line.strip())
        if m:
            kind, case_id, rest = m.groups()
            if kind == "RUN":
                current = case_id
                debug[case_id] = []
            elif kind == "DONE":
                current = None
            else:
                crashes[case_id] = json.loads(rest) if rest else ""
            continue
        if line.startswith(DEBUG_PREFIX) and current is not None:
            debug[current].append(json.loads(line[len(DEBUG_PREFIX) :]))
    cases = {}
    for result in sorted(out_dir.glob("*/result.json")):
        record = json.loads(result.read_text())
        cases[record["id"]] = CaseOutput(
            record["id"], result.parent, record, debug.get(record["id"], [])
        )
    return BatchRun(output, returncode, cases, crashes)


# ---------------------------------------------------------------------------------------------
# The GUI: real gimp-3.x under Xvfb, answered by xdotool
# ---------------------------------------------------------------------------------------------

GUI_SCRIPT = Path(__file__).with_name("gimp_gui.py")

# Runs inside the rootfs. Xvfb picks a free display itself (-displayfd), so parallel suites do
# not collide; everything it starts is ended by pid before the namespace goes away.
GUI_WRAPPER = r"""
set -u
cd "$RUN"
Xvfb -displayfd 3 -screen 0 1280x900x24 -nolisten tcp 3>"$RUN/display" >"$RUN/xvfb.log" 2>&1 &
XP=$!
n=0; while [ ! -s "$RUN/display" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
export DISPLAY=":$(cat "$RUN/display")"
"$GIMP_GUI" --no-splash --batch-interpreter python-fu-eval \
  -b "exec(open('$RUN/gimp_gui.py').read())" >"$RUN/gimp.log" 2>&1 &
GP=$!
log="$RUN/gimp.log"
stop() {  # PID: TERM, then KILL after 10 s (GIMP 3.2 has been seen to hang on TERM at exit)
  kill $1 2>/dev/null
  n=0; while kill -0 $1 2>/dev/null && [ $n -lt 50 ]; do sleep 0.2; n=$((n+1)); done
  kill -9 $1 2>/dev/null; wait $1 2>/dev/null
}
fail() {  # stop at the first thing that did not happen: later waits would only time out
  echo "GUI-FAIL $*"; import -window root "$RUN/failure.png" 2>/dev/null
  stop $GP; stop $XP; exit 1
}
waitlog() {  # PATTERN SECONDS
  n=0
  while ! grep -aq -- "$1" "$log"; do
    n=$((n+1)); [ $n -gt $(($2 * 5)) ] && { fail "no '$1' in the log"; return 1; }
    sleep 0.2
  done
}
waitwin() {  # NAME SECONDS → $W
  n=0; W=""
  while [ -z "$W" ]; do
    W=$(xdotool search --onlyvisible --name "$1" 2>/dev/null | head -1)
    [ -n "$W" ] && return 0
    n=$((n+1)); [ $n -gt $(($2 * 5)) ] && { fail "no window '$1'"; return 1; }
    sleep 0.2
  done
}
shot() { import -window "$1" "$RUN/$2"; }
press() { win=$1; shift; xdotool windowfocus --sync "$win"; xdotool key "$@"; }
main_window() { MAIN=$(xdotool search --onlyvisible --name ' GIMP$' 2>/dev/null | head -1); }
. "$RUN/actions.sh"
echo "GUI-ACTIONS-END"
stop $GP; stop $XP
exit 0
"""

GUI_ACTIONS = r"""
DIALOG='^Remove Background \(Offcut\)$'   # xdotool takes a regular expression
QUESTION='^Replace Layer Mask \(Offcut\)$'
waitlog "STEP question-cancel" 180
waitwin "$DIALOG" 60 && sleep 1 && shot $W dialog.png && press $W Return
waitwin "$QUESTION" 60 && sleep 1 && shot $W question.png && press $W Escape
waitlog "STEP-DONE question-cancel" 60
waitlog "STEP question-replace" 60
waitwin "$DIALOG" 60 && sleep 1 && press $W Return
waitwin "$QUESTION" 60 && sleep 1 && press $W Return
waitlog "SHOW-RESULT" 120
sleep 1; main_window && shot $MAIN result.png
press $MAIN ctrl+z   # one undo step must take the whole run back
sleep 1
touch "$RUN/result-shot-done"
waitlog "STEP interactive-mask-layer" 60
waitwin "$DIALOG" 60 && sleep 1 && press $W Tab Tab Down Down Down
sleep 0.5; shot $W dialog-mask-layer.png; xdotool key Return
waitlog "STEP-DONE last-values" 120
waitlog "STEP progress-cancel" 60
python3 - <<'PY'
import sys, time
sys.path.insert(0, __import__("os").environ["PLUGIN_DIR"])
from offcut_client import Client
client = Client(app="e2e-poll", start=False)
for _ in range(600):
    if client.status().get("running"):
        print("SIDECAR-RUNNING", flush=True)
        break
    time.sleep(0.1)
PY
sleep 1
main_window
eval $(xdotool getwindowgeometry --shell $MAIN)
shot $MAIN progress.png
# The Cancel button at the right end of the status bar's progress (default window layout).
set -- $POINT_CANCEL_FROM_CORNER
xdotool mousemove --window $MAIN $((WIDTH - $1)) $((HEIGHT - $2)) click 1
echo "CANCEL-CLICKED"
waitlog "STEP-DONE progress-cancel" 120
waitlog "ALL-DONE" 60
# Finally the way users start it: Layer ▸ Transparency ▸ Remove Background (Offcut)... on the
# image left active (the big one), with the dialog's last values (the mask-layer output). The
# points are this GIMP series' (GUI_POINTS); failure.png shows where a changed layout put them.
BEFORE=$(grep -ac "OFFCUT-GIMP-DEBUG" "$log")
main_window
eval $(xdotool getwindowgeometry --shell $MAIN)
xdotool mousemove $POINT_LAYER_MENU click 1
sleep 1
xdotool mousemove $POINT_TRANSPARENCY
sleep 1.5
import -window root -crop "${WIDTH}x${HEIGHT}+0+0" "$RUN/menu.png"
xdotool mousemove $POINT_SUBMENU
sleep 0.3
xdotool mousemove $POINT_OFFCUT click 1
waitwin "$DIALOG" 60 && sleep 1 && press $W Return
n=0
while [ "$(grep -ac "OFFCUT-GIMP-DEBUG" "$log")" -le "$BEFORE" ]; do
  n=$((n+1)); [ $n -gt 600 ] && fail "the menu run reported nothing"
  sleep 0.2
done
echo "MENU-RUN-DONE"
"""


# Where GUI_ACTIONS clicks, per GIMP series, in GIMP's default single-window layout on the
# 1280×900 Xvfb screen: the menu bar's Layer, its Transparency row, a point in that submenu on
# the same row, the submenu's last row (Remove Background (Offcut)...), and the progress bar's
# Cancel from the main window's bottom-right corner. GIMP 3.2 draws its menus in a smaller
# font than 3.0, so the rows sit higher; menu.png and progress.png show each series' layout.
# Windows themselves are found by their titles, which are the same in every series.
GUI_POINTS: dict[str, dict[str, tuple[int, int]]] = {
    "3.0": {
        "layer_menu": (267, 12),
        "transparency": (313, 238),
        "submenu": (600, 238),
        "offcut": (600, 465),
        "cancel_from_corner": (283, 18),
    },
    "3.2": {
        "layer_menu": (249, 10),
        "transparency": (300, 227),
        "submenu": (580, 227),
        "offcut": (580, 445),
        "cancel_from_corner": (283, 18),
    },
}


def gui_points_env(series: str) -> dict[str, str]:
    """GUI_POINTS of ``series`` as the ``POINT_*`` variables GUI_ACTIONS reads ("X Y")."""
    if series not in GUI_POINTS:
        raise AssertionError(
            f"no GUI_POINTS for GIMP {series}: measure them in the menu.png and progress.png "
            "of a run and add them to tests/e2e/gimp_driver.py"
        )
    return {f"POINT_{name.upper()}": f"{x} {y}" for name, (x, y) in GUI_POINTS[series].items()}


# A short session in another language (spec "session": "language"): the dialog, shot and
# cancelled, then a refused run whose error the steps record. $DIALOG is the dialog's title in
# that language, a regular expression (gui_session's ``extra_env``).
LANGUAGE_ACTIONS = r"""
waitlog "STEP dialog" 180
waitwin "$DIALOG" 60 && sleep 1 && shot $W dialog.png && press $W Escape
waitlog "STEP-DONE dialog" 60
waitlog "ALL-DONE" 120
"""


def gui_session(
    harness: GimpHarness,
    spec: dict,
    files: dict[str, bytes],
    timeout: float = 420,
    actions: str = GUI_ACTIONS,
    **extra_env: str,
):
    """Run gimp_gui.py in the rootfs's gimp-3.x under Xvfb with ``actions`` answering it."""
    harness.runs += 1
    run_dir = harness.work / f"gui-{harness.runs}"
    run_dir.mkdir(parents=True)
    for name, data in files.items():
        (run_dir / name).write_bytes(data)
    (run_dir / "spec.json").write_text(json.dumps(spec))
    (run_dir / "gimp_gui.py").write_text(GUI_SCRIPT.read_text())
    (run_dir / "actions.sh").write_text(actions)
    env = harness.env(
        False,
        RUN=str(run_dir),
        GIMP_GUI=harness.rootfs.gimp_gui,
        PLUGIN_DIR=str(harness.plugin_dir),
        OFFCUT_E2E_SPEC=str(run_dir / "spec.json"),
        **gui_points_env(harness.rootfs.gimp),
        **extra_env,
    )
    proc = run_in_rootfs(
        harness.rootfs,
        ["/bin/sh", "-c", GUI_WRAPPER],
        binds=harness.binds(),
        env=env,
        timeout=timeout,
    )
    steps = {}
    steps_file = run_dir / "steps.jsonl"
    if steps_file.is_file():
        for line in steps_file.read_text().splitlines():
            record = json.loads(line)
            steps[record["step"]] = record
    log = (
        (run_dir / "gimp.log").read_text(errors="replace")
        if (run_dir / "gimp.log").exists()
        else ""
    )
    return proc, run_dir, steps, log

"""A real ``offcut serve`` in a child process: the one launcher of tests/ and bench/.

It needs neither pytest nor the ``offcut`` package (the child finds ``offcut`` through the
``PYTHONPATH`` that :func:`sidecar_env` sets), so ``bench/`` imports it as ``tests.harness``
without taking in the test fixtures. tests/conftest.py re-exports both names for the tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDECAR_SRC = ROOT / "sidecar"


def sidecar_env(runtime_dir: Path, models: Path, **extra: str) -> dict[str, str]:
    """This process's environment, pointed at ``runtime_dir``, ``models`` and this checkout."""
    env = dict(os.environ)
    env.update(
        {
            "OFFCUT_RUNTIME_DIR": str(runtime_dir),
            "OFFCUT_MODELS_DIR": str(models),
            "PYTHONPATH": str(SIDECAR_SRC) + os.pathsep + env.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class Sidecar:
    """A running ``offcut serve`` (``--audit`` unless ``audit=False``) and what it printed.

    Started in the constructor, which returns once the readiness line has come (``ready``, and
    ``ready_s`` seconds after the spawn at ``started``, a ``time.perf_counter()``), with the
    connection file read (``info``, ``port``, ``token``). Stderr is collected in
    ``stderr_lines`` by a thread; :meth:`stop` sends SIGTERM and returns the exit status.
    """

    def __init__(
        self,
        runtime_dir: Path,
        models: Path,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        wrapper: list[str] | None = None,
        audit: bool = True,
    ) -> None:
        self.runtime_dir = runtime_dir
        self.env = env or sidecar_env(runtime_dir, models)
        self.args = [
            *(wrapper or []),
            sys.executable,
            "-m",
            "offcut",
            "serve",
            *(["--audit"] if audit else []),
            *(args or []),
        ]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.stderr_lines: list[str] = []
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        self.ready_s = time.perf_counter() - self.started
        if not line or not json.loads(line).get("ready"):
            self.stop()
            raise RuntimeError(f"sidecar did not start: {''.join(self.stderr_lines)}")
        self.ready = json.loads(line)
        self.info = json.loads((runtime_dir / "sidecar.json").read_text())
        self.port = self.info["port"]
        self.token = self.info["token"]

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, up to ``timeout`` seconds for a clean exit, then SIGKILL; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drain.join(5)
        return self.proc.returncode

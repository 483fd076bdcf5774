"""A real Ray cluster on this machine: a head on 127.0.0.1 and nodes joined to it, one CPU each.

Used by tests/integration/test_cluster.py and bench/run.py, so it needs neither pytest nor Ray in
this interpreter (``ray start`` runs from the same venv). Each node is a ``ray start --block``
child with its own session under one short temporary folder (Ray's socket paths must stay under
the kernel's 107 bytes), every port picked free, no dashboard, no usage statistics. :meth:`stop`
ends exactly the processes this cluster started (each node's process tree, plus any process
naming the cluster's folder), by pid, never Ray's ``ray stop``, which would end any Ray of the
user's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(d.name))
    return kids


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, parents first."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class RayCluster:
    """``nodes`` Ray nodes (the first is the head), ``cpus`` CPUs each; ``env`` for every node
    (``PYTHONPATH``, ``OFFCUT_MODELS_DIR``: what the workers will see)."""

    def __init__(
        self,
        nodes: int,
        env: dict[str, str],
        cpus: int = 1,
        object_store_bytes: int = 150_000_000,
    ) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="ofr-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(env, RAY_USAGE_STATS_ENABLED="0")
        self.cpus = cpus
        self.object_store_bytes = object_store_bytes
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for n in range(nodes):
                self.add_node(head=n == 0)
        except BaseException:
            self.stop()
            raise

    def add_node(self, *, head: bool = False, timeout: float = 90) -> None:
        common = [
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.cpus}",
            "--num-gpus=0",
            f"--object-store-memory={self.object_store_bytes}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--temp-dir={self.folder}",
        ]
        if head:
            args = [
                "--head",
                f"--port={self.port}",
                "--include-dashboard=false",
                "--disable-usage-stats",
                # A node that dies is noticed in seconds, not Ray's default half-minute, so the
                # node-death test stays short; five missed checks in a row still mean dead.
                "--system-config="
                + json.dumps(
                    {
                        "health_check_period_ms": 1000,
                        "health_check_timeout_ms": 2000,
                        "health_check_failure_threshold": 5,
                    }
                ),
            ]
        else:
            args = [f"--address={self.address}"]
        log = (self.folder / f"node{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [str(RAY), "start", *args, *common],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        self.wait_started(len(self.procs) - 1, timeout)

    def wait_started(self, n: int, timeout: float) -> None:
        """Until node ``n``'s ``ray start`` says it is up (a joining node says so once its raylet
        has registered with the head), failing early if it exits."""
        log = self.folder / f"node{n}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[n].poll() is not None:
                raise RuntimeError(f"Ray node {n} exited at start: {log.read_text()[-2000:]}")
            if b"Ray runtime started" in log.read_bytes():
                return
            time.sleep(0.3)
        raise TimeoutError(f"Ray node {n} did not start in {timeout:.0f} s; see {log}")

    def pids(self) -> list[int]:
        """Every live process of this cluster: the node trees and any naming its folder."""
        mine = [p for proc in self.procs for p in descendants(proc.pid)]
        tag = str(self.folder)
        mine += [
            int(d.name)
            for d in Path("/proc").iterdir()
            if d.name.isdigit() and tag in cmdline(int(d.name))
        ]
        return list(dict.fromkeys(mine))

    def worker_pids(self, name: str) -> list[int]:
        """The cluster's worker processes whose title starts with ``ray::NAME``."""
        return [p for p in self.pids() if cmdline(p).startswith(f"ray::{name}")]

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [p for p in self.pids() if p != os.getpid()]
            for p in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p, sig)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(alive(p) for p in pids):
                for proc in self.procs:
                    proc.poll()  # reap the node processes we own
                time.sleep(0.2)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        shutil.rmtree(self.folder, ignore_errors=True)

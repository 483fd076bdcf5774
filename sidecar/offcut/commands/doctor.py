"""``offcut status`` and ``offcut doctor``: what is installed, verified and running.

Both talk to a running sidecar only through the plug-in client, the same path the editors use, so
"doctor says it works" means the plug-ins' path works too. Neither starts a sidecar.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

from offcut import __version__, paths
from offcut.client import wire


def _query_sidecar(op: str) -> tuple[dict[str, Any] | None, str | None]:
    """The sidecar's answer to ``status``/``hello``, or (None, why not).

    The connection file is read the way every plug-in reads it (``client.discovery``), so what
    this says about it is what an editor would find.
    """
    from offcut.client import Client, OffcutClientError, discovery

    path = discovery.runtime_dir() / wire.CONNECTION_FILE
    try:
        info = discovery.read_connection_file(path)
    except OffcutClientError as exc:
        return None, exc.message
    if info is None:
        return (
            None,
            "no sidecar is running (it starts when an editor needs it, or run `offcut serve`)",
        )
    if not discovery.sidecar_alive(info, path):
        return (
            None,
            f"the connection file names pid {info.pid}, which is not a live sidecar (stale)",
        )
    try:
        client = Client(app="offcut-cli", start=False)
        try:
            return (client.status() if op == "status" else client.hello()), None
        finally:
            client.close()
    except OffcutClientError as exc:
        return None, exc.message


def status(as_json: bool = False) -> int:
    st, why = _query_sidecar("status")
    if st is None:
        if as_json:
            print(json.dumps({"alive": False, "reason": why}))
        else:
            print(f"Sidecar: not running — {why}")
        return 1
    if as_json:
        print(json.dumps({"alive": True, **st}, sort_keys=True))
        return 0
    print(f"Sidecar: running, pid {st['pid']}, up {st['uptime']:.0f} s, provider {st['provider']}")
    print(
        f"  queue {st['queue']}, busy {'yes' if st['running'] else 'no'}, "
        f"requests {st['requests']}, memory {st['rss_bytes'] / 1e6:.0f} MB"
        + (" (peak)" if st.get("rss_kind") == "peak" else "")
    )
    print(
        f"  loaded models: {', '.join(st['loaded_models']) or 'none'}; "
        f"idle timeout {st['idle_timeout']:.0f} s"
    )
    return 0


def doctor() -> int:
    """Print a checklist; exit 0 when everything a user needs is in place."""
    from offcut.models.catalog import load_catalog
    from offcut.models.store import ModelStore

    problems: list[str] = []
    print(f"offcut {__version__} (Python {sys.version.split()[0]} at {sys.executable})")
    try:
        import onnxruntime as ort

        print(
            f"ONNX Runtime {ort.__version__}: providers {', '.join(ort.get_available_providers())}"
        )
    except ImportError:
        problems.append("onnxruntime is not importable: reinstall offcut (`pip install offcut`).")
    catalog = load_catalog()
    store = ModelStore()
    print(f"Models directory: {store.root}")
    installed = 0
    for spec in catalog:
        state = store.state(spec)
        if state == "missing":
            continue
        ok, _ = store.verify(spec) if state == "installed" else (False, "")
        installed += ok
        mark = "ok" if ok else state
        print(f"  {spec.name}: {mark}")
        if not ok:
            problems.append(f"Model {spec.name} is {state}: run `offcut models fetch {spec.name}`.")
    if store.state(catalog.default_model()) != "installed":
        problems.append(
            f"The default model is not installed: run `offcut models fetch {catalog.default}`."
        )
    print(f"Runtime directory: {paths.runtime_dir()}")
    st, why = _query_sidecar("status")
    print("Sidecar: " + (f"running (pid {st['pid']})" if st else f"not running — {why}"))
    from offcut.commands import install

    for editor in ("gimp", "krita"):
        copies = install.installed_clients(editor)
        if not copies:
            print(f"{editor.capitalize()} plug-in: not installed (run `offcut install {editor}`)")
        for client_dir in copies:
            fresh = install.copies_match(client_dir)
            with contextlib.suppress(install.InstallError):  # no plug-in source to compare
                fresh = fresh and install.plugin_matches(editor, client_dir.parent)
            note = "" if fresh else " (out of date)"
            print(f"{editor.capitalize()} plug-in: installed in {client_dir.parent}{note}")
            if not fresh:
                problems.append(
                    f"The {editor} plug-in is older than this offcut: run "
                    f"`offcut install {editor}` again."
                )
    log_file = paths.runtime_dir() / wire.LOG_FILE
    if log_file.exists():
        print(f"Sidecar log (no pixel data): {log_file}")
    if problems:
        print("\nTo do:")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("\nEverything is in place.")
    return 0

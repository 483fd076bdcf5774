"""``offcut status`` and ``offcut doctor``: what is installed, verified and running.

Both talk to a running sidecar only through the plug-in client, the same path the editors use, so
"doctor says it works" means the plug-ins' path works too. Neither starts a sidecar.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
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


def _editors() -> list[str]:
    """Print, per editor, its profiles and Offcut's plug-in in each; return the problems.

    The profiles are the ones ``offcut install`` fills (``install.existing_targets``). An editor
    with no profile here is reported, not counted as a problem (the user may not have it), but
    a profile without the plug-in is, and so is no plug-in anywhere: doctor must never call a
    setup complete that no editor can use.
    """
    from offcut.commands import install

    problems: list[str] = []
    any_plugin = False
    for editor in install.EDITORS:
        name = editor.capitalize() if editor == "krita" else editor.upper()
        copies = install.installed_clients(editor)
        installed_in = {c.parent.parent for c in copies}
        profiles = install.existing_targets(editor)
        if not profiles and not copies:
            looked = ", ".join(str(t.path.parent) for t in install.candidate_targets(editor))
            print(
                f"{name}: no profile found (looked for {looked}); start {name} once, or use "
                f"`offcut install {editor} --profile DIR` for a profile elsewhere"
            )
        for target in profiles:
            if target.path not in installed_in:
                print(f"{name} plug-in: not installed in {target.path}")
                problems.append(
                    f"The {editor} plug-in is not installed in {target.path}: "
                    f"run `offcut install {editor}`."
                )
        for client_dir in copies:
            any_plugin = True
            folder = client_dir.parent
            fresh = install.copies_match(client_dir) and install.catalogs_match(folder)
            with contextlib.suppress(install.InstallError):  # no plug-in source to compare
                fresh = fresh and install.plugin_matches(editor, folder)
            note = "" if fresh else " (out of date)"
            print(f"{name} plug-in: installed in {folder}{note}")
            if not fresh:
                problems.append(
                    f"The {editor} plug-in is older than this offcut: run "
                    f"`offcut install {editor}` again."
                )
            elif editor == "krita":
                problems += _krita_enabled(folder.parent)
    if not any_plugin:
        problems.append(
            "No editor plug-in is installed in the usual profiles: run `offcut install gimp` or "
            "`offcut install krita`."
        )
    return problems


def _krita_enabled(pykrita: Path) -> list[str]:
    """Whether Krita loads the installed plug-in: kritarc must enable it (a problem if not)."""
    from offcut.commands import install

    kritarc = install.kritarc_for(pykrita)
    enabled = install.krita_enabled(kritarc)
    if enabled is None:
        print(f"  whether Krita loads it: unknown (no kritarc found for {pykrita})")
        return []
    print(f"  enabled in {kritarc}: {'yes' if enabled else 'no'}")
    if enabled:
        return []
    return [
        f"Krita will not load the plug-in: it is not enabled in {kritarc}. Close Krita and run "
        f"`offcut install krita`, or {install.KRITA_BY_HAND}."
    ]


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
    problems += _editors()
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

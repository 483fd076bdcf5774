"""``offcut models list | fetch | import | verify | path``.

``fetch`` is the only command in the product that opens a network connection, and only because
the user typed it; every file it brings is sha256-checked before it is moved into place.
"""

from __future__ import annotations

import argparse
import sys
import time

from offcut.models.catalog import load_catalog
from offcut.models.store import ModelStore


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


class _Bar:
    """A download progress line on stderr (only when stderr is a terminal)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.enabled = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and done != total):
            return
        self.last = now
        if total:
            sys.stderr.write(
                f"\r{self.name}: {_size(done)} of {_size(total)} ({100 * done // total}%)   "
            )
        else:
            sys.stderr.write(f"\r{self.name}: {_size(done)}   ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def main(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    store = ModelStore()
    cmd = args.models_command
    if cmd == "path":
        print(store.root)
        return 0
    if cmd == "list":
        rows = [("model", "state", "size", "licence", "description")]
        for spec in catalog:
            name = spec.name + (" (default)" if spec.name == catalog.default else "")
            size = _size(spec.size) + (" (derived)" if spec.derived else "")
            rows.append((name, store.state(spec), size, spec.license, spec.description))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
        for alias in catalog.aliases.values():
            now = catalog.resolve(alias.name, store.is_installed)
            print(
                f"{alias.name} ({alias.label}): {now.name} now; prefers {', '.join(alias.models)}"
            )
        return 0
    if cmd == "fetch":
        # An alias fetches the model it prefers (`offcut models fetch best`).
        spec = catalog.resolve(args.name, lambda _: False)
        bar = _Bar(spec.name)
        try:
            if spec.derived is not None:
                source = catalog.get(spec.derived.source)
                print(f"{spec.name}: {spec.derived.describe()}; nothing else is downloaded")
                path = store.derive(spec, source, progress=bar)
            else:
                path = store.fetch(spec, progress=bar, trust_unverified=args.trust)
        finally:
            bar.close()
        print(f"{spec.name}: installed and verified at {path}")
        return 0
    if cmd == "import":
        spec = catalog.resolve(args.name, lambda _: False)
        path = store.import_file(spec, args.file, trust=args.trust)
        print(f"{spec.name}: imported and verified at {path}")
        return 0
    if cmd == "verify":
        specs = [catalog.resolve(args.name, store.is_installed)] if args.name else list(catalog)
        bad = 0
        for spec in specs:
            state = store.state(spec)
            if state == "missing":
                if args.name:
                    print(f"{spec.name}: not installed (run `offcut models fetch {spec.name}`)")
                    bad += 1
                continue
            ok, digest = store.verify(spec)
            print(f"{spec.name}: {'ok' if ok else 'FAILED'} sha256 {digest}")
            if not ok:
                print(
                    f"  run `offcut models fetch {spec.name}` to download it again", file=sys.stderr
                )
                bad += 1
        return 1 if bad else 0
    raise AssertionError(cmd)

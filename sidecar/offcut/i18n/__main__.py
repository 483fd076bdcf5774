"""``python -m offcut.i18n update|check``: refresh or verify the translation catalogs."""

from __future__ import annotations

import argparse
import sys

from offcut.i18n import catalogs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offcut.i18n", description=__doc__)
    parser.add_argument("action", choices=("update", "check"))
    args = parser.parse_args(argv)
    if args.action == "update":
        for path in catalogs.update():
            print(f"updated {path.relative_to(catalogs.checkout_root())}")
        return 0
    found = catalogs.problems()
    for line in found:
        print(line, file=sys.stderr)
    print("catalogs: ok" if not found else f"catalogs: {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m offcut`` is the same as the ``offcut`` console script (used as the sidecar command)."""

from offcut.cli import main

raise SystemExit(main())

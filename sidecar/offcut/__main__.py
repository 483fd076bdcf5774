"""``python -m offcut`` is the ``offcut`` console script (also the recorded sidecar command)."""

from offcut.cli import main

raise SystemExit(main())

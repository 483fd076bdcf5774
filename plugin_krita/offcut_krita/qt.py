"""Qt for the Krita plug-in: PyQt6 in Krita 6, PyQt5 in Krita 5, from the same installed files.

Krita 5.2 embeds Qt 5 and runs plug-ins with PyQt5; Krita 6 embeds Qt 6 and runs them with
PyQt6 (and refuses ``import PyQt5`` outright). Every module of the plug-in therefore imports Qt
only from here, and ``tests/unit/test_krita_qt.py`` fails if one imports a binding directly.

Which binding: the one already loaded in this process, if any, because Krita imports its own
before any plug-in runs and a second binding would load a second Qt into Krita (Krita 6 blocks
that; Krita 5 does not, and would crash on a system that also has PyQt6). With none loaded
(outside Krita) PyQt6 is tried first, then PyQt5. Neither importable is an ``ImportError`` that
names both and why each failed.

What differs between the two and how the plug-in copes, so that nothing here needs a shim:

- enums: PyQt6 has only the scoped spelling (``Qt.AlignmentFlag.AlignTop``), which PyQt5 5.11
  and later (and Krita 5's own sip module) accept too, so the plug-in writes every enum scoped;
- ``exec()`` replaces ``exec_()``, and ``QAction``/``QShortcut`` moved to QtGui: the plug-in
  uses none of them (Krita creates the actions);
- ``QByteArray`` (``Node.pixelData``) supports the buffer protocol in both bindings.

Stdlib only until a binding is chosen; it has no state beyond the modules it picked.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

BINDINGS = ("PyQt6", "PyQt5")  # the order tried when Krita has not loaded one yet
PARTS = ("QtCore", "QtGui", "QtWidgets")  # what the plug-in needs of a binding


def _binding_order() -> list[str]:
    """The binding this process already runs first; Krita has imported it before any plug-in."""
    loaded = [name for name in BINDINGS if sys.modules.get(name) is not None]
    return loaded[:1] + [name for name in BINDINGS if name not in loaded[:1]]


def _load() -> tuple[str, dict[str, ModuleType]]:
    failures = []
    for name in _binding_order():
        try:
            return name, {part: importlib.import_module(f"{name}.{part}") for part in PARTS}
        except ImportError as exc:
            failures.append(f"{name}: {exc}")
    raise ImportError(
        "Offcut's Krita plug-in needs PyQt6 (Krita 6) or PyQt5 (Krita 5), with "
        + ", ".join(PARTS)
        + "; neither could be imported ("
        + "; ".join(failures)
        + "). Krita's own installer bundles the right one; on Linux install your "
        "distribution's python3-pyqt6 or python3-pyqt5 package, whichever your Krita uses."
    )


BINDING, _MODULES = _load()
QT_MAJOR = int(BINDING[-1])
QtCore = _MODULES["QtCore"]
QtGui = _MODULES["QtGui"]
QtWidgets = _MODULES["QtWidgets"]


def module(part: str) -> ModuleType:
    """Another module of the chosen binding (``"QtNetwork"``), for code that needs more."""
    return importlib.import_module(f"{BINDING}.{part}")


# The names the plug-in uses, so its modules read as before: ``from .qt import QTimer``.
Qt = QtCore.Qt
QObject = QtCore.QObject
QTimer = QtCore.QTimer
pyqtSignal = QtCore.pyqtSignal
QIcon = QtGui.QIcon
QApplication = QtWidgets.QApplication
QCheckBox = QtWidgets.QCheckBox
QComboBox = QtWidgets.QComboBox
QFormLayout = QtWidgets.QFormLayout
QFrame = QtWidgets.QFrame
QHBoxLayout = QtWidgets.QHBoxLayout
QLabel = QtWidgets.QLabel
QProgressBar = QtWidgets.QProgressBar
QPushButton = QtWidgets.QPushButton
QSizePolicy = QtWidgets.QSizePolicy
QVBoxLayout = QtWidgets.QVBoxLayout
QWidget = QtWidgets.QWidget

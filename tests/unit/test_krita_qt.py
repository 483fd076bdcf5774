"""The Krita plug-in's Qt: one compatibility module picks PyQt6 or PyQt5, and nothing bypasses it.

Krita 5 runs plug-ins with PyQt5 and Krita 6 with PyQt6, from the same installed files, so
``offcut_krita/qt.py`` chooses the binding and every other module imports Qt from it. These
tests need neither Krita nor PyQt: fake bindings are served by an importer, and the sources are
checked for what only works in one of the two (direct imports, ``exec_()``, unscoped enums).
The real proof is ``tests/e2e/test_krita.py`` in Krita 5.2 and 6.0.
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.machinery
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QT_MODULE = REPO / "plugin_krita" / "offcut_krita" / "qt.py"
# Everything that runs inside Krita: the plug-in and the e2e tests' driver plug-in.
KRITA_SOURCES = [
    *sorted((REPO / "plugin_krita").rglob("*.py")),
    REPO / "tests" / "e2e" / "krita_driver.py",
]
BINDINGS = ("PyQt5", "PyQt6")


class FakeBindings(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``PyQt5``/``PyQt6`` packages whose every attribute names where it came from."""

    def __init__(self, available: dict[str, set[str] | None]) -> None:
        # binding -> the submodules it has (None: all of them)
        self.available = available

    def find_spec(self, fullname, path=None, target=None):
        binding, _, part = fullname.partition(".")
        if binding not in self.available:
            return None
        parts = self.available[binding]
        if part and parts is not None and part not in parts:
            return None  # ModuleNotFoundError, as for a binding built without that module
        return importlib.machinery.ModuleSpec(fullname, self, is_package=not part)

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__getattr__ = lambda name: f"{spec.name}.{name}"  # PEP 562
        return module

    def exec_module(self, module):
        pass


@pytest.fixture
def fake_qt(monkeypatch) -> Iterator:
    """Import ``offcut_krita.qt`` afresh with the given bindings importable or loaded."""
    saved = {
        k: v
        for k, v in sys.modules.items()
        if k.split(".")[0] in BINDINGS or k == "offcut_krita.qt"
    }
    finders: list[FakeBindings] = []

    def load(available=(), loaded=(), parts=None):
        for name in list(sys.modules):
            if name.split(".")[0] in BINDINGS or name == "offcut_krita.qt":
                del sys.modules[name]
        for binding in BINDINGS:
            if binding not in available:
                sys.modules[binding] = None  # the import system's "not installed"
        finder = FakeBindings({b: (parts or {}).get(b) for b in available})
        finders.append(finder)
        sys.meta_path.insert(0, finder)
        for binding in loaded:  # Krita imports its own binding before any plug-in
            importlib.import_module(f"{binding}.QtCore")
        return importlib.import_module("offcut_krita.qt")

    yield load
    for finder in finders:
        sys.meta_path.remove(finder)
    for name in list(sys.modules):
        if name.split(".")[0] in BINDINGS or name == "offcut_krita.qt":
            del sys.modules[name]
    sys.modules.update(saved)


def test_pyqt6_is_first_when_krita_has_loaded_none(fake_qt):
    qt = fake_qt(available=("PyQt6", "PyQt5"))
    assert qt.BINDING == "PyQt6" and qt.QT_MAJOR == 6
    assert qt.QTimer == "PyQt6.QtCore.QTimer"
    assert qt.QIcon == "PyQt6.QtGui.QIcon"
    assert qt.QPushButton == "PyQt6.QtWidgets.QPushButton"
    assert qt.module("QtNetwork").QTcpSocket == "PyQt6.QtNetwork.QTcpSocket"


def test_pyqt5_is_the_fallback(fake_qt):
    qt = fake_qt(available=("PyQt5",))
    assert qt.BINDING == "PyQt5" and qt.QT_MAJOR == 5
    assert qt.Qt == "PyQt5.QtCore.Qt"
    assert qt.QApplication == "PyQt5.QtWidgets.QApplication"


def test_the_binding_krita_already_loaded_wins(fake_qt):
    """Krita 5 on a system that also has PyQt6: loading it would put a second Qt in Krita."""
    qt = fake_qt(available=("PyQt6", "PyQt5"), loaded=("PyQt5",))
    assert qt.BINDING == "PyQt5"
    assert qt.QWidget == "PyQt5.QtWidgets.QWidget"


def test_an_incomplete_binding_falls_back(fake_qt):
    qt = fake_qt(available=("PyQt6", "PyQt5"), parts={"PyQt6": {"QtCore", "QtGui"}})
    assert qt.BINDING == "PyQt5"


def test_without_either_binding_the_error_names_what_is_missing(fake_qt):
    with pytest.raises(ImportError) as info:
        fake_qt(available=("PyQt6",), parts={"PyQt6": {"QtCore"}})
    text = str(info.value)
    assert "PyQt6" in text and "PyQt5" in text
    assert "PyQt6.QtGui" in text  # why PyQt6 would not do
    assert "python3-pyqt6" in text


# -- no module bypasses the compatibility module ----------------------------------------------

_QT_CLASS = re.compile(r"^(Qt|Q[A-Z]\w*|DockWidgetFactoryBase)$")
_MOVED_TO_QTGUI = {"QAction", "QActionGroup", "QShortcut", "QUndoCommand", "QUndoStack"}


def _class_of(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def qt_problems(source: str, is_compat_module: bool = False) -> list[str]:
    """What in ``source`` works with only one of PyQt5 and PyQt6, as "line: what" strings."""
    tree = ast.parse(source)
    problems = []
    chained = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        where = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import | ast.ImportFrom) and not is_compat_module:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names.append(node.module or "")
            for name in names:
                if name.split(".")[0] in (*BINDINGS, "sip"):
                    problems.append(f"{where}: imports {name} directly; use offcut_krita.qt")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if not is_compat_module and re.fullmatch(r"PyQt[56](\.\w+)*", node.value):
                problems.append(f"{where}: names the binding {node.value!r}; use offcut_krita.qt")
        elif isinstance(node, ast.Attribute):
            base = _class_of(node.value)
            if node.attr == "exec_":
                problems.append(f"{where}: exec_() is gone in PyQt6; use exec()")
            elif node.attr in _MOVED_TO_QTGUI and base == "QtWidgets":
                problems.append(f"{where}: {node.attr} is in QtGui in Qt 6")
            elif (
                base is not None
                and _QT_CLASS.match(base)
                and node.attr[:1].isupper()
                and id(node) not in chained
            ):
                problems.append(f"{where}: unscoped enum {base}.{node.attr}; PyQt6 needs the scope")
    return sorted(problems)


@pytest.mark.parametrize(
    "bad",
    [
        "from PyQt5.QtCore import Qt",
        "import PyQt6.QtWidgets",
        "from PyQt6 import sip",
        "import sip",
        "m = importlib.import_module('PyQt5.QtGui')",
        "dialog.exec_()",
        "w.setAlignment(Qt.AlignLeft)",
        "form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)",
        "box = QDialogButtonBox(QDialogButtonBox.Ok)",
        "fmt = QImage.Format_RGBA8888",
        "pos = DockWidgetFactoryBase.DockRight",
        "s = QtNetwork.QAbstractSocket.ConnectedState",
        "a = QtWidgets.QAction('x')",
    ],
)
def test_the_source_check_catches(bad):
    assert qt_problems(bad), bad


@pytest.mark.parametrize(
    "good",
    [
        "from .qt import Qt, QTimer",
        "w.setAlignment(Qt.AlignmentFlag.AlignLeft)",
        "box = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok)",
        "fmt = QImage.Format.Format_RGBA8888",
        "s = QtNetwork.QAbstractSocket.SocketState.ConnectedState",
        "dialog.exec()",
        "QTimer.singleShot(0, f)",
        "w = qt.QtWidgets.QDockWidget",
        'text = "PyQt5 or PyQt6"',
    ],
)
def test_the_source_check_passes(good):
    assert qt_problems(good) == [], good


def test_krita_code_imports_qt_only_through_the_compat_module():
    assert QT_MODULE in KRITA_SOURCES
    problems = []
    for path in KRITA_SOURCES:
        found = qt_problems(path.read_text(encoding="utf-8"), path == QT_MODULE)
        problems += [f"{path.relative_to(REPO)}:{p}" for p in found]
    assert not problems, "\n".join(problems)

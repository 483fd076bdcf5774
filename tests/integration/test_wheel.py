"""The wheel is the product: Offcut as ``pip install offcut`` puts it in place, used from outside
the checkout.

Every other test imports Offcut from this checkout, so none of them would notice a module or a
plug-in file the wheel leaves out, or code that finds its files only in a source tree. Here the
``offcut`` of a venv holding nothing but the wheel and its dependencies (built by ``.ci/lib.sh``
``install_wheel``; ``.ci/test`` names it in ``OFFCUT_E2E_OFFCUT``) runs with a clean
environment (no ``PYTHONPATH``) from a folder outside the checkout, against a fresh home.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from offcut.client import wire
from offcut.commands.install import _tree_files
from offcut.i18n import catalogs
from tests.conftest import ROOT, need

pytestmark = pytest.mark.slow


def tree(root: Path) -> set[str]:
    """The files under ``root`` that a copy carries: the installer's own rule (no bytecode, no
    hidden files), so the wheel is held to what ``offcut install`` copies."""
    return _tree_files(root)


def same_files(copy: Path, source: Path, rels: set[str]) -> list[str]:
    """The files of ``rels`` whose bytes differ between ``copy`` and ``source``."""
    return sorted(r for r in rels if not filecmp.cmp(copy / r, source / r, shallow=False))


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel's venv: .ci/test's, or (outside CI) one built here the same way."""
    named = os.environ.get("OFFCUT_E2E_OFFCUT")
    if named:
        offcut = Path(named)
        need(offcut.is_file(), f"OFFCUT_E2E_OFFCUT names {offcut}, which does not exist")
        return offcut.parent.parent
    if os.environ.get("CI"):
        pytest.fail("under CI .ci/test builds the wheel's venv and names it in OFFCUT_E2E_OFFCUT")
    built = tmp_path_factory.mktemp("wheel") / "venv"
    subprocess.run(
        ["bash", "-c", 'source "$1/.ci/lib.sh" && install_wheel "$2"', "-", str(ROOT), str(built)],
        env={**os.environ, "PYTHON": sys.executable},
        check=True,
        timeout=900,
    )
    return built


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def offcut(venv: Path, home: Path, tmp_path: Path, models_dir: Path):
    """Run the wheel's ``offcut`` as a user would, in ``tmp_path``, with ``home`` as HOME."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "OFFCUT_RUNTIME_DIR": str(runtime),
        "OFFCUT_MODELS_DIR": str(models_dir),
    }

    def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv / "bin" / "offcut"), *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **kw,  # type: ignore[arg-type]
        )

    run.env = env  # type: ignore[attr-defined]
    return run


def site_offcut(venv: Path) -> Path:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import offcut, sys; print(offcut.__file__)"],
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip()).parent


def test_offcut_comes_from_site_packages_with_every_file_of_the_checkout(venv: Path) -> None:
    package = site_offcut(venv)
    # The wheel venv may live inside the checkout (.venv-wheel); what matters is that the
    # package is the installed copy, not the source folders a checkout would import.
    sources_dirs = [ROOT / d for d in ("sidecar", "models", "plugin_gimp", "plugin_krita")]
    assert "site-packages" in package.parts, package
    assert not any(package.is_relative_to(d) for d in sources_dirs), package
    src = ROOT / "sidecar" / "offcut"
    sources = {rel: src / rel for rel in tree(src)}  # what the wheel should hold, and from where
    data = {"_models": "models", "_plugin_gimp": "plugin_gimp", "_plugin_krita": "plugin_krita"}
    for folder, root in data.items():
        sources.update({f"{folder}/{rel}": ROOT / root / rel for rel in tree(ROOT / root)})
    assert tree(package) == set(sources)
    assert [r for r, s in sources.items() if not filecmp.cmp(package / r, s, shallow=False)] == []


def test_version_and_models(offcut) -> None:
    r = offcut("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"offcut {wire.VERSION}", r.stderr
    r = offcut("models", "list")
    assert r.returncode == 0, r.stderr
    assert any(ln.startswith("u2netp") and "installed" in ln for ln in r.stdout.splitlines())


def test_install_puts_exactly_the_checkouts_plugin_files(offcut, venv: Path, tmp_path: Path):
    client = ROOT / "sidecar" / "offcut" / "client"
    plugins = tmp_path / "gimp-plug-ins"
    r = offcut("install", "gimp", "--profile", str(plugins))
    assert r.returncode == 0, r.stdout + r.stderr
    folder = plugins / "offcut-remove-background"
    # the compiled translations, as this checkout's PO files compile them
    compiled = {f"locale/{rel}": mo for rel, mo in catalogs.compiled_files().items()}
    generated = {"offcut_sidecar.json", *compiled} | {f"offcut_client/{f}" for f in tree(client)}
    assert tree(folder) == tree(ROOT / "plugin_gimp") | generated
    assert all((folder / rel).read_bytes() == mo for rel, mo in compiled.items())
    assert same_files(folder, ROOT / "plugin_gimp", tree(ROOT / "plugin_gimp")) == []
    assert same_files(folder / "offcut_client", client, tree(client)) == []
    assert os.access(folder / "offcut-remove-background.py", os.X_OK)
    record = json.loads((folder / "offcut_sidecar.json").read_text())
    # the wheel's own Python, with nothing pointing back into a source tree
    assert record["command"] == [str(venv / "bin" / "python"), "-m", "offcut", "serve"]
    assert record["env"] == {}

    data = tmp_path / "home" / ".local" / "share" / "krita"
    r = offcut("install", "krita", "--profile", str(data / "pykrita"))
    assert r.returncode == 0, r.stdout + r.stderr
    src = ROOT / "plugin_krita"
    assert sorted(tree(data)) == sorted(
        {"actions/offcut_krita.action", "pykrita/offcut_krita.desktop"}
        | {f"pykrita/offcut_krita/{f}" for f in tree(src / "offcut_krita") | generated}
    )
    assert same_files(data / "pykrita", src, tree(src) - {"offcut_krita.action"}) == []
    assert filecmp.cmp(data / "actions/offcut_krita.action", src / "offcut_krita.action", False)
    assert same_files(data / "pykrita/offcut_krita/offcut_client", client, tree(client)) == []
    krita = data / "pykrita/offcut_krita"
    assert all((krita / rel).read_bytes() == mo for rel, mo in compiled.items())
    # no Krita runs with this home: the install itself has enabled the plug-in
    kritarc = tmp_path / "home" / ".config" / "kritarc"
    assert kritarc.read_text() == "[python]\nenable_offcut_krita=true\n"
    assert "Start Krita" in r.stdout
    # LANG=C.UTF-8: the manual is English, the checkout's own file (compared above)
    assert "English (en)" in r.stdout


def test_install_krita_writes_the_manual_in_the_language_chosen(offcut, tmp_path: Path) -> None:
    """Krita reads one manual.html: the wheel's installer renders it from the wheel's own PO
    files, in the language asked for, exactly as this checkout renders it."""
    pykrita = tmp_path / "home" / ".local" / "share" / "krita" / "pykrita"
    r = offcut("install", "krita", "--profile", str(pykrita), "--language", "de")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "German (de)" in r.stdout
    manual = ROOT / "plugin_krita" / "offcut_krita" / "manual.html"
    installed = (pykrita / "offcut_krita" / "manual.html").read_text(encoding="utf-8")
    assert installed == catalogs.render_page(manual, "de")
    assert "<h4>Erste Schritte</h4>" in installed
    r = offcut("install", "krita", "--profile", str(pykrita), "--language", "xx")
    assert r.returncode == 1 and "choose one of: en, de" in r.stderr, r.stderr


def test_doctor_reports_the_plugins_it_finds(offcut) -> None:
    r = offcut("doctor")
    assert r.returncode == 1 and "No editor plug-in is installed" in r.stdout, r.stdout
    assert "Everything is in place" not in r.stdout
    for editor in ("gimp", "krita"):
        r = offcut("install", editor)
        assert r.returncode == 0, r.stdout + r.stderr
    r = offcut("doctor")
    assert r.returncode == 0, r.stdout
    assert r.stdout.count("plug-in: installed in") == 2 and "out of date" not in r.stdout
    assert "Everything is in place" in r.stdout


def test_remove_cuts_out_an_image(offcut, tmp_path: Path) -> None:
    img = np.zeros((96, 128, 3), np.uint8)
    img[:, :] = (40, 160, 60)
    img[24:72, 40:88] = (230, 40, 30)  # a red block on green
    Image.fromarray(img).save(tmp_path / "in.png")
    r = offcut("remove", "in.png", "-o", "out.png", "-q")
    assert r.returncode == 0, r.stdout + r.stderr
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "RGBA" and out.size == (128, 96)
        alpha = np.asarray(out)[..., 3]
    assert alpha.min() != alpha.max()


@pytest.fixture
def served(offcut, venv: Path, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [str(venv / "bin" / "offcut"), "serve", "--audit", "--idle-timeout", "0"],
        env=offcut.env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_and_status(offcut, served: subprocess.Popen[str]) -> None:
    assert served.stdout is not None
    assert json.loads(served.stdout.readline())["ready"] is True
    r = offcut("status", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    st = json.loads(r.stdout)
    assert st["alive"] is True and st["pid"] == served.pid

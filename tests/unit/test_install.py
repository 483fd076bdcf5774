"""``offcut install|uninstall``: layouts, idempotence, foreign files left alone, drift check."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

import offcut
from offcut import cli, install
from offcut.install import Target

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX modes")


@pytest.fixture
def sources(tmp_path):
    """Stand-in plug-in sources (the real ones are written by other work in progress)."""
    gimp = tmp_path / "src" / "plugin_gimp"
    gimp.mkdir(parents=True)
    (gimp / "offcut-remove-background.py").write_text("#!/usr/bin/env python3\nprint('gimp')\n")
    (gimp / "helper.py").write_text("X = 1\n")
    (gimp / "offcut_gimp").mkdir()
    (gimp / "offcut_gimp" / "__init__.py").write_text("")
    (gimp / "offcut_gimp" / "pixels.py").write_text("P = 1\n")
    (gimp / "__pycache__").mkdir()
    (gimp / "__pycache__" / "helper.cpython-311.pyc").write_bytes(b"junk")
    krita = tmp_path / "src" / "plugin_krita"
    (krita / "offcut").mkdir(parents=True)
    (krita / "offcut" / "__init__.py").write_text("from .docker import *\n")
    (krita / "offcut" / "docker.py").write_text("D = 1\n")
    (krita / "offcut.desktop").write_text("[Desktop Entry]\nX-KDE-Library=offcut\n")
    (krita / "offcut.action").write_text("<ActionCollection/>\n")
    return {"gimp": gimp, "krita": krita}


def run_install(editor, target: Path, sources, dry_run=False):
    return install.install(editor, [Target(target)], dry_run=dry_run, source=sources[editor])


def snapshot(root: Path) -> dict:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


# -- GIMP -----------------------------------------------------------------------------------------


def test_gimp_layout(tmp_path, sources):
    plugins = tmp_path / "plug-ins"
    plan = run_install("gimp", plugins, sources)
    home = plugins / "offcut-remove-background"
    script = home / "offcut-remove-background.py"
    assert script.read_text().startswith("#!")
    if os.name == "posix":
        assert script.stat().st_mode & stat.S_IXUSR
    assert (home / "helper.py").is_file()
    assert (home / "offcut_gimp" / "pixels.py").read_text() == "P = 1\n"
    assert not (home / "__pycache__").exists()
    assert install.plugin_matches("gimp", home, sources["gimp"])
    assert install.copies_match(home / "offcut_client")
    record = json.loads((home / "offcut_sidecar.json").read_text())
    assert record["command"] == [sys.executable, "-m", "offcut", "serve"]
    assert record["offcut_version"] == offcut.__version__
    assert any("create" in a for a in plan.actions)
    assert not [p for p in plugins.iterdir() if p.name.startswith(".")], "no staging left behind"


def test_record_makes_a_source_checkout_importable(tmp_path, sources):
    run_install("gimp", tmp_path, sources)
    record = json.loads((tmp_path / "offcut-remove-background" / "offcut_sidecar.json").read_text())
    root = str(Path(offcut.__file__).resolve().parent.parent)
    # In this checkout `offcut` lives outside site-packages, so the record must point at it.
    assert record["env"].get("PYTHONPATH") == root


def test_gimp_install_is_idempotent_and_leaves_other_plugins_alone(tmp_path, sources):
    plugins = tmp_path / "plug-ins"
    other = plugins / "someone-else"
    other.mkdir(parents=True)
    (other / "someone-else.py").write_text("print('theirs')\n")
    (plugins / "loose-file.py").write_text("x\n")
    run_install("gimp", plugins, sources)
    first = snapshot(plugins)
    run_install("gimp", plugins, sources)
    assert snapshot(plugins) == first
    assert (other / "someone-else.py").read_text() == "print('theirs')\n"
    install.uninstall("gimp", [Target(plugins)])
    assert sorted(p.name for p in plugins.iterdir()) == ["loose-file.py", "someone-else"]


def test_reinstall_replaces_stale_files(tmp_path, sources):
    run_install("gimp", tmp_path, sources)
    home = tmp_path / "offcut-remove-background"
    (home / "offcut_client" / "api.py").write_text("# old\n")
    (home / "offcut_client" / "gone.py").write_text("# removed upstream\n")
    assert not install.copies_match(home / "offcut_client")
    run_install("gimp", tmp_path, sources)
    assert install.copies_match(home / "offcut_client")
    assert not (home / "offcut_client" / "gone.py").exists()


def test_refuses_to_replace_a_foreign_folder(tmp_path, sources):
    foreign = tmp_path / "offcut-remove-background"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("not offcut")
    with pytest.raises(install.InstallError, match="not an Offcut install"):
        run_install("gimp", tmp_path, sources)
    with pytest.raises(install.InstallError):
        install.uninstall("gimp", [Target(tmp_path)])
    assert (foreign / "mine.txt").read_text() == "not offcut"


def test_dry_run_changes_nothing(tmp_path, sources):
    plugins = tmp_path / "plug-ins"
    plan = run_install("gimp", plugins, sources, dry_run=True)
    assert not plugins.exists()
    assert plan.actions and all(a.startswith("would ") for a in plan.actions)


def test_missing_plugin_script_is_a_clear_error(tmp_path, sources):
    (sources["gimp"] / "offcut-remove-background.py").unlink()
    with pytest.raises(install.InstallError, match=r"offcut-remove-background\.py"):
        run_install("gimp", tmp_path / "p", sources)


def test_missing_gimp_logic_package_is_a_clear_error(tmp_path, sources):
    """The script imports offcut_gimp: installing it alone would break in GIMP, silently."""
    for path in (sources["gimp"] / "offcut_gimp").iterdir():
        path.unlink()
    (sources["gimp"] / "offcut_gimp").rmdir()
    with pytest.raises(install.InstallError, match="offcut_gimp"):
        run_install("gimp", tmp_path / "p", sources)
    assert not (tmp_path / "p").exists()


# -- Krita ----------------------------------------------------------------------------------------


def test_krita_layout_and_uninstall(tmp_path, sources):
    data = tmp_path / "krita"
    pykrita = data / "pykrita"
    (pykrita / "other_plugin").mkdir(parents=True)
    (pykrita / "other_plugin.desktop").write_text("x")
    (data / "actions").mkdir()
    (data / "actions" / "other.action").write_text("x")
    run_install("krita", pykrita, sources)
    assert (pykrita / "offcut.desktop").read_text().startswith("[Desktop Entry]")
    assert (pykrita / "offcut" / "docker.py").is_file()
    assert install.copies_match(pykrita / "offcut" / "offcut_client")
    assert (pykrita / "offcut" / "offcut_sidecar.json").is_file()
    assert (data / "actions" / "offcut.action").is_file()
    first = snapshot(data)
    run_install("krita", pykrita, sources)
    assert snapshot(data) == first
    assert install.installed_clients("krita", [Target(pykrita)]) == [
        pykrita / "offcut" / "offcut_client"
    ]
    install.uninstall("krita", [Target(pykrita)])
    assert sorted(p.name for p in pykrita.iterdir()) == ["other_plugin", "other_plugin.desktop"]
    assert sorted(p.name for p in (data / "actions").iterdir()) == ["other.action"]


def test_krita_without_action_file(tmp_path, sources):
    (sources["krita"] / "offcut.action").unlink()
    run_install("krita", tmp_path / "krita" / "pykrita", sources)
    assert not (tmp_path / "krita" / "actions").exists()


def test_krita_refuses_a_foreign_offcut_package(tmp_path, sources):
    pykrita = tmp_path / "pykrita"
    (pykrita / "offcut").mkdir(parents=True)
    (pykrita / "offcut" / "__init__.py").write_text("# someone else's offcut\n")
    with pytest.raises(install.InstallError):
        run_install("krita", pykrita, sources)
    assert (pykrita / "offcut" / "__init__.py").read_text() == "# someone else's offcut\n"


# -- drift check ----------------------------------------------------------------------------------


def test_copies_match_detects_drift(tmp_path, sources):
    run_install("gimp", tmp_path, sources)
    client = tmp_path / "offcut-remove-background" / "offcut_client"
    assert install.copies_match(client)
    (client / "__pycache__").mkdir()
    (client / "__pycache__" / "api.cpython-38.pyc").write_bytes(b"x")
    assert install.copies_match(client), "bytecode caches are not drift"
    (client / "extra.py").write_text("")
    assert not install.copies_match(client)
    (client / "extra.py").unlink()
    api = client / "api.py"
    api.write_bytes(api.read_bytes() + b"\n")
    assert not install.copies_match(client)
    assert not install.copies_match(tmp_path / "nowhere")


def test_plugin_matches_detects_drift_in_the_plugins_own_files(tmp_path, sources):
    run_install("gimp", tmp_path / "g", sources)
    home = tmp_path / "g" / "offcut-remove-background"
    assert install.plugin_matches("gimp", home, sources["gimp"])
    (home / "offcut_gimp" / "__pycache__").mkdir()
    (home / "offcut_gimp" / "__pycache__" / "pixels.cpython-312.pyc").write_bytes(b"x")
    assert install.plugin_matches("gimp", home, sources["gimp"]), "caches are not drift"
    (home / "offcut_client" / "api.py").write_text("# the client is copies_match's business\n")
    assert install.plugin_matches("gimp", home, sources["gimp"])
    (home / "offcut_gimp" / "pixels.py").write_text("P = 0\n")
    assert not install.plugin_matches("gimp", home, sources["gimp"])
    run_install("gimp", tmp_path / "g", sources)
    (home / "offcut_gimp" / "run.py").write_text("# left over from an older version\n")
    assert not install.plugin_matches("gimp", home, sources["gimp"])
    (home / "offcut_gimp" / "run.py").unlink()
    (home / "offcut_gimp" / "pixels.py").unlink()
    assert not install.plugin_matches("gimp", home, sources["gimp"])
    assert not install.plugin_matches("gimp", tmp_path / "nowhere", sources["gimp"])

    pykrita = tmp_path / "k"
    run_install("krita", pykrita, sources)
    assert install.plugin_matches("krita", pykrita / "offcut", sources["krita"])
    (pykrita / "offcut" / "docker.py").write_text("D = 2\n")
    assert not install.plugin_matches("krita", pykrita / "offcut", sources["krita"])


def test_repository_plugins_install_when_present(tmp_path):
    """The real plug-in sources (when they exist) install and carry a matching client."""
    for editor in ("gimp", "krita"):
        try:
            source = install.plugin_source(editor)
        except install.InstallError:
            continue
        if editor == "gimp" and not (source / "offcut-remove-background.py").is_file():
            continue
        if editor == "krita" and not (source / "offcut").is_dir():
            continue
        target = tmp_path / editor
        install.install(editor, [Target(target)])
        sub = "offcut-remove-background" if editor == "gimp" else "offcut"
        assert install.copies_match(target / sub / "offcut_client")
        assert install.plugin_matches(editor, target / sub)
        if editor == "gimp":
            assert (target / sub / "offcut_gimp" / "pixels.py").is_file()
            assert (target / sub / "offcut_gimp" / "run.py").is_file()


# -- locations ------------------------------------------------------------------------------------


def test_candidate_locations_per_platform(tmp_path):
    home = tmp_path
    env = {"APPDATA": str(tmp_path / "Roaming")}
    lin_gimp = install.candidate_targets("gimp", "linux", home, {})
    assert [t.path for t in lin_gimp] == [
        home / ".config/GIMP/3.0/plug-ins",
        home / ".var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins",
        home / "snap/gimp/current/.config/GIMP/3.0/plug-ins",
    ]
    assert [t.kind for t in lin_gimp] == ["native", "flatpak", "snap"]
    assert [t.path for t in install.candidate_targets("krita", "linux", home, {})] == [
        home / ".local/share/krita/pykrita",
        home / ".var/app/org.kde.krita/data/krita/pykrita",
    ]
    xdg = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_DATA_HOME": str(tmp_path / "dat")}
    assert install.candidate_targets("gimp", "linux", home, xdg)[0].path == (
        tmp_path / "cfg/GIMP/3.0/plug-ins"
    )
    assert install.candidate_targets("krita", "linux", home, xdg)[0].path == (
        tmp_path / "dat/krita/pykrita"
    )
    mac = home / "Library/Application Support"
    assert install.candidate_targets("gimp", "darwin", home, {})[0].path == (
        mac / "GIMP/3.0/plug-ins"
    )
    assert install.candidate_targets("krita", "darwin", home, {})[0].path == mac / "krita/pykrita"
    assert install.candidate_targets("gimp", "win32", home, env)[0].path == (
        tmp_path / "Roaming/GIMP/3.0/plug-ins"
    )
    assert install.candidate_targets("krita", "win32", home, env)[0].path == (
        tmp_path / "Roaming/krita/pykrita"
    )


def test_default_targets_are_the_existing_profiles(tmp_path):
    home = tmp_path
    assert [t.path for t in install.default_targets("gimp", platform="linux", home=home,
                                                    environ={})] == [
        home / ".config/GIMP/3.0/plug-ins"
    ]  # fmt: skip
    (home / ".config/GIMP/3.0").mkdir(parents=True)
    (home / ".var/app/org.gimp.GIMP/config/GIMP/3.0").mkdir(parents=True)
    found = install.default_targets("gimp", platform="linux", home=home, environ={})
    assert [t.kind for t in found] == ["native", "flatpak"]


def test_flatpak_record_runs_the_sidecar_on_the_host():
    record = install.sidecar_record("flatpak")
    cmd = record["command"]
    assert cmd[:2] == ["flatpak-spawn", "--host"]
    assert cmd[-4:] == [sys.executable, "-m", "offcut", "serve"]
    assert f"--env=OFFCUT_RUNTIME_DIR={record['runtime_dir']}" in cmd
    # only --env= crosses flatpak-spawn: the huge-page tunable must be named (decisions §9)
    assert "--env=GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in cmd


def test_record_lists_the_catalog_for_gimps_model_choice():
    """GIMP registers the procedure before any sidecar runs: the record must name every model."""
    from offcut.catalog import load_catalog

    catalog = load_catalog()
    record = install.sidecar_record()
    assert record["default_model"] == catalog.default
    assert [m["name"] for m in record["models"]] == catalog.names()
    assert all(m["description"] for m in record["models"])
    json.dumps(record)  # written as JSON


# -- command line ---------------------------------------------------------------------------------


def test_main_install_and_uninstall(tmp_path, sources, monkeypatch, capsys):
    monkeypatch.setattr(install, "plugin_source", lambda editor: sources[editor])
    target = tmp_path / "pykrita"
    assert cli.main(["install", "krita", "--profile", str(target), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would create" in out and "Python Plugin Manager" in out and not target.exists()
    assert cli.main(["install", "krita", "--profile", str(target)]) == 0
    out = capsys.readouterr().out
    assert "create" in out and "Python Plugin Manager" in out
    assert install.copies_match(target / "offcut" / "offcut_client")
    assert cli.main(["uninstall", "krita", "--profile", str(target)]) == 0
    assert "remove" in capsys.readouterr().out
    assert not (target / "offcut").exists()
    assert cli.main(["uninstall", "krita", "--profile", str(target)]) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_main_reports_errors(tmp_path, sources, monkeypatch, capsys):
    monkeypatch.setattr(install, "plugin_source", lambda editor: sources[editor])
    (tmp_path / "offcut-remove-background").mkdir()
    assert cli.main(["install", "gimp", "--profile", str(tmp_path)]) == 1
    assert "not an Offcut install" in capsys.readouterr().err


@posix_only
def test_main_finds_the_gimp_profile(tmp_path, sources, monkeypatch, capsys):
    monkeypatch.setattr(install, "plugin_source", lambda editor: sources[editor])
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    if sys.platform != "linux":
        pytest.skip("Linux layout")
    (tmp_path / ".config/GIMP/3.0").mkdir(parents=True)
    assert cli.main(["install", "gimp"]) == 0
    assert (tmp_path / ".config/GIMP/3.0/plug-ins/offcut-remove-background").is_dir()
    assert "Restart GIMP" in capsys.readouterr().out

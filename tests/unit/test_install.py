"""``offcut install|uninstall``: layouts, idempotence, foreign files left alone, drift check."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

import offcut
from offcut import cli
from offcut.commands import install
from offcut.commands.install import Target
from offcut.i18n import LANGUAGES, catalogs

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX modes")

# What an install from before the Krita package's rename put in pykrita (and its actions folder).
OLD_DESKTOP = (
    "[Desktop Entry]\nType=Service\nServiceTypes=Krita/PythonPlugin\nX-KDE-Library=offcut\n"
    "X-Python-2-Compatible=false\nX-Krita-Manual=manual.html\nName=Offcut Background Removal\n"
    "Comment=Remove image backgrounds locally with the Offcut sidecar\n"
)
OLD_ACTION = (
    '<ActionCollection version="2" name="Scripts">\n  <Actions category="Scripts">\n'
    '    <Action name="offcut_remove_background">\n    </Action>\n  </Actions>\n'
    "</ActionCollection>\n"
)


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
    (krita / "offcut_krita").mkdir(parents=True)
    (krita / "offcut_krita" / "__init__.py").write_text("from .docker import *\n")
    (krita / "offcut_krita" / "docker.py").write_text("D = 1\n")
    (krita / "offcut_krita.desktop").write_text("[Desktop Entry]\nX-KDE-Library=offcut_krita\n")
    (krita / "offcut_krita.action").write_text(OLD_ACTION)
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
    assert (pykrita / "offcut_krita.desktop").read_text().startswith("[Desktop Entry]")
    assert (pykrita / "offcut_krita" / "docker.py").is_file()
    assert install.copies_match(pykrita / "offcut_krita" / "offcut_client")
    assert (pykrita / "offcut_krita" / "offcut_sidecar.json").is_file()
    assert (data / "actions" / "offcut_krita.action").is_file()
    first = snapshot(data)
    run_install("krita", pykrita, sources)
    assert snapshot(data) == first
    assert install.installed_clients("krita", [Target(pykrita)]) == [
        pykrita / "offcut_krita" / "offcut_client"
    ]
    install.uninstall("krita", [Target(pykrita)])
    assert sorted(p.name for p in pykrita.iterdir()) == ["other_plugin", "other_plugin.desktop"]
    assert sorted(p.name for p in (data / "actions").iterdir()) == ["other.action"]


def test_krita_without_action_file(tmp_path, sources):
    (sources["krita"] / "offcut_krita.action").unlink()
    run_install("krita", tmp_path / "krita" / "pykrita", sources)
    assert not (tmp_path / "krita" / "actions").exists()


def test_krita_refuses_a_foreign_offcut_krita_package(tmp_path, sources):
    pykrita = tmp_path / "pykrita"
    (pykrita / "offcut_krita").mkdir(parents=True)
    (pykrita / "offcut_krita" / "__init__.py").write_text("# someone else's\n")
    with pytest.raises(install.InstallError):
        run_install("krita", pykrita, sources)
    assert (pykrita / "offcut_krita" / "__init__.py").read_text() == "# someone else's\n"


def old_krita_install(data: Path) -> Path:
    """An install from before the rename: ``offcut/``, ``offcut.desktop``, ``offcut.action``."""
    pykrita = data / "pykrita"
    (pykrita / "offcut" / "offcut_client").mkdir(parents=True)
    (pykrita / "offcut" / "__init__.py").write_text("# the old plug-in\n")
    (pykrita / "offcut" / "offcut_sidecar.json").write_text("{}\n")
    (pykrita / "offcut.desktop").write_text(OLD_DESKTOP)
    (data / "actions").mkdir(exist_ok=True)
    (data / "actions" / "offcut.action").write_text(OLD_ACTION)
    return pykrita


def test_krita_upgrade_removes_the_install_under_the_former_name(tmp_path, sources):
    data = tmp_path / "krita"
    pykrita = old_krita_install(data)
    (pykrita / "other_plugin.desktop").write_text("x")
    assert [p.parent.name for p in install.installed_clients("krita", [Target(pykrita)])] == [
        "offcut"
    ]
    assert not install.plugin_matches("krita", pykrita / "offcut", sources["krita"])
    dry = run_install("krita", pykrita, sources, dry_run=True)
    assert sum("former name" in a for a in dry.actions) == 3
    assert (pykrita / "offcut").is_dir()
    plan = run_install("krita", pykrita, sources)
    assert sum("former name" in a for a in plan.actions) == 3
    assert sorted(p.name for p in pykrita.iterdir()) == [
        "offcut_krita",
        "offcut_krita.desktop",
        "other_plugin.desktop",
    ]
    assert sorted(p.name for p in (data / "actions").iterdir()) == ["offcut_krita.action"]
    assert install.installed_clients("krita", [Target(pykrita)]) == [
        pykrita / "offcut_krita" / "offcut_client"
    ]
    assert install.plugin_matches("krita", pykrita / "offcut_krita", sources["krita"])


def test_krita_upgrade_leaves_foreign_files_of_the_former_name(tmp_path, sources):
    data = tmp_path / "krita"
    pykrita = data / "pykrita"
    (pykrita / "offcut").mkdir(parents=True)
    (pykrita / "offcut" / "__init__.py").write_text("# someone else's offcut\n")
    (pykrita / "offcut.desktop").write_text(
        "[Desktop Entry]\nX-KDE-Library=offcut\nName=Someone Else's Offcut Tool\n"
    )
    (data / "actions").mkdir()
    (data / "actions" / "offcut.action").write_text("<ActionCollection/>\n")
    before = snapshot(data)
    run_install("krita", pykrita, sources)
    install.uninstall("krita", [Target(pykrita)])
    assert snapshot(data) == before


def test_krita_uninstall_removes_old_and_new(tmp_path, sources):
    data = tmp_path / "krita"
    pykrita = old_krita_install(data)
    run_install("krita", pykrita, sources)
    old_krita_install(data)  # an older Offcut installed again, beside the new plug-in
    plan = install.uninstall("krita", [Target(pykrita)])
    assert len(plan.actions) == 6
    assert list(pykrita.iterdir()) == []
    assert list((data / "actions").iterdir()) == []


def test_krita_upgrade_keeps_the_plugin_enabled(tmp_path, sources):
    home = tmp_path / "home"
    data = home / ".local" / "share" / "krita"
    pykrita = old_krita_install(data)
    kritarc = home / ".config" / "kritarc"
    kritarc.parent.mkdir(parents=True)
    text = "[General]\nenable_offcut=true\n\n[python]\nenable_other=true\nenable_offcut=true\n"
    kritarc.write_text(text)
    run_install("krita", pykrita, sources, dry_run=True)
    assert kritarc.read_text() == text
    plan = run_install("krita", pykrita, sources)
    assert any("enable offcut_krita" in a for a in plan.actions)
    assert kritarc.read_text() == text.replace(
        "enable_other=true\nenable_offcut=true", "enable_other=true\nenable_offcut_krita=true"
    )
    run_install("krita", pykrita, sources)  # no old install left: kritarc is not touched
    assert "enable_offcut_krita=true" in kritarc.read_text()


@pytest.mark.parametrize(
    ("text", "enabled"),
    [
        # the former plug-in switched off: the install is the user's request to use Offcut
        ("[python]\nenable_offcut=false\n", "[python]\nenable_offcut_krita=true\n"),
        (
            "[python]\nenable_offcut=true\nenable_offcut_krita=false\n",
            "[python]\nenable_offcut=true\nenable_offcut_krita=true\n",
        ),
        (  # not the plug-ins' group: a [python] group is added, the rest stays
            "[General]\nenable_offcut=true\n",
            "[General]\nenable_offcut=true\n\n[python]\nenable_offcut_krita=true\n",
        ),
    ],
)
def test_krita_upgrade_enables_the_new_name_and_keeps_the_rest(tmp_path, sources, text, enabled):
    home = tmp_path / "home"
    pykrita = old_krita_install(home / ".local" / "share" / "krita")
    kritarc = home / ".config" / "kritarc"
    kritarc.parent.mkdir(parents=True)
    kritarc.write_text(text)
    run_install("krita", pykrita, sources)
    assert kritarc.read_text() == enabled
    assert not (pykrita / "offcut").exists()


def krita_home(tmp_path: Path) -> tuple[Path, Path]:
    """A Krita profile's pykrita folder and the kritarc ``kritarc_for`` finds for it."""
    home = tmp_path / "home"
    return home / ".local/share/krita/pykrita", home / ".config/kritarc"


KRITARC = (
    "[General]\nshowSplash=false\n\n[python]\nenable_comics_project_management_tools=true\n"
    "enable_zzz=false\n\n[offcut]\nmodel=u2netp\n"
)


@pytest.mark.parametrize(
    ("text", "enabled"),
    [
        (KRITARC, KRITARC.replace("[python]\n", "[python]\nenable_offcut_krita=true\n")),
        ("", "[python]\nenable_offcut_krita=true\n"),
        ("[General]\nx=1", "[General]\nx=1\n\n[python]\nenable_offcut_krita=true\n"),
        ("[python]", "[python]\nenable_offcut_krita=true\n"),
        ("[python]\r\na=1\r\n", "[python]\r\nenable_offcut_krita=true\r\na=1\r\n"),
        ("[python]\nenable_offcut_krita = false\n", "[python]\nenable_offcut_krita=true\n"),
        ("[python]\nenable_offcut_krita=true\n", None),
    ],
)
def test_kritarc_edit_writes_one_line_and_keeps_every_other_byte(text, enabled):
    assert install.with_krita_enabled(text) == enabled


def test_install_enables_krita_when_it_is_not_running(tmp_path, sources, monkeypatch):
    monkeypatch.setattr(install, "krita_running", lambda kritarc: False)
    pykrita, kritarc = krita_home(tmp_path)
    plan = run_install("krita", pykrita, sources)  # no kritarc yet: created with the key alone
    assert kritarc.read_text() == "[python]\nenable_offcut_krita=true\n"
    assert plan.ready and f"enable offcut_krita in {kritarc}" in plan.actions
    kritarc.write_text(KRITARC)
    kritarc.chmod(0o600)
    dry = run_install("krita", pykrita, sources, dry_run=True)
    assert kritarc.read_text() == KRITARC and any("would enable" in a for a in dry.actions)
    run_install("krita", pykrita, sources)
    assert kritarc.read_text() == KRITARC.replace(
        "[python]\n", "[python]\nenable_offcut_krita=true\n"
    )
    assert stat.S_IMODE(kritarc.stat().st_mode) == 0o600  # the user's mode is kept
    assert [p.name for p in kritarc.parent.iterdir()] == ["kritarc"]  # no stage left behind
    assert install.krita_enabled(kritarc) is True


@pytest.mark.parametrize(("state", "words"), [(True, "Krita is running"), (None, "Could not tell")])
def test_install_leaves_kritarc_alone_while_krita_may_run(
    tmp_path, sources, monkeypatch, capsys, state, words
):
    """Krita rewrites kritarc when it exits: an edit now would be lost, so the user is told."""
    monkeypatch.setattr(install, "plugin_source", lambda editor: sources[editor])
    monkeypatch.setattr(install, "krita_running", lambda kritarc: state)
    pykrita, kritarc = krita_home(tmp_path)
    kritarc.parent.mkdir(parents=True)
    kritarc.write_text(KRITARC)
    assert cli.main(["install", "krita", "--profile", str(pykrita)]) == 0
    out = capsys.readouterr().out
    assert kritarc.read_text() == KRITARC
    assert words in out and "Python Plugin Manager" in out
    if state:
        assert "close it, then run `offcut install krita` again" in out
    assert install.NEXT_STEP["krita"] not in out  # never claims Krita is ready
    assert install.krita_enabled(kritarc) is False


def test_install_says_krita_is_ready_once_enabled(tmp_path, sources, monkeypatch, capsys):
    monkeypatch.setattr(install, "plugin_source", lambda editor: sources[editor])
    monkeypatch.setattr(install, "krita_running", lambda kritarc: True)
    pykrita, kritarc = krita_home(tmp_path)
    kritarc.parent.mkdir(parents=True)
    kritarc.write_text("[python]\nenable_offcut_krita=true\n")
    assert cli.main(["install", "krita", "--profile", str(pykrita)]) == 0
    out = capsys.readouterr().out  # already enabled: a running Krita needs only a restart
    assert install.NEXT_STEP["krita"] in out and "Krita is running" not in out


def fake_process(proc: Path, pid: int, comm: str, environ: dict[str, str] | None) -> None:
    entry = proc / str(pid)
    entry.mkdir(parents=True)
    (entry / "comm").write_text(comm + "\n")
    if environ is None:
        (entry / "environ").mkdir()  # unreadable as a file, as another user's would be
    else:
        (entry / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in environ.items()))


@pytest.mark.skipif(os.name != "posix", reason="uids")
def test_krita_running_reads_proc_for_this_profiles_krita(tmp_path):
    proc, uid = tmp_path / "proc", os.getuid()
    kritarc = tmp_path / "home/.config/kritarc"
    fake_process(proc, 10, "bash", {"HOME": str(tmp_path / "home")})
    fake_process(proc, 11, "krita", {"HOME": str(tmp_path / "other")})  # another profile's
    (proc / "self").mkdir()
    assert install.krita_running(kritarc, "linux", proc, uid) is False
    assert install.krita_running(kritarc, "linux", proc, uid + 1) is False  # another user's
    fake_process(proc, 12, "krita", {"HOME": "/x", "XDG_CONFIG_HOME": str(kritarc.parent)})
    assert install.krita_running(kritarc, "linux", proc, uid) is True
    assert install.krita_running(kritarc, "linux", proc, uid + 1) is False
    proc2 = tmp_path / "proc2"
    fake_process(proc2, 13, "krita", None)
    assert install.krita_running(kritarc, "linux", proc2, uid) is True  # cannot tell: assume so
    assert install.krita_running(kritarc, "linux", tmp_path / "no-proc", uid) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_krita_running_sees_a_real_process(tmp_path):
    """A real process named ``krita`` (a copy of sleep) with the profile's HOME, in /proc."""
    import shutil
    import subprocess

    krita = tmp_path / "krita"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", krita)
    kritarc = tmp_path / "home/.config/kritarc"
    assert install.krita_running(kritarc) is False
    p = subprocess.Popen([str(krita), "30"], env={"HOME": str(tmp_path / "home")})
    try:
        assert install.krita_running(kritarc) is True
        assert install.krita_running(tmp_path / "elsewhere/kritarc") is False
    finally:
        p.kill()
        p.wait()
    assert install.krita_running(kritarc) is False


def test_krita_running_elsewhere_asks_the_system():
    def ran(outputs):
        return lambda cmd: outputs[cmd[0]]

    mac = {"pgrep": "4242\n"}
    assert install.krita_running(None, "darwin", uid=501, run=ran(mac)) is True
    assert install.krita_running(None, "darwin", uid=501, run=ran({"pgrep": ""})) is False
    win = {"tasklist": '"krita.exe","9000","Console","1","812,000 K"\n'}
    assert install.krita_running(None, "win32", run=ran(win)) is True
    none = {"tasklist": "INFO: No tasks are running which match the specified criteria.\n"}
    assert install.krita_running(None, "win32", run=ran(none)) is False
    assert install.krita_running(None, "win32", run=ran({"tasklist": None})) is None
    assert install.krita_running(None, "freebsd") is None


def test_kritarc_beside_each_pykrita(tmp_path):
    home = tmp_path / "h"
    kritarc = install.kritarc_for
    native = install.candidate_targets("krita", "linux", home, {})
    assert [kritarc(t.path, home, {}) for t in native] == [
        home / ".config/kritarc",
        home / ".var/app/org.kde.krita/config/kritarc",
    ]
    xdg = {"XDG_DATA_HOME": str(tmp_path / "dat"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    xdg_pykrita = install.candidate_targets("krita", "linux", home, xdg)[0].path
    assert kritarc(xdg_pykrita, home, xdg) == tmp_path / "cfg/kritarc"
    mac = install.candidate_targets("krita", "darwin", home, {})[0].path
    assert kritarc(mac, home, {}) == home / "Library/Preferences/kritarc"
    win = install.candidate_targets("krita", "win32", home, {})[0].path
    assert kritarc(win, home, {}) == home / "AppData/Local/kritarc"
    env = {"APPDATA": str(tmp_path / "R"), "LOCALAPPDATA": str(tmp_path / "L")}
    assert kritarc(tmp_path / "R/krita/pykrita", home, env) == tmp_path / "L/kritarc"
    store = tmp_path / "L/Packages/49800Krita_RG8Z7PKEHE0F4/LocalCache"
    assert kritarc(store / "Roaming/krita/pykrita", home, env) == store / "Local/kritarc"
    assert kritarc(tmp_path / "somewhere/pykrita", home, {}) is None


# -- the Krita manual in the user's language ----------------------------------------------------

REAL_MANUAL = Path(__file__).resolve().parents[2] / "plugin_krita" / "offcut_krita" / "manual.html"
GETTEXT_ENV = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")


@pytest.fixture
def with_manual(sources, monkeypatch):
    """The stand-in Krita sources with the real manual, and an environment without a language."""
    (sources["krita"] / "offcut_krita" / "manual.html").write_bytes(REAL_MANUAL.read_bytes())
    for name in GETTEXT_ENV:
        monkeypatch.delenv(name, raising=False)
    return sources


def test_krita_manual_is_written_in_the_environments_language(tmp_path, with_manual, monkeypatch):
    """Krita reads one manual.html, in no particular language: the installer writes it in the
    language the plug-in will speak, as gettext reads it from the environment."""
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("LANGUAGE", "de")
    pykrita = tmp_path / "pykrita"
    plan = run_install("krita", pykrita, with_manual)
    folder = pykrita / "offcut_krita"
    manual = (folder / "manual.html").read_text(encoding="utf-8")
    assert manual == catalogs.render_page(REAL_MANUAL, "de")
    assert "<h4>Erste Schritte</h4>" in manual and 'lang="de"' in manual
    assert any("German (de)" in note and "--language" in note for note in plan.notes)
    assert install.plugin_matches("krita", folder, with_manual["krita"])

    monkeypatch.setenv("LANGUAGE", "pt_PT")  # not shipped: English, the source's own bytes
    plan = run_install("krita", pykrita, with_manual)
    assert (folder / "manual.html").read_bytes() == REAL_MANUAL.read_bytes()
    assert any("English (en)" in note for note in plan.notes)
    assert install.plugin_matches("krita", folder, with_manual["krita"])


@pytest.mark.parametrize("lang", ["en", *LANGUAGES])
def test_krita_manual_in_the_chosen_language_and_doctor_accepts_it(tmp_path, with_manual, lang):
    pykrita = tmp_path / "pykrita"
    install.install("krita", [Target(pykrita)], source=with_manual["krita"], language=lang)
    folder = pykrita / "offcut_krita"
    data = (folder / "manual.html").read_bytes()
    assert data == catalogs.render_page(REAL_MANUAL, lang).encode("utf-8")
    assert install.plugin_matches("krita", folder, with_manual["krita"])
    (folder / "manual.html").write_bytes(data.replace(b"</body>", b"<p>x</p></body>"))
    assert not install.plugin_matches("krita", folder, with_manual["krita"])


def test_main_installs_the_manual_in_the_language_asked_for(
    tmp_path, with_manual, monkeypatch, capsys
):
    monkeypatch.setattr(install, "plugin_source", lambda editor: with_manual[editor])
    monkeypatch.setenv("LANGUAGE", "de")  # --language wins over the environment
    target = tmp_path / "pykrita"
    assert cli.main(["install", "krita", "--profile", str(target), "--language", "ja"]) == 0
    assert "Japanese (ja)" in capsys.readouterr().out
    manual = (target / "offcut_krita" / "manual.html").read_text(encoding="utf-8")
    assert manual == catalogs.render_page(REAL_MANUAL, "ja")
    assert cli.main(["install", "krita", "--profile", str(target), "--language", "en"]) == 0
    assert (target / "offcut_krita" / "manual.html").read_bytes() == REAL_MANUAL.read_bytes()


@pytest.mark.parametrize("editor", ["krita", "gimp"])
def test_main_refuses_an_unknown_language_naming_the_choices(
    tmp_path, with_manual, monkeypatch, capsys, editor
):
    monkeypatch.setattr(install, "plugin_source", lambda editor: with_manual[editor])
    target = tmp_path / "profile"
    assert cli.main(["install", editor, "--profile", str(target), "--language", "pt"]) == 1
    err = capsys.readouterr().err
    assert "'pt'" in err and "en, de, fr, es, pt_BR, it, ru, ja, zh_CN, ko" in err
    assert not target.exists()


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
    assert install.plugin_matches("krita", pykrita / "offcut_krita", sources["krita"])
    (pykrita / "offcut_krita" / "docker.py").write_text("D = 2\n")
    assert not install.plugin_matches("krita", pykrita / "offcut_krita", sources["krita"])


def test_plugin_source_in_a_wheel_layout(tmp_path, monkeypatch):
    """A wheel installs the plug-ins as offcut/_plugin_<editor>, folders without __init__.py."""
    site = tmp_path / "site-packages"
    for editor in ("gimp", "krita"):
        (site / "offcut" / f"_plugin_{editor}").mkdir(parents=True)
    monkeypatch.setattr(offcut, "__file__", str(site / "offcut" / "__init__.py"))
    for editor in ("gimp", "krita"):
        assert install.plugin_source(editor) == site / "offcut" / f"_plugin_{editor}"


def test_repository_plugins_install_when_present(tmp_path):
    """The real plug-in sources (when they exist) install and carry a matching client."""
    for editor in ("gimp", "krita"):
        try:
            source = install.plugin_source(editor)
        except install.InstallError:
            continue
        if editor == "gimp" and not (source / "offcut-remove-background.py").is_file():
            continue
        if editor == "krita" and not (source / "offcut_krita").is_dir():
            continue
        target = tmp_path / editor
        install.install(editor, [Target(target)])
        sub = "offcut-remove-background" if editor == "gimp" else "offcut_krita"
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


def test_every_gimp_3_profile_gets_the_plugin_newest_first(tmp_path):
    """GIMP 3.2 reads ~/.config/GIMP/3.2, not 3.0: each series with a profile is a target."""
    home = tmp_path
    for series in ("3.0", "3.2", "3.10", "2.10", "3.x"):
        (home / ".config/GIMP" / series).mkdir(parents=True)
    (home / ".var/app/org.gimp.GIMP/config/GIMP/3.2").mkdir(parents=True)
    (home / ".config/GIMP/3.4").write_text("a file, not a profile")
    found = install.default_targets("gimp", platform="linux", home=home, environ={})
    assert [(t.path, t.kind) for t in found] == [
        (home / ".config/GIMP/3.10/plug-ins", "native"),
        (home / ".config/GIMP/3.2/plug-ins", "native"),
        (home / ".config/GIMP/3.0/plug-ins", "native"),
        (home / ".var/app/org.gimp.GIMP/config/GIMP/3.2/plug-ins", "flatpak"),
    ]
    for platform, env, gimp_dir in (
        ("win32", {"APPDATA": str(tmp_path / "Roaming")}, tmp_path / "Roaming/GIMP"),
        ("darwin", {}, home / "Library/Application Support/GIMP"),
    ):
        (gimp_dir / "3.2").mkdir(parents=True)
        targets = install.candidate_targets("gimp", platform, home, env)
        assert [t.path for t in targets] == [gimp_dir / "3.2/plug-ins"], platform


@posix_only
def test_main_installs_into_a_gimp_3_2_profile(tmp_path, sources, monkeypatch, capsys):
    monkeypatch.setattr(install, "plugin_source", lambda editor: sources[editor])
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    if sys.platform != "linux":
        pytest.skip("Linux layout")
    (tmp_path / ".config/GIMP/3.2").mkdir(parents=True)
    assert cli.main(["install", "gimp"]) == 0
    assert (tmp_path / ".config/GIMP/3.2/plug-ins/offcut-remove-background").is_dir()
    assert not (tmp_path / ".config/GIMP/3.0").exists(), "no profile made for a GIMP not run"
    assert cli.main(["uninstall", "gimp"]) == 0
    assert not (tmp_path / ".config/GIMP/3.2/plug-ins/offcut-remove-background").exists()


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
    from offcut.models.catalog import load_catalog

    catalog = load_catalog()
    record = install.sidecar_record()
    assert record["default_model"] == catalog.default
    assert [m["name"] for m in record["models"]] == catalog.names()
    assert all(m["description"] for m in record["models"])
    # the aliases lead GIMP's model choice: recorded in the catalog's order, with candidates
    assert [a["name"] for a in record["aliases"]] == list(catalog.aliases) == ["fast", "best"]
    for entry in record["aliases"]:
        alias = catalog.aliases[entry["name"]]
        assert entry["models"] == list(alias.models) and entry["label"] == alias.label
    json.dumps(record)  # written as JSON


# -- command line ---------------------------------------------------------------------------------


def test_main_install_and_uninstall(tmp_path, sources, monkeypatch, capsys):
    monkeypatch.setattr(install, "plugin_source", lambda editor: sources[editor])
    target = tmp_path / "pykrita"
    assert cli.main(["install", "krita", "--profile", str(target), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # pykrita outside any known profile shape: no kritarc to enable it in, so the user is told
    assert "would create" in out and "Python Plugin Manager" in out and not target.exists()
    assert cli.main(["install", "krita", "--profile", str(target)]) == 0
    out = capsys.readouterr().out
    assert "create" in out and "Python Plugin Manager" in out
    assert install.copies_match(target / "offcut_krita" / "offcut_client")
    assert cli.main(["uninstall", "krita", "--profile", str(target)]) == 0
    assert "remove" in capsys.readouterr().out
    assert not (target / "offcut_krita").exists()
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

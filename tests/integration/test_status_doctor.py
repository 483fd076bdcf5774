"""``offcut status`` and ``offcut doctor`` against a real sidecar, and without one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import Sidecar, sidecar_env


def run(
    *args: str, runtime: Path, models: Path, home: Path, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = sidecar_env(
        runtime,
        models,
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        **extra,
    )
    return subprocess.run(
        [sys.executable, "-m", "offcut", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_status_without_and_with_a_sidecar(tmp_path: Path, models_dir: Path) -> None:
    runtime, home = tmp_path / "run", tmp_path / "home"
    home.mkdir()
    r = run("status", runtime=runtime, models=models_dir, home=home)
    assert r.returncode == 1 and "not running" in r.stdout
    s = Sidecar(runtime, models_dir)
    try:
        r = run("status", "--json", runtime=runtime, models=models_dir, home=home)
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert st["alive"] is True and st["pid"] == s.proc.pid and st["queue"] == 0
        r = run("status", runtime=runtime, models=models_dir, home=home)
        assert f"pid {s.proc.pid}" in r.stdout
    finally:
        s.stop()


def test_doctor_names_the_next_step(tmp_path: Path, models_dir: Path) -> None:
    runtime, home, empty = tmp_path / "run", tmp_path / "home", tmp_path / "models"
    home.mkdir()
    empty.mkdir()
    r = run("doctor", runtime=runtime, models=empty, home=home)
    assert r.returncode == 1
    assert "offcut models fetch u2netp" in r.stdout
    assert "offcut install gimp" in r.stdout and "offcut install krita" in r.stdout


def test_doctor_is_satisfied_only_when_a_plugin_is_installed_and_loads(
    tmp_path: Path, models_dir: Path
) -> None:
    """No profile, no plug-in: not "everything is in place". A profile without the plug-in, or
    a Krita plug-in kritarc does not enable, is a problem naming the command that fixes it."""
    runtime, home = tmp_path / "run", tmp_path / "home"
    home.mkdir()
    r = run("doctor", runtime=runtime, models=models_dir, home=home)
    assert r.returncode == 1, r.stdout
    assert "GIMP: no profile found" in r.stdout and "Krita: no profile found" in r.stdout
    assert "No editor plug-in is installed" in r.stdout and "Everything" not in r.stdout
    (home / ".config" / "GIMP" / "3.0").mkdir(parents=True)  # GIMP has run once here
    r = run("doctor", runtime=runtime, models=models_dir, home=home)
    assert r.returncode == 1 and "GIMP plug-in: not installed in" in r.stdout, r.stdout
    assert "run `offcut install gimp`" in r.stdout and "Krita: no profile found" in r.stdout
    for editor in ("gimp", "krita"):
        r = run("install", editor, runtime=runtime, models=models_dir, home=home)
        assert r.returncode == 0, r.stderr
    assert "enable offcut_krita in" in r.stdout
    r = run("doctor", runtime=runtime, models=models_dir, home=home)
    assert r.returncode == 0, r.stdout
    assert "u2netp: ok" in r.stdout and "Everything is in place" in r.stdout
    assert f"enabled in {home / '.config' / 'kritarc'}: yes" in r.stdout
    (home / ".config" / "kritarc").write_text("[python]\nenable_offcut_krita=false\n")
    r = run("doctor", runtime=runtime, models=models_dir, home=home)
    assert r.returncode == 1 and "Krita will not load the plug-in" in r.stdout, r.stdout
    assert "Everything" not in r.stdout


def test_doctor_accepts_the_krita_manual_in_the_installers_language(
    tmp_path: Path, models_dir: Path
) -> None:
    """The installer writes Krita's manual.html in the user's language (here German, from
    LANGUAGE as gettext reads it): doctor, run in another language, still finds the plug-in
    current, and reports a manual changed any other way as out of date."""
    runtime, home = tmp_path / "run", tmp_path / "home"
    home.mkdir()
    german = {"LANGUAGE": "de", "LANG": "de_DE.UTF-8", "LC_ALL": "", "LC_MESSAGES": ""}
    r = run("install", "krita", runtime=runtime, models=models_dir, home=home, **german)
    assert r.returncode == 0, r.stderr
    assert "German (de)" in r.stdout
    manual = home / ".local" / "share" / "krita" / "pykrita" / "offcut_krita" / "manual.html"
    assert "<h4>Erste Schritte</h4>" in manual.read_text(encoding="utf-8")
    french = {"LANGUAGE": "fr", "LANG": "fr_FR.UTF-8", "LC_ALL": "", "LC_MESSAGES": ""}
    r = run("doctor", runtime=runtime, models=models_dir, home=home, **french)
    assert r.returncode == 0 and "out of date" not in r.stdout, r.stdout
    manual.write_text(manual.read_text(encoding="utf-8").replace("Grenzen", "Limits"), "utf-8")
    r = run("doctor", runtime=runtime, models=models_dir, home=home)
    assert r.returncode == 1 and "Krita plug-in: installed in" in r.stdout, r.stdout
    assert "(out of date)" in r.stdout


def test_doctor_flags_a_corrupt_model(tmp_path: Path, models_dir: Path) -> None:
    runtime, home, models = tmp_path / "run", tmp_path / "home", tmp_path / "models"
    home.mkdir()
    models.mkdir()
    data = bytearray((models_dir / "u2netp.onnx").read_bytes())
    data[1000] ^= 0xFF
    (models / "u2netp.onnx").write_bytes(bytes(data))
    r = run("doctor", runtime=runtime, models=models, home=home)
    assert r.returncode == 1
    assert "offcut models fetch u2netp" in r.stdout


def test_status_reads_the_connection_file_as_the_plug_ins_do(
    tmp_path: Path, models_dir: Path
) -> None:
    """`offcut status` judges the connection file with the client's own reader: a file other
    users can read is refused with the plug-ins' words, and a dead sidecar's file is stale."""
    runtime, home = tmp_path / "run", tmp_path / "home"
    home.mkdir()
    s = Sidecar(runtime, models_dir)
    cf = runtime / "sidecar.json"
    try:
        cf.chmod(0o644)
        r = run("status", runtime=runtime, models=models_dir, home=home)
        assert r.returncode == 1 and "can be read by other users" in r.stdout, r.stdout
        cf.chmod(0o600)
        saved = cf.read_text()
    finally:
        s.stop()
    cf.write_text(saved)  # the sidecar removed it on exit: put the dead one's file back
    cf.chmod(0o600)
    r = run("status", runtime=runtime, models=models_dir, home=home)
    assert r.returncode == 1 and "stale" in r.stdout, r.stdout

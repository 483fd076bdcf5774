"""Connection-file trust checks, runtime-dir rules, the sidecar command, and the package's shape."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import offcut.client
from offcut import paths
from offcut.client import INTERNAL, OffcutClientError, discovery

CLIENT_DIR = Path(offcut.client.__file__).parent
GOOD = {"transport": "tcp", "ip": "127.0.0.1", "port": 5555, "token": "t" * 64, "pid": 1,
        "protocol": 1, "sidecar_version": "0.1.0", "started": 1.0}  # fmt: skip

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


def write(path: Path, data, mode: int = 0o600) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    path.chmod(mode)
    return path


def test_reads_a_good_file(tmp_path):
    info = discovery.read_connection_file(write(tmp_path / "sidecar.json", GOOD))
    assert (info.ip, info.port, info.token, info.pid, info.protocol) == (
        "127.0.0.1", 5555, "t" * 64, 1, 1,
    )  # fmt: skip


def test_missing_file_is_none(tmp_path):
    assert discovery.read_connection_file(tmp_path / "sidecar.json") is None


@posix_only
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700, 0o601])
def test_refuses_group_or_other_bits(tmp_path, mode):
    path = write(tmp_path / "sidecar.json", GOOD, mode)
    if not mode & 0o077:
        discovery.read_connection_file(path)
        return
    with pytest.raises(OffcutClientError) as info:
        discovery.read_connection_file(path)
    assert info.value.code == INTERNAL
    assert "other users" in info.value.message and str(path) in info.value.message


@posix_only
@pytest.mark.skipif(hasattr(os, "getuid") and os.getuid() != 0, reason="needs root to chown")
def test_refuses_a_file_owned_by_someone_else(tmp_path):
    path = write(tmp_path / "sidecar.json", GOOD)
    os.chown(path, 12345, -1)
    with pytest.raises(OffcutClientError, match="another user"):
        discovery.read_connection_file(path)


@posix_only
def test_refuses_a_symlink(tmp_path):
    real = write(tmp_path / "elsewhere.json", GOOD)
    link = tmp_path / "sidecar.json"
    link.symlink_to(real)
    with pytest.raises(OffcutClientError, match="not a regular file"):
        discovery.read_connection_file(link)


def test_refuses_a_directory(tmp_path):
    (tmp_path / "sidecar.json").mkdir()
    with pytest.raises(OffcutClientError, match="not a regular file"):
        discovery.read_connection_file(tmp_path / "sidecar.json")


@pytest.mark.parametrize(
    "change",
    [
        {"ip": "10.0.0.1"},
        {"ip": "0.0.0.0"},
        {"ip": "example.org"},
        {"port": 0},
        {"port": 70000},
        {"port": "abc"},
        {"transport": "ipc"},
        {"token": None},
        {"token": ""},
        {"port": "5555"},
        {"port": True},
    ],
)
def test_refuses_bad_contents(tmp_path, change):
    data = {**GOOD, **change}
    with pytest.raises(OffcutClientError, match="not valid"):
        discovery.read_connection_file(write(tmp_path / "sidecar.json", data))


@pytest.mark.parametrize("text", ["", "{", "[]", '{"ip": "127.0.0.1"}'])
def test_refuses_garbage(tmp_path, text):
    with pytest.raises(OffcutClientError, match="not valid"):
        discovery.read_connection_file(write(tmp_path / "sidecar.json", text))


def test_ipv6_loopback_is_accepted(tmp_path):
    info = discovery.read_connection_file(write(tmp_path / "sidecar.json", {**GOOD, "ip": "::1"}))
    assert info.ip == "::1"


def test_pid_alive():
    assert discovery.pid_alive(os.getpid())
    assert not discovery.pid_alive(0)
    assert not discovery.pid_alive(-5)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not discovery.pid_alive(p.pid)


@pytest.mark.parametrize(
    "env",
    [
        {"OFFCUT_RUNTIME_DIR": "/tmp/x-offcut"},
        {"XDG_RUNTIME_DIR": "/tmp"},
        {"XDG_RUNTIME_DIR": "/nonexistent-dir"},
        {},
    ],
)
def test_runtime_dir_matches_the_sidecars(monkeypatch, env):
    for var in ("OFFCUT_RUNTIME_DIR", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert discovery.runtime_dir() == paths.runtime_dir()


def test_sidecar_command_from_env(monkeypatch):
    monkeypatch.setenv("OFFCUT_SIDECAR_COMMAND", '["/opt/py", "-m", "offcut", "serve"]')
    assert discovery.sidecar_command() == (["/opt/py", "-m", "offcut", "serve"], {})
    monkeypatch.setenv("OFFCUT_SIDECAR_COMMAND", "python -m offcut")
    with pytest.raises(OffcutClientError, match="JSON array"):
        discovery.sidecar_command()


def test_sidecar_command_source_fallback(monkeypatch):
    monkeypatch.delenv("OFFCUT_SIDECAR_COMMAND", raising=False)
    cmd, env = discovery.sidecar_command()
    assert cmd == [sys.executable, "-m", "offcut", "serve"]
    root = str(Path(offcut.__file__).resolve().parent.parent)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == root


FALLBACK_PROBE = """
import json
import offcut_client
try:
    print(json.dumps(offcut_client.discovery.sidecar_command()))
except offcut_client.OffcutClientError as exc:
    print(json.dumps(exc.code))
"""


@pytest.mark.parametrize("with_sidecar", [False, True])
def test_source_fallback_ignores_other_packages_named_offcut(tmp_path, with_sidecar):
    """Krita puts pykrita on sys.path; an ``offcut`` there that is not the sidecar (a plug-in
    installed before the rename to ``offcut_krita``) must not become ``-m offcut serve``."""
    import shutil

    pykrita = tmp_path / "pykrita"
    old = pykrita / "offcut"
    shutil.copytree(CLIENT_DIR, old / "offcut_client")
    (old / "__init__.py").write_text("raise SystemExit('the Krita plug-in was imported')\n")
    plugin = pykrita / "offcut_krita"  # the client as installed, with no sidecar record
    shutil.copytree(CLIENT_DIR, plugin / "offcut_client")
    path = [str(plugin), str(pykrita)]
    sidecar_root = CLIENT_DIR.parent.parent.resolve()
    if with_sidecar:  # the real sidecar further down the path is found past the impostor
        path.append(str(sidecar_root))
    env = {k: v for k, v in os.environ.items() if k != "OFFCUT_SIDECAR_COMMAND"}
    out = subprocess.run(  # -I: this path only, as in an editor's Python
        [sys.executable, "-I", "-c", f"import sys; sys.path[:0] = {path!r}\n" + FALLBACK_PROBE],
        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    if with_sidecar:
        cmd, extra = result
        assert cmd[1:] == ["-m", "offcut", "serve"]
        assert extra["PYTHONPATH"].split(os.pathsep)[0] == str(sidecar_root)
    else:
        assert result == INTERNAL


def test_read_record(tmp_path):
    rec = tmp_path / "offcut_sidecar.json"
    rec.write_text(json.dumps({"command": ["/py", "-m", "offcut", "serve"], "env": {"A": "b"}}))
    assert discovery.read_record(rec) == (["/py", "-m", "offcut", "serve"], {"A": "b"})
    for bad in ({"command": "python"}, {"command": []}, {"env": {}}, {"command": ["x"], "env": 1}):
        rec.write_text(json.dumps(bad))
        with pytest.raises(OffcutClientError, match="damaged"):
            discovery.read_record(rec)


# -- the package's shape: it is copied into editors' Pythons -------------------------------------

SOURCES = sorted(CLIENT_DIR.glob("*.py"))
STDLIB = set(getattr(sys, "stdlib_module_names", ())) or None
OPTIONAL = {"zmq", "msgpack"}
PEP585 = {"list", "dict", "tuple", "set", "frozenset", "type"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_parses_as_python_3_8(path):
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_runtime_annotations_newer_than_3_8(path):
    """``X | Y`` and ``list[int]`` parse on 3.8 but fail when the annotation is evaluated."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            pytest.fail("keep annotations evaluated, as on 3.8, so this test means something")
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            every = args.posonlyargs + args.args + args.kwonlyargs
            every += [a for a in (args.vararg, args.kwarg) if a]
            annotations += [a.annotation for a in every if a.annotation]
            annotations += [node.returns] if node.returns else []
        if isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        for ann in annotations:
            for sub in ast.walk(ann):
                assert not (isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.BitOr)), (
                    f"{path.name}:{sub.lineno} uses X | Y"
                )
                assert not (
                    isinstance(sub, ast.Subscript)
                    and isinstance(sub.value, ast.Name)
                    and sub.value.id in PEP585
                ), f"{path.name}:{sub.lineno} uses a builtin generic"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_imports_are_relative_or_stdlib(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module.split(".")[0]]
        for name in names:
            assert name != "offcut", f"{path.name}: absolute import of offcut"
            if name in OPTIONAL:
                continue
            if STDLIB is not None:
                assert name in STDLIB, f"{path.name}: {name} is not in the standard library"


def test_optional_imports_are_only_in_transport():
    for path in SOURCES:
        text = path.read_text()
        if path.name != "transport.py":
            assert "import zmq" not in text and "import msgpack" not in text, path.name


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, "glibc.malloc.hugetlb=1"),
        ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
        ("glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=0"),  # the user's choice stays
    ],
)
def test_with_huge_pages_adds_glibcs_tunable_on_linux(monkeypatch, before, after):
    monkeypatch.setattr(sys, "platform", "linux")
    env = {"A": "b"} if before is None else {"A": "b", "GLIBC_TUNABLES": before}
    assert discovery.with_huge_pages(env) is env
    assert env == {"A": "b", "GLIBC_TUNABLES": after}


def test_with_huge_pages_leaves_other_systems_alone(monkeypatch):
    for platform in ("win32", "darwin"):
        monkeypatch.setattr(sys, "platform", platform)
        env = {"A": "b"}
        assert discovery.with_huge_pages(env) == {"A": "b"}

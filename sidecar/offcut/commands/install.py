"""``offcut install|uninstall gimp|krita``: put the plug-ins where the editors look for them.

Each install copies the plug-in (for GIMP the script and its ``offcut_gimp`` package of gi-free
logic), a copy of the client package (as ``offcut_client``) and a record
of the exact command that starts this installation's sidecar (``offcut_sidecar.json``). Editors'
Pythons cannot import this venv, so the record is how a plug-in finds its way back here.

The installer only ever creates, replaces or removes its own entries (the GIMP folder
``offcut-remove-background``, Krita's ``offcut_krita.desktop``, ``offcut_krita/`` and
``offcut_krita.action``), each identified by its marker before it is replaced, and builds a new
copy beside the old one before swapping them, so an interrupted run never leaves a half-copied
plug-in.

The Krita plug-in's package was once called ``offcut``, like the sidecar's. Installing or
uninstalling also removes that older install's ``offcut/``, ``offcut.desktop`` and
``offcut.action``, each only when it is recognisably Offcut's, so an upgrade never leaves two
plug-ins registering the same docker and action. An upgrade turns the older plug-in's
"enabled" flag in kritarc into the new name's, so Krita keeps loading it.

Krita loads a Python plug-in only when kritarc enables it, and rewrites kritarc when it exits, so
``offcut install krita`` enables Offcut there itself when no Krita that uses that kritarc is
running, and otherwise says what is left to do.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import offcut
from offcut.client.discovery import with_huge_pages
from offcut.i18n import LANGUAGES, catalogs
from offcut.models.catalog import CatalogError, load_catalog

EDITORS = ("gimp", "krita")
GIMP_PLUGIN = "offcut-remove-background"
GIMP_FIRST_SERIES = "3.0"  # the profile folder a GIMP 3 that has never run would use first
GIMP_PACKAGE = "offcut_gimp"  # the script's gi-free modules, imported from the script's folder
CLIENT_PACKAGE = "offcut_client"
#: The compiled catalogs' folder in an installed plug-in (``locale/<lang>/LC_MESSAGES``).
LOCALE_DIR = "locale"
SIDECAR_RECORD = "offcut_sidecar.json"
KRITA_PLUGIN = "offcut_krita"  # Krita's X-KDE-Library: the package folder and the file names
# The Krita plug-in's name before it was told apart from the sidecar's ``offcut`` package.
OLD_KRITA_PLUGIN = "offcut"
KRITA_ACTION_ID = "offcut_remove_background"  # in the .action file, old and new
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*")

NEXT_STEP = {
    "gimp": "Restart GIMP; the command is in Layer ▸ Transparency ▸ Remove Background (Offcut).",
    "krita": "Start Krita (restart it if it is open); the docker is in Settings ▸ Dockers ▸ "
    "Offcut: Remove Background.",
}
# What a user does by hand when the installer cannot enable the Krita plug-in in kritarc.
KRITA_BY_HAND = (
    "enable Offcut in Settings ▸ Configure Krita ▸ Python Plugin Manager and restart Krita"
)


class InstallError(Exception):
    """Something the user must resolve (a foreign folder in the way, a missing source)."""


# -- where the editors look ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One editor profile location: the plug-ins (GIMP) or pykrita (Krita) directory."""

    path: Path
    kind: str = "native"  # native, flatpak, snap or store: decides how the sidecar is started


#: GIMP's own override of its profile folder (libgimpbase ``gimp_directory``): absolute, or
#: relative to the home folder. Portable builds' launchers set it.
GIMP_DIRECTORY_ENV = "GIMP3_DIRECTORY"


def candidate_targets(
    editor: str,
    platform: str | None = None,
    home: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[Target]:
    """Every place ``editor`` may read plug-ins from on this platform, most usual first.

    Windows: the roaming AppData (``%APPDATA%``) for the installers' builds, then a Microsoft
    Store build's own copy of it, if one has run (:func:`store_profiles`). macOS: Application
    Support. Linux: the XDG folders, then Flatpak's and Snap's. A ``GIMP3_DIRECTORY`` set in
    this environment is GIMP's profile before all of them.
    """
    platform = platform or sys.platform
    home = home or Path.home()
    env = os.environ if environ is None else environ
    first: list[Target] = []
    if editor == "gimp" and env.get(GIMP_DIRECTORY_ENV):
        first = [Target(home / env[GIMP_DIRECTORY_ENV] / "plug-ins")]  # absolute stays absolute
    if platform == "win32":
        appdata = Path(env.get("APPDATA") or home / "AppData" / "Roaming")
        local = Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local")
        return [*first, *profile_targets(editor, appdata), *store_profiles(editor, local)]
    if platform == "darwin":
        return [*first, *profile_targets(editor, home / "Library" / "Application Support")]
    if editor == "gimp":
        config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
        return [
            *first,
            *profile_targets(editor, config),
            *profile_targets(editor, home / ".var/app/org.gimp.GIMP/config", "flatpak"),
            *profile_targets(editor, home / "snap/gimp/current/.config", "snap"),
        ]
    data = Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")
    return [
        *profile_targets(editor, data),
        *profile_targets(editor, home / ".var/app/org.kde.krita/data", "flatpak"),
    ]


def profile_targets(editor: str, base: Path, kind: str = "native") -> list[Target]:
    """The plug-in folders of ``editor``'s profiles under ``base`` (``%APPDATA%``, ``~/.config``…).

    GIMP has one profile per series (:func:`gimp_plugin_dirs`); Krita has one ``krita`` folder.
    """
    if editor == "gimp":
        return [Target(p, kind) for p in gimp_plugin_dirs(base / "GIMP")]
    return [Target(base / "krita" / "pykrita", kind)]


def gimp_plugin_dirs(gimp_dir: Path) -> list[Path]:
    """The ``plug-ins`` folder of each GIMP 3 profile in ``gimp_dir``, newest series first.

    GIMP keeps one profile per minor series (``GIMP/3.0``, ``GIMP/3.2``, …) and reads plug-ins
    only from its own, so every series that has a profile gets the plug-in. With none yet it is
    GIMP 3.0's: a later series that starts without a profile of its own copies the older one,
    plug-ins included (GIMP 3.2 does), so the plug-in reaches whichever GIMP 3 runs first.
    """
    series = []
    if gimp_dir.is_dir():
        for entry in gimp_dir.iterdir():
            match = re.fullmatch(r"3\.(\d+)", entry.name)
            if match and entry.is_dir():
                series.append((int(match[1]), entry / "plug-ins"))
    series.sort(reverse=True)
    return [path for _, path in series] or [gimp_dir / GIMP_FIRST_SERIES / "plug-ins"]


def store_profiles(editor: str, local_appdata: Path) -> list[Target]:
    """The profiles of Microsoft Store builds of ``editor`` that have run on this account.

    A Store (MSIX) app's writes to ``%APPDATA%`` land in its package's own
    ``%LOCALAPPDATA%\\Packages\\<package>\\LocalCache\\Roaming``, where it also reads
    them back, so its plug-ins must go there. The package's name carries a publisher hash, so
    the folders are found by the editor's name rather than spelled out; only a profile that
    exists counts (the app has run), since the hash cannot be guessed for one that does not.
    """
    packages = local_appdata / "Packages"
    try:
        entries = sorted(p for p in packages.iterdir() if editor in p.name.lower())
    except OSError:
        return []
    found = []
    for package in entries:
        targets = profile_targets(editor, package / "LocalCache" / "Roaming", "store")
        found.extend(t for t in targets if t.path.parent.is_dir())
    return found


def existing_targets(editor: str, **kwargs: object) -> list[Target]:
    """The candidates whose editor profile exists: the editor has run there at least once.

    A profile exists when the plug-ins dir's parent does (``GIMP/3.2``, Krita's data dir).
    ``offcut doctor`` asks this too, so it checks exactly the profiles an install would fill.
    """
    candidates = candidate_targets(editor, **kwargs)  # type: ignore[arg-type]
    return [t for t in candidates if t.path.parent.is_dir()]


def default_targets(editor: str, **kwargs: object) -> list[Target]:
    """The existing profiles (see ``existing_targets``), else the most usual candidate.

    A user with both a native and a Flatpak GIMP, or GIMP 3.0 and 3.2, gets the plug-in in each.
    """
    candidates = candidate_targets(editor, **kwargs)  # type: ignore[arg-type]
    return existing_targets(editor, **kwargs) or candidates[:1]


def _target_for_profile(profile: Path) -> Target:
    """The kind of a ``--profile`` folder, read from its path's shape."""
    parts = [p.lower() for p in profile.resolve().parts]
    pairs = set(itertools.pairwise(parts))
    if (".var", "app") in pairs:
        return Target(profile, "flatpak")
    if "snap" in parts:
        return Target(profile, "snap")
    if "packages" in parts and ("localcache", "roaming") in pairs:
        return Target(profile, "store")
    return Target(profile)


# -- what gets copied ---------------------------------------------------------------------------


def client_source() -> Path:
    """The client package this installer copies (``offcut/client``)."""
    return Path(offcut.__file__).resolve().parent / "client"


def plugin_source(editor: str) -> Path:
    """The editor plug-in's files: package data of a wheel, else the source checkout's folder."""
    here = Path(offcut.__file__).resolve().parent
    # A wheel puts them in offcut/_plugin_<editor>, a folder without __init__.py: Python sees a
    # namespace package, whose importlib.resources.files() is no single path, so look directly.
    for path in (here / f"_plugin_{editor}", here.parents[1] / f"plugin_{editor}"):
        if path.is_dir():
            return path
    try:  # anything else that maps the package (an editable install's finder)
        res = importlib.resources.files(f"offcut._plugin_{editor}")
        path = Path(str(res))
        if path.is_dir():
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    raise InstallError(
        f"The {editor} plug-in files are missing from this Offcut installation "
        f"(looked for offcut._plugin_{editor} and {here.parents[1] / f'plugin_{editor}'}); "
        "reinstall Offcut."
    )


def sidecar_record(kind: str = "native") -> dict[str, object]:
    """The command that starts this installation's sidecar, as the client will run it."""
    cmd = [sys.executable, "-m", "offcut", "serve"]
    env: dict[str, str] = {}
    root = str(Path(offcut.__file__).resolve().parent.parent)
    site_dirs = {
        str(Path(p).resolve())
        for p in (sysconfig.get_paths().get("purelib"), sysconfig.get_paths().get("platlib"))
        if p
    }
    if root not in site_dirs:  # a source checkout: `-m offcut` needs the path to it
        env["PYTHONPATH"] = root
    record: dict[str, object] = {"command": cmd, "env": env, "offcut_version": offcut.__version__}
    record.update(_catalog_record())
    if kind == "flatpak":
        # The sandboxed editor cannot run this venv's Python nor see the host's runtime dir:
        # run the sidecar on the host and meet it in a directory both sides share.
        # flatpak-spawn passes on only the variables named with --env=, so the huge-page
        # tunable the client gives a sidecar it starts itself (decisions §9) is named here too.
        rundir = str(Path.home() / ".cache" / "offcut" / "run-flatpak")
        host = with_huge_pages({**env, "OFFCUT_RUNTIME_DIR": rundir})
        host_env = [f"--env={k}={v}" for k, v in host.items()]
        record["command"] = ["flatpak-spawn", "--host", *host_env, *cmd]
        record["env"] = {}
        record["runtime_dir"] = rundir
    return record


def _catalog_record() -> dict[str, object]:
    """The models and aliases the GIMP plug-in offers when it registers with no sidecar running.

    GIMP builds a procedure's model choice once, at registration (usually GIMP's start, when no
    sidecar runs yet), and keeps it until the plug-in file changes; without this list the choice
    would hold only the default model. The aliases (``fast``, ``best``) come first in that
    choice, so they are recorded too, with their candidates in order (the plug-in offers each
    for its first candidate; the sidecar resolves it to the first installed one at run time).
    Whether a model is installed is checked at run time: the sidecar names the command that
    fetches a missing one.
    """
    try:
        catalog = load_catalog()
    except CatalogError:  # a broken catalog must not stop the install; the plug-in falls back
        return {}
    return {
        "default_model": catalog.default,
        "models": [{"name": m.name, "description": m.description} for m in catalog],
        "aliases": [
            {
                "name": a.name,
                "label": a.label,
                "description": a.description or "",
                "models": list(a.models),
            }
            for a in catalog.aliases.values()
        ],
    }


# -- installing ---------------------------------------------------------------------------------


@dataclass
class Plan:
    """What an install or uninstall did (or, with ``dry_run``, would do), for printing."""

    dry_run: bool
    actions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # False when a step is left to the user (the notes say which); the usual next step is
    # then not printed, so the output never claims the editor is ready when it is not.
    ready: bool = True

    def do(self, text: str) -> bool:
        self.actions.append(("would " if self.dry_run else "") + text)
        return not self.dry_run


def _is_ours_dir(path: Path, marker: str) -> bool:
    return (path / SIDECAR_RECORD).is_file() or (path / marker).is_file()


def _replace_dir(dest: Path, build, plan: Plan, marker: str) -> None:
    """Build the new copy next to ``dest`` and swap it in; refuse to replace a foreign folder."""
    if dest.exists() and not (dest.is_dir() and _is_ours_dir(dest, marker)):
        raise InstallError(
            f"{dest} exists but is not an Offcut install; move it away and run this again."
        )
    verb = "replace" if dest.exists() else "create"
    if not plan.do(f"{verb} {dest}"):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = dest.with_name(f".{dest.name}.offcut-new-{os.getpid()}")
    old = dest.with_name(f".{dest.name}.offcut-old-{os.getpid()}")
    for leftover in (stage, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    try:
        build(stage)
        if dest.exists():
            dest.rename(old)
        stage.rename(dest)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
        if old.exists():
            shutil.rmtree(old)


def _copy_client(dest: Path, record: dict[str, object], client_dir: Path) -> None:
    shutil.copytree(client_dir, dest / CLIENT_PACKAGE, ignore=_IGNORE)
    (dest / SIDECAR_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    # The translations, compiled here from the PO sources (standard library only), next to
    # the client copy whose offcut_client.i18n looks for them.
    catalogs.write_locale(dest / LOCALE_DIR)


def install_gimp(
    target: Target, source: Path, client_dir: Path, plan: Plan, record: dict[str, object]
) -> None:
    script = source / f"{GIMP_PLUGIN}.py"
    package = source / GIMP_PACKAGE
    for needed, present in ((script, script.is_file()), (package, package.is_dir())):
        if not present:  # the script alone would fail to import in GIMP, with no word to the user
            raise InstallError(f"{needed} is missing; reinstall Offcut.")

    def build(stage: Path) -> None:
        shutil.copytree(source, stage, ignore=_IGNORE)
        (stage / f"{GIMP_PLUGIN}.py").chmod(0o755)  # GIMP runs the plug-in as a program
        _copy_client(stage, record, client_dir)

    _replace_dir(target.path / GIMP_PLUGIN, build, plan, f"{GIMP_PLUGIN}.py")


#: The Krita plug-in's manual, shown by Krita's Plugin Manager (``X-Krita-Manual``).
KRITA_MANUAL = "manual.html"


def check_language(language: str) -> str:
    """``language`` if Offcut ships it (or it is ``en``); else an error naming the choices."""
    choices = ("en", *LANGUAGES)
    if language not in choices:
        raise InstallError(
            f"Unknown language {language!r} for --language; choose one of: {', '.join(choices)}."
        )
    return language


def manual_language(language: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The language the Krita manual is written in: ``language``, else the environment's.

    Krita reads the one ``manual.html`` with no per-language lookup, so the installer writes it
    in the language the plug-in itself will speak (gettext's choice from ``LANGUAGE``,
    ``LC_ALL``, ``LC_MESSAGES``, ``LANG``: :func:`offcut.i18n.catalogs.environment_language`),
    and English when Offcut does not ship that language.
    """
    if language is not None:
        return check_language(language)
    return catalogs.environment_language(environ) or "en"


def _language_name(language: str) -> str:
    return f"{catalogs.LANGUAGE_NAMES.get(language, 'English')} ({language})"


def install_krita(
    target: Target,
    source: Path,
    client_dir: Path,
    plan: Plan,
    record: dict[str, object],
    language: str = "en",
) -> None:
    package = source / KRITA_PLUGIN
    desktop = source / f"{KRITA_PLUGIN}.desktop"
    if not package.is_dir():
        raise InstallError(f"{package} is missing; reinstall Offcut.")
    manual = package / KRITA_MANUAL

    def build(stage: Path) -> None:
        shutil.copytree(package, stage, ignore=_IGNORE)
        _copy_client(stage, record, client_dir)
        if manual.is_file():  # Krita shows one manual: write it in the user's language
            page = catalogs.render_page(manual, language)
            (stage / KRITA_MANUAL).write_bytes(page.encode("utf-8"))

    _replace_dir(target.path / KRITA_PLUGIN, build, plan, SIDECAR_RECORD)
    if manual.is_file():
        note = (
            f"The plug-in's manual (Krita's Plugin Manager) is in {_language_name(language)}; "
            "`offcut install krita --language LANG` writes it in another language."
        )
        if note not in plan.notes:
            plan.notes.append(note)
    if desktop.is_file() and plan.do(f"write {target.path / desktop.name}"):
        shutil.copyfile(desktop, target.path / desktop.name)
    action = source / f"{KRITA_PLUGIN}.action"
    if action.is_file():
        actions_dir = target.path.parent / "actions"
        if plan.do(f"write {actions_dir / action.name}"):
            actions_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(action, actions_dir / action.name)
    former = _remove_old_krita(target, plan)
    enable_krita(target.path, plan, replace_former=former)


# -- the Krita plug-in's older name ---------------------------------------------------------------


def _old_krita_entries(pykrita: Path) -> list[Path]:
    """The older install's entries in ``pykrita`` (and its actions folder) that are Offcut's.

    The package folder is Offcut's when it holds the sidecar record, the ``.desktop`` file when
    it loads the package ``offcut`` under Offcut's name, the ``.action`` file when it defines
    Offcut's action. Anything else of that name belongs to someone else and is left alone.
    """
    found = []
    folder = pykrita / OLD_KRITA_PLUGIN
    if folder.is_dir() and _is_ours_dir(folder, SIDECAR_RECORD):
        found.append(folder)
    desktop = pykrita / f"{OLD_KRITA_PLUGIN}.desktop"
    lines = {line.strip() for line in _read_text(desktop).splitlines()}
    if f"X-KDE-Library={OLD_KRITA_PLUGIN}" in lines and any(
        line.startswith("Name=Offcut") for line in lines
    ):
        found.append(desktop)
    action = pykrita.parent / "actions" / f"{OLD_KRITA_PLUGIN}.action"
    if f'<Action name="{KRITA_ACTION_ID}"' in _read_text(action):
        found.append(action)
    return found


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    except OSError:
        return ""


def _remove_old_krita(target: Target, plan: Plan) -> bool:
    """Remove the older install's entries; True if its package folder was among them."""
    removed_package = False
    for path in _old_krita_entries(target.path):
        if plan.do(f"remove {path} (the plug-in's former name)"):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        removed_package = removed_package or path.name == OLD_KRITA_PLUGIN
    return removed_package


def kritarc_for(
    pykrita: Path, home: Path | None = None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """The kritarc of the Krita profile whose Python plug-ins live in ``pykrita``, if known.

    Krita keeps its data (pykrita) and its settings (kritarc) apart, where Qt's standard paths
    put each on the platform: the XDG data and config homes on Linux (in the Flatpak's own
    ``~/.var/app/org.kde.krita``), Application Support and Preferences on macOS, the roaming
    and the local AppData on Windows. Read from the path's shape, so ``--profile`` finds it too.
    """
    home = home or Path.home()
    env = os.environ if environ is None else environ
    if tuple(pykrita.parts[-2:]) != ("krita", "pykrita"):
        return None
    data = pykrita.parent.parent
    xdg_data = Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")
    if data == xdg_data:
        return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kritarc"
    if data.parts[-2:] == (".local", "share"):  # another home's default XDG folders
        return data.parent.parent / ".config" / "kritarc"
    if data.parts[-2:] == ("org.kde.krita", "data"):  # Flatpak
        return data.parent / "config" / "kritarc"
    if data.parts[-2:] == ("Library", "Application Support"):  # macOS
        return data.parent / "Preferences" / "kritarc"
    if data.parts[-2:] == ("AppData", "Roaming"):  # Windows: %APPDATA% -> %LOCALAPPDATA%
        return data.parent / "Local" / "kritarc"
    if data.parts[-2:] == ("LocalCache", "Roaming"):  # Microsoft Store: the package's own pair
        return data.parent / "Local" / "kritarc"
    if env.get("APPDATA") and data == Path(env["APPDATA"]) and env.get("LOCALAPPDATA"):
        return Path(env["LOCALAPPDATA"]) / "kritarc"
    return None


def with_krita_enabled(text: str, replace_former: bool = False) -> str | None:
    """``text`` (a kritarc) with ``[python] enable_offcut_krita=true``; None if it has it already.

    Krita loads a Python plug-in only when ``[python] enable_<X-KDE-Library>=true`` is in kritarc
    (the Python Plugin Manager's tick). Only that one line is written; every other byte stays:
    an existing key is set to ``true`` in place; with ``replace_former`` (the plug-in's former
    install was just removed) the former name's ``enable_offcut`` line becomes the new key, so an
    upgrade leaves one line where there was one; otherwise the key goes first in ``[python]``,
    and a kritarc without that group gets it at the end.
    """
    new_key, old_key = f"enable_{KRITA_PLUGIN}", f"enable_{OLD_KRITA_PLUGIN}"
    lines = text.splitlines(keepends=True)
    group, header_at, new_at, old_at = "", None, None, None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            group = stripped
            if group == "[python]" and header_at is None:
                header_at = i
            continue
        if group != "[python]" or "=" not in stripped:
            continue
        key, _, value = stripped.partition("=")
        if key.strip() == new_key:
            if value.strip() == "true":
                return None
            new_at = i
        elif key.strip() == old_key:
            old_at = i
    at = new_at if new_at is not None else old_at if replace_former else None
    if at is not None:
        ending = lines[at][len(lines[at].rstrip("\r\n")) :]
        lines[at] = f"{new_key}=true{ending}"
    elif header_at is not None:
        ending = lines[header_at][len(lines[header_at].rstrip("\r\n")) :]
        if not ending:  # the header was the file's last line, without a newline
            ending = "\n"
            lines[header_at] += ending
        lines.insert(header_at + 1, f"{new_key}=true{ending}")
    else:
        if text and not text.endswith("\n"):
            lines.append("\n")
        lines.append(("\n" if text else "") + f"[python]\n{new_key}=true\n")
    return "".join(lines)


def krita_enabled(kritarc: Path | None) -> bool | None:
    """Whether ``kritarc`` enables the Offcut plug-in; None when there is no kritarc to read."""
    if kritarc is None:
        return None
    try:
        text = kritarc.read_text(encoding="utf-8") if kritarc.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return None
    return with_krita_enabled(text) is None


def krita_running(
    kritarc: Path | None,
    platform: str | None = None,
    proc: Path = Path("/proc"),
    uid: int | None = None,
    run: Callable[[list[str]], str | None] | None = None,
) -> bool | None:
    """Whether a Krita that rewrites ``kritarc`` when it exits is running now; None: unknown.

    Krita writes its settings back on exit, so an edit made while it runs is lost. On Linux
    ``/proc`` tells: a process of this user named ``krita`` whose environment puts its kritarc
    at ``kritarc`` (a Krita whose environment cannot be read counts as that one); another
    profile's Krita does not matter. macOS (``pgrep``) and Windows (``tasklist``) only say
    whether any Krita of this user runs, which counts as running. ``run`` returns a command's
    output, or None when it failed; it is injected by the tests.
    """
    platform = platform or sys.platform
    run = run or _output
    if platform == "darwin":
        out = run(["pgrep", "-x", "-U", str(os.getuid() if uid is None else uid), "krita"])
        return None if out is None else bool(out.strip())
    if platform == "win32":
        out = run(["tasklist", "/FI", "IMAGENAME eq krita.exe", "/FO", "CSV", "/NH"])
        return None if out is None else '"krita.exe"' in out.lower()
    if not platform.startswith("linux"):
        return None
    uid = os.getuid() if uid is None else uid
    try:
        entries = [e for e in proc.iterdir() if e.name.isdigit()]
    except OSError:
        return None
    want = os.path.realpath(kritarc) if kritarc is not None else None
    for entry in entries:
        try:
            if entry.stat().st_uid != uid or (entry / "comm").read_text().strip() != "krita":
                continue
            raw = (entry / "environ").read_bytes()
        except FileNotFoundError:  # ended meanwhile
            continue
        except OSError:
            return True
        env = dict(
            item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item
        )
        config = env.get("XDG_CONFIG_HOME") or (env["HOME"] + "/.config" if "HOME" in env else "")
        if want is None or not config or os.path.realpath(Path(config) / "kritarc") == want:
            return True
    return False


def _output(cmd: list[str]) -> str | None:
    """A command's standard output; None when it cannot run or fails (pgrep: 1 is "none")."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode == 1 and cmd[0] == "pgrep":
        return ""
    return out.stdout if out.returncode == 0 else None


def enable_krita(
    pykrita: Path,
    plan: Plan,
    replace_former: bool = False,
    running: Callable[[Path], bool | None] | None = None,
) -> None:
    """Enable the plug-in in the kritarc of ``pykrita``'s profile, if Krita is not running.

    When it cannot (Krita runs, or whether it runs or where its kritarc is is unknown) the
    plan's notes say what the user does instead, and the plan is not ``ready``.
    """
    kritarc = kritarc_for(pykrita)
    if kritarc is None:
        plan.notes.append(f"Could not tell which kritarc belongs to {pykrita}: {KRITA_BY_HAND}.")
        plan.ready = False
        return
    try:
        text = kritarc.read_text(encoding="utf-8") if kritarc.is_file() else ""
    except (OSError, UnicodeDecodeError) as exc:
        plan.notes.append(f"Could not read {kritarc} ({exc}): {KRITA_BY_HAND}.")
        plan.ready = False
        return
    new = with_krita_enabled(text, replace_former)
    if new is None:
        return
    state = (running or krita_running)(kritarc)
    if state is not False:
        plan.notes.append(
            (
                "Krita is running: close it, then run `offcut install krita` again — or "
                if state
                else "Could not tell whether Krita is running, so kritarc was left alone: "
            )
            + f"{KRITA_BY_HAND}."
        )
        plan.ready = False
        return
    if not plan.do(f"enable {KRITA_PLUGIN} in {kritarc}"):
        return
    kritarc.parent.mkdir(parents=True, exist_ok=True)
    stage = kritarc.with_name(f".{kritarc.name}.offcut-new-{os.getpid()}")
    stage.write_text(new, encoding="utf-8")
    if kritarc.exists():
        shutil.copymode(kritarc, stage)
    os.replace(stage, kritarc)


def install(
    editor: str,
    targets: Iterable[Target],
    dry_run: bool = False,
    source: Path | None = None,
    client_dir: Path | None = None,
    language: str | None = None,
) -> Plan:
    """Install (or refresh) the plug-in for ``editor`` into every target; idempotent.

    ``language`` is the Krita manual's (:func:`manual_language`: None means the environment's);
    GIMP has no such page, but an unknown ``language`` is refused for either editor.
    """
    plan = Plan(dry_run)
    source = source or plugin_source(editor)
    client_dir = client_dir or client_source()
    lang = manual_language(language)
    for target in targets:
        record = sidecar_record(target.kind)
        if editor == "gimp":
            install_gimp(target, source, client_dir, plan, record)
        else:
            install_krita(target, source, client_dir, plan, record, lang)
        if target.kind == "flatpak":
            app = "org.gimp.GIMP" if editor == "gimp" else "org.kde.krita"
            plan.notes.append(
                f"{target.path} is a Flatpak profile: allow it to start the sidecar on the host "
                f"with `flatpak override --user --talk-name=org.freedesktop.Flatpak {app}`."
            )
        elif target.kind == "store":
            plan.notes.append(
                f"{target.path} belongs to a Microsoft Store build. The sidecar it starts runs "
                "inside that app's package and keeps its own runtime folder there, so it may "
                "run a sidecar of its own next to other editors' (untested on Windows so far)."
            )
        elif target.kind == "snap":
            plan.notes.append(
                f"{target.path} is a Snap profile: its sandbox cannot start programs outside "
                "it; if the plug-in reports that the sidecar is not running, use a non-Snap "
                "build of the editor."
            )
    return plan


def uninstall(editor: str, targets: Iterable[Target], dry_run: bool = False) -> Plan:
    """Remove only Offcut's own entries from every target."""
    plan = Plan(dry_run)
    for target in targets:
        if editor == "gimp":
            dirs, files = [(target.path / GIMP_PLUGIN, f"{GIMP_PLUGIN}.py")], []
        else:
            dirs = [(target.path / KRITA_PLUGIN, SIDECAR_RECORD)]
            files = [
                target.path / f"{KRITA_PLUGIN}.desktop",
                target.path.parent / "actions" / f"{KRITA_PLUGIN}.action",
                *_old_krita_entries(target.path),  # an install from before the rename
            ]
        for path, marker in dirs:
            if not path.exists():
                continue
            if not _is_ours_dir(path, marker):
                raise InstallError(f"{path} is not an Offcut install; leaving it alone.")
            if plan.do(f"remove {path}"):
                shutil.rmtree(path)
        for path in files:
            if path.is_dir() and plan.do(f"remove {path}"):  # the old package, checked as ours
                shutil.rmtree(path)
            elif path.is_file() and plan.do(f"remove {path}"):
                path.unlink()
    if not plan.actions:
        plan.notes.append(f"Offcut was not installed for {editor} there; nothing to remove.")
    return plan


# -- checking -----------------------------------------------------------------------------------


def copies_match(installed_client: Path, source: Path | None = None) -> bool:
    """Whether an installed ``offcut_client`` is byte-identical to the client source.

    Drift means the plug-in would speak an older client than the sidecar expects; ``offcut
    doctor`` and the tests use this to say "run `offcut install` again".
    """
    source = source or client_source()
    return _tree_files(installed_client) == _tree_files(source) and all(
        filecmp.cmp(installed_client / rel, source / rel, shallow=False)
        for rel in _tree_files(source)
    )


def plugin_matches(editor: str, folder: Path, source: Path | None = None) -> bool:
    """Whether the plug-in's own files installed in ``folder`` are byte-identical to the source.

    ``folder`` is the installed plug-in folder (``offcut-remove-background`` or Krita's
    ``offcut_krita``); the client copy and the sidecar record in it are left to ``copies_match``.
    A GIMP script and its ``offcut_gimp`` modules from different versions would fail in GIMP, so
    ``offcut doctor`` checks both. A Krita folder under another name (the former ``offcut``)
    never matches: Krita would not load it as this plug-in. Krita's ``manual.html`` matches when
    it is the source's page in English or in any shipped language (the installer writes it in
    the user's, :func:`install_krita`); any other difference is drift.
    """
    if editor == "krita" and folder.name != KRITA_PLUGIN:
        return False
    source = source or plugin_source(editor)
    root = source if editor == "gimp" else source / KRITA_PLUGIN
    installed = {
        rel
        for rel in _tree_files(folder)
        if rel != SIDECAR_RECORD and not rel.startswith((CLIENT_PACKAGE + "/", LOCALE_DIR + "/"))
    }
    expected = _tree_files(root)
    return installed == expected and all(
        _manual_matches(folder / rel, root / rel)
        if editor == "krita" and rel == KRITA_MANUAL
        else filecmp.cmp(folder / rel, root / rel, shallow=False)
        for rel in expected
    )


def _manual_matches(installed: Path, source: Path) -> bool:
    """Whether an installed Krita manual is the source's page rendered in some language."""
    data = installed.read_bytes()
    return any(
        data == catalogs.render_page(source, lang).encode("utf-8") for lang in ("en", *LANGUAGES)
    )


def catalogs_match(folder: Path) -> bool:
    """Whether an installed plug-in's compiled catalogs are exactly what this Offcut compiles.

    Missing or stale catalogs do not break the plug-in (it falls back to English), but they are
    drift all the same: ``offcut doctor`` says to run ``offcut install`` again.
    """
    expected = catalogs.compiled_files()
    installed = _tree_files(folder / LOCALE_DIR)
    return installed == set(expected) and all(
        (folder / LOCALE_DIR / rel).read_bytes() == data for rel, data in expected.items()
    )


def _tree_files(root: Path) -> set[str]:
    """Files under ``root`` as installed: no bytecode caches, no hidden files (see _IGNORE)."""
    if not root.is_dir():
        return set()
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix not in (".pyc", ".pyo")
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def installed_clients(editor: str, targets: Iterable[Target] | None = None) -> list[Path]:
    """The ``offcut_client`` copies present in ``editor``'s profiles.

    For Krita this includes an install under the plug-in's former name, which ``plugin_matches``
    then reports as out of date: ``offcut install krita`` replaces it.
    """
    targets = candidate_targets(editor) if targets is None else targets
    subs = [GIMP_PLUGIN] if editor == "gimp" else [KRITA_PLUGIN, OLD_KRITA_PLUGIN]
    return [
        t.path / sub / CLIENT_PACKAGE
        for t in targets
        for sub in subs
        if (t.path / sub / CLIENT_PACKAGE).is_dir()
    ]


# -- command line -------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    """``offcut install|uninstall gimp|krita [--profile DIR] [--dry-run]`` (parsed by the CLI;
    ``args.command`` is the verb) → exit status."""
    verb = args.command
    targets = [_target_for_profile(args.profile)] if args.profile else None
    try:
        if verb == "install":
            plan = install(
                args.editor,
                targets or default_targets(args.editor),
                args.dry_run,
                language=getattr(args, "language", None),
            )
        else:
            found = (
                targets
                or [t for t in candidate_targets(args.editor) if t.path.is_dir()]
                or default_targets(args.editor)
            )
            plan = uninstall(args.editor, found, args.dry_run)
    except (InstallError, OSError) as exc:
        print(f"offcut {verb}: {exc}", file=sys.stderr)
        return 1
    for line in plan.actions:
        print(line)
    for note in plan.notes:
        print(note)
    if verb == "install":
        done = ("Dry run: nothing was changed. " if args.dry_run else "") + (
            NEXT_STEP[args.editor] if plan.ready else ""
        )
        if done:
            print(done.strip())
    return 0

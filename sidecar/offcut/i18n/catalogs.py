"""Offcut's catalogs: extraction from the sources, updating, checking and compiling.

Three components share the domain ``offcut``: ``client`` (the sentences of errors and states
the client and sidecar report, :mod:`offcut.client.messages`), ``gimp`` and ``krita`` (each
plug-in's own texts). Each has ``po/<component>/<component>.pot`` and one ``<lang>.po`` per
language in :data:`offcut.i18n.LANGUAGES`; a language's compiled ``offcut.mo`` holds all three.

A marked sentence is the literal first argument of ``_``, ``N_`` or ``ngettext`` (and its
plural, the second argument of ``ngettext``) in the component's Python files, as the runtime
half (:mod:`offcut.client.i18n`) defines them.
"""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from offcut.i18n import LANGUAGES, PO_DIR
from offcut.i18n.po import Catalog, Entry, PoError, header_text, load, messages, mo_bytes

#: Call names that mark a sentence (their first argument; ``ngettext``'s second is the plural).
MARKERS = ("_", "N_", "ngettext")

#: Each language's plural rule, as gettext writes it in the ``Plural-Forms`` header.
PLURAL_FORMS = {
    "de": "nplurals=2; plural=(n != 1);",
    "es": "nplurals=2; plural=(n != 1);",
    "it": "nplurals=2; plural=(n != 1);",
    "fr": "nplurals=2; plural=(n > 1);",
    "pt_BR": "nplurals=2; plural=(n > 1);",
    "ru": "nplurals=3; plural=(n%10==1 && n%100!=11 ? 0 : n%10>=2 && n%10<=4 && "
    "(n%100<10 || n%100>=20) ? 1 : 2);",
    "ja": "nplurals=1; plural=0;",
    "zh_CN": "nplurals=1; plural=0;",
    "ko": "nplurals=1; plural=0;",
}

#: The catalogs' language names as shown to translators (the PO header's ``Language-Team``).
LANGUAGE_NAMES = {
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "pt_BR": "Brazilian Portuguese",
    "it": "Italian",
    "ru": "Russian",
    "ja": "Japanese",
    "zh_CN": "Simplified Chinese",
    "ko": "Korean",
}

MO_NAME = "offcut.mo"


def checkout_root() -> Path:
    """The source checkout (extraction reads the sources; a wheel has no need to)."""
    return PO_DIR.parents[3]


@dataclass(frozen=True)
class Component:
    """A part of Offcut with its own sentences: where its sources live, relative to the root."""

    name: str
    sources: tuple[str, ...]

    @property
    def folder(self) -> Path:
        return PO_DIR / self.name

    @property
    def template(self) -> Path:
        return self.folder / f"{self.name}.pot"

    def po(self, lang: str) -> Path:
        return self.folder / f"{lang}.po"


COMPONENTS = (
    Component("client", ("sidecar/offcut/client",)),
    Component("gimp", ("plugin_gimp",)),
    Component("krita", ("plugin_krita",)),
)


def placeholders(text: str) -> set[str]:
    """The named ``{placeholders}`` of a sentence (``{{`` is a literal brace)."""
    try:
        return {name for _lit, name, _spec, _conv in string.Formatter().parse(text) if name}
    except ValueError:
        return {"<malformed>"}


@dataclass
class Found:
    msgid: str
    plural: str | None
    where: str


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def marked_in(path: Path, root: Path) -> Iterator[Found]:
    """The sentences marked in one Python file, in source order."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    rel = path.relative_to(root).as_posix()
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    calls.sort(key=lambda n: (n.lineno, n.col_offset))
    for node in calls:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name is None and isinstance(node.func, ast.Attribute):
            name = node.func.attr
        if name not in MARKERS or not node.args:
            continue
        msgid = _literal(node.args[0])
        if msgid is None:
            continue
        plural = None
        if name == "ngettext" and len(node.args) > 1:
            plural = _literal(node.args[1])
        yield Found(msgid, plural, f"{rel}:{node.lineno}")


def extract(component: Component, root: Path | None = None) -> Catalog:
    """The component's template: every marked sentence once, first occurrence first."""
    root = root or checkout_root()
    entries: dict[str, Entry] = {}
    for source in component.sources:
        base = root / source
        if not base.is_dir():
            raise FileNotFoundError(f"{base} is missing: extraction runs in a source checkout")
        for path in sorted(base.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            for found in marked_in(path, root):
                entry = entries.get(found.msgid)
                if entry is None:
                    entry = Entry(found.msgid, found.plural)
                    if found.plural is not None:
                        entry.msgstr = ["", ""]
                    if placeholders(found.msgid) or (found.plural and placeholders(found.plural)):
                        entry.flags.append("python-brace-format")
                    entries[found.msgid] = entry
                entry.references.append(found.where)
    template = Catalog(
        header={
            "Project-Id-Version": "Offcut",
            "MIME-Version": "1.0",
            "Content-Type": "text/plain; charset=UTF-8",
            "Content-Transfer-Encoding": "8bit",
            "X-Offcut-Component": component.name,
        },
        entries=list(entries.values()),
        header_comments=[
            f"Offcut's {component.name} sentences. Made by `python -m offcut.i18n update`;",
            "translate in the <lang>.po files beside it (docs/translations.md).",
        ],
    )
    return template


def _language_header(component: Component, lang: str) -> dict[str, str]:
    return {
        "Project-Id-Version": "Offcut",
        "Language": lang,
        "Language-Team": LANGUAGE_NAMES[lang],
        "MIME-Version": "1.0",
        "Content-Type": "text/plain; charset=UTF-8",
        "Content-Transfer-Encoding": "8bit",
        "Plural-Forms": PLURAL_FORMS[lang],
        "X-Offcut-Component": component.name,
    }


def merged(template: Catalog, old: Catalog | None, component: Component, lang: str) -> Catalog:
    """The language's catalog for ``template``: its translations kept, new sentences empty.

    Sentences no longer in the sources are dropped (git keeps them); the translator's comments
    and flags stay; references and extracted notes come from the template.
    """
    nplurals = int(re.search(r"nplurals=(\d+)", PLURAL_FORMS[lang]).group(1))  # type: ignore[union-attr]
    out = Catalog(header=_language_header(component, lang))
    out.header_comments = [f"{LANGUAGE_NAMES[lang]} translation of Offcut's {component.name}."]
    for t in template.entries:
        before = old.get(t.msgid) if old else None
        width = nplurals if t.msgid_plural is not None else 1
        msgstr = list(before.msgstr) if before and before.msgid_plural == t.msgid_plural else []
        msgstr = (msgstr + [""] * width)[:width]
        flags = list(t.flags)
        if before:
            flags += [f for f in before.flags if f not in flags and f != "python-brace-format"]
        out.entries.append(
            Entry(
                t.msgid,
                t.msgid_plural,
                msgstr,
                flags,
                list(t.notes),
                list(t.references),
                list(before.comments) if before else [],
            )
        )
    return out


def update(root: Path | None = None) -> list[Path]:
    """Rewrite every template and PO file from the sources; returns the files that changed."""
    from offcut.i18n.po import dumps

    changed: list[Path] = []
    for component in COMPONENTS:
        template = extract(component, root)
        component.folder.mkdir(parents=True, exist_ok=True)
        outputs = {component.template: dumps(template)}
        for lang in LANGUAGES:
            path = component.po(lang)
            old = load(path) if path.exists() else None
            outputs[path] = dumps(merged(template, old, component, lang))
        for path, text in outputs.items():
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
                changed.append(path)
    return changed


def problems(root: Path | None = None, sources: bool = True) -> list[str]:
    """Every reason the catalogs are not ready to ship; empty when they are.

    With ``sources`` (a checkout), the templates must match what the sources mark; always,
    each PO file must hold exactly its template's sentences, all translated, not fuzzy, with
    the same placeholders, and a sentence in two components must read the same in both.
    """
    from offcut.i18n.po import dumps

    found: list[str] = []
    for component in COMPONENTS:
        if sources:
            fresh = dumps(extract(component, root))
            on_disk = (
                component.template.read_text(encoding="utf-8")
                if component.template.exists()
                else ""
            )
            if fresh != on_disk:
                found.append(
                    f"{component.template.name} is out of date with the sources: "
                    "run `python -m offcut.i18n update`"
                )
        try:
            template = load(component.template)
        except (OSError, PoError) as exc:
            found.append(f"{component.name}: {exc}")
            continue
        wanted = [(e.msgid, e.msgid_plural) for e in template.entries]
        for lang in LANGUAGES:
            found += _po_problems(component, lang, wanted)
    for lang in LANGUAGES:
        try:
            _combined(lang, strict=True)
        except PoError as exc:
            found.append(str(exc))
    return found


def _po_problems(
    component: Component, lang: str, wanted: list[tuple[str, str | None]]
) -> list[str]:
    path = component.po(lang)
    name = f"{component.name}/{path.name}"
    try:
        catalog = load(path)
    except (OSError, PoError) as exc:
        return [f"{name}: {exc}"]
    found: list[str] = []
    have = [(e.msgid, e.msgid_plural) for e in catalog.entries]
    if have != wanted:
        found.append(f"{name}: its sentences differ from the template: run update")
    if catalog.header.get("Plural-Forms") != PLURAL_FORMS[lang]:
        found.append(f"{name}: Plural-Forms is not {PLURAL_FORMS[lang]!r}")
    for e in catalog.entries:
        short = e.msgid[:50]
        if not e.translated:
            found.append(f"{name}: not translated (or fuzzy): {short!r}")
            continue
        want = placeholders(e.msgid) | (placeholders(e.msgid_plural) if e.msgid_plural else set())
        for form in e.msgstr:
            got = placeholders(form)
            extra = got - want
            # a plural form may leave out {n} (e.g. Japanese has one form for every count)
            missing = want - got - ({"n"} if e.msgid_plural else set())
            if extra or missing:
                found.append(
                    f"{name}: placeholders differ in {short!r}: "
                    f"missing {sorted(missing)}, unknown {sorted(extra)}"
                )
    return found


def _combined(lang: str, strict: bool = False) -> dict[str, str]:
    """All components' translated messages of ``lang`` and the header, as compiled."""
    out: dict[str, str] = {}
    for component in COMPONENTS:
        path = component.po(lang)
        if not path.exists():
            continue
        for key, value in messages(load(path)).items():
            if strict and key in out and out[key] != value:
                raise PoError(f"{lang}: {key[:50]!r} is translated differently in two components")
            out.setdefault(key, value)
    header = _language_header(COMPONENTS[0], lang)
    del header["X-Offcut-Component"]
    out[""] = header_text(header)
    return out


def compile_language(lang: str) -> bytes:
    """The ``offcut.mo`` of ``lang``: every component's translated sentences."""
    return mo_bytes(_combined(lang))


def compiled_files() -> dict[str, bytes]:
    """``locale``-relative path → MO bytes, for every shipped language."""
    return {f"{lang}/LC_MESSAGES/{MO_NAME}": compile_language(lang) for lang in LANGUAGES}


def write_locale(folder: Path) -> list[Path]:
    """Compile every language into ``folder/<lang>/LC_MESSAGES/offcut.mo`` (the installer's)."""
    written = []
    for rel, data in compiled_files().items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written


def iter_po_files() -> Iterable[Path]:
    for component in COMPONENTS:
        yield component.template
        for lang in LANGUAGES:
            yield component.po(lang)

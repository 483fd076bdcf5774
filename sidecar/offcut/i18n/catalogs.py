"""Offcut's catalogs: extraction from the sources, updating, checking and compiling.

Three components share the domain ``offcut``: ``client`` (the sentences of errors and states
the client and sidecar report, :mod:`offcut.client.messages`), ``gimp`` and ``krita`` (each
plug-in's own texts). Each has ``po/<component>/<component>.pot`` and one ``<lang>.po`` per
language in :data:`offcut.i18n.LANGUAGES`; a language's compiled ``offcut.mo`` holds all three.

A marked sentence is the literal first argument of ``_``, ``N_`` or ``ngettext`` (and its
plural, the second argument of ``ngettext``) in the component's Python files, as the runtime
half (:mod:`offcut.client.i18n`) defines them.

A component may also have HTML pages (the Krita plug-in's ``manual.html``, which Krita's Plugin
Manager shows): each text block of a page (:data:`PAGE_BLOCKS`) is a sentence too, its inner
HTML the msgid. Krita reads that one file with no per-language lookup, so it cannot be
translated at run time like the rest; ``offcut install krita`` writes it already translated
(:func:`render_page`) in the installing user's language (:func:`environment_language`).
"""

from __future__ import annotations

import ast
import locale
import os
import re
import string
from collections.abc import Iterable, Iterator, Mapping
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
    """A part of Offcut with its own sentences: where its sources live, relative to the root.

    ``sources`` are folders of Python files; ``pages`` are HTML files whose text blocks are
    translated too (:func:`page_blocks`).
    """

    name: str
    sources: tuple[str, ...]
    pages: tuple[str, ...] = ()

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
    Component("krita", ("plugin_krita",), pages=("plugin_krita/offcut_krita/manual.html",)),
)


def component(name: str) -> Component:
    """The component called ``name`` (``client``, ``gimp``, ``krita``)."""
    for each in COMPONENTS:
        if each.name == name:
            return each
    raise KeyError(name)


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


# -- HTML pages -----------------------------------------------------------------------------------

#: The elements of a page whose inner HTML is one sentence to translate. Inline elements inside
#: them (``<b>``, ``<code>``, ``<a>``) stay in the sentence; a block inside a block is refused.
PAGE_BLOCKS = ("title", "h3", "h4", "p", "li", "th", "td")

#: The extracted note on every page sentence, for translators and for :func:`problems`.
PAGE_NOTE = (
    "Manual HTML (Krita's Plugin Manager): keep the inline tags such as <b> and <code> "
    "exactly as they are; translate the text around and between them."
)

_BLOCK = re.compile(
    r"<(" + "|".join(PAGE_BLOCKS) + r")(?:\s[^<>]*)?>(.*?)</\1\s*>", re.DOTALL | re.IGNORECASE
)
#: Opening tags that would start a block (or a list or table) inside a block.
_NESTED = re.compile(
    r"<(?:" + "|".join(PAGE_BLOCKS) + r"|h[1-6]|ul|ol|table|tr|div|pre)(?:\s[^<>]*)?/?>",
    re.IGNORECASE,
)
_TAG = re.compile(r"<(/?)([A-Za-z][\w:.-]*)((?:\s[^<>]*?)?)\s*(/?)>")
_HTML_TAG = re.compile(r"<html\b[^<>]*>", re.IGNORECASE)


@dataclass(frozen=True)
class Block:
    """One text block of a page: where its inner HTML lies, and its sentence."""

    start: int  # offset of the inner HTML in the page text
    end: int
    line: int  # the line of its opening tag, for the template's reference
    msgid: str  # the inner HTML, whitespace runs made one space, stripped


def page_blocks(text: str, name: str = "<page>") -> list[Block]:
    """The translatable blocks of a page's text, in order.

    The pages are Offcut's own small XHTML files, so a regular expression reads them; a block
    nested in another (a list inside a list item) is refused rather than half-translated.
    """
    found = []
    for match in _BLOCK.finditer(text):
        inner = match.group(2)
        nested = _NESTED.search(inner)
        if nested:
            line = text.count("\n", 0, match.start(2) + nested.start()) + 1
            raise PoError(f"{name}:{line}: {nested.group(0)} inside <{match.group(1)}>")
        msgid = re.sub(r"\s+", " ", inner).strip()
        if msgid:
            line = text.count("\n", 0, match.start()) + 1
            found.append(Block(match.start(2), match.end(2), line, msgid))
    return found


def inline_tags(html: str) -> list[str]:
    """The tags of a sentence's inner HTML, sorted: a translation must keep the same ones."""
    return sorted(re.sub(r"\s+", " ", m.group(0)) for m in _TAG.finditer(html))


def tags_problem(msgid: str, translated: str) -> str | None:
    """Why ``translated`` cannot stand for the page sentence ``msgid``; None when it can.

    Its tags must be the English ones (the same multiset) and properly nested, so the rendered
    page stays well-formed and shows the same code and bold words.
    """
    if inline_tags(translated) != inline_tags(msgid):
        return "its inline tags differ from the English"
    open_tags: list[str] = []
    for m in _TAG.finditer(translated):
        closing, tag, self_closing = m.group(1), m.group(2).lower(), m.group(4)
        if self_closing:
            continue
        if not closing:
            open_tags.append(tag)
        elif not open_tags or open_tags.pop() != tag:
            return f"</{tag}> closes nothing open"
    return f"<{open_tags[-1]}> is not closed" if open_tags else None


def _html_lang(text: str, lang: str) -> str:
    """``text`` with ``lang`` (BCP 47: ``pt-BR``) in the ``<html>`` tag's lang attributes."""
    tag = lang.replace("_", "-")
    match = _HTML_TAG.search(text)
    if match is None:
        return text
    head = match.group(0)
    for attr in ("xml:lang", "lang"):
        pattern = re.compile(r"(?<![\w:])" + re.escape(attr) + r'="[^"]*"')
        if pattern.search(head):
            head = pattern.sub(f'{attr}="{tag}"', head, count=1)
        else:
            head = head[:-1].rstrip("/ ") + f' {attr}="{tag}">'
    return text[: match.start()] + head + text[match.end() :]


def render_page(path: Path, lang: str | None, component_name: str = "krita") -> str:
    """The page at ``path`` in ``lang``: each block's inner HTML replaced by its translation.

    Translations come from ``component_name``'s ``<lang>.po``; a block whose entry is missing,
    untranslated, fuzzy or has tags unlike the English keeps its English text, and a language
    Offcut does not ship (``en``, None) gives the page unchanged. The ``<html>`` tag's
    ``lang``/``xml:lang`` name the language when it is translated.
    """
    text = path.read_bytes().decode("utf-8")
    if lang not in LANGUAGES:
        return text
    po_path = component(component_name).po(lang)
    catalog = load(po_path) if po_path.is_file() else Catalog()
    table = {
        e.msgid: e.msgstr[0] for e in catalog.entries if e.translated and e.msgid_plural is None
    }
    parts: list[str] = []
    at = 0
    for block in page_blocks(text, path.name):
        translated = table.get(block.msgid)
        if translated is None or tags_problem(block.msgid, translated):
            continue
        parts += [text[at : block.start], translated]
        at = block.end
    parts.append(text[at:])
    return _html_lang("".join(parts), lang)


def environment_language(environ: Mapping[str, str] | None = None) -> str | None:
    """The shipped language the plug-in's gettext lookup would choose from ``environ``.

    As Python's ``gettext.find`` reads it (the plug-ins' runtime, :mod:`offcut.client.i18n`):
    the first set variable of ``LANGUAGE``, ``LC_ALL``, ``LC_MESSAGES`` and ``LANG``, a
    colon-separated list; each name normalized by :func:`locale.normalize` (so ``zh`` means
    ``zh_CN``, while ``pt`` means ``pt_PT``, which Offcut does not ship), its encoding and
    modifier dropped, then ``xx_YY`` tried before ``xx``. ``C``/``POSIX`` ends the list, and a
    name without a catalog (``en_GB``) is passed over as gettext does. None: English.
    """
    env = os.environ if environ is None else environ
    names: list[str] = []
    for variable in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        if env.get(variable):
            names = env[variable].split(":")
            break
    for name in names:
        if not name.strip():
            continue
        base = locale.normalize(name.strip()).split("@")[0].split(".")[0]
        if base == "C":
            return None
        for candidate in (base, base.split("_")[0]):
            if candidate in LANGUAGES:
                return candidate
    return None


def _page_entries(component: Component, root: Path, entries: dict[str, Entry]) -> None:
    """Add the sentences of the component's pages to ``entries`` (its template's, by msgid)."""
    for page in component.pages:
        path = root / page
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: extraction runs in a source checkout")
        for block in page_blocks(path.read_bytes().decode("utf-8"), page):
            entry = entries.get(block.msgid)
            if entry is None:
                entry = entries[block.msgid] = Entry(block.msgid)
            if PAGE_NOTE not in entry.notes:
                entry.notes.append(PAGE_NOTE)
            entry.references.append(f"{page}:{block.line}")


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
    _page_entries(component, root, entries)
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
        why = tags_problem(e.msgid, e.msgstr[0]) if PAGE_NOTE in e.notes else None
        if why:
            found.append(f"{name}: page sentence {short!r}: {why}")
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

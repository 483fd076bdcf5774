"""The Krita plug-in speaks the user's language: every sentence it shows is marked for gettext.

The sources are read, not run (no Krita, no Qt needed): a string literal that reaches a widget,
a message or an error without ``_``/``N_``/``ngettext`` fails here, and so does a sentence-like
literal anywhere else in the plug-in that is not marked and not on the small allow-list of
texts no user sees (bug-report details, programmer errors). The catalogs themselves are checked
complete by ``tests/unit/test_i18n.py``; here the Krita catalogs are also checked for Krita's
own words (the terms of Krita's own translations), and the plug-in's language choice is tested.
The real proof is ``tests/e2e/test_krita.py``'s German and Japanese runs.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from offcut.client import i18n
from offcut.i18n import LANGUAGES, catalogs, po
from offcut.i18n.catalogs import COMPONENTS

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugin_krita" / "offcut_krita"
SOURCES = sorted(PLUGIN.rglob("*.py"))

MARKERS = {"_", "N_", "ngettext"}

#: Methods whose arguments a user sees (Qt widgets and actions, Krita's floating message).
SINK_METHODS = {
    "addItem",
    "addRow",
    "createAction",
    "critical",
    "information",
    "insertItem",
    "question",
    "setFormat",
    "setItemText",
    "setPlaceholderText",
    "setStatusTip",
    "setText",
    "setTitle",
    "setToolTip",
    "setWhatsThis",
    "setWindowTitle",
    "showFloatingMessage",
    "warning",
}
#: Constructors and the plug-in's own functions whose text arguments end up on screen.
SINK_CALLS = {
    "JobError",
    "QAction",
    "QCheckBox",
    "QGroupBox",
    "QLabel",
    "QPushButton",
    "QRadioButton",
    "_report",
    "_set_state",
    "_show_message",
    "emit",
}
#: Keyword arguments of those that are not shown (an error's code).
NOT_SHOWN_KEYWORDS = {"code"}

#: Literals passed to a sink that are not words for the user, each with why.
ALLOWED_IN_SINKS = {
    "tools/scripts": "createAction's menu location (Krita's own Tools ▸ Scripts menu)",
    "error": "a message kind (_report, _show_message)",
    "info": "a message kind",
    "cancelled": "a message kind, and a progress stage",
    "reading": "a progress stage (progress.emit); the docker shows it through _STAGES",
    "done": "a progress stage",
    "failed": "a progress stage",
}

#: Functions (by name) whose sentences are not for the screen: the bug-report text the Copy
#: button puts on the clipboard stays English, so that maintainers can read every report.
ENGLISH_ON_PURPOSE = {
    "_details": "the full error text for a bug report",
    "describe": "the layer's description in that bug report",
    "__repr__": "for logs and tests",
    "_load": "qt.py: no PyQt at all, raised before the plug-in (and its catalogs) can load",
}
#: Exceptions that report a programming error, never a situation a user meets.
PROGRAMMER_ERRORS = {"ValueError", "ImportError", "TypeError", "RuntimeError", "AssertionError"}


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def _strip(text: str) -> str:
    """What is left of a literal once markup, entities and format fields are gone."""
    text = re.sub(r"<[^>]*>", "", text)
    text = re.sub(r"&\w+;", "", text)
    text = re.sub(r"%%[pvm]", "", text)  # QProgressBar's %p (percent), %v, %m
    text = re.sub(r"%%|%[-#0-9.]*[a-zA-Z]", "", text)
    return re.sub(r"\{[^}]*\}", "", text)


def shows_words(text: str) -> bool:
    """Whether a literal holds anything a user would read (a letter outside markup/fields)."""
    return any(ch.isalpha() for ch in _strip(text))


def is_sentence(text: str) -> bool:
    """Whether a literal reads like words for a person: two words of letters and a space."""
    text = _strip(text)
    return len(re.findall(r"[^\W\d_]{2,}", text)) >= 2 and re.search(r"\s", text) is not None


def _literals(node: ast.AST):
    """The string constants inside ``node``, not inside marker calls or subscripts."""
    if isinstance(node, ast.Call) and _call_name(node) in MARKERS:
        return
    if isinstance(node, ast.Subscript):
        yield from _literals(node.value)
        return
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
        return
    for child in ast.iter_child_nodes(node):
        yield from _literals(child)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _parents(tree: ast.AST) -> dict[int, ast.AST]:
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
    return parents


def unmarked(source: str, where: str = "<source>") -> list[str]:
    """Every unmarked literal a user would see in ``source``, as ``where:line: text``."""
    tree = ast.parse(source, where)
    found: dict[int, str] = {}
    # 1. whatever reaches a sink must be marked, however short ("Cancel", "Model:")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or _call_name(node) not in SINK_METHODS | SINK_CALLS:
            continue
        args = list(node.args) + [k.value for k in node.keywords if k.arg not in NOT_SHOWN_KEYWORDS]
        for arg in args:
            for lit in _literals(arg):
                if shows_words(lit.value) and lit.value not in ALLOWED_IN_SINKS:
                    found[id(lit)] = f"{where}:{lit.lineno}: {lit.value!r} ({_call_name(node)})"
    # 2. a sentence anywhere else (tables, variables) must be marked too, unless it is
    #    English on purpose
    docstrings = _docstrings(tree)
    parents = _parents(tree)
    marked = {
        id(lit)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _call_name(node) in MARKERS
        for arg in node.args
        for lit in ast.walk(arg)
    }
    for lit in ast.walk(tree):
        if not (isinstance(lit, ast.Constant) and isinstance(lit.value, str)):
            continue
        if id(lit) in docstrings or id(lit) in marked or id(lit) in found:
            continue
        if not is_sentence(lit.value) or _english_on_purpose(lit, parents):
            continue
        found[id(lit)] = f"{where}:{lit.lineno}: {lit.value!r} (not marked)"
    return sorted(found.values())


def _english_on_purpose(node: ast.AST, parents: dict[int, ast.AST]) -> bool:
    while id(node) in parents:
        node = parents[id(node)]
        if (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name in ENGLISH_ON_PURPOSE
        ):
            return True
        if (
            isinstance(node, ast.Raise)
            and isinstance(node.exc, ast.Call)
            and _call_name(node.exc) in PROGRAMMER_ERRORS
        ):
            return True
    return False


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_every_sentence_the_user_sees_is_marked(path):
    assert unmarked(path.read_text(encoding="utf-8"), path.relative_to(REPO).as_posix()) == []


@pytest.mark.parametrize(
    "snippet",
    [
        'self.run_button = QPushButton("Remove Background")',
        'self.bar.setFormat("Idle")',
        'form.addRow("Model:", self.model)',
        'self.status.setText("<b>Sidecar:</b> %s" % state)',
        'self.msg.setToolTip(f"Copy {what} now")',
        'raise JobError("There is no open image.")',
        'self._report("error", "Offcut failed: " + text, "")',
        'self.ctl.message.emit("info", "Done", "")',
        '_STAGES = {"reading": "Reading the layer…"}',
        'def f():\n    text = "Offcut could not read the layer"\n    return text',
    ],
)
def test_an_unmarked_sentence_fails(snippet):
    """The check is not vacuous: each of these, as a plug-in line, is reported."""
    assert unmarked(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        'self.run_button = QPushButton(_("Remove Background"))',
        'self.bar.setFormat("%s %%p%%" % _(label))',
        "self.status.setText('<span style=\"color:%s\">●</span> %s' % (c, _html(t)))",
        'self.run_button.setObjectName("offcut_run")',
        'k.writeSetting(SETTINGS_GROUP, "model", value)',
        'self._report("error", _("Offcut failed: {error}", error=text), "")',
        'raise JobError(_("Cancelled."), code="cancelled")',
        '_STAGES = {"reading": N_("Reading the layer…")}',
        'def _details(text):\n    return "error: %s: %s" % (text, text)',
        'raise ValueError("unknown output %r; use one of %s" % (o, ids))',
        'window.createAction(ACTION_ID, _("Remove Background (Offcut)"), "tools/scripts")',
    ],
)
def test_marked_and_internal_strings_pass(snippet):
    assert unmarked(snippet) == []


# -- the catalogs use Krita's own words ------------------------------------------------------

#: English sentence -> the term each language's Krita 5.2.9 catalog (krita-l10n, krita.mo) uses
#: for what it names: "Transparency Mask", "Selection", "Paint Layer", "Layer".
KRITA_TERMS = {
    "Transparency mask on the layer": {
        "de": "Transparenzmaske",
        "fr": "masque de transparence",
        "es": "máscara de transparencia",
        "pt_BR": "máscara de transparência",
        "it": "maschera di trasparenza",
        "ru": "маска прозрачности",
        "ja": "透過マスク",
        "zh_CN": "透明度蒙版",
        "ko": "투명도 마스크",
    },
    "Selection": {
        "de": "Auswahl",
        "fr": "Sélection",
        "es": "Selección",
        "pt_BR": "Seleção",
        "it": "Selezione",
        "ru": "Выделение",
        "ja": "選択範囲",
        "zh_CN": "选区",
        "ko": "선택 영역",
    },
    "The active mask belongs to no layer; select a paint layer.": {
        "de": "Malebene",
        "fr": "calque de dessin",
        "es": "capa de pintura",
        "pt_BR": "camada de pintura",
        "it": "livello disegno",
        "ru": "обычный слой",
        "ja": "ペイントレイヤー",
        "zh_CN": "颜料图层",
        "ko": "칠하기 레이어",
    },
}


def _krita_catalog(lang: str) -> dict[str, str]:
    component = next(c for c in COMPONENTS if c.name == "krita")
    return po.messages(po.load(component.po(lang)))


@pytest.mark.parametrize("lang", LANGUAGES)
def test_catalogs_use_kritas_own_terms(lang):
    catalog = _krita_catalog(lang)
    for english, terms in KRITA_TERMS.items():
        assert terms[lang].lower() in catalog[english].lower(), (lang, english, catalog[english])


@pytest.mark.parametrize("lang", LANGUAGES)
def test_docker_texts_are_translated(lang, tmp_path):
    """With the language's compiled catalog the docker's title and button are not English."""
    from offcut.i18n import catalogs

    folder = tmp_path / "locale" / lang / "LC_MESSAGES"
    folder.mkdir(parents=True)
    (folder / "offcut.mo").write_bytes(catalogs.compile_language(lang))
    try:
        i18n.configure([lang], str(tmp_path / "locale"))
        for english in ("Offcut: Remove Background", "Remove Background", "Fast", "Best quality"):
            assert i18n._(english) not in ("", english), (lang, english)
        assert i18n.language() == lang
    finally:
        i18n.configure()


# -- the plug-in's language ------------------------------------------------------------------


def _plugin_i18n():
    """``offcut_krita/i18n.py`` loaded on its own (outside Krita, without the client copy)."""
    spec = importlib.util.spec_from_file_location("offcut_krita_i18n_test", PLUGIN / "i18n.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_the_environment_decides_where_it_names_a_language():
    mod = _plugin_i18n()
    assert mod.krita_languages({"LANGUAGE": "de"}, ["ja-JP"]) is None
    assert mod.krita_languages({"LANG": "fr_FR.UTF-8"}, ["ja-JP"]) is None


def test_qts_ui_languages_decide_where_the_environment_is_silent():
    mod = _plugin_i18n()
    got = mod.krita_languages({}, ["pt-BR", "zh-Hans-CN", "ja", "en-US"])
    assert got == ["pt_BR", "zh_CN", "ja", "en_US"]
    assert mod.krita_languages({}, []) is None


def test_without_the_client_copy_sentences_stay_english_and_filled():
    """A broken install (no offcut_client) still shows its sentences, in English."""
    mod = _plugin_i18n()  # loaded outside its package: the relative import fails
    assert mod._("Default ({model})", model="u2netp") == "Default (u2netp)"
    assert mod.N_("Fast") == "Fast"
    assert mod.ngettext("{n} layer", "{n} layers", 2) == "2 layers"
    mod.configure(["de"])  # no effect, no error


if __name__ == "__main__":  # pragma: no cover - print what is unmarked, for a quick look
    for path in SOURCES:
        for line in unmarked(path.read_text(encoding="utf-8"), str(path)):
            print(line, file=sys.stderr)


# -- what Krita itself shows from the plug-in's files ----------------------------------------


def test_plugin_manager_entry_has_every_language():
    """Krita's Python Plugin Manager reads Name/Comment with KDesktopFile, which picks
    ``Name[de]`` in German: every shipped language has both, and they differ from English."""
    desktop = (REPO / "plugin_krita" / "offcut_krita.desktop").read_text(encoding="utf-8")
    entries = dict(
        line.split("=", 1) for line in desktop.splitlines() if "=" in line and line[0] != "#"
    )
    for lang in LANGUAGES:
        for key in ("Name", "Comment"):
            text = entries.get(f"{key}[{lang}]")
            assert text and text != entries[key], (key, lang)


# -- the manual: one file Krita reads at start, written in the user's language by the installer --

MANUAL = PLUGIN / "manual.html"
XHTML = "{http://www.w3.org/1999/xhtml}"


def _blocks_and_tags(text: str) -> list[Counter[str]]:
    """Each block's inline tags, in page order: what every translation must keep."""
    return [Counter(catalogs.inline_tags(b.msgid)) for b in catalogs.page_blocks(text)]


def test_the_english_render_is_the_source_byte_for_byte():
    """English (and a language Offcut does not ship) leaves the page as it is, so an English
    install copies the checkout's file and nothing else changes for English users."""
    source = MANUAL.read_bytes().decode("utf-8")
    assert catalogs.render_page(MANUAL, "en") == source
    assert catalogs.render_page(MANUAL, None) == source
    assert catalogs.render_page(MANUAL, "pt_PT") == source
    root = ET.fromstring(MANUAL.read_bytes())
    assert root.get("lang") == "en" and root.get("{http://www.w3.org/XML/1998/namespace}lang")


def test_every_manual_block_is_in_the_krita_template_with_the_html_note():
    template = po.load(catalogs.component("krita").template)
    blocks = catalogs.page_blocks(MANUAL.read_text(encoding="utf-8"))
    assert len(blocks) > 20
    for block in blocks:
        entry = template.get(block.msgid)
        assert entry is not None, block.msgid
        assert catalogs.PAGE_NOTE in entry.notes
        assert f"plugin_krita/offcut_krita/manual.html:{block.line}" in entry.references
        assert "  " not in block.msgid and "\n" not in block.msgid


@pytest.mark.parametrize("lang", LANGUAGES)
def test_each_languages_manual_is_translated_well_formed_and_keeps_its_tags(lang):
    english = MANUAL.read_text(encoding="utf-8")
    page = catalogs.render_page(MANUAL, lang)
    root = ET.fromstring(page.encode("utf-8"))  # XHTML: any broken tag fails here
    assert root.get("lang") == lang.replace("_", "-")
    assert root.get("{http://www.w3.org/XML/1998/namespace}lang") == lang.replace("_", "-")
    assert page != english
    assert _blocks_and_tags(page) == _blocks_and_tags(english)
    # every block is translated (the English sentence is gone), except names that stay names
    english_ids = {b.msgid for b in catalogs.page_blocks(english)}
    left = [b.msgid for b in catalogs.page_blocks(page) if b.msgid in english_ids]
    assert left == [], left
    # the same structure: as many paragraphs, list items and table cells as the English
    shape = [el.tag for el in ET.fromstring(english.encode("utf-8")).iter()]
    assert [el.tag for el in root.iter()] == shape
    assert root.find(f"{XHTML}head/{XHTML}title").text
    # commands, file names and shortcuts stay as they are
    kept = re.compile(r"<code>.*?</code>|Ctrl\+[A-Za-z+]+")
    assert sorted(kept.findall(page)) == sorted(kept.findall(english))


def test_a_translation_with_other_tags_is_refused_and_left_english(tmp_path, monkeypatch):
    """A translator's slip in the tags must never break Krita's page: check reports it, and
    the render keeps that block in English."""
    msgid = "Show the docker: <b>Settings ▸ Dockers ▸ Offcut: Remove Background</b>."
    assert catalogs.tags_problem(msgid, "Zeigen: <b>Einstellungen</b>.") is None
    assert catalogs.tags_problem(msgid, "Zeigen: Einstellungen.")
    assert catalogs.tags_problem(msgid, "Zeigen: </b>Einstellungen<b>.")
    assert catalogs.tags_problem(msgid, "Zeigen: <code>Einstellungen</code>.")
    krita = catalogs.component("krita")
    catalog = po.load(krita.po("de"))
    catalog.get(msgid).msgstr = ["Zeigen: <b>Einstellungen."]
    folder = tmp_path / "krita"
    folder.mkdir()
    (folder / "de.po").write_text(po.dumps(catalog), encoding="utf-8")
    monkeypatch.setattr(catalogs, "PO_DIR", tmp_path)
    page = catalogs.render_page(MANUAL, "de")
    ET.fromstring(page.encode("utf-8"))
    assert msgid in page and "Erste Schritte" in page


def test_check_reports_a_page_translation_whose_tags_differ(tmp_path, monkeypatch):
    shutil.copytree(catalogs.PO_DIR, tmp_path, dirs_exist_ok=True)
    monkeypatch.setattr(catalogs, "PO_DIR", tmp_path)
    krita = catalogs.component("krita")
    catalog = po.load(krita.po("fr"))
    catalog.get("More: <code>docs/krita.md</code> in the Offcut sources.").msgstr = ["Plus."]
    krita.po("fr").write_text(po.dumps(catalog), encoding="utf-8")
    found = catalogs.problems(sources=False)
    assert len(found) == 1 and "krita/fr.po: page sentence" in found[0], found


@pytest.mark.parametrize(
    ("environ", "lang"),
    [
        ({"LANGUAGE": "de", "LANG": "C.UTF-8"}, "de"),
        ({"LANGUAGE": "ja:en", "LANG": "de_DE.UTF-8"}, "ja"),
        ({"LANGUAGE": "en_GB:fr"}, "fr"),  # gettext passes over a name it has no catalog for
        ({"LANGUAGE": "", "LC_ALL": "pt_BR.UTF-8"}, "pt_BR"),
        ({"LC_MESSAGES": "ko_KR.UTF-8", "LANG": "de_DE.UTF-8"}, "ko"),
        ({"LANG": "de_AT.UTF-8@euro"}, "de"),
        ({"LANG": "zh_CN.UTF-8"}, "zh_CN"),
        ({"LANG": "zh"}, "zh_CN"),  # locale.normalize, as gettext does
        ({"LANG": "pt_PT.UTF-8"}, None),  # Portuguese is not Brazilian Portuguese
        ({"LANG": "pt"}, None),
        ({"LANG": "C.UTF-8"}, None),
        ({"LANGUAGE": "C:de"}, None),  # C ends the list, as in gettext
        ({}, None),
    ],
)
def test_the_environment_language_is_gettexts_choice(environ, lang):
    assert catalogs.environment_language(environ) == lang

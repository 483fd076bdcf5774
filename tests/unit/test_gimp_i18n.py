"""The GIMP plug-in speaks the user's language (docs/translations.md, docs/gimp.md "Languages").

* Every text the plug-in hands GIMP or shows itself is marked for gettext: a walk over the
  plug-in's sources fails on a string literal passed unmarked to a user-visible sink (menu
  label, help, argument and choice texts, dialogs, progress, messages, layer names, errors,
  the sentences ``run`` returns), and the walk is shown to catch each kind of sink.
* With a German catalog the plug-in's sentences, choice labels and progress stages come out in
  German with their values filled in; without the client or a catalog they stay English.
* The model choice offers the aliases first, under translated labels, then the model names.

The real-GIMP side (GIMP registering and showing the translated texts) is in
tests/e2e/test_gimp.py (``-k language``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from offcut_gimp import i18n, run

from offcut.client import i18n as client_i18n
from offcut.i18n import LANGUAGES, catalogs

PLUGIN_DIR = Path(run.__file__).resolve().parents[1]
SOURCES = sorted(PLUGIN_DIR.rglob("*.py"))

# -- every user-visible literal is marked ---------------------------------------------------------

MARKERS = {"_", "N_", "ngettext"}

#: Call name → the positions (ints) and keywords (strs) whose text a user sees. ``add`` is
#: Gimp.Choice.add(nick, id, label, help); ``new`` covers the dialog's and new items' names.
SINKS: dict[str, tuple] = {
    "set_menu_label": (0,),
    "set_documentation": (0, 1),  # the third is the help id: the procedure's name
    "set_attribution": (0, 1, 2),
    "add_choice_argument": (1, 2),  # the first is the argument's name, used by scripts
    "add_boolean_argument": (1, 2),
    "add_int_argument": (1, 2),
    "add_double_argument": (1, 2),
    "add_string_argument": (1, 2),
    "add_enum_argument": (1, 2),
    "add_menu_path": (),  # a path of GIMP's own menus: GIMP translates it
    "add": (2, 3),
    "progress_init": (0,),
    "progress_set_text": (0,),
    "message": (0,),
    "UserError": (0,),
    "Error": (0,),  # GLib.Error(text): the PDB error GIMP shows
    "MessageDialog": ("text", "secondary_text"),
    "set_title": (0,),
    "format_secondary_text": (0,),
    "add_button": (0,),
    "set_name": (0,),
    "ProcedureDialog.new": (2,),
    "Layer.new": (1,),
    "Channel.new": (1,),
}
#: Functions whose returned string is shown to the user (run.py's sentences).
RETURNS_TEXT = re.compile(r"(_message|_question|_text)$")
#: Literals that may reach a sink unmarked: names and legal words, the same in every language.
ALLOWED = {"Offcut contributors", "Apache-2.0", "2025"}

#: Calls whose argument at this position is a key or an attribute name, never shown.
KEYED = {"get": 0, "getattr": 1, "hasattr": 1, "setdefault": 0, "pop": 0}

_WORD = re.compile(r"[^\W\d_]{2,}")
_FORMAT = re.compile(r"%[-#0-9.]*[a-zA-Z]|\{[^{}]*\}")


def _name(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        if isinstance(func.value, ast.Attribute) and func.attr == "new":
            return f"{func.value.attr}.new"  # GimpUi.ProcedureDialog.new, Gimp.Layer.new
        return func.attr
    return ""


def _wordy(text: str) -> bool:
    """Whether a literal holds words (not only placeholders, punctuation or a single letter)."""
    return bool(_WORD.search(_FORMAT.sub("", text))) and text not in ALLOWED


def unmarked(expr: ast.AST) -> list[ast.Constant]:
    """String literals with words in ``expr`` that no marker call wraps.

    A marker's own first argument (and ``ngettext``'s plural) is marked; its other arguments
    (the values filled in) are searched like any other expression.
    """
    found: list[ast.Constant] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Call) and _name(node.func) in MARKERS:
            skip = 2 if _name(node.func) == "ngettext" else 1
            for arg in node.args[skip:]:
                visit(arg)
            for kw in node.keywords:
                visit(kw.value)
            return
        if isinstance(node, ast.Call) and _name(node.func) in KEYED:
            key = KEYED[_name(node.func)]  # a dict key or attribute name, not a text
            for i, arg in enumerate(node.args):
                if i != key:
                    visit(arg)
            visit(node.func)
            return
        if isinstance(node, ast.Subscript):  # data["key"]: the key is no text either
            visit(node.value)
            return
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _wordy(node.value):
                found.append(node)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(expr)
    return found


def problems(source: str, where: str) -> list[str]:
    """Every unmarked user-visible literal of one Python source, as ``where:line: text``."""
    tree = ast.parse(source, where)
    out: list[str] = []

    def report(node: ast.AST, what: str) -> None:
        for lit in unmarked(node):
            out.append(f"{where}:{lit.lineno}: {what}: {lit.value!r}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _name(node.func)
            if name not in SINKS:
                continue
            if name == "add" and len(node.args) != 4:  # only Gimp.Choice.add(nick, id, label, help)
                continue
            for slot in SINKS[name]:
                if isinstance(slot, int) and slot < len(node.args):
                    report(node.args[slot], name)
                elif isinstance(slot, str):
                    for kw in node.keywords:
                        if kw.arg == slot:
                            report(kw.value, name)
        elif isinstance(node, ast.FunctionDef) and RETURNS_TEXT.search(node.name):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Return) and inner.value is not None:
                    report(inner.value, f"{node.name}() returns")
    return out


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(PLUGIN_DIR).as_posix())
def test_every_user_visible_literal_is_marked(path):
    found = problems(path.read_text(encoding="utf-8"), path.name)
    assert not found, "unmarked user-visible text (wrap it in _()):\n" + "\n".join(found)


def test_the_walk_catches_each_kind_of_unmarked_text():
    """The check above can fail: every sink with an unmarked literal is reported."""
    source = """
procedure.set_menu_label("Remove _Background (Offcut)...")
procedure.set_documentation("Blurb", _("Help"), name)
procedure.add_boolean_argument("refine", "Refine _edges", _("Blurb"), False, 0)
choice.add("fast", 0, "Fast", "The quickest model")
Gimp.progress_init("Offcut: removing the background")
Gimp.progress_set_text("Offcut: %s" % name)
Gimp.message(f"Offcut skipped {names}")
raise UserError("No layer is selected")
dialog = Gtk.MessageDialog(text="Replace the existing layer mask?")
dialog.add_button("_Cancel", 1)
copy.set_name("%s (no background)" % name)
Gimp.Layer.new(image, _("{layer} (mask)", layer="unmarked words"), 1, 1, 0, 100.0, 0)
def masked_message(names):
    return "already has a layer mask"
def stage_text(stage):
    return _(STAGES[stage]) if stage in STAGES else "unknown stage"
def client_error_text(exc):
    return getattr(exc, "message", None) or exc.get("fallback", "no words")
"""
    found = problems(source, "sample.py")
    expected_lines = [2, 3, 4, 5, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 17, 19]
    assert sorted(int(line.split(":")[1]) for line in found) == expected_lines, found
    marked = """
procedure.set_menu_label(_("Remove _Background (Offcut)..."))
procedure.add_choice_argument("model", _("_Model"), _("Blurb"), choice, "fast", 0)
choice.add(nick, i, _(label), _(help_text))
Gimp.progress_set_text(_("Offcut: {layer} ({stage})", layer=name, stage="%s" % stage))
procedure.set_attribution("Offcut contributors", "Apache-2.0", "2025")
raise UserError(ngettext("{n} layer", "{n} layers", n))
"""
    assert problems(marked, "marked.py") == []


# -- the sentences in a language ------------------------------------------------------------------


@pytest.fixture
def language(tmp_path, monkeypatch):
    """Use the real client runtime with the compiled catalogs of one language."""
    folder = tmp_path / "locale"
    catalogs.write_locale(folder)
    monkeypatch.setattr(i18n, "_runtime", [client_i18n])

    def use(lang):
        client_i18n.configure([lang], str(folder))

    yield use
    client_i18n.configure()


def test_sentences_come_out_in_german(language):
    language("de")
    assert i18n.language() == "de"
    assert run.indexed_message().startswith("Indizierte Bilder werden nicht unterstützt")
    assert "(Bild ▸ Modus)" in run.indexed_message()
    assert run.masked_message(["A"]).startswith("„A“ hat bereits eine Ebenenmaske")
    assert run.masked_message(["A", "B"]).startswith("„A“, „B“ haben bereits eine Ebenenmaske")
    assert run.no_overlap_message(2).startswith(
        "Die Auswahl überschneidet sich nicht mit den ausgewählten Ebenen"
    )
    with pytest.raises(run.UserError, match=r"^„Photo“ ist zu groß .* 160 × 120 Pixel"):
        run.check_limits("Photo", (0, 0, 160, 120), {"max_pixels": 5000})
    assert run.stage_text("inference") == "Modell läuft"
    assert run.stage_text("something-new") == "something-new"
    assert i18n._("Remove _Background (Offcut)...") == "_Hintergrund entfernen (Offcut) …"
    labels = [i18n._(label) for _nick, label, _help in run.OUTPUTS]
    assert labels[1] == "E_benenmaske auf der Ebene" and labels[2] == "A_uswahl"


@pytest.mark.parametrize(
    ("lang", "menu", "fast"),
    [
        ("de", "_Hintergrund entfernen (Offcut) …", "Schnell"),
        ("fr", "Supprimer l’_arrière-plan (Offcut)…", "Rapide"),
        ("es", "Eliminar el _fondo (Offcut)…", "Rápido"),
        ("pt_BR", "Remover _fundo (Offcut)...", "Rápido"),
        ("it", "Rimuovi _sfondo (Offcut)...", "Veloce"),
        ("ru", "Удалить _фон (Offcut)...", "Быстро"),
        ("ja", "背景の除去 (Offcut)(_B)...", "高速"),
        ("zh_CN", "移除背景 (Offcut)(_B)…", "快速"),
        ("ko", "배경 제거 (Offcut)(_B)...", "빠름"),
    ],
)
def test_every_language_names_the_command_and_the_aliases(language, lang, menu, fast):
    assert set(LANGUAGES) >= {lang}
    language(lang)
    assert i18n._("Remove _Background (Offcut)...") == menu
    entries, default = run.model_choices(MODELS, "u2netp", ALIASES)
    assert entries[0][1] == fast and default == "fast"
    # a sentence with values fills them in every language
    assert "Photo" in run.group_message("Photo")


def test_english_without_the_client(monkeypatch):
    """No client beside the plug-in: every sentence is English, values still filled in."""
    monkeypatch.setattr(i18n, "_runtime", [None])
    assert i18n.language() == "en"
    assert i18n._("{layer} (mask)", layer="Photo") == "Photo (mask)"
    assert i18n.ngettext("{n} layer", "{n} layers", 2) == "2 layers"
    assert run.skipped_message(["A"]) == "Offcut skipped “A”: the selection does not overlap it."


def test_a_missing_client_module_means_english(monkeypatch):
    monkeypatch.setattr(i18n, "_runtime", [])
    monkeypatch.setitem(__import__("sys").modules, "offcut_client", None)  # import fails
    assert i18n._("Fast") == "Fast"
    assert i18n._runtime == [None]


def test_a_broken_catalog_means_english(language, tmp_path):
    broken = tmp_path / "broken" / "de" / "LC_MESSAGES"
    broken.mkdir(parents=True)
    (broken / "offcut.mo").write_bytes(b"\x00" * 40)
    client_i18n.configure(["de"], str(tmp_path / "broken"))
    assert run.no_layer_message() == "No layer is selected: select one or more layers first."


# -- the model choice: aliases first --------------------------------------------------------------

MODELS = [
    {"name": "u2netp", "installed": True, "description": "U2-Net small"},
    {"name": "isnet-general-use-fp16", "installed": False, "description": "IS-Net"},
]
ALIASES = [
    {"name": "fast", "label": "Fast", "description": "", "model": "u2netp"},
    {"name": "best", "label": "Best quality", "description": "", "model": "isnet-general-use-fp16"},
]


def test_aliases_come_first_with_their_own_words(monkeypatch):
    monkeypatch.setattr(i18n, "_runtime", [None])
    tiny = {"name": "tiny", "label": "Tiny", "description": "Newer", "model": "u2netp"}
    aliases = [*ALIASES, tiny]
    aliases[1] = {**aliases[1], "installed": False}
    entries, default = run.model_choices(MODELS, "u2netp", aliases)
    assert entries == [
        ("fast", "Fast", "The quickest model: good on clear subjects, softer edges."),
        ("best", "Best quality (not installed)", "Sharper, more detailed edges; slower."),
        ("tiny", "Tiny", "Newer"),  # an alias of a newer catalog: the sidecar's words
        ("u2netp", "u2netp", "U2-Net small"),
        ("isnet-general-use-fp16", "isnet-general-use-fp16 (not installed)", "IS-Net"),
    ]
    assert default == "fast", "fast stands for the default model: the dialog opens on a word"
    _entries, default = run.model_choices(MODELS, "isnet-general-use-fp16", ALIASES)
    assert default == "isnet-general-use-fp16", "another default model stays itself"


class _Client:
    start = False

    def __init__(self, models):
        self._models = models

    def models(self):
        return self._models


def _session(tmp_path, client):
    return run.Session(str(tmp_path), connect=lambda start: client)


def test_aliases_from_a_hello_a_models_reply_and_the_installer_record(tmp_path, monkeypatch):
    monkeypatch.setattr(i18n, "_runtime", [None])
    # a prefetched hello: its alias list, in its order
    session = _session(tmp_path, _Client([]))
    session._hello = {
        "models": [{**m, "default": m["name"] == "u2netp"} for m in MODELS],
        "aliases": [*reversed(ALIASES), {"name": "u2netp", "model": "u2netp"}, {"bad": 1}],
    }
    entries, default = session.model_choice()
    assert [e[0] for e in entries] == ["best", "fast", "u2netp", "isnet-general-use-fp16"]
    assert default == "fast"
    # a models reply (query time, a sidecar running): each model names its aliases
    listed = [
        {"name": "u2netp", "installed": True, "default": True, "aliases": ["fast"]},
        {"name": "isnet-general-use-fp16", "installed": True, "aliases": ["best"]},
    ]
    session = _session(tmp_path, _Client(listed))
    session.querying = True
    entries, default = session.model_choice()
    assert [e[0] for e in entries] == ["fast", "best", "u2netp", "isnet-general-use-fp16"]
    assert entries[1][1] == "Best quality" and default == "fast"
    # no sidecar: the installer's record, aliases with their candidates (the first is offered)
    (tmp_path / "offcut_sidecar.json").write_text(
        '{"default_model": "u2netp", "models": ["u2netp", "isnet-general-use-fp16"],'
        ' "aliases": [{"name": "fast", "label": "Fast", "models": ["u2netp"]},'
        ' {"name": "best", "label": "Best quality", "models": ["isnet-general-use-fp32"]},'
        ' {"name": "odd", "models": []}]}'
    )

    def no_sidecar(start):
        raise ConnectionError("no sidecar")

    session = run.Session(str(tmp_path), connect=no_sidecar)
    entries, default = session.model_choice()
    # "best" stands for a model the record does not list: not offered rather than refused later
    assert [e[0] for e in entries] == ["fast", "u2netp", "isnet-general-use-fp16"]
    assert default == "fast"
    assert session.model_catalog()[1] == "u2netp"

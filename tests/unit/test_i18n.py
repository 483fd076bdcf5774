"""Translations: the PO reader/writer and MO compiler, the runtime fallback rules, the catalogs.

The compiler is compared byte for byte with GNU gettext's ``msgfmt`` (installed by .ci/test),
and every shipped catalog is checked complete, placeholder for placeholder, against what the
sources mark: a sentence added to a plug-in without its translations fails here.
"""

from __future__ import annotations

import gettext
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from offcut.client import i18n, messages
from offcut.client.errors import OffcutClientError
from offcut.i18n import LANGUAGES, catalogs, po

RU_PO = r"""# a translator's comment
msgid ""
msgstr ""
"Language: ru\n"
"Content-Type: text/plain; charset=UTF-8\n"
"Plural-Forms: nplurals=3; plural=(n%10==1 && n%100!=11 ? 0 : n%10>=2 && n%10<=4 && "
"(n%100<10 || n%100>=20) ? 1 : 2);\n"

#. where it is shown
#: plugin_gimp/x.py:3
#, python-brace-format
msgid "Layer {name}"
msgstr "Слой {name}"

msgid "{n} layer"
msgid_plural "{n} layers"
msgstr[0] "{n} слой"
msgstr[1] "{n} слоя"
msgstr[2] "{n} слоёв"

#, fuzzy
msgid "Fuzzy"
msgstr "Нечётко"

msgid "Empty"
msgstr ""

msgid ""
"Two\n"
"lines \"quoted\""
msgstr ""
"Две\n"
"строки «в кавычках»"
"""


def _msgfmt() -> str:
    found = shutil.which("msgfmt")
    if found is None:
        pytest.fail("GNU gettext's msgfmt is missing: .ci/test installs the 'gettext' package")
    return found


def _compile(catalog: po.Catalog) -> bytes:
    compiled = po.messages(catalog)
    compiled[""] = po.header_text(catalog.header)
    return po.mo_bytes(compiled)


@pytest.fixture
def locale(tmp_path: Path):
    """A locale folder to put one language's ``offcut.mo`` in; i18n is reset afterwards."""

    def put(lang: str, data: bytes) -> str:
        folder = tmp_path / lang / "LC_MESSAGES"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "offcut.mo").write_bytes(data)
        return str(tmp_path)

    yield put
    i18n.configure()


def test_po_reads_every_part_and_writes_it_back() -> None:
    catalog = po.loads(RU_PO)
    assert catalog.header["Language"] == "ru"
    layer, plural, fuzzy, empty, two = catalog.entries
    assert (layer.msgstr, layer.flags, layer.notes) == (
        ["Слой {name}"],
        ["python-brace-format"],
        ["where it is shown"],
    )
    assert layer.references == ["plugin_gimp/x.py:3"]
    assert plural.msgid_plural == "{n} layers" and len(plural.msgstr) == 3
    assert not fuzzy.translated and not empty.translated and plural.translated
    assert two.msgid == 'Two\nlines "quoted"'
    again = po.loads(po.dumps(catalog))
    assert again == catalog


def test_po_errors_name_the_line() -> None:
    with pytest.raises(po.PoError, match=r"bad\.po:2"):
        po.loads('msgid "a"\nmsgstr oops\n', "bad.po")
    with pytest.raises(po.PoError, match="msgctxt"):
        po.loads('msgctxt "x"\nmsgid "a"\nmsgstr "b"\n')


def test_mo_is_msgfmts_byte_for_byte(tmp_path: Path) -> None:
    source = tmp_path / "ru.po"
    source.write_text(RU_PO, encoding="utf-8")
    gnu = tmp_path / "gnu.mo"
    subprocess.run([_msgfmt(), "--no-hash", "-o", str(gnu), str(source)], check=True)
    assert _compile(po.loads(RU_PO)) == gnu.read_bytes()


def test_gettext_reads_the_compiled_catalog_with_plurals(locale) -> None:
    i18n.configure(["ru"], locale("ru", _compile(po.loads(RU_PO))))
    assert i18n._("Layer {name}", name="A") == "Слой A"
    assert [i18n.ngettext("{n} layer", "{n} layers", n) for n in (1, 3, 5, 21)] == [
        "1 слой",
        "3 слоя",
        "5 слоёв",
        "21 слой",
    ]
    assert i18n._("Fuzzy") == "Fuzzy"  # fuzzy entries are not compiled
    assert i18n._("Empty") == "Empty"  # nor untranslated ones: English
    assert i18n.language() == "ru"


def test_a_broken_or_missing_catalog_falls_back_to_english(locale) -> None:
    where = locale("de", b"\x00garbage, not an MO file")
    for languages, folder in ((["de"], where), (["xx"], where), (["de"], where + "/no")):
        i18n.configure(languages, folder)
        assert i18n._("Layer {name}", name="A") == "Layer A"
        assert i18n.language() == "en"


def test_a_translation_whose_placeholders_do_not_fit_gives_english(locale) -> None:
    broken = {"": "Content-Type: text/plain; charset=UTF-8\n", "Layer {name}": "Ebene {nmae}"}
    i18n.configure(["de"], locale("de", po.mo_bytes(broken)))
    assert i18n._("Layer {name}", name="A") == "Layer A"


def test_the_environment_chooses_the_language(locale, monkeypatch) -> None:
    where = locale("ru", _compile(po.loads(RU_PO)))
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANGUAGE", "ru_RU:en")
    i18n.configure(None, where)
    assert i18n._("Layer {name}", name="B") == "Слой B"


def test_error_text_renders_the_key_else_the_english_message() -> None:
    assert set(messages.MESSAGES) and all(isinstance(t, str) for t in messages.MESSAGES.values())
    key = next(iter(messages.MESSAGES))
    english = messages.MESSAGES[key]
    params = {name: "x" for name in catalogs.placeholders(english)}
    error = OffcutClientError("internal", "the sidecar's own words", key=key, params=params)
    assert error.text() == english.format(**params)
    assert OffcutClientError("internal", "its own words", key="no-such-key").text() == (
        "its own words"
    )
    assert OffcutClientError("internal", "plain").text() == "plain"


def test_every_message_template_is_marked_and_well_formed() -> None:
    client = catalogs.extract(catalogs.COMPONENTS[0])
    marked = {e.msgid for e in client.entries}
    for key, template in messages.MESSAGES.items():
        assert template in marked, key
        assert "<malformed>" not in catalogs.placeholders(template), key


def test_a_components_pages_give_sentences_next_to_its_python_ones(tmp_path: Path) -> None:
    """Any component may list HTML pages: each block's inner HTML (inline tags kept, whitespace
    made one space) joins the template, merged with a Python sentence of the same words."""
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "a.py").write_text('_("Selection")\n_("Only in Python")\n')
    (tmp_path / "plug" / "page.html").write_text(
        '<html xmlns="http://www.w3.org/1999/xhtml">\n<head><title>Page</title></head><body>\n'
        "<p>Press <b>Start</b>,\n   then wait.</p>\n<ul><li>Selection</li></ul>\n"
        "<table><tr><th>A</th><td>B <code>x</code></td></tr></table>\n</body></html>\n"
    )
    component = catalogs.Component("demo", ("plug",), pages=("plug/page.html",))
    template = catalogs.extract(component, tmp_path)
    assert [e.msgid for e in template.entries] == [
        "Selection",
        "Only in Python",
        "Page",
        "Press <b>Start</b>, then wait.",
        "A",
        "B <code>x</code>",
    ]
    selection = template.get("Selection")
    assert selection.references == ["plug/a.py:1", "plug/page.html:5"]
    assert selection.notes == [catalogs.PAGE_NOTE]
    assert template.get("Only in Python").notes == []
    (tmp_path / "plug" / "page.html").write_text("<ul><li>One <ol><li>nested</li></ol></li></ul>")
    with pytest.raises(po.PoError, match="inside <li>"):
        catalogs.extract(component, tmp_path)


def test_the_shipped_catalogs_are_complete_and_current() -> None:
    """Every marked sentence translated in every language, placeholders matching."""
    assert catalogs.problems() == []


@pytest.mark.parametrize("lang", LANGUAGES)
def test_each_shipped_catalog_passes_msgfmt_check(lang: str, tmp_path: Path) -> None:
    for component in catalogs.COMPONENTS:
        out = tmp_path / f"{component.name}.mo"
        result = subprocess.run(
            [_msgfmt(), "--check", "-o", str(out), str(component.po(lang))],
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("lang", LANGUAGES)
def test_each_compiled_language_loads_in_gettext(lang: str, tmp_path: Path) -> None:
    catalogs.write_locale(tmp_path)
    loaded = gettext.translation(i18n.DOMAIN, str(tmp_path), languages=[lang])
    assert loaded.info()["language"] == lang
    for component in catalogs.COMPONENTS:
        for entry in po.load(component.po(lang)).entries:
            if entry.msgid_plural is None:
                assert loaded.gettext(entry.msgid) == entry.msgstr[0]

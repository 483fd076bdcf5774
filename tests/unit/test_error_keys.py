"""Error sentences travel as a key and parameters, and the plug-in shows them translated.

The sidecar's :class:`offcut.errors.OffcutError` and the client's own errors name a sentence of
``offcut.client.messages.MESSAGES``; the error reply carries ``key`` and ``params`` next to the
English ``message`` (docs/protocol.md), and ``OffcutClientError.text()`` renders the key in the
user's language. What could go wrong is checked here: a raising site whose parameters do not fit
its template (found by reading the sources, so a new site is checked without a new test), a key
no site uses, a malformed key or parameters from the wire, a catalog that is missing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import msgpack
import pytest

import offcut
from offcut import errors
from offcut.client import codec, discovery, i18n, messages, wire
from offcut.client.errors import OffcutClientError, error, from_reply
from offcut.i18n import catalogs

SIDECAR = Path(offcut.__file__).resolve().parent
#: The modules whose errors a plug-in user can meet: all of them raise with keys. The CLI's own
#: commands (``offcut.commands``), ``models/fetch.py`` and ``models/derive.py`` are the command
#: line's and may keep plain English sentences (docs/translations.md).
KEYED = ("client", "server", "engine")
#: Helpers that take ``(code, key, **params)`` (or ``(key, **params)``), on either side.
HELPERS = {"error": 1, "bad_request": 0}
#: Keyword arguments of the helpers that are not parameters of the sentence.
NOT_PARAMS = {"connection"}


@pytest.fixture
def german(tmp_path: Path):
    """The shipped German catalog, compiled into a locale folder the client reads."""
    catalogs.write_locale(tmp_path)
    i18n.configure(["de"], str(tmp_path))
    yield tmp_path
    i18n.configure()


def _over_the_wire(exc: errors.OffcutError) -> OffcutClientError:
    """The error as the client sees it: the sidecar's reply header, packed and read back."""
    frame = msgpack.packb(wire.reply("r1", "error", exc.fields()), use_bin_type=True)
    return from_reply(codec.unpackb(frame))


def _german_template(key: str) -> str:
    catalog = catalogs.load(catalogs.COMPONENTS[0].po("de"))
    entry = catalog.get(messages.MESSAGES[key])
    assert entry is not None and entry.translated, key
    return entry.msgstr[0]


# -- the round trip ------------------------------------------------------------------------------


def test_a_sidecar_error_reaches_the_plug_in_in_german(german) -> None:
    exc = errors.error("model_missing", "model_not_installed", model="u2netp")
    assert exc.message == "Model u2netp is not installed: run `offcut models fetch u2netp`."
    got = _over_the_wire(exc)
    assert (got.code, got.key, got.params) == ("model_missing", "model_not_installed", exc.params)
    assert got.message == exc.message  # English stays for logs and old clients
    assert got.text() == _german_template("model_not_installed").format(model="u2netp")
    assert got.text().startswith("Das Modell u2netp ist nicht installiert")
    assert "`offcut models fetch u2netp`" in got.text()  # the command is not translated


def test_numbers_and_several_parameters_survive_the_wire(german) -> None:
    exc = errors.bad_request("bad_integer", name="roi.x", low=0, high=63)
    got = _over_the_wire(exc)
    assert got.params == {"name": "roi.x", "low": 0, "high": 63}
    assert got.text() == "'roi.x' muss eine ganze Zahl von 0 bis 63 sein."


def test_the_client_own_errors_are_keyed_too(german) -> None:
    exc = error("busy", "sidecar_full", connection=True, pid=42)
    assert exc.connection and exc.key == "sidecar_full" and exc.params == {"pid": 42}
    assert exc.message == messages.english("sidecar_full", {"pid": 42})
    assert exc.text().startswith("Der Offcut-Sidecar (PID 42) hat diese Verbindung")


def test_without_a_catalog_the_sentence_is_english(tmp_path: Path) -> None:
    i18n.configure(["de"], str(tmp_path / "nothing-here"))
    try:
        got = _over_the_wire(errors.error("busy", "queue_full", count=4))
        assert got.text() == got.message == messages.english("queue_full", {"count": 4})
    finally:
        i18n.configure()


@pytest.mark.parametrize(
    ("key", "params"),
    [
        ("no_such_key", {}),  # a newer sidecar's sentence
        (7, {}),  # not a string
        ("", {}),
        ("model_not_installed", ["u2netp"]),  # not a map
        ("model_not_installed", {"model": ["u2netp"]}),  # a value that is not str/int/float
        ("model_not_installed", {"model": True}),
        ("model_not_installed", {"model": None}),
        ("model_not_installed", {1: "u2netp"}),  # a name that is not a string
        ("model_not_installed", {}),  # a placeholder without its parameter
        ("model_not_installed", {"modle": "u2netp"}),
    ],
)
def test_an_unusable_key_or_params_falls_back_to_the_message(german, key, params) -> None:
    head = {"v": 1, "id": "r", "kind": "error", "code": "model_missing"}
    head.update({"message": "the sidecar's own words", "key": key, "params": params})
    got = from_reply(head)
    assert got.text() == "the sidecar's own words"
    assert got.code == "model_missing"


def test_an_old_sidecar_without_keys_still_shows_its_message(german) -> None:
    got = from_reply({"v": 1, "id": "r", "kind": "error", "code": "busy", "message": "Busy."})
    assert (got.key, got.params, got.text()) == (None, {}, "Busy.")
    nothing = from_reply({"v": 1, "id": "r", "kind": "error", "code": "busy", "message": 5})
    assert (
        nothing.key == "sidecar_error"
        and nothing.text() == "Der Sidecar hat einen Fehler gemeldet."
    )


def test_errors_without_a_key_send_no_key() -> None:
    fields = errors.OffcutError("bad_request", "a CLI sentence").fields()
    assert fields == {"code": "bad_request", "message": "a CLI sentence"}
    keyed = errors.error("cancelled", "request_cancelled").fields()
    assert keyed == {
        "code": "cancelled",
        "message": "The request was cancelled.",
        "key": "request_cancelled",
        "params": {},
    }
    with pytest.raises(TypeError):
        errors.OffcutError("internal")


# -- every raising site fits its template --------------------------------------------------------


def _calls(root: Path):
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                yield path, node, name


def _literal_keys(node: ast.expr) -> list[str] | None:
    """The key(s) a key argument can be: a literal, or either branch of ``a if c else b``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        body, orelse = _literal_keys(node.body), _literal_keys(node.orelse)
        return body + orelse if body is not None and orelse is not None else None
    return None


def _sites():
    """``(where, key, parameter names)`` of every keyed raise in the sidecar and the client."""
    for path, node, name in _calls(SIDECAR):
        where = f"{path.relative_to(SIDECAR)}:{node.lineno}"
        if name in HELPERS and "messages.py" not in path.name:
            index = HELPERS[name]
            if len(node.args) <= index:
                continue
            keys = _literal_keys(node.args[index])
            spread = any(k.arg is None for k in node.keywords)
            assert keys is not None or spread, f"{where}: the key is not a literal"
            if spread:
                continue  # **params: the call's own test checks it (windows_dir_issue)
            names = {k.arg for k in node.keywords} - NOT_PARAMS
            for key in keys:
                yield where, key, names
        elif name in ("OffcutError", "__init__") and path.name != "errors.py":
            kw = {k.arg: k.value for k in node.keywords}
            if "key" in kw:
                keys = _literal_keys(kw["key"])
                assert keys is not None and isinstance(kw.get("params"), ast.Dict), where
                names = {k.value for k in kw["params"].keys if isinstance(k, ast.Constant)}
                for key in keys:
                    yield where, key, names


def test_every_raising_site_passes_exactly_its_templates_parameters() -> None:
    sites = list(_sites())
    assert len(sites) > 60  # the scan found the sites, not nothing
    for where, key, names in sites:
        assert key in messages.MESSAGES, f"{where}: unknown key {key!r}"
        want = catalogs.placeholders(messages.MESSAGES[key])
        assert names == want, (
            f"{where}: {key} gets {sorted(names)}, its template has {sorted(want)}"
        )


def test_every_key_is_raised_somewhere() -> None:
    used = {key for _where, key, _names in _sites()}
    used |= {"runtime_dir_relative", "runtime_dir_outside"}  # windows_dir_issue's, below
    assert set(messages.MESSAGES) - used == set()


def test_the_modules_a_plug_in_user_meets_raise_only_keyed_errors() -> None:
    for folder in KEYED:
        for path, node, name in _calls(SIDECAR / folder):
            if name in ("OffcutError", "OffcutClientError") and path.name != "errors.py":
                keywords = {k.arg for k in node.keywords}
                assert "key" in keywords, f"{path.name}:{node.lineno}: an error without a key"


def test_the_windows_runtime_dir_sentences_fit() -> None:
    profile = {"USERPROFILE": "C:\\Users\\ann"}
    for directory in ("relative\\run", "D:\\shared\\run"):
        key, params = discovery.windows_dir_issue(directory, profile)
        assert catalogs.placeholders(messages.MESSAGES[key]) == set(params)
        assert discovery.windows_dir_problem(directory, profile) == messages.english(key, params)
    assert discovery.windows_dir_issue("C:\\Users\\ann\\run", profile) is None


def test_english_sentences_kept_their_words() -> None:
    """Sentences users, logs and tests know, unchanged by moving them into templates."""
    english = messages.english
    assert english("unknown_model", {"model": "'x'", "known": "fast, u2netp"}) == (
        "Unknown model 'x'. Known models: fast, u2netp. Run `offcut models list`."
    )
    assert english("sidecar_silent", {"pid": " (pid 7)", "seconds": "30", "op": "segment"}) == (
        "The Offcut sidecar (pid 7) sent nothing for 30 s during `segment`; it may be "
        "overloaded or stuck. Try again; if it keeps happening, end the sidecar process."
    )
    assert english("cancelled") == "Cancelled."

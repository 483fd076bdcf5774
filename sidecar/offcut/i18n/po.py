"""Gettext PO files read and written, and compiled to MO, with the standard library alone.

``offcut install`` compiles the catalogs on the user's machine, where GNU gettext's ``msgfmt``
is usually absent (Windows, macOS, Flatpak editors) and no new dependency may be needed; the
format is small and fixed (the GNU gettext manual, "The Format of GNU MO Files"), and the tests
compare this compiler's output with ``msgfmt``'s byte for byte.

Only what Offcut's catalogs use is supported: ``msgid``/``msgstr``, plurals, flags (``fuzzy``
entries are not compiled, as ``msgfmt`` does), translator and extracted comments, references.
No ``msgctxt``: one sentence has one meaning across Offcut's components.
"""

from __future__ import annotations

import ast
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path


class PoError(ValueError):
    """A PO file that cannot be read; the message names the file and line."""


@dataclass
class Entry:
    """One message: its English text (and plural), translations, flags and comments."""

    msgid: str
    msgid_plural: str | None = None
    #: ``[msgstr]`` for a plain message, one per plural form for a plural one.
    msgstr: list[str] = field(default_factory=lambda: [""])
    flags: list[str] = field(default_factory=list)
    #: ``#.`` comments: written by the extractor (where the text is shown, its placeholders).
    notes: list[str] = field(default_factory=list)
    #: ``#:`` source references, ``path:line``.
    references: list[str] = field(default_factory=list)
    #: ``#`` comments: the translator's own.
    comments: list[str] = field(default_factory=list)

    @property
    def translated(self) -> bool:
        return "fuzzy" not in self.flags and all(self.msgstr)


@dataclass
class Catalog:
    """A PO file: its header entry (``msgid ""``) and messages in file order."""

    header: dict[str, str] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    header_comments: list[str] = field(default_factory=list)

    def get(self, msgid: str) -> Entry | None:
        return next((e for e in self.entries if e.msgid == msgid), None)


def _unquote(text: str, where: str) -> str:
    text = text.strip()
    if not (len(text) >= 2 and text[0] == '"' and text[-1] == '"'):
        raise PoError(f"{where}: expected a quoted string, got {text[:40]!r}")
    try:
        value = ast.literal_eval(text)
    except (SyntaxError, ValueError) as exc:
        raise PoError(f"{where}: bad string {text[:40]!r}") from exc
    if not isinstance(value, str):
        raise PoError(f"{where}: bad string {text[:40]!r}")
    return value


def _quote(text: str) -> str:
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t")
    return '"' + out.replace("\n", "\\n") + '"'


def parse_header(text: str) -> dict[str, str]:
    header: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            header[key.strip()] = value.strip()
    return header


def loads(text: str, name: str = "<po>") -> Catalog:
    """Read a PO file's text. Raises :class:`PoError` naming the line of the first problem."""
    catalog = Catalog()
    entry: dict | None = None
    field_name: str | None = None
    comments: dict[str, list[str]] = {"#": [], "#.": [], "#:": [], "#,": []}

    def finish() -> None:
        nonlocal entry
        if entry is None:
            return
        if "msgid" not in entry:
            raise PoError(f"{name}: an entry without msgid")
        strs = entry.get("msgstr")
        plural = entry.get("msgid_plural")
        if plural is not None:
            forms = entry.get("forms", {})
            msgstr = [forms[i] for i in sorted(forms)] if forms else [""]
        else:
            msgstr = [strs if strs is not None else ""]
        flags = [f.strip() for line in comments["#,"] for f in line.split(",") if f.strip()]
        if entry["msgid"] == "":
            catalog.header = parse_header(msgstr[0])
            catalog.header_comments = comments["#"]
        else:
            catalog.entries.append(
                Entry(
                    entry["msgid"],
                    plural,
                    msgstr,
                    flags,
                    comments["#."],
                    [r for line in comments["#:"] for r in line.split()],
                    comments["#"],
                )
            )
        entry = None
        for key in comments:
            comments[key] = []

    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{name}:{number}"
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#~"):  # obsolete entries are not kept
            continue
        if line.startswith("#"):
            if entry is not None and ("msgstr" in entry or "forms" in entry):
                finish()
            kind = line[:2] if line[:2] in ("#.", "#:", "#,") else "#"
            comments[kind].append(line[len(kind) :].strip() if kind != "#" else line[1:].strip())
            continue
        match = re.match(r"^(msgid_plural|msgid|msgstr\[(\d+)\]|msgstr|msgctxt)\s+(.*)$", line)
        if match:
            keyword, index, rest = match.group(1), match.group(2), match.group(3)
            if keyword == "msgctxt":
                raise PoError(f"{where}: msgctxt is not used in Offcut's catalogs")
            if keyword == "msgid":
                finish()
                entry = {}
            if entry is None:
                raise PoError(f"{where}: {keyword} before msgid")
            value = _unquote(rest, where)
            if index is not None:
                entry.setdefault("forms", {})[int(index)] = value
                field_name = f"forms:{index}"
            else:
                entry[keyword] = value
                field_name = keyword
            continue
        if line.startswith('"'):
            if entry is None or field_name is None:
                raise PoError(f"{where}: a string continues nothing")
            value = _unquote(line, where)
            if field_name.startswith("forms:"):
                entry["forms"][int(field_name[6:])] += value
            else:
                entry[field_name] += value
            continue
        raise PoError(f"{where}: cannot read {line[:40]!r}")
    finish()
    return catalog


def load(path: Path) -> Catalog:
    return loads(path.read_text(encoding="utf-8"), str(path.name))


def _field(keyword: str, value: str) -> list[str]:
    """A keyword and its string, split after each newline as msgmerge writes long texts."""
    if "\n" not in value.rstrip("\n"):
        return [f"{keyword} {_quote(value)}"]
    parts = value.splitlines(keepends=True)
    return [f'{keyword} ""', *(_quote(p) for p in parts)]


def dumps(catalog: Catalog) -> str:
    """The PO text of ``catalog``: header first, then the entries in their order."""
    lines: list[str] = [f"# {c}".rstrip() for c in catalog.header_comments]
    header = "".join(f"{k}: {v}\n" for k, v in catalog.header.items())
    lines += ['msgid ""', *_field("msgstr", header), ""]
    for e in catalog.entries:
        lines += [f"# {c}".rstrip() for c in e.comments]
        lines += [f"#. {n}" for n in e.notes]
        if e.references:
            lines.append("#: " + " ".join(e.references))
        if e.flags:
            lines.append("#, " + ", ".join(e.flags))
        lines += _field("msgid", e.msgid)
        if e.msgid_plural is not None:
            lines += _field("msgid_plural", e.msgid_plural)
            for i, form in enumerate(e.msgstr):
                lines += _field(f"msgstr[{i}]", form)
        else:
            lines += _field("msgstr", e.msgstr[0])
        lines.append("")
    return "\n".join(lines)


def mo_bytes(messages: dict[str, str]) -> bytes:
    """An MO file (little-endian, revision 0, no hash table) of ``msgid -> msgstr``.

    Keys of plural entries are ``singular\\0plural`` and their values the forms joined by
    ``\\0``, as in the format; the header is the entry with the empty key. Keys are sorted by
    their UTF-8 bytes, which is what lets gettext search them.
    """
    items = sorted(
        ((k.encode("utf-8"), v.encode("utf-8")) for k, v in messages.items()),
        key=lambda kv: kv[0],
    )
    count = len(items)
    ids_at = 7 * 4
    strs_at = ids_at + count * 8
    data_at = strs_at + count * 8
    ids = b""
    strs = b""
    id_table: list[tuple[int, int]] = []
    for key, _value in items:
        id_table.append((len(key), data_at + len(ids)))
        ids += key + b"\0"
    str_start = data_at + len(ids)
    str_table: list[tuple[int, int]] = []
    for _key, value in items:
        str_table.append((len(value), str_start + len(strs)))
        strs += value + b"\0"
    out = struct.pack("<7I", 0x950412DE, 0, count, ids_at, strs_at, 0, data_at)
    out += b"".join(struct.pack("<2I", n, at) for n, at in id_table)
    out += b"".join(struct.pack("<2I", n, at) for n, at in str_table)
    return out + ids + strs


def messages(catalog: Catalog) -> dict[str, str]:
    """The compiled messages of one catalog: translated, non-fuzzy entries and the header."""
    out: dict[str, str] = {}
    for e in catalog.entries:
        if not e.translated:
            continue
        key = e.msgid if e.msgid_plural is None else f"{e.msgid}\0{e.msgid_plural}"
        out[key] = "\0".join(e.msgstr)
    return out


def header_text(header: dict[str, str]) -> str:
    return "".join(f"{k}: {v}\n" for k, v in header.items())

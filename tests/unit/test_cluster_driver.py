"""The cluster driver's bookkeeping, with Ray faked: what a real cluster cannot be made to do on
cue (deliver a result twice, or never).

The real cluster is tests/integration/test_cluster.py; these pin down the driver's rules:
each output written once, no photo dropped silently, refusals before anything is shipped.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from offcut.commands import cluster, remove
from offcut.server.protocol import Limits


class FakeDataset:
    """``from_items(...).map(...).map(...)`` that records the maps and yields canned rows."""

    def __init__(self, rows: list[dict[str, Any]], log: list[Any]) -> None:
        self.rows, self.log = rows, log

    def map(self, fn: Any, **kwargs: Any) -> FakeDataset:
        self.log.append((fn, kwargs))
        return self

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        yield from self.rows


def fake_ray(rows: list[dict[str, Any]], log: list[Any]) -> Any:
    def from_items(items: list[dict[str, Any]], override_num_blocks: int) -> FakeDataset:
        log.append(("items", items, override_num_blocks))
        return FakeDataset(rows, log)

    data = SimpleNamespace(
        from_items=from_items,
        TaskPoolStrategy=lambda **kw: ("tasks", kw),
        ActorPoolStrategy=lambda **kw: ("actors", kw),
    )
    context = SimpleNamespace(get_node_id=lambda: "driver-node")
    return SimpleNamespace(data=data, get_runtime_context=lambda: context)


def args_for(out_dir: Path, **kw: Any) -> argparse.Namespace:
    base = dict(
        model="u2netp",
        mask_only=False,
        background=None,
        refine=False,
        decontaminate=False,
        overwrite=False,
        workers=None,
        output=None,
        out_dir=str(out_dir),
    )
    return argparse.Namespace(**(base | kw))


def batch_of(tmp_path: Path, names: list[str]) -> remove.Batch:
    src = tmp_path / "src"
    src.mkdir()
    files = []
    for n in names:
        (src / n).write_bytes(b"photo " + n.encode())
        files.append(src / n)
    out = tmp_path / "out"
    return remove.Batch(
        files=files,
        missing=[],
        outs=remove.output_paths(files, None, str(out)),
        inputs=remove.Inputs.of(files),
        limits=Limits(),
        hint="choose another --out-dir",
    )


def test_each_output_is_written_once_and_none_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = batch_of(tmp_path, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    rows = [
        {"i": 0, "png": b"A", "problem": ""},
        {"i": 0, "png": b"A-again", "problem": ""},  # a retried call's second reply
        {"i": 1, "png": b"", "problem": "cannot read this image (X: y); skipped."},
        {"i": 3, "png": b"D", "problem": ""},
    ]  # c.jpg (i = 2) never comes back
    log: list[Any] = []
    monkeypatch.setattr(cluster, "check_nodes", lambda ray, model: 3)
    got = list(cluster._run(fake_ray(rows, log), batch, args_for(tmp_path / "out"), "u2netp"))
    assert [(src.name, problem) for src, problem in got] == [
        ("a.jpg", None),
        ("b.jpg", "cannot read this image (X: y); skipped."),
        ("d.jpg", None),
        ("c.jpg", "the cluster returned no result for this image; skipped."),
    ]
    out = tmp_path / "out"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {"a.png": b"A", "d.png": b"D"}
    # reads pinned to this node, at most two at a time; actors capped at the cluster's CPUs
    (_, items, blocks), (read, read_kw), (seg, seg_kw) = log
    assert blocks == len(items) == 4 and all("data" not in item for item in items)
    assert read is cluster.read_input and read_kw["label_selector"] == {
        "ray.io/node-id": "driver-node"
    }
    assert read_kw["num_cpus"] == 0 and read_kw["compute"] == ("tasks", {"size": 2})
    assert issubclass(seg, cluster.Segmenter) and seg_kw["num_cpus"] == 1
    assert seg_kw["compute"][1]["max_size"] == 3


def test_refused_outputs_are_never_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = batch_of(tmp_path, ["a.jpg", "b.jpg"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").write_bytes(b"earlier")
    log: list[Any] = []
    monkeypatch.setattr(cluster, "check_nodes", lambda ray, model: 1)
    rows = [{"i": 1, "png": b"B", "problem": ""}]
    got = list(cluster._run(fake_ray(rows, log), batch, args_for(tmp_path / "out"), "u2netp"))
    assert got[0][0].name == "a.jpg" and got[0][1].startswith("refused: the output")
    assert [item["i"] for item in log[0][1]] == [1]
    assert (tmp_path / "out" / "a.png").read_bytes() == b"earlier"

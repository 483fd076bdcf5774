"""``offcut remove --cluster ADDRESS``: the batch command on a Ray cluster the user owns.

The work is a Ray Data streaming pipeline, so scheduling, back-pressure and retries are Ray's, not
ours (docs/cluster.md says what moves where):

1. *read*, Ray tasks pinned to this machine's node (no shared file system is assumed): each input's
   header is checked against the pixel limit exactly as locally (a bomb is refused before it is
   shipped), then the file's bytes become a row;
2. *segment*, a pool of actors (:class:`Segmenter`), one CPU each, that each load the model once
   through the node's own verified model store and run :func:`remove.render_or_reason` on the
   bytes, then encode with :func:`remove.png_writer`: the same functions as the local command, so
   the same PNG bytes;
3. this process takes each encoded PNG as it arrives and writes it with
   :func:`remove.write_or_reason`, the local command's atomic writer: outputs exist only here,
   and never half-written.

One image is one block, so a block in flight is one photo, an actor that dies loses one image's
work (Ray Data restarts the actor and retries the task), and the object store budget bounds how
many photos are in flight at once whatever the batch's size. A result that arrives twice (a retry
after a lost reply) is written once; an image for which no result arrives is reported as failed.

Nodes must hold the model themselves (``offcut models fetch`` there): nothing large goes to the
nodes but photos, and each node checks the model's sha256 itself. Before the job starts each node
is asked for its versions and its model, so a missing model, or versions that would not give the
same bytes, stop the run at once with the node named.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, ClassVar

from offcut.client.wire import BAD_REQUEST, VERSION
from offcut.commands import remove
from offcut.errors import OffcutError
from offcut.models.catalog import load_catalog
from offcut.server.protocol import Limits

#: The options that change an output's pixels: all a worker is told about the run.
RENDER_OPTIONS = ("model", "mask_only", "background", "refine", "decontaminate")

Row = dict[str, Any]


def _problem(message: str) -> OffcutError:
    return OffcutError(BAD_REQUEST, message)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise _problem(
            "--cluster needs Ray, an optional extra: pip install 'offcut[cluster]' (on this "
            "machine and on every node of the cluster)."
        ) from None
    return ray


# --------------------------------------------------------------------------- on the nodes


def node_facts(model: str) -> dict[str, str]:
    """What a node would make outputs with, and whether its model is there and verified.

    Run on every node before the job: the sha256 check is the node's own, against the catalog
    it has installed, so a node never trusts a file because this machine says so.
    """
    import numpy
    import onnxruntime
    import PIL
    import ray

    from offcut.models.store import ModelStore

    problem = ""
    try:
        ModelStore().open_verified(load_catalog().get(model))
    except OffcutError as exc:
        problem = exc.message
    return {
        "node": ray.get_runtime_context().get_node_id(),
        "offcut": VERSION,
        "onnxruntime": onnxruntime.__version__,
        "Pillow": PIL.__version__,
        "numpy": numpy.__version__,
        "model": problem,
    }


def read_input(row: Row, *, node: str, max_pixels: int) -> Row:
    """An input's bytes, read on this machine's node; or why it is skipped.

    The header is opened from the path, as the local command does, so a refusal (too large, not
    an image) is decided before any byte is shipped and words it the same way.
    """
    import ray

    here = ray.get_runtime_context().get_node_id()
    if here != node:  # the scheduling strategy pins reads here; a read elsewhere is a bug
        raise RuntimeError(f"an input was read on node {here}, not on the driver's node {node}")
    path = Path(row["path"])
    limits = Limits(max_pixels=max_pixels)
    try:
        with remove.pil_limit(max_pixels), remove.open_image(path, limits):
            pass
        data = path.read_bytes()
    except (OffcutError, *remove.READ_ERRORS) as exc:
        return {"i": row["i"], "data": b"", "problem": remove.skipped(exc)}
    return {"i": row["i"], "data": data, "problem": ""}


class Segmenter:
    """A Ray Data actor: the model loaded once, then one photo's bytes in, one PNG's bytes out.

    The run's options are class attributes of a subclass made by :func:`segmenter`, not
    constructor arguments: Ray keeps constructor arguments in the object store, where a restart
    after they are gone would fail, while the subclass travels with the actor's definition.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {}
    MAX_PIXELS: ClassVar[int] = Limits().max_pixels

    def __init__(self) -> None:
        from offcut.engine.engine import Engine
        from offcut.models.store import ModelStore

        self.options = argparse.Namespace(**self.OPTIONS)
        self.limits = Limits(max_pixels=self.MAX_PIXELS)
        # One ONNX Runtime thread per actor and one actor per CPU: a batch is fastest one image
        # per core (docs/benchmarks.md); the outputs do not depend on the thread count.
        self.engine = Engine(load_catalog(), ModelStore(), threads=1)
        self.engine.load(self.options.model)  # verified on this node (architecture §4)

    def __call__(self, row: Row) -> Row:
        if row["problem"]:
            return {"i": row["i"], "png": b"", "problem": row["problem"]}
        with remove.pil_limit(self.limits.max_pixels):
            rendered = remove.render_or_reason(
                self.engine, io.BytesIO(row["data"]), self.options, self.limits
            )
        if isinstance(rendered, str):
            return {"i": row["i"], "png": b"", "problem": rendered}
        buf = io.BytesIO()
        remove.png_writer(*rendered)(buf)
        return {"i": row["i"], "png": buf.getvalue(), "problem": ""}


def segmenter(options: dict[str, Any], max_pixels: int) -> type[Segmenter]:
    """:class:`Segmenter` for one run's render options and pixel limit."""
    return type("Segmenter", (Segmenter,), {"OPTIONS": options, "MAX_PIXELS": max_pixels})


# --------------------------------------------------------------------------- on this machine


def connect(address: str) -> Any:
    """Join the user's cluster as a driver, quietly (no log forwarding, no Ray Data bars)."""
    if address.startswith("ray://"):
        raise _problem(
            f"--cluster {address}: Ray Client addresses are not supported, because the photos are "
            "read on the node the command runs on. Run offcut remove on a machine that is a node "
            "of the cluster (ray start --address=HEAD:6379), with --cluster auto or HEAD:6379."
        )
    # Before Ray is imported: the progress bar and the failure report are the command's output,
    # so Ray Data's INFO lines stay out of them unless the user asks (RAY_DATA_LOG_LEVEL=INFO).
    # No usage statistics from this process, whatever the cluster's own setting.
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = _import_ray()
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(
            address=address,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=True,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise _problem(
            f"cannot join the Ray cluster at {address!r} ({exc}). Start it with `ray start "
            "--head` (docs/cluster.md), or give its address as HOST:6379; `auto` uses "
            "RAY_ADDRESS or the cluster this machine is a node of."
        ) from None
    finally:
        # ray.init installs its own SIGTERM handler (exit status 15); the command's own unwinds
        # the same way and exits 143, as the local command does.
        if sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    ctx.execution_options.verbose_progress = False
    # Ray Data says once per process that its bars are off, which is what we asked for; its
    # own once-only switch keeps that line out of our progress bar.
    from ray.util.debug import log_once

    log_once("ray_data_progress_manager_disabled")
    return ray


def check_nodes(ray: Any, model: str) -> int:
    """Ask every live node for :func:`node_facts`; raise naming the node if one cannot take part.

    Returns the CPUs the cluster has, for the default number of workers.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = node_facts(model)
    del here["model"]  # this machine need not hold the model: it only reads and writes files
    del here["node"]
    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
    if not nodes:
        raise _problem("the Ray cluster has no node with a CPU to run on.")
    check = ray.remote(node_facts)
    pending = [
        (
            f"{n['NodeManagerAddress']} (id {n['NodeID'][:8]})",
            check.options(
                num_cpus=0,
                max_retries=2,
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
            ).remote(model),
        )
        for n in nodes
    ]
    for where, ref in pending:
        try:
            facts = ray.get(ref, timeout=120)
        except Exception as exc:  # Ray wraps the node's own error in its types
            raise _problem(
                f"node {where} could not run Offcut ({type(exc).__name__}); install "
                f"offcut[cluster] {VERSION} in the Python that Ray runs there."
            ) from None
        if facts["model"]:
            raise _problem(
                f"on node {where}: {facts['model']} Each node verifies its own copy of the "
                "model, so run that on the node itself (docs/cluster.md)."
            )
        differ = [f"{k} {facts[k]} (here {v})" for k, v in here.items() if facts.get(k) != v]
        if differ:
            raise _problem(
                f"node {where} has {', '.join(differ)}; every node needs the same versions as this "
                "machine, or its outputs could differ from the local command's."
            )
    return int(sum(n["Resources"]["CPU"] for n in nodes))


def run(batch: remove.Batch, args: argparse.Namespace) -> remove.Results:
    """Process ``batch`` on the cluster at ``args.cluster``; yields what :func:`remove.report`
    reads. Closing it (Ctrl-C, an error) leaves the cluster, which ends the job's actors."""
    catalog = load_catalog()
    model = catalog.get(args.model or catalog.default).name  # an unknown name fails before Ray
    ray = connect(args.cluster)
    try:
        yield from _run(ray, batch, args, model)
    finally:
        ray.shutdown()


def _run(ray: Any, batch: remove.Batch, args: argparse.Namespace, model: str) -> remove.Results:
    cpus = check_nodes(ray, model)
    workers = args.workers or cpus
    items: list[Row] = []
    for i, (src, dst) in enumerate(zip(batch.files, batch.outs, strict=True)):
        try:  # refused before anything is shipped, as the local command refuses before the model
            remove.check_output(dst, batch.inputs, overwrite=args.overwrite, hint=batch.hint)
        except remove.Refused as exc:
            yield src, f"refused: {exc}"
            continue
        items.append({"i": i, "path": str(src)})
    if not items:
        return
    here = ray.get_runtime_context().get_node_id()
    options = {k: getattr(args, k) for k in RENDER_OPTIONS} | {"model": model}
    ds = (
        ray.data.from_items(items, override_num_blocks=len(items))
        .map(
            read_input,
            fn_kwargs={"node": here, "max_pixels": batch.limits.max_pixels},
            num_cpus=0,  # file reads: they must not wait for a CPU the actors hold
            compute=ray.data.TaskPoolStrategy(size=2),
            # Pinned to this machine (the way Ray pins its own local:// reads): no shared disk.
            label_selector={"ray.io/node-id": here},
        )
        .map(
            segmenter(options, batch.limits.max_pixels),
            num_cpus=1,
            compute=ray.data.ActorPoolStrategy(
                min_size=1,
                max_size=workers,
                initial_size=min(workers, cpus),
                max_tasks_in_flight_per_actor=2,  # queued photos an actor's death sends back
            ),
        )
    )
    pending = {item["i"] for item in items}
    for row in ds.iter_rows():
        i = int(row["i"])
        if i not in pending:  # a retried task's second reply: written already
            continue
        pending.discard(i)
        src, dst = batch.files[i], batch.outs[i]
        problem = row["problem"] or None
        if problem is None:
            png = bytes(row["png"])
            problem = remove.write_or_reason(
                dst,
                lambda fh, png=png: fh.write(png),
                inputs=batch.inputs,
                overwrite=args.overwrite,
                hint=batch.hint,
            )
        yield src, problem
    for i in sorted(pending):  # never silently lost
        yield batch.files[i], "the cluster returned no result for this image; skipped."

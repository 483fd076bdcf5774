"""The ``offcut`` command line: serve, models, remove, status, doctor, install, eval.

Each sub-command is a thin shell over a module that does the work, so the same code paths are
exercised by the plug-ins (through the sidecar) and by the batch CLI (in-process).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from offcut import __version__
from offcut.client import wire
from offcut.errors import OffcutError
from offcut.i18n import LANGUAGES


def _serve(args: argparse.Namespace) -> int:
    from offcut.server import protocol, server

    server.check_bind_host(args.host)
    limits = protocol.Limits(max_pixels=args.max_pixels, queue_depth=args.queue_depth)
    return server.run(
        port=args.port,
        idle_timeout=args.idle_timeout,
        limits=limits,
        threads=args.threads,
        audit_mode=args.audit,
    )


def _models(args: argparse.Namespace) -> int:
    from offcut.commands import models as models_cli

    return models_cli.main(args)


def _remove(args: argparse.Namespace) -> int:
    from offcut.commands import remove as batch

    return batch.main(args)


def _status(args: argparse.Namespace) -> int:
    from offcut.commands import doctor

    return doctor.status(as_json=args.json)


def _doctor(args: argparse.Namespace) -> int:
    from offcut.commands import doctor

    return doctor.doctor()


def _install(args: argparse.Namespace) -> int:
    from offcut.commands import install

    return install.main(args)


def _eval(args: argparse.Namespace) -> int:
    from offcut.quality import evaluate

    return evaluate.main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="offcut",
        description="Private background removal for GIMP 3 and Krita 5. "
        "Nothing leaves this computer.",
    )
    p.add_argument("--version", action="version", version=f"offcut {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the sidecar that the editor plug-ins talk to")
    s.add_argument("--host", default="127.0.0.1", help="only 127.0.0.1 is accepted (privacy)")
    s.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    s.add_argument(
        "--idle-timeout",
        type=float,
        default=600.0,
        help="exit after this many idle seconds (0: never; default 600)",
    )
    s.add_argument(
        "--max-pixels",
        type=int,
        default=wire.DEFAULT_MAX_PIXELS,
        help=f"largest image accepted (default {wire.DEFAULT_MAX_PIXELS:,})",
    )
    s.add_argument(
        "--queue-depth",
        type=int,
        default=wire.DEFAULT_QUEUE_DEPTH,
        help=f"images that may wait (default {wire.DEFAULT_QUEUE_DEPTH})",
    )
    s.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    s.add_argument(
        "--audit",
        action="store_true",
        help="block and log any file write, process start or network access while serving",
    )
    s.set_defaults(func=_serve)

    m = sub.add_parser("models", help="list, fetch, import and verify models")
    msub = m.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    msub.add_parser("list", help="known models, installed or not")
    f = msub.add_parser(
        "fetch",
        help="download a model, or derive one from a downloaded model (sha256-verified before "
        "use); NAME may be an alias: fast, best",
    )
    f.add_argument("name")
    f.add_argument(
        "--trust",
        action="store_true",
        help="accept a model whose checksum no primary source confirms, pinning its sha256",
    )
    i = msub.add_parser("import", help="install a model from a file you already have")
    i.add_argument("name")
    i.add_argument("file")
    i.add_argument(
        "--trust",
        action="store_true",
        help="accept a file for a model whose checksum is unverified, pinning its sha256",
    )
    v = msub.add_parser("verify", help="re-check installed model files against their sha256")
    v.add_argument("name", nargs="?")
    msub.add_parser("path", help="print the models directory")
    m.set_defaults(func=_models)

    r = sub.add_parser("remove", help="remove the background of image files (no sidecar needed)")
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    out = r.add_mutually_exclusive_group(required=True)
    out.add_argument("-o", "--output", help="output file (one input only)")
    out.add_argument("--out-dir", help="output folder (PNG files named after the inputs)")
    r.add_argument("--model", default=None, help="model name (default: the catalog default)")
    r.add_argument("--mask-only", action="store_true", help="write the mask instead of a cutout")
    r.add_argument(
        "--background",
        default=None,
        metavar="COLOR",
        help="flatten onto this colour (e.g. white, #00ff00) instead of transparency",
    )
    r.add_argument("--refine", action="store_true", help="refine edges with the full-size image")
    r.add_argument(
        "--decontaminate",
        action="store_true",
        help="remove the old background's colour from soft edges",
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that already exist (never an input, never through a link)",
    )
    r.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="refuse larger images before decoding them (default: the sidecar's limit)",
    )
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    r.add_argument(
        "--cluster",
        metavar="ADDRESS",
        default=None,
        help="run on the Ray cluster at ADDRESS (HOST:PORT, or auto for RAY_ADDRESS); outputs are "
        "still written here only (docs/cluster.md; needs offcut[cluster])",
    )
    r.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="with --cluster: at most N model workers, one CPU each (default: the cluster's CPUs)",
    )
    r.set_defaults(func=_remove)

    st = sub.add_parser("status", help="ask the running sidecar how it is doing")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)

    d = sub.add_parser(
        "doctor", help="what is installed, verified and running, and what to do next"
    )
    d.set_defaults(func=_doctor)

    for verb in ("install", "uninstall"):
        ins = sub.add_parser(verb, help=f"{verb} the plug-in for an editor")
        ins.add_argument("editor", choices=["gimp", "krita"])
        ins.add_argument(
            "--profile",
            type=Path,
            default=None,
            help="the plug-ins folder (GIMP) or pykrita folder (Krita), if not the usual one",
        )
        ins.add_argument("--dry-run", action="store_true", help="show what would be done")
        if verb == "install":
            ins.add_argument(
                "--language",
                default=None,
                metavar="LANG",
                help="the language of Krita's plug-in manual (Plugin Manager): one of "
                f"{', '.join(('en', *LANGUAGES))}; default: yours, as gettext reads it from "
                "LANGUAGE, LC_ALL, LC_MESSAGES, LANG",
            )
        ins.set_defaults(func=_install)

    e = sub.add_parser("eval", help="score masks against a dataset (images/ + gt/)")
    e.add_argument("dataset", type=Path)
    e.add_argument("--model", default=None)
    e.add_argument("--refine", action="store_true")
    e.add_argument("--decontaminate", action="store_true")
    e.add_argument("--compare-rembg", action="store_true", help="also score rembg's pipeline")
    e.add_argument("--limit", type=int, default=None, help="only the first N images")
    e.add_argument("--json", type=Path, default=None, help="write per-image results as JSON here")
    e.add_argument("--markdown", type=Path, default=None, help="write a Markdown table here")
    e.add_argument(
        "--with-plain",
        action="store_true",
        help="with --refine, also score the plain pipeline (one inference per image)",
    )
    e.add_argument(
        "--rembg-alpha-matting",
        action="store_true",
        help="with --compare-rembg, also score rembg's alpha matting (slow)",
    )
    e.add_argument(
        "--band", type=int, default=None, help="edge band half-width in px (default 10 x upscale)"
    )
    e.add_argument(
        "--upscale", type=int, default=1, help="enlarge images and ground truth N times in memory"
    )
    e.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    e.set_defaults(func=_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except OffcutError as exc:
        print(f"offcut: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("offcut: interrupted", file=sys.stderr)
        return 130

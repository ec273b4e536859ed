"""Command line: argument parsing and dispatch only; the analyses live in their modules."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from rflens.errors import RflensError


def parse_input_size(text: str) -> tuple[int, ...] | int:
    """``224`` (every axis), ``224x320`` (height x width) or ``16x112x112``."""
    try:
        sizes = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        msg = f"input size must look like 224, 224x320 or 16x112x112, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"input sizes must be positive, got {text!r}")
    return sizes[0] if len(sizes) == 1 else sizes


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="torchvision:NAME, timm:NAME or path/to/file.py:factory")
    p.add_argument("--input-size", type=parse_input_size, default=224, metavar="N|HxW",
                   help="spatial input size: 224, 224x320, 16000 (1-D), 16x112x112 (3-D); default 224")
    p.add_argument("--in-channels", type=int, default=None, help="input channels (default: the first conv's)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the model constructor (repeatable)")
    p.add_argument("--weights", default=None, help=".safetensors or a state-dict file (loaded with weights_only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    p.add_argument("--device", default="meta",
                   help="where the model is traced: meta (default, no FLOPs); cpu or cuda run it once, for "
                        "models whose forward needs real data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rflens", description="What your convolutional network can actually see.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    rf = sub.add_parser("rf", help="theoretical receptive field of every layer",
                        description="Receptive field size (union over paths), smallest receptive field over "
                                    "paths, effective stride and padding of every module whose output is a "
                                    "spatial map (Distill conventions: unit u covers input pixels "
                                    "[u*stride - padding, u*stride - padding + rf - 1]).")
    _add_model_args(rf)
    rf.add_argument("--layer", action="append", default=[], metavar="NAME",
                    help="only these layers (named_modules() names; repeatable)")
    rf.add_argument("--json", action="store_true", help="print JSON instead of the table")
    rf.add_argument("--out", type=Path, default=None, help="also write the JSON document to this file")
    rf.set_defaults(run=_run_rf)
    return parser


def _version() -> str:
    from rflens import __version__

    return __version__


def _run_rf(args: argparse.Namespace, console: Console) -> int:
    from rflens.report.table import rf_table
    from rflens.rf import receptive_field
    from rflens.sources import describe, load_model, parse_model_args

    with console.status(f"building {args.model}", spinner="dots"):
        model = load_model(args.model, model_args=parse_model_args(args.model_arg), weights=args.weights,
                           seed=args.seed)
    if args.device != "meta":
        model = _to_device(model, args.device)
    result = receptive_field(model, args.input_size, in_channels=args.in_channels, device=args.device,
                             model_name=describe(args.model))
    layers = result.layers
    if args.layer:
        known = {layer.name: layer for layer in layers}
        missing = [n for n in args.layer if n not in known]
        if missing:
            hints = difflib.get_close_matches(missing[0], list(known), n=5)
            raise RflensError(f"no layer {missing[0]!r} with a spatial output"
                              + (f"; close: {', '.join(hints)}" if hints else ""))
        layers = [known[n] for n in args.layer]
    doc = result.to_dict()
    doc["layers"] = [layer.to_dict() for layer in layers]
    if args.out is not None:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        size = "x".join(map(str, result.input_size))
        console.print(rf_table(layers, title=f"{doc['model']} at {size}"), soft_wrap=True)
    return 0


def _to_device(model, device: str):
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RflensError(f"--device {device}: PyTorch sees no CUDA device here")
    try:
        return model.to(device)
    except (RuntimeError, ValueError) as exc:
        raise RflensError(f"--device {device}: {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # piped output keeps whole layer names instead of an 80-column cut
    console = Console(width=None if sys.stdout.isatty() else 200)
    errors = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
    try:
        return args.run(args, console)
    except RflensError as exc:
        errors.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

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


def _add_model_args(p: argparse.ArgumentParser, device: str = "meta",
                    device_help: str = "where the model is traced: meta (default, no FLOPs); cpu or cuda run it "
                                       "once, for models whose forward needs real data",
                    configurable: bool = False) -> None:
    """The model and how it is built. ``configurable``: the model and the input size may come from a config file
    instead (the defaults are None and the command fills them in)."""
    p.add_argument("model", nargs="?" if configurable else None,
                   help="torchvision:NAME, timm:NAME, path/to/file.py:factory or path/to/model.onnx"
                        + (" (default: model in [tool.rflens])" if configurable else ""))
    p.add_argument("--input-size", type=parse_input_size, default=None, metavar="N|HxW",
                   help="spatial input size: 224, 224x320, 16000 (1-D), 16x112x112 (3-D); default: an ONNX model's "
                        "static input size, else 224")
    p.add_argument("--in-channels", type=int, default=None, help="input channels (default: the first conv's)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the model constructor (repeatable)")
    p.add_argument("--weights", default=None, help=".safetensors or a state-dict file (loaded with weights_only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    p.add_argument("--device", default=device, help=device_help)


def _add_image_args(p: argparse.ArgumentParser, inputs_help: str) -> None:
    """The images of a gradient analysis: noise or a folder, how many, and the noise seed."""
    p.add_argument("--inputs", default="noise", metavar="noise|DIR", help=inputs_help)
    _add_count_args(p)


def _add_count_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-images", "--n", dest="n", type=_positive, default=None,
                   help="images to average (default 50 noise images, or every picture of the folder); under "
                        "torchrun write --num-images: torchrun's parser takes --n for an abbreviation of its own "
                        "options")
    p.add_argument("--noise-seed", type=int, default=0, help="seed of the noise images (default 0)")


def _add_gradient_args(p: argparse.ArgumentParser) -> None:
    """When an audit runs its gradient analyses, and on which images."""
    p.add_argument("--images", default=None, metavar="DIR", help="a folder of pictures for the gradient analyses "
                                                                  "(turns them on)")
    p.add_argument("--erf", action="store_true", help="run the gradient analyses (on by default with --weights, "
                                                      "--images or a rule that needs them; noise images unless "
                                                      "--images)")
    _add_count_args(p)


def _add_pools_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pools", choices=["auto", "widen", "keep"], default="auto",
                   help="poolings under kernel padding: widen only if a checkerboard survives (auto, default), "
                        "always (Kim et al.'s 4x4 max-pool; changes the function) or never")


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

    b = sub.add_parser("border", help="unproductive layers, feasible input sizes and refinements (Richter & Pal)",
                       description="Layers whose smallest receptive field already exceeds the input (or whose "
                                   "input map is no larger than their kernel) cannot add context: find them, "
                                   "their cost, the input sizes without them, and single-hyperparameter changes "
                                   "that remove them.")
    _add_model_args(b)
    b.add_argument("--all", action="store_true", help="list every layer, not only critical and unproductive ones")
    b.add_argument("--top", type=_positive, default=5, help="how many refinements to show (default 5)")
    b.add_argument("--apply", type=_positive, default=None, metavar="N",
                   help="write refinement N as a recipe (needs --out) and check it on the changed model")
    b.add_argument("--sweep", type=_parse_sweep, default=None, metavar="A:B[:STEP]",
                   help="also analyse every input size A..B (step STEP), reusing the captured graph")
    b.add_argument("--plot", type=Path, default=None, help="write the r_min/r_max figure (PNG) to this file")
    b.add_argument("--json", action="store_true", help="print JSON instead of tables")
    b.add_argument("--out", type=Path, default=None,
                   help="with --apply: the recipe file; otherwise: also write the JSON document here")
    b.set_defaults(run=_run_border)

    e = sub.add_parser("erf", help="effective receptive field: input gradients of one unit (Luo et al.)",
                       description="The gradient of one unit of a layer with respect to the input, averaged over "
                                   "images, under a published protocol (replknet, kim, luo), with its metrics: "
                                   "RepLKNet's high-contribution area ratios, the Gaussian sigma and fit, the "
                                   "ERF/TRF ratio. When the unit's theoretical field is smaller than the input, "
                                   "the network runs on the crop it needs (exact).")
    _add_model_args(e, device="cpu", device_help="where the gradients are computed: cpu (default) or cuda")
    e.add_argument("--layer", default="output", help="module name (named_modules()) or 'output' (default)")
    e.add_argument("--layers", type=_names, default=None, metavar="A,B,C",
                   help="several layers: a table and, with --plot, ERF size against depth")
    e.add_argument("--protocol", choices=["replknet", "kim", "luo", "structural"], default="replknet",
                   help="target and map as in the paper the protocol is named after (default replknet); "
                        "structural: path counts from the graph alone (no weights, no images)")
    _add_image_args(e, "seeded Gaussian noise (default) or a folder of pictures")
    e.add_argument("--batch-size", type=_positive, default=None,
                   help="images per forward/backward (default: about six 224x224 images' worth of pixels)")
    e.add_argument("--unit", type=_unit, default=None, metavar="I,J",
                   help="the unit of the layer's output (default: the centre, n // 2 per axis)")
    e.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="compute precision")
    e.add_argument("--no-crop", action="store_true", help="always run the full input (no cone cropping)")
    e.add_argument("--no-fold", action="store_true", help="keep batch norms (do not fold them into convolutions)")
    e.add_argument("--contiguous", action="store_true",
                   help="run 2-D models in the contiguous memory format (default: channels-last)")
    e.add_argument("--plot", type=Path, default=None,
                   help="write the heatmap (one layer) or ERF size against depth (--layers) as PNG")
    e.add_argument("--log-scale", "--log", dest="log", action="store_true",
                   help="heatmap in log scale (--log-scale under torchrun, which would take --log for its --log-dir)")
    e.add_argument("--map", type=Path, default=None, help="save the ERF map as .npy (default with --out: OUT.npy)")
    e.add_argument("--json", action="store_true", help="print JSON instead of the table")
    e.add_argument("--out", type=Path, default=None, help="also write the JSON document to this file")
    e.set_defaults(run=_run_erf)

    d = sub.add_parser("deadpixel", help="dead-pixel test: checkerboards from odd kernels with stride 2 (Kim et al.)",
                       description="Culprit layers (kernel not a multiple of the stride: uneven coverage), the "
                                   "structural map of every unit of the layer with Kim et al.'s imbalance indices "
                                   "L1/L2, the checkerboard's period and strength and the share of dead pixels; "
                                   "with --weighted (default when --weights is given) the same on the gradient "
                                   "ERF under the kim protocol; with --fix kernel-pad the test again after padding "
                                   "the culprits' kernels.")
    _add_model_args(d, device="cpu", device_help="where the weighted test and the fix check run: cpu (default) "
                                                 "or cuda")
    d.add_argument("--layer", default="output", help="module name (named_modules()) or 'output' (default)")
    d.add_argument("--weighted", action="store_true",
                   help="also test the gradient ERF (kim protocol); on by default with --weights, --inputs DIR, "
                        "--class or --sensitivity")
    _add_image_args(d, "images for the weighted test: seeded noise (default) or a folder (class folders = labels)")
    d.add_argument("--class", dest="target_class", type=int, default=None, metavar="K",
                   help="differentiate class K (default: the folder's labels, else the predicted class)")
    d.add_argument("--sensitivity", action="store_true",
                   help="Kim et al.'s one-pixel perturbation on a block at the centre, correlated with the ERF")
    d.add_argument("--block", type=_positive, default=8, help="side of the perturbed block in pixels (default 8)")
    d.add_argument("--eps", type=float, default=0.5, help="perturbation of one pixel (default 0.5)")
    d.add_argument("--fix", choices=["kernel-pad"], default=None, help="apply the fix and test again")
    _add_pools_arg(d)
    d.add_argument("--plot", type=Path, default=None, help="write the maps side by side (PNG)")
    d.add_argument("--json", action="store_true", help="print JSON instead of tables")
    d.add_argument("--out", type=Path, default=None, help="also write the JSON document to this file")
    d.set_defaults(run=_run_deadpixel)

    pa = sub.add_parser("padding", help="uneven padding, even input sizes, foveation and spatial bias (Mind the Pad)",
                        description="Window layers whose effective padding differs between the two sides at this "
                                    "input size (TF-'same' asymmetry, right/bottom padding unused, rows never "
                                    "read), the input sizes with no such layer, and the foveation maps (paths from "
                                    "each input pixel to the whole output) under the model's own padding and with "
                                    "zeros/reflect/replicate/circular/partial padding. With --spatial-bias or "
                                    "--probe, the running network's mean activations and blind-spot probe (mean "
                                    "much only with trained --weights). Alsallakh et al., ICLR 2021.")
    _add_model_args(pa)
    pa.add_argument("--range", dest="size_range", type=_parse_sweep, default=None, metavar="A:B",
                    help="input sizes searched for even ones (default 32:1024; 64 sizes around --input-size when "
                         "the model must be traced at each size)")
    pa.add_argument("--modes", type=_names, default=None, metavar="M,M",
                    help="foveation maps: model,zeros,reflect,replicate,circular,partial (default all)")
    pa.add_argument("--layer", default="output", help="foveation of this module's units (default: the output)")
    pa.add_argument("--spatial-bias", type=_names, default=None, metavar="LAYER,LAYER",
                    help="mean activation per location at these layers ('output' for the model's output)")
    _add_image_args(pa, "images for --spatial-bias: seeded noise (default) or a folder of pictures")
    pa.add_argument("--probe", action="store_true", help="sweep a small stimulus over the input (blind-spot probe)")
    pa.add_argument("--stimulus", type=_positive, default=8, help="side of the probe's stimulus (default 8 px)")
    pa.add_argument("--plot", type=Path, default=None,
                    help="write the foveation figure (PNG); spatial-bias maps go next to it as NAME_spatialbias.png")
    pa.add_argument("--json", action="store_true", help="print JSON instead of tables")
    pa.add_argument("--out", type=Path, default=None, help="also write the JSON document to this file")
    pa.set_defaults(run=_run_padding)

    a = sub.add_parser("audit", help="every analysis at once: verdicts, details, fixes; terminal, JSON or HTML",
                       description="Receptive fields, unproductive layers, padding, culprit layers, structural "
                                   "maps and the kernel-padding fix (weight-free), and with --weights, --images or "
                                   "--erf the gradient ERF and the weighted dead-pixel test. Prints one verdict "
                                   "per area (ok / warning / problem, with the number that decided it), then the "
                                   "details and the fixes with their costs.")
    _add_model_args(a, device="cpu", device_help="where the kernel-padding check and the gradient analyses run: cpu "
                                                 "(default) or cuda (the geometry is traced on meta)")
    _add_gradient_args(a)
    a.add_argument("--top", type=_positive, default=3, help="how many refinements to list (default 3)")
    a.add_argument("--html", type=Path, default=None, help="write the self-contained HTML report to this file")
    a.add_argument("--json", action="store_true", help="print JSON instead of the terminal report")
    a.add_argument("--out", type=Path, default=None, help="also write the JSON document to this file")
    a.set_defaults(run=_run_audit)

    c = sub.add_parser("check", help="CI check: exit 1 when a rule fails (rules from the command line or "
                                     "[tool.rflens] in pyproject.toml)",
                       description="Audits the model and checks the rules, one line per rule; exits 1 when one "
                                   "fails, 2 on an error. Rules: " + ", ".join(
                                       f"{r.name} ({r.what}; {'at least' if r.minimum else 'at most'} {r.limit:g})"
                                       for r in _rules()) + ". Default rules: " + ", ".join(_default_rules()) + ".")
    _add_model_args(c, device="cpu", device_help="where the kernel-padding check and gradient rules run",
                    configurable=True)
    c.add_argument("--rule", action="append", default=None, metavar="NAME",
                   help="check this rule (repeatable; replaces the configured rules)")
    c.add_argument("--threshold", action="append", default=[], metavar="RULE=VALUE", type=_threshold,
                   help="the limit of a rule (repeatable; overrides the configured one)")
    c.add_argument("--config", type=Path, default=None,
                   help="pyproject.toml with a [tool.rflens] table (default: ./pyproject.toml when present)")
    _add_gradient_args(c)
    c.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    c.set_defaults(run=_run_check)

    f = sub.add_parser("fix", help="apply a fix and write it as a recipe plus weights")
    fixes = f.add_subparsers(dest="fix", required=True)
    k = fixes.add_parser("kernel-pad", help="pad odd strided kernels to a multiple of the stride (Kim et al.)",
                         description="Zero-pads the kernel of every convolution whose kernel is not a multiple of "
                                     "its stride (the same function at --input-size: make the fix at the size "
                                     "the model runs), checks the result, and writes recipe.json and "
                                     "model.safetensors to --out; rflens.apply_recipe(model, recipe, weights) "
                                     "rebuilds it.")
    _add_model_args(k, device="cpu", device_help="where the fixed model is checked against the original")
    k.add_argument("--layer", default="output", help="fix the layers feeding this module (default: the output)")
    _add_pools_arg(k)
    k.add_argument("--out", type=Path, required=True, help="folder for recipe.json and model.safetensors")
    k.add_argument("--json", action="store_true", help="print JSON instead of tables")
    k.set_defaults(run=_run_fix_kernel_pad)
    pm = fixes.add_parser("padding-mode", help="pad convolutions by reflection, replication or wrapping "
                                               "(Alsallakh et al.)",
                          description="Sets padding_mode on every padded convolution (layers that pad in their own "
                                      "forward code or in another module, and maps too small for the mode, are "
                                      "skipped and listed; transposed convolutions keep zeros), checks the traced "
                                      "result, audits the fixed model and "
                                      "writes recipe.json and model.safetensors to --out. It changes the function: "
                                      "fine-tune the model. The nearest input size without uneven layers is suggested "
                                      "alongside.")
    pm.add_argument("mode", choices=["reflect", "replicate", "circular", "zeros"], help="the new padding mode")
    _add_model_args(pm)
    pm.add_argument("--out", type=Path, required=True, help="folder for recipe.json and model.safetensors")
    pm.add_argument("--json", action="store_true", help="print JSON instead of tables")
    pm.set_defaults(run=_run_fix_padding_mode)

    sw = sub.add_parser("sweep", help="architecture survey: one CSV row of weight-free numbers per model of a zoo",
                        description="Builds every model matching the patterns (timm:PATTERN, torchvision:PATTERN: "
                                    "fnmatch wildcards, case-insensitive; anything else is one model) on the meta "
                                    "device and writes one row per model to --csv: parameters, FLOPs, the last "
                                    "map's receptive field, unproductive layers, uneven padding, culprit layers, "
                                    "the structural dead-pixel index and the first token mixer. Rows are appended "
                                    "as models finish; models already in the CSV are skipped (resumable). A model "
                                    "that fails or times out is a failed row; exit 1 only when every model of the "
                                    "run failed.")
    sw.add_argument("models", nargs="+", metavar="MODEL",
                    help="timm:PATTERN, torchvision:PATTERN, path/to/file.py:factory or path/to/model.onnx")
    sw.add_argument("--input-size", type=parse_input_size, default=224, metavar="N|HxW",
                    help="spatial input size of every model (default 224)")
    sw.add_argument("--in-channels", type=int, default=None, help="input channels (default: each model's own)")
    sw.add_argument("--seed", type=int, default=0,
                    help="seed of the random init of models that cannot be built on meta (default 0)")
    sw.add_argument("--csv", type=Path, required=True, help="the CSV file: appended to, and read to resume")
    sw.add_argument("--jobs", type=_positive, default=1,
                    help="worker processes (default 1: in this process); each uses cpu_count / jobs threads")
    sw.add_argument("--timeout", type=float, default=600.0, metavar="S",
                    help="seconds per model before it counts as failed (default 600)")
    sw.add_argument("--cnn-only", action="store_true",
                    help="skip models with a token mixer (attention, token-mixing MLPs) before the analyses")
    sw.add_argument("--retry-failed", action="store_true", help="survey failed rows of the CSV again")
    sw.add_argument("--plot", type=Path, default=None, help="write receptive field vs GFLOPs (PNG) to this file")
    sw.add_argument("--summary", type=Path, default=None, help="write the summary as Markdown to this file")
    sw.set_defaults(run=_run_sweep)
    return parser


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer names, got {text!r}")
    return names


def _unit(text: str) -> tuple[int, ...]:
    try:
        unit = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"unit must look like 3,4 (an index per spatial axis), got {text!r}") from None
    if any(u < 0 for u in unit):
        raise argparse.ArgumentTypeError(f"unit indices must be >= 0, got {text!r}")
    return unit


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _parse_sweep(text: str) -> range:
    try:
        parts = [int(p) for p in text.split(":")]
        if len(parts) not in (2, 3) or parts[0] < 1 or parts[1] < parts[0] or (len(parts) == 3 and parts[2] < 1):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"sweep must look like 32:1024 or 32:1024:32, got {text!r}") from None
    return range(parts[0], parts[1] + 1, parts[2] if len(parts) == 3 else 1)


def _threshold(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"threshold must look like dead-pixels=0.3, got {text!r}") from None


def _rules() -> list:
    from rflens.checks import RULES

    return list(RULES.values())


def _default_rules() -> tuple[str, ...]:
    from rflens.checks import DEFAULT_RULES

    return DEFAULT_RULES


def _version() -> str:
    from rflens import __version__

    return __version__


def _run_rf(args: argparse.Namespace, console: Console) -> int:
    from rflens.report.table import rf_table
    from rflens.rf import receptive_field
    from rflens.sources import describe

    model = _load(args, console)
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
    if not _json_document(args, doc):
        size = "x".join(map(str, result.input_size))
        console.print(rf_table(layers, title=f"{doc['model']} at {size}"), soft_wrap=True)
    return 0


def _run_border(args: argparse.Namespace, console: Console) -> int:
    from rflens.border import border_report, classify
    from rflens.capture import capture
    from rflens.report.border import layer_table, suggestion_table, summary, sweep_table
    from rflens.sources import describe
    from rflens.transforms import refine

    if args.apply is not None and args.out is None:
        raise RflensError("--apply N writes a recipe: give the file with --out")
    model = _load(args, console)
    with console.status("analysing", spinner="dots"):
        report = border_report(model, args.input_size, in_channels=args.in_channels, device=args.device,
                        model_name=describe(args.model), top=max(args.top, args.apply or 0))
    doc = report.to_dict()
    if args.sweep is not None:
        sweep = report.resolutions.sweep(list(args.sweep))
        doc["sweep"] = [{"input_size": n, "error": str(r)} if isinstance(r, Exception) else
                        {"input_size": n, "unproductive": r.unproductive, "critical": r.critical,
                         "waste": r.waste.to_dict()} for n, r in zip(args.sweep, sweep, strict=True)]
    if args.plot is not None:
        report.plot(str(args.plot))
    if args.apply is not None:
        if not 1 <= args.apply <= len(report.suggestions):
            raise RflensError(f"--apply {args.apply}: there are {len(report.suggestions)} suggestions")
        chosen = report.suggestions[args.apply - 1]
        if chosen.applicable is not None:
            raise RflensError(f"suggestion {args.apply} ({chosen.change}) must be applied by hand: "
                              f"{chosen.applicable}")
        recipe = chosen.recipe(describe(args.model))
        # the prediction came from the geometry: check it on the changed model itself before writing it
        refined = refine(model, recipe)
        graph = capture(refined, chosen.input_size, in_channels=args.in_channels, device=args.device)
        layers = classify(graph)
        got = ([x.name for x in layers if x.status == "unproductive"],
               [x.name for x in layers if x.status == "critical"], graph.flops, graph.params)
        want = (list(chosen.unproductive_after), list(chosen.critical_after), chosen.flops, chosen.params)
        if got != want:
            raise RflensError(f"the refined model has (unproductive, critical, FLOPs, params) = {got}, the geometry "
                              f"predicted {want}: please report this as a bug")
        args.out.write_text(json.dumps(recipe, indent=2) + "\n")
        if args.json:
            print(json.dumps(recipe, indent=2))
        else:
            console.print(f"wrote {args.out}: {chosen.change}; checked on the changed model: "
                          f"{len(got)} unproductive layers, FLOPs x{chosen.flops_ratio:.3f}"
                          + ("" if chosen.edits else " (the model is unchanged: feed it the new input size)"))
        return 0
    if _json_document(args, doc):
        return 0
    console.print(summary(report), highlight=False)
    shown = report.layers if args.all else [x for x in report.layers if x.status != "productive"]
    if shown:
        console.print(layer_table(shown), soft_wrap=True)
    if report.suggestions:
        console.print(suggestion_table(report), soft_wrap=True)
    elif report.unproductive:
        console.print("no single-hyperparameter change found that removes an unproductive layer")
    if args.sweep is not None:
        console.print(sweep_table(sweep, list(args.sweep)), soft_wrap=True)
    if args.plot is not None:
        console.print(f"wrote {args.plot}")
    return 0


def _run_erf(args: argparse.Namespace, console: Console) -> int:
    """One process, or one rank of a torchrun/SLURM launch: every rank computes its share inside the process
    group, and rank 0 writes after leaving it (a failure to write then cannot hold the other ranks)."""
    import io

    from rflens.distributed import launch_from_env, process_group

    launch = launch_from_env()
    if args.layers and args.unit is not None:
        raise RflensError("--unit applies to one layer; with --layers every layer uses its centre unit")
    first = launch is None or launch.rank == 0
    quiet = Console(file=io.StringIO())
    with process_group(launch, args.device) as device:
        args.device = device
        ranks = f" (rank 0 of {launch.world_size}: its share of the images)" if launch else ""
        results = _erfs(args, console if first else quiet, Console(stderr=True) if first else quiet, ranks,
                        launch is not None)
    return _report_erfs(args, console, results) if first else 0


def _erfs(args: argparse.Namespace, console: Console, errors: Console, ranks: str, distributed: bool) -> list:
    """The ERF of every layer of ``args``; ``distributed``: this process is a rank of a launch."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rflens import distributed as dist
    from rflens.erf import erf, structural
    from rflens.sources import describe

    layers = args.layers or [args.layer]
    try:
        model, failure = _load(args, console), None
    except Exception as exc:  # a rank that cannot build its model must not leave the others waiting
        if not distributed:
            raise
        model, failure = None, exc
    if distributed:
        dist.agree(failure)
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=errors, transient=True, disable=not errors.is_terminal) as bar:
        for layer in layers:
            task = bar.add_task(f"ERF of {layer}{ranks}", total=None)
            if args.protocol == "structural":
                results.append(structural(model, layer, unit=args.unit, input_size=args.input_size,
                                          in_channels=args.in_channels, model_name=describe(args.model)))
                continue
            results.append(erf(model, layer, inputs=None if args.inputs == "noise" else args.inputs,
                               protocol=args.protocol, unit=args.unit, n=args.n, batch_size=args.batch_size,
                               input_size=args.input_size, in_channels=args.in_channels, device=args.device,
                               dtype=getattr(torch, args.dtype), seed=args.noise_seed, crop=not args.no_crop,
                               fold=not args.no_fold, channels_last=False if args.contiguous else None,
                               model_name=describe(args.model), distributed=distributed,
                               progress=lambda done, total, task=task: bar.update(task, completed=done,
                                                                                  total=total)))
    return results


def _report_erfs(args: argparse.Namespace, console: Console, results: list) -> int:
    from rflens.report.erf import erf_summary, erf_table
    from rflens.sources import describe

    layers = args.layers or [args.layer]
    map_file = args.map if args.map is not None else (args.out.with_suffix(".npy") if args.out else None)
    docs = []
    for i, result in enumerate(results):
        path = None
        if map_file is not None:
            path = map_file if len(results) == 1 else map_file.with_name(f"{map_file.stem}.{layers[i]}.npy")
            result.save_map(path)
        docs.append(result.to_dict(str(path) if path is not None else None))
    doc = docs[0] if len(docs) == 1 else {"model": describe(args.model), "protocol": args.protocol, "layers": docs}
    if args.plot is not None:
        from rflens.report.figures import erf_depth_figure

        if len(results) == 1:
            results[0].plot(args.plot, log=args.log)
        else:
            erf_depth_figure(results).savefig(args.plot, dpi=120, bbox_inches="tight")
    if _json_document(args, doc):
        return 0
    console.print(erf_summary(results), highlight=False)
    console.print(erf_table(results), soft_wrap=True)
    for written in [map_file, args.out, args.plot]:
        if written is not None:
            console.print(f"wrote {written}" + (" (one .npy per layer)" if written is map_file and len(results) > 1
                                                else ""))
    return 0


def _load(args: argparse.Namespace, console: Console):
    """The model of the command line (built, weights loaded), on ``--device`` (left where it is for meta:
    the capture moves it)."""
    from rflens.sources import load_model

    with console.status(f"building {args.model}", spinner="dots"):
        model = load_model(args.model, model_args=_model_args(args), weights=args.weights, seed=args.seed)
    if args.input_size is None:
        args.input_size = _default_input_size(model)
    from rflens.capture_onnx import is_onnx

    # an ONNX model replays on meta tensors wherever --device points (what would run it is refused by name)
    return model if args.device == "meta" or is_onnx(model) else _to_device(model, args.device)


def _default_input_size(model) -> int | tuple[int, ...]:
    """An ONNX model's static input size (it must have one, or --input-size is needed); 224 for other models."""
    from rflens.capture import configured_input
    from rflens.capture_onnx import is_onnx

    if not is_onnx(model):
        return 224
    size = configured_input(model)
    if size is None:
        raise RflensError(f"{model.source}: the input's spatial dims are not static ({model.declared_input[1:]}, "
                          "None = dynamic): give --input-size")
    return tuple(size[1:]) if len(set(size[1:])) > 1 else size[1]


def _run_deadpixel(args: argparse.Namespace, console: Console) -> int:
    from rflens.deadpixel import dead_pixel_test
    from rflens.report.deadpixel import changes_table, culprit_table, indices_table, summary
    from rflens.sources import describe

    weighted = (args.weighted or args.weights is not None or args.sensitivity or args.target_class is not None
                or args.inputs != "noise")
    model = _load(args, console)
    bar, progress = _progress_bar(Console(stderr=True))
    with bar:
        report = dead_pixel_test(model, args.input_size, args.layer, in_channels=args.in_channels, weighted=weighted,
                                 inputs=None if args.inputs == "noise" else args.inputs, n=args.n,
                                 target_class=args.target_class, sensitivity=args.sensitivity,
                                 sensitivity_block=args.block, eps=args.eps, fix=args.fix, pools=args.pools,
                                 device=args.device, seed=args.noise_seed, model_name=describe(args.model),
                                 progress=progress)
    if args.plot is not None:
        report.plot(args.plot)
    if _json_document(args, report.to_dict()):
        return 0
    console.print(summary(report), highlight=False)
    if report.culprits:
        console.print(culprit_table(report.culprits), soft_wrap=True)
    console.print(indices_table(report), soft_wrap=True)
    if report.fix is not None:
        console.print(changes_table(report.fix), soft_wrap=True)
        if report.after_fix.culprits:
            console.print(culprit_table(report.after_fix.culprits, "culprit layers left"), soft_wrap=True)
    for written in [args.out, args.plot]:
        if written is not None:
            console.print(f"wrote {written}")
    return 0


def _run_fix_kernel_pad(args: argparse.Namespace, console: Console) -> int:
    from safetensors.torch import save_model

    from rflens.deadpixel import dead_pixel_test
    from rflens.report.deadpixel import changes_table
    from rflens.sources import describe

    model = _load(args, console)
    with console.status("padding kernels and checking the result", spinner="dots"):
        report = dead_pixel_test(model, args.input_size, args.layer, in_channels=args.in_channels, fix="kernel-pad",
                                 pools=args.pools, device=args.device, model_name=describe(args.model))
    padded = report.fix
    before, after = report.structural.indices, report.after_fix.structural.indices
    args.out.mkdir(parents=True, exist_ok=True)
    recipe_file, weights_file = args.out / "recipe.json", args.out / "model.safetensors"
    recipe_file.write_text(json.dumps(padded.recipe, indent=2) + "\n")
    save_model(padded.model, str(weights_file))
    doc = {"recipe": str(recipe_file), "weights": str(weights_file), **padded.to_dict(),
           "structural_before": before.to_dict(), "structural_after": after.to_dict()}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    console.print(changes_table(padded), soft_wrap=True)
    console.print(f"structural L1 {before.l1:.3g} -> {after.l1:.3g}; checkerboard period "
                  f"{before.period or 'none'} -> {after.period or 'none'}; output change "
                  f"{padded.max_abs_output_change:.3g} (output scale {padded.output_scale:.3g})")
    console.print(f"wrote {recipe_file} and {weights_file}: rflens.apply_recipe(model, recipe, weights=...) "
                  "rebuilds the fixed model")
    return 0


def _progress_bar(console: Console):
    """A rich progress bar on stderr (shown on a terminal only) and a callback ``progress(stage, done, total)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, transient=True, disable=not console.is_terminal)
    tasks: dict[str, int] = {}

    def progress(stage: str, done: int, total: int | None) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    return bar, progress


def _run_padding(args: argparse.Namespace, console: Console) -> int:
    from rflens.padding import WHAT_IF_MODES, padding_report
    from rflens.report.padding import foveation_table, spatial_bias_table, summary, uneven_table
    from rflens.sources import describe

    modes = args.modes or ["model", *WHAT_IF_MODES]
    model = _load(args, console)
    bar, progress = _progress_bar(Console(stderr=True))
    if args.size_range is not None and args.size_range.step != 1:
        raise RflensError("--range takes A:B (every size from A to B), not a step")
    size_range = (args.size_range.start, args.size_range.stop - 1) if args.size_range else None
    with bar:
        report = padding_report(model, args.input_size, in_channels=args.in_channels,
                                device=args.device,
                                model_name=describe(args.model), size_range=size_range, modes=modes, layer=args.layer,
                                progress=lambda done, total: progress("input sizes", done, total))
        if args.spatial_bias or args.probe:
            from rflens.spatialbias import blind_spot_probe, mean_activation

            run_on = "cpu" if args.device == "meta" else args.device
            if args.spatial_bias:
                maps = mean_activation(model, args.spatial_bias, inputs=None if args.inputs == "noise" else args.inputs,
                                       n=args.n, input_size=report.input_size, in_channels=args.in_channels,
                                       device=run_on, seed=args.noise_seed,
                                       progress=lambda d, t: progress("mean activations", d, t))
                report.spatial_bias.extend(maps.values())
            if args.probe:
                report.spatial_bias.append(blind_spot_probe(
                    model, input_size=report.input_size, layer=args.layer, stimulus=args.stimulus,
                    in_channels=args.in_channels, device=run_on, progress=lambda d, t: progress("probe", d, t)))
            if args.weights is None:
                report.notes.append("spatial bias with random weights shows the architecture, not what a trained "
                                    "network ignores: give --weights")
    written = [args.out]
    if args.plot is not None:
        report.plot(args.plot)
        written.append(args.plot)
        if report.spatial_bias:
            from rflens.report.spatialbias import spatialbias_figure

            bias_plot = args.plot.with_name(f"{args.plot.stem}_spatialbias{args.plot.suffix}")
            spatialbias_figure(report.spatial_bias).savefig(bias_plot, dpi=120, bbox_inches="tight")
            written.append(bias_plot)
    if _json_document(args, report.to_dict()):
        return 0
    console.print(summary(report), highlight=False)
    if report.uneven:
        console.print(uneven_table(report.layers), soft_wrap=True)
    console.print(foveation_table(report.foveation), soft_wrap=True)
    if report.spatial_bias:
        console.print(spatial_bias_table(report.spatial_bias), soft_wrap=True)
    for path in written:
        if path is not None:
            console.print(f"wrote {path}")
    return 0


def _audit(args: argparse.Namespace, console: Console, gradients: bool):
    """Build the model of ``args`` and audit it (gradients also with --erf, --weights or --images), with
    progress bars on stderr."""
    from rflens.audit import audit
    from rflens.sources import describe

    gradients = gradients or args.erf or args.weights is not None or args.images is not None
    model = _load(args, console)
    bar, progress = _progress_bar(Console(stderr=True))
    with bar:
        return audit(model, args.input_size, in_channels=args.in_channels, gradients=gradients, images=args.images,
                     n=args.n, device=args.device, seed=args.noise_seed, model_name=describe(args.model),
                     model_spec=_model_spec(args), top=getattr(args, "top", 3), progress=progress)


def _model_spec(args: argparse.Namespace) -> str:
    """The model and the options that build it, as a command line repeats them (strings stay strings)."""
    import shlex

    from rflens.sources import parse_model_args

    tokens = [args.model]
    for key, value in _model_args(args).items():
        plain = f"{key}={value}"  # quoted only where the string would read back as another literal ("2024")
        tokens += ["--model-arg", plain if parse_model_args([plain])[key] == value else f"{key}={value!r}"]
    for option, value in (("--in-channels", args.in_channels), ("--weights", args.weights),
                          ("--seed", args.seed or None)):
        if value is not None:
            tokens += [option, str(value)]
    return shlex.join(tokens)


def _model_args(args: argparse.Namespace) -> dict:
    """The model's constructor arguments: a config file's (``rflens check``), overridden by ``--model-arg``."""
    from rflens.sources import parse_model_args

    return {**getattr(args, "model_kwargs", {}), **parse_model_args(args.model_arg)}


def _run_audit(args: argparse.Namespace, console: Console) -> int:
    from rflens.report.audit import details, headline, verdict_lines

    result = _audit(args, console, gradients=False)
    if args.html is not None:
        from rflens.report.html import write_html

        with Console(stderr=True).status("writing the HTML report", spinner="dots"):
            write_html(result, args.html)
    if _json_document(args, result.to_dict()):
        return 0
    console.print(headline(result), highlight=False)
    console.print(verdict_lines(result.verdicts), highlight=False)
    for part in details(result):
        console.print(part, highlight=False, soft_wrap=True)
    for path in (args.html, args.out):
        if path is not None:
            console.print(f"wrote {path}")
    return 0


def _run_check(args: argparse.Namespace, console: Console) -> int:
    from rflens.checks import Config, check, limit, load_config, rule_named
    from rflens.report.audit import outcome_lines

    path = args.config if args.config is not None else Path("pyproject.toml")
    if args.config is not None and not path.is_file():
        raise RflensError(f"--config {path}: no such file")
    config = load_config(path) if path.is_file() else Config()
    if args.model is not None:  # another model than the configured one: its build options do not apply
        config = Config(rules=config.rules, limits=config.limits)
    args.model = args.model or config.model
    if args.model is None:
        raise RflensError("no model: give one on the command line or as model in [tool.rflens] of pyproject.toml")
    if args.input_size is None and config.input_size is not None:  # else the model's own (rflens._load)
        size = config.input_size
        try:
            args.input_size = parse_input_size("x".join(map(str, size)) if isinstance(size, list) else str(size))
        except argparse.ArgumentTypeError as exc:
            raise RflensError(f"{path}: input-size in [tool.rflens]: {exc}") from None
    args.in_channels = args.in_channels if args.in_channels is not None else config.in_channels
    args.weights = args.weights if args.weights is not None else config.weights
    args.model_kwargs = config.model_args  # --model-arg KEY=VALUE overrides them one by one
    config.weights = args.weights
    config.rules = args.rule if args.rule else config.rules
    for name, value in args.threshold:
        config.limits[name] = limit(name, value)
    for name in config.rules:
        rule_named(name)
    try:
        result = _audit(args, console, gradients=config.gradients)
    except (RflensError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - exit 1 means "a rule failed": a crash must not look like that
        raise RflensError(f"the audit could not run: {type(exc).__name__}: {exc}") from exc
    outcomes = check(result, config.rules, config.limits)
    failed = [o for o in outcomes if not o.passed]
    if args.json:
        print(json.dumps({"model": result.model, "input_size": list(result.input_size), "passed": not failed,
                          "outcomes": [o.to_dict() for o in outcomes]}, indent=2))
    else:
        console.print(outcome_lines(outcomes), highlight=False, markup=False, soft_wrap=True)
        console.print(f"{len(failed)} of {len(outcomes)} rules failed" if failed
                      else f"all {len(outcomes)} rules passed", highlight=False)
    return 1 if failed else 0


def _run_fix_padding_mode(args: argparse.Namespace, console: Console) -> int:
    from safetensors.torch import save_model

    from rflens.padding import padding_report
    from rflens.report.padding import fix_table, foveation_table, summary
    from rflens.sources import describe
    from rflens.transforms import padding_mode_fix

    model = _load(args, console)
    device = args.device
    with console.status(f"changing the padding mode to {args.mode} and auditing the result", spinner="dots"):
        before = padding_report(model, args.input_size, in_channels=args.in_channels, device=device,
                                model_name=describe(args.model), modes=["model"])
        fix = padding_mode_fix(model, args.mode, args.input_size, in_channels=args.in_channels, device=device,
                               model_name=describe(args.model), modes=["model"])
    args.out.mkdir(parents=True, exist_ok=True)
    recipe_file, weights_file = args.out / "recipe.json", args.out / "model.safetensors"
    suggested = before.suggested_size()
    fix.recipe["suggested_input_size"] = list(suggested) if suggested else None
    recipe_file.write_text(json.dumps(fix.recipe, indent=2) + "\n")
    save_model(fix.model, str(weights_file))
    doc = {"recipe": str(recipe_file), "weights": str(weights_file), **fix.to_dict(),
           "before": before.to_dict(), "after": fix.after.to_dict(),
           "suggested_input_size": fix.recipe["suggested_input_size"]}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    console.print(fix_table(fix), soft_wrap=True)
    console.print(foveation_table([before.foveation[0], fix.after.foveation[0]],
                                  title="foveation before (first row) and after (second row)"), soft_wrap=True)
    console.print(summary(fix.after), highlight=False)
    if suggested and tuple(suggested) != before.input_size:
        console.print(f"uneven layers at {'x'.join(map(str, before.input_size))}: {len(before.uneven)}; the padding "
                      f"mode does not change that, the input size does: nearest size without any is "
                      f"{'x'.join(map(str, suggested))}")
    console.print(f"wrote {recipe_file} and {weights_file}: rflens.apply_recipe(model, recipe, weights=...) "
                  "rebuilds the fixed model")
    return 0


def _run_sweep(args: argparse.Namespace, console: Console) -> int:
    import shlex

    from rflens.report.sweep import progress_bar, summary_markdown, summary_text, sweep_figure
    from rflens.sweep import DEFAULT_TIMEOUT, size_text, sweep

    for path in (args.plot, args.summary):  # found missing after an hours-long sweep would be too late
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    if args.timeout <= 0:
        raise RflensError(f"--timeout must be positive, got {args.timeout:g}")
    command = ["rflens", "sweep", *args.models, "--input-size", size_text(args.input_size), "--csv", str(args.csv)]
    for option, value in (("--in-channels", args.in_channels), ("--seed", args.seed or None),
                          ("--jobs", args.jobs if args.jobs > 1 else None),
                          ("--timeout", f"{args.timeout:g}" if args.timeout != DEFAULT_TIMEOUT else None),
                          ("--plot", args.plot), ("--summary", args.summary)):
        if value is not None:
            command += [option, str(value)]
    command += [flag for flag, on in (("--cnn-only", args.cnn_only), ("--retry-failed", args.retry_failed)) if on]
    errors = Console(stderr=True)
    bar, progress = progress_bar(errors)
    with bar:
        result = sweep(args.models, args.input_size, jobs=args.jobs, csv_path=args.csv, in_channels=args.in_channels,
                       seed=args.seed, cnn_only=args.cnn_only, timeout=args.timeout, retry_failed=args.retry_failed,
                       progress=progress,
                       announce=lambda text: errors.print(text, highlight=False, markup=False, soft_wrap=True))
    if args.plot is not None:
        sweep_figure(result).savefig(args.plot, dpi=120, bbox_inches="tight")
    if args.summary is not None:
        args.summary.write_text(summary_markdown(result, shlex.join(command)))
    console.print(summary_text(result), highlight=False, markup=False, soft_wrap=True)
    for path in (args.csv, args.plot, args.summary):
        if path is not None:
            console.print(f"wrote {path}", highlight=False)
    return result.exit_code


def _json_document(args: argparse.Namespace, doc: dict) -> bool:
    """Write the document to ``--out`` if given; print it and return True with ``--json``."""
    if args.out is not None:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    if args.json:
        print(json.dumps(doc, indent=2))
    return bool(args.json)


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
        from rflens.distributed import launch_from_env, printed_here

        try:
            launch = launch_from_env()
        except RflensError:  # a malformed RANK: that is the error being printed
            launch = None
        if not printed_here(exc, launch):
            return 2
        where = f"rank {launch.rank}: " if launch is not None else ""
        errors.print(f"[bold red]error:[/] {where}{exc}", highlight=False, markup=True, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Write docs/border.md: the border analysis (unproductive and critical layers, their cost, the feasible input
range and the best refinement) for the model families of Richter & Pal's receptive-field refinement paper.

Every model is built with random weights (no downloads) and analysed with ``rflens.border_report`` at one input
size (default 224). A model that fails gets its error in its table row; the others still run.

    python scripts/border_table.py                      # writes docs/border.md
    python scripts/border_table.py --out /tmp/border.md --size 224 --top 5
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import rflens
from rflens.border import border_report
from rflens.sources import describe, load_model

# (family, spec); None as the spec: the family has no model here, the reason comes from ``unavailable``.
FAMILIES: list[tuple[str, str | None]] = [
    ("VGG", "torchvision:vgg16"),
    ("VGG", "torchvision:vgg19"),
    ("MobileNetV1", "timm:mobilenetv1_100"),
    ("MobileNetV3", "torchvision:mobilenet_v3_large"),
    ("MobileNetV3", "torchvision:mobilenet_v3_small"),
    ("NASNet-A mobile", None),
    ("MnasNet", "torchvision:mnasnet1_0"),
    ("EfficientNet", "torchvision:efficientnet_b0"),
    ("EfficientNet", "timm:tf_efficientnet_b0"),
    ("ConvNeXt", "torchvision:convnext_tiny"),
]
NASNET_LARGE = "timm:nasnetalarge"  # analysed as a stand-in when timm has no NASNet-A mobile


@dataclass
class Row:
    family: str
    spec: str
    report: Any = None  # rflens.border.BorderReport
    error: str | None = None
    build_s: float = 0.0
    border_s: float = 0.0
    extra_notes: list[str] = field(default_factory=list)


def nasnet_mobile() -> tuple[str | None, str]:
    """timm's NASNet-A mobile spec, or None and why not."""
    import timm

    names = timm.list_models("*nasnet*")
    mobile = [n for n in names if "nasnet" in n and "mobile" in n]
    if mobile:
        return f"timm:{mobile[0]}", ""
    return None, (f"timm {timm.__version__} has no NASNet-A mobile (`timm.list_models('*nasnet*')`: "
                  f"{', '.join(names)}); the table's NASNet row is the large NASNet-A ({NASNET_LARGE}) as a stand-in.")


def analyse(family: str, spec: str, size: int, top: int) -> Row:
    row = Row(family, spec)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_model(spec)
        row.build_s = time.perf_counter() - start
        start = time.perf_counter()
        row.report = border_report(model, size, model_name=describe(spec), top=top)
        row.border_s = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - a failing model is reported in its row, not fatal
        row.error = f"{type(exc).__name__}: {exc}"
        row.border_s = time.perf_counter() - start
    return row


def cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def names(layers: list[str]) -> str:
    if not layers:
        return "0"
    shown = ", ".join(f"`{n}`" for n in layers) if len(layers) <= 4 else f"`{layers[0]}` … `{layers[-1]}`"
    return f"{len(layers)}: {shown}"


def axes(values: tuple[int | None, ...]) -> str:
    if any(v is None for v in values):
        return "none"
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def ratio(x: float) -> str:
    return f"{x:.3f}"


HEADER = ["model", "unproductive layers", "critical layers", "wasted FLOPs", "wasted params", "feasible input range",
          "top suggestion", "unproductive after", "FLOPs ratio", "params ratio"]


def table_row(row: Row) -> list[str]:
    model = f"{row.family}: `{row.spec}`"
    if row.error is not None:
        return [model, f"**failed**: {cell(row.error)}", *[""] * (len(HEADER) - 2)]
    r = row.report
    rng = r.resolution_range
    out = [model, names(r.unproductive), str(len(r.critical)), f"{100 * r.waste.flops_share:.1f} %",
           f"{100 * r.waste.params_share:.1f} %", f"{axes(rng.min)}..{axes(rng.max)}"]
    if r.suggestions:
        s = r.suggestions[0]
        change = cell(s.change) + ("" if s.applicable is None else f" (not applicable: {cell(s.applicable)})")
        out += [change, str(len(s.unproductive_after)), ratio(s.flops_ratio), ratio(s.params_ratio)]
    else:
        out += ["none (no unproductive layer)" if not r.unproductive else "none found", "", "", ""]
    return out


def render(rows: list[Row], unavailable: list[str], command: str, size: int,
           load: tuple[float, float]) -> str:
    import timm
    import torchvision

    lines = [
        "# Unproductive layers in the refinement paper's model families",
        "",
        "A layer is **unproductive** when its inputs already see the whole image (their smallest receptive field is "
        "at least the input resolution) and its own receptive field exceeds it, or when its input map is no larger "
        "than its kernel: it cannot integrate new context. A **critical** layer is the border: its receptive field "
        "exceeds the resolution, but some of its inputs do not yet see everything. See the README section "
        "[Unproductive layers](../README.md#unproductive-layers) and `rflens.border_report`.",
        "",
        f"Input {size}x{size}, random weights. Generated by:",
        "",
        "```",
        command,
        "```",
        "",
        f"rflens {rflens.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"timm {timm.__version__}, Python {platform.python_version()}.",
        "",
        "Wasted FLOPs and params: the unproductive layers' share of the model's. Feasible input range: the smallest "
        "input without unproductive layers .. the largest useful one (the largest receptive field of any layer). "
        "Top suggestion: the refinement (`rflens.refinement`) that leaves the fewest unproductive layers at the "
        "smallest FLOPs cost, with the unproductive layers left after it and its FLOPs and params relative to the "
        "model's.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---"] + ["---:"] * 5 + ["---"] + ["---:"] * 3) + "|",
    ]
    lines += ["| " + " | ".join(table_row(row)) + " |" for row in rows]
    lines += ["", "## Notes", ""]
    lines += [f"- {text}" for text in unavailable]
    for row in rows:
        notes = [] if row.report is None else list(row.report.notes)
        notes += row.extra_notes
        if row.report is not None and row.report.suggestions and row.report.suggestions[0].applicable is not None:
            notes.append(f"top suggestion not applicable to the model: {row.report.suggestions[0].applicable}")
        timing = f"built in {row.build_s:.1f} s, border analysis {row.border_s:.1f} s"
        if row.error is not None:
            timing = f"failed after {row.build_s + row.border_s:.1f} s"
        lines.append(f"- `{row.spec}`: {timing}" + "".join(f"; {cell(n)}" for n in notes) + ".")
    lines += ["", f"Timings on {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
              f"load average {load[0]:.1f} at the start and {load[1]:.1f} at the end (a shared machine: timings vary "
              "with its load); model builds (random init on the CPU) are not part of the analysis time.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/border.md", help="markdown file to write (default: docs/border.md)")
    parser.add_argument("--size", type=int, default=224, help="input resolution, square (default: 224)")
    parser.add_argument("--top", type=int, default=5, help="suggestions to rank per model (default: 5)")
    args = parser.parse_args(argv)
    command = shlex.join(["python", *sys.argv] if argv is None else ["python", "scripts/border_table.py", *argv])

    load_start = os.getloadavg()[0]
    rows: list[Row] = []
    unavailable: list[str] = []
    for family, spec in FAMILIES:
        specs = [spec]
        if spec is None:
            spec, why = nasnet_mobile()
            specs = [spec] if spec is not None else [NASNET_LARGE]
            if spec is None:
                unavailable.append(why)
                family = "NASNet-A large (stand-in)"
        for s in specs:
            print(f"{s} ...", end=" ", flush=True, file=sys.stderr)
            row = analyse(family, s, args.size, args.top)
            print(row.error or f"{row.border_s:.1f} s", file=sys.stderr)
            rows.append(row)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(rows, unavailable, command, args.size, (load_start, os.getloadavg()[0])))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

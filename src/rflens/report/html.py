"""The audit as one self-contained HTML file: verdicts, a sortable per-layer table, figures embedded as PNG data
URIs, the uneven-padding table and the fixes. Rendered with jinja2 from ``templates/audit.html.j2``; this module
only turns the audit's results into rows and pictures (it computes nothing)."""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rflens.audit import Audit
from rflens.report.border import human
from rflens.report.table import per_axis


@dataclass(frozen=True)
class Cell:
    text: str
    key: float | str  # what the column sorts by: a number where the column is numeric ("" sorts last)


def _num_key(values: Sequence[Any]) -> float | str:
    """A sort key for a per-axis value: the product of the axes (an area), '' when there is none."""
    known = [float(v) for v in values if v is not None]
    if len(known) != len(values) or not known:
        return ""
    return math.prod(known)


def _axes_cell(values: Sequence[Any] | None) -> Cell:
    if values is None:
        return Cell("", "")
    return Cell(per_axis(values), _num_key(values))


NUMBER_COLUMNS = frozenset({"output", "rf", "rf_min", "stride", "padding", "FLOPs", "params"})  # right-aligned
LAYER_COLUMNS = ("layer", "op", "output", "rf", "rf_min", "stride", "padding", "status", "FLOPs", "params",
                 "padding effect", "coverage")


def layer_rows(audit: Audit) -> list[list[Cell]]:
    """One row per module with a spatial output: its receptive field, its border status and cost (for layers
    with an op of their own), the effect of its padding and, for culprit layers, their uneven coverage."""
    border = {x.name: x for x in audit.border.layers}
    padding: dict[str, list[str]] = {}
    for row in audit.padding.layers:
        if row.uneven:
            padding.setdefault(row.name, []).append(f"axis {row.axis}: {row.describe()}")
    culprits = {c.name: c.coverage for c in audit.dead_pixels.culprits}
    rows = []
    for depth, layer in enumerate(audit.rf.layers):
        b = border.get(layer.name)
        rows.append([
            Cell(layer.name or "(model)", depth), Cell(layer.op, layer.op),
            _axes_cell(layer.output_size), _axes_cell(layer.rf), _axes_cell(layer.rf_min),
            Cell(per_axis(layer.stride), _num_key([float(s) if s is not None else None for s in layer.stride])),
            _axes_cell(layer.padding),
            Cell(b.status if b else "", b.status if b else ""),
            Cell(human(b.flops) if b else "", b.flops if b else ""),
            Cell(human(b.params) if b else "", b.params if b else ""),
            Cell("; ".join(padding.get(layer.name, [])), "; ".join(padding.get(layer.name, []))),
            Cell(culprits.get(layer.name, ""), culprits.get(layer.name, "")),
        ])
    return rows


def png(fig: Any) -> str:
    """A matplotlib figure as a ``data:image/png;base64`` URI (the figure is closed: nothing stays open)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    fig.clf()
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figures(audit: Audit) -> list[dict[str, str]]:
    """The report's pictures, each with an id and a caption."""
    from rflens.report.figures import deadpixel_figure, erf_figure

    out = [
        ("rf-depth", "Receptive field against depth (smallest and largest over paths) with the input resolution "
                     "as a line: layers past the crossing add no new context (Richter & Pal).",
         audit.border.plot()),
        ("structural-erf", f"Structural map of {audit.last_layer}'s centre unit: paths from each input pixel "
                           "(the uniform-weight ERF, log scale).", erf_figure(audit.structural_erf, log=True)),
    ]
    if audit.erf is not None:
        out.append(("gradient-erf", f"Gradient ERF of {audit.last_layer}'s centre unit ({audit.erf.inputs}, "
                                    "replknet protocol, log scale).", erf_figure(audit.erf, log=True)))
    out.append(("dead-pixels", "Dead-pixel test: the structural map of every output unit"
                               + (" and the kim-protocol gradient ERF" if audit.dead_pixels.erf is not None else "")
                               + ", zoomed on the centre (Kim et al.).", deadpixel_figure(audit.dead_pixels)))
    if audit.padding.foveation:
        out.append(("foveation", "Foveation maps: paths from each input pixel to every output unit, under the "
                                 "model's padding and other padding modes (Alsallakh et al.).", audit.padding.plot()))
    return [{"id": fid, "caption": caption, "src": png(fig)} for fid, caption, fig in out]


def render(audit: Audit) -> str:
    """The report as an HTML string."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    from rflens import __version__

    env = Environment(loader=PackageLoader("rflens.report", "templates"), autoescape=select_autoescape(["j2"]),
                      trim_blocks=True, lstrip_blocks=True)
    uneven = [r for r in audit.padding.layers if r.uneven]
    return env.get_template("audit.html.j2").render(
        audit=audit, size="x".join(map(str, audit.input_size)), version=__version__,
        columns=LAYER_COLUMNS, number_columns=NUMBER_COLUMNS, rows=layer_rows(audit), figures=figures(audit),
        uneven=uneven,
        foveation=audit.padding.foveation, culprits=audit.dead_pixels.culprits, fixes=audit.fixes,
        even=audit.padding.even, suggested=audit.padding.suggested_size())


def write_html(audit: Audit, path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(audit))

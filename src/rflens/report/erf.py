"""Terminal presentation of ERF results (rich): a summary of the run and one metrics row per layer."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.table import Table

from rflens.erf import ERF, PROTOCOLS


def _num(x: float | None, fmt: str = ".3g") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _axes(values: Sequence[float | None] | None, fmt: str = ".1f") -> str:
    return "-" if not values else " x ".join(_num(v, fmt) for v in values)


def erf_summary(results: Sequence[ERF]) -> str:
    first = results[0]
    size = "x".join(map(str, first.input_size))
    if first.protocol in PROTOCOLS:
        proto = PROTOCOLS[first.protocol]
        lines = [f"[bold]{first.model}[/] at {size}: ERF, protocol [bold]{proto.name}[/] ({proto.paper})",
                 f"target: {proto.target_text}; map: {proto.map_text}; averaged over {first.inputs}, {first.dtype} "
                 f"on {first.device}; {first.engine}"]
    else:
        lines = [f"[bold]{first.model}[/] at {size}: structural map (number of paths from each input pixel to the "
                 "unit; the uniform-weight ERF of Luo et al.), from the graph alone"]
    for r in results:
        lines.append(f"{r.layer} unit {r.unit}: {r.path}")
        if r.nonfinite:
            lines.append(f"[bold red]warning:[/] {r.nonfinite} of {r.n + r.nonfinite} gradient maps of {r.layer} "
                         "had NaN or inf values and were left out of the mean")
    return "\n".join(lines)


def erf_table(results: Sequence[ERF]) -> Table:
    thresholds = list(results[0].metrics["area_ratio"])
    table = Table(header_style="bold")
    table.add_column("layer")
    table.add_column("theoretical RF", justify="right")
    for t in thresholds:
        table.add_column(f"area {float(t):.0%}", justify="right")
    for name in ("sigma (px)", "fit R²", "ERF/TRF", "CoM offset", "r50 / r90", "images"):
        table.add_column(name, justify="right")
    mixed = len({r.protocol for r in results}) > 1
    for r in results:
        m = r.metrics
        trf = "global" if r.trf_box is None else " x ".join(str(hi - lo + 1) for lo, hi in r.trf_box)
        label = f"{r.layer} ({r.protocol})" if mixed else r.layer
        table.add_row(label, trf, *(_num(m["area_ratio"][t], ".2%") for t in thresholds),
                      _axes(m["sigma"]), _num(m["r2"], ".3f"), _num(m["erf_trf_ratio"], ".3f"),
                      _axes(m["com_offset"], "+.1f"), f"{_num(m['radius_50'], '.0f')} / {_num(m['radius_90'], '.0f')}",
                      f"{r.n}" + (f" (+{r.nonfinite} NaN/inf)" if r.nonfinite else "") if r.n else "-")
    return table

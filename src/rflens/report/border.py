"""Terminal presentation of the border analysis (rich): summary, layer table, suggestions, sweep."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.table import Table

from rflens.border import BorderReport, LayerBorder, SizeReport
from rflens.report.table import per_axis

STYLE = {"productive": "", "critical": "yellow", "unproductive": "bold red"}


def human(n: float, unit: str = "") -> str:
    """1.23 GFLOPs, 456 M, 7.8 k, 0 FLOPs."""
    for prefix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}".rstrip()


def summary(report: BorderReport) -> str:
    size = "x".join(map(str, report.input_size))
    rng = report.resolution_range
    lines = [
        f"[bold]{report.model}[/] at {size}: [bold red]{len(report.unproductive)} unproductive[/], "
        f"[yellow]{len(report.critical)} critical[/] of {len(report.layers)} layers",
        f"waste: {human(report.waste.flops, 'FLOPs')} ({report.waste.flops_share:.1%} of "
        f"{human(report.total_flops, 'FLOPs')}), {human(report.waste.params)} parameters "
        f"({report.waste.params_share:.1%})",
        f"feasible input size: from {per_axis(rng.min)} (no unproductive layer) to {per_axis(rng.max)} "
        "(largest receptive field)",
    ]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def layer_table(layers: Iterable[LayerBorder], title: str = "") -> Table:
    table = Table(title=title or None, title_justify="left", header_style="bold")
    for column in ("layer", "op", "input", "kernel", "rf_min in", "rf_min", "rf_max", "status", "FLOPs", "params"):
        table.add_column(column, justify="left" if column in ("layer", "op", "status") else "right")
    for x in layers:
        status = x.status + (f" ({x.reason})" if x.reason else "")
        table.add_row(x.name or "(model)", x.op, per_axis(x.input_size), per_axis(x.kernel) if x.kernel else "",
                      per_axis(x.input_rf_min), per_axis(x.rf_min), per_axis(x.rf_max),
                      f"[{STYLE[x.status]}]{status}[/]" if STYLE[x.status] else status, human(x.flops),
                      human(x.params))
    return table


def suggestion_table(report: BorderReport) -> Table:
    table = Table(title="refinements (rflens border ... --apply N --out recipe.json)", title_justify="left",
                  header_style="bold")
    for column in ("#", "change", "unproductive after", "FLOPs", "params", "apply"):
        table.add_column(column, justify="left" if column in ("change", "apply") else "right")
    for i, s in enumerate(report.suggestions, 1):
        table.add_row(str(i), s.change, f"{len(s.unproductive_after)} (from {len(report.unproductive)})",
                      f"x{s.flops_ratio:.3f}", f"x{s.params_ratio:.3f}",
                      "yes" if s.applicable is None else f"[yellow]by hand: {s.applicable}[/]")
    return table


def sweep_table(results: Sequence[SizeReport | Exception], sizes: Sequence[int]) -> Table:
    table = Table(title="resolution sweep", title_justify="left", header_style="bold")
    for column in ("input", "unproductive", "critical", "wasted FLOPs", "first unproductive"):
        table.add_column(column, justify="left" if column == "first unproductive" else "right")
    for n, r in zip(sizes, results, strict=True):
        if isinstance(r, Exception):
            table.add_row(str(n), "-", "-", "-", f"[dim]cannot run: {r}[/]")
            continue
        table.add_row(str(n), str(len(r.unproductive)), str(len(r.critical)), f"{r.waste.flops_share:.1%}",
                      r.unproductive[0] if r.unproductive else "")
    return table

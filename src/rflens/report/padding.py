"""Terminal presentation of a padding audit (rich): uneven layers, even input sizes, foveation, the fix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from rflens.padding import AxisPadding, FoveationMap, PaddingReport


def _num(x: float | None, fmt: str = ".3g") -> str:
    return "-" if x is None or x != x else format(x, fmt)


def uneven_table(rows: Sequence[AxisPadding], title: str = "uneven layers (effective pads differ)") -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("layer", "axis", "input", "kernel / stride / pads", "leftover", "effective pads", "effect"):
        table.add_column(col, justify="right" if col in ("axis", "input", "leftover") else "left")
    for r in rows:
        if not r.uneven:
            continue
        geometry = f"{r.kernel} / {r.stride} / ({r.pads[0]}, {r.pads[1]})"
        if r.dilation > 1:
            geometry += f" dil {r.dilation}"
        if r.mode != "zeros":
            geometry += f" {r.mode}"
        table.add_row(r.name or "(top level)", str(r.axis), str(r.size), geometry, str(r.leftover),
                      f"({r.effective[0]}, {r.effective[1]})", r.describe())
    return table


def foveation_table(maps: Sequence[FoveationMap], title: str = "foveation (paths from each input pixel to the "
                    "whole output)") -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("padding", "border / centre", "asymmetry per axis", "first / second half", "min / max",
                "never read"):
        table.add_column(col, justify="left" if col == "padding" else "right")
    for f in maps:
        s = f.stats
        table.add_row(f.mode, _num(s.border_ratio, ".3f"), " ".join(_num(a, ".3f") for a in s.asymmetry),
                      " ".join(_num(a, ".3f") for a in s.side_ratio), _num(s.min_max_ratio), str(s.never_read))
    return table


def summary(report: PaddingReport) -> str:
    size = "x".join(map(str, report.input_size))
    uneven = report.uneven
    lines = [f"[bold]{report.model}[/] at {size}: "
             + (f"{len(uneven)} uneven layer(s): {', '.join(uneven[:8])}{' ...' if len(uneven) > 8 else ''}"
                if uneven else "no uneven layer")]
    for e in report.even:
        where = "" if e.axis is None else f" along axis {e.axis}"
        rule = f" ({e.rule_text()})" if e.rule_text() else ""
        if not e.sizes:
            lines.append(f"no input size in {e.searched[0]}..{e.searched[1]}{where} is free of uneven layers")
            continue
        near = ", ".join(str(n) for n in dict.fromkeys((e.below, e.above)) if n is not None)
        lines.append(f"even input sizes{where}: {len(e.sizes)} of {e.runnable} runnable in {e.searched[0]}.."
                     f"{e.searched[1]}{rule}; nearest: {near}")
    model_map = report.foveation_of("model")
    if model_map is not None:
        s = model_map.stats
        lines.append(f"foveation: border/centre {_num(s.border_ratio, '.3f')}, asymmetry "
                     f"{' '.join(_num(a, '.3f') for a in s.asymmetry)} (0 = mirror-symmetric), never-read pixels "
                     f"{s.never_read}")
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines)


def spatial_bias_table(maps: Sequence[Any]) -> Table:
    table = Table(title="spatial bias", title_justify="left")
    for col in ("map", "layer", "asymmetry per axis", "min / max", "worst region (start, size)"):
        table.add_column(col)
    for m in maps:
        s = m.stats
        table.add_row(m.kind, m.layer, " ".join(_num(a, ".3f") for a in s.asymmetry), _num(s.min_max_ratio),
                      f"{list(s.worst_region)}, {list(s.worst_region_size)}")
    return table


def fix_table(fix: Any) -> Table:
    mode = fix.recipe["mode"]
    table = Table(title=f"padding mode -> {mode}", title_justify="left")
    for col in ("layer", "type", "padding", "change"):
        table.add_column(col)
    for c in fix.changes:
        table.add_row(c["module"], c["type"], " ".join(f"({a}, {b})" for a, b in c["padding"]),
                      f"{c['mode'][0]} -> {c['mode'][1]}")
    for name, why in fix.skipped:
        table.add_row(name, "-", "-", f"left as is: {why}")
    return table

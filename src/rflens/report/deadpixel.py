"""Terminal presentation of a dead-pixel test (rich): culprit layers, indices before and after the fix, changes."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from rflens.deadpixel import Culprit, DeadPixelReport, MapTest


def _num(x: float | None, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def culprit_table(culprits: Sequence[Culprit], title: str = "culprit layers (kernel not a multiple of the stride)"
                  ) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("layer", "op", "kernel / stride", "coverage (reads per position)", "under-read", "never read"):
        table.add_column(col, justify="right" if col in ("under-read", "never read") else "left")
    for c in culprits:
        kernel = "x".join(map(str, c.kernel)) + " / " + "x".join(map(str, c.stride))
        if any(d > 1 for d in c.dilation):
            kernel += " dil " + "x".join(map(str, c.dilation))
        table.add_row(c.name or "(top level)", c.op, kernel, c.coverage, f"{c.under_read:.0%}", f"{c.never_read:.0%}")
    return table


def _rows(report: DeadPixelReport, label: str) -> list[tuple[str, MapTest]]:
    rows = [(f"structural{label}", report.structural)]
    if report.erf is not None:
        rows.append((f"ERF (kim){label}", report.erf))
    return rows


def indices_table(report: DeadPixelReport) -> Table:
    table = Table(title="dead-pixel indices (map normalised to mean 1 over its field)", title_justify="left")
    for col in ("map", "L1", "L2", "period", "strength", "dead pixels"):
        table.add_column(col, justify="left" if col == "map" else "right")
    rows = _rows(report, "")
    if report.after_fix is not None:
        rows += _rows(report.after_fix, " after kernel padding")
    for label, test in rows:
        ix = test.indices
        period = "none" if ix.period is None else f"{ix.period} px"
        table.add_row(label, _num(ix.l1), _num(ix.l2), period, _num(ix.strength, ".2f"),
                      f"{ix.dead_share:.2%} ({ix.dead_pixels})")
    return table


def changes_table(fix: object) -> Table:
    table = Table(title="kernel padding", title_justify="left")
    for col in ("layer", "type", "kernel", "padding", "zeros before", "function"):
        table.add_column(col)
    for c in fix.changes:  # type: ignore[attr-defined]
        table.add_row(c["module"], c["type"], " -> ".join("x".join(map(str, k)) for k in c["kernel"]),
                      " -> ".join("x".join(map(str, p)) for p in c["padding"]), "x".join(map(str, c["kernel_offset"])),
                      "same" if c["exact"] else "changed (wider window)")
    for name, why in fix.refused:  # type: ignore[attr-defined]
        table.add_row(name, "-", "-", "-", "-", f"left as is: {why}")
    return table


def summary(report: DeadPixelReport) -> str:
    size = "x".join(map(str, report.input_size))
    ix = report.structural.indices
    lines = [f"[bold]{report.model}[/] at {size}, {report.layer}: {len(report.culprits)} culprit layer(s); "
             + (f"structural checkerboard with period {ix.period} px (strength {ix.strength:.2f}), L1 {ix.l1:.3g}"
                if ix.period is not None else f"no structural checkerboard, L1 {ix.l1:.3g}")]
    if report.erf is not None:
        lines.append(f"ERF: {report.erf.detail.get('target')}, {report.erf.detail.get('inputs')}")
    if report.sensitivity is not None:
        s = report.sensitivity
        r2 = "-" if s.r2 is None else f"{s.r2:.2f}"
        lines.append(f"positional sensitivity (eps {s.eps:g}, {s.images} images, block at the ERF's centre of mass, "
                     f"{' x '.join(str(hi - lo) for lo, hi in s.block)}): R^2 with the ERF map {r2}")
    if report.after_fix is not None:
        fix = report.fix
        after = report.after_fix.structural.indices
        ratio = ix.l1 / after.l1 if after.l1 > 0 else float("inf")
        change = f"{ratio:.1f}x lower" if ratio >= 1 else f"{1 / ratio:.1f}x higher"
        lines.append(f"after kernel padding: L1 {after.l1:.3g} ({change}), "
                     + (f"period {after.period} px" if after.period else "no checkerboard")
                     + f", {len(report.after_fix.culprits)} culprit(s) left; output change "
                     f"{fix.max_abs_output_change:.3g} (output scale {fix.output_scale:.3g}"
                     + (", every change exact)" if fix.exact else ", a widened pooling changes the function)"))
    return "\n".join(lines)

"""Presenting a sweep (:mod:`rflens.sweep`): the progress bar, the summary in the terminal and as Markdown, and
the figure of the last map's receptive field against the cost of every model. Nothing here computes a number
of a model: everything is read off the rows."""

from __future__ import annotations

import os
import platform
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from rflens.report.figures import INPUT_COLOR
from rflens.sweep import FAILED, OK, SKIPPED, Row, counts, failures

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from rflens.sweep import SweepResult

LISTED = 5  # models named per failure group in the terminal
TOP = 10  # rows of the Markdown tables
FAMILIES = 10  # families with a colour of their own in the figure
FAMILY_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                 "#bcbd22", "#393b79")
OTHER_COLOR = "#b0b0b0"


def progress_bar(console: Console) -> tuple[Progress, Callable[[Row | None, int, int], None]]:
    """A rich progress bar (on ``console``; shown on a terminal only) with done/total, the ok/failed/skipped
    counts and the elapsed time, and the ``progress(row, done, total)`` callback :func:`rflens.sweep.sweep`
    takes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[tally]}"), TimeElapsedColumn(), console=console, transient=True,
                   disable=not console.is_terminal)
    tally: Counter[str] = Counter()
    task: list[Any] = []

    def text() -> str:
        return f"[green]{tally[OK]} ok[/] [red]{tally[FAILED]} failed[/] {tally[SKIPPED]} skipped"

    def progress(row: Row | None, done: int, total: int) -> None:
        if row is not None:
            tally[row.status] += 1
        if not task:
            task.append(bar.add_task("sweep", total=total, tally=text()))
        bar.update(task[0], completed=done, total=total, tally=text(),
                   description="sweep" if row is None else f"sweep (last: {row.model})")

    return bar, progress


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    minutes, sec = divmod(round(s), 60)
    return f"{minutes} min {sec:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _tally(rows: Sequence[Row]) -> str:
    c = counts(rows)
    return f"{c[OK]} ok, {c[SKIPPED]} skipped, {c[FAILED]} failed"


def summary_text(result: SweepResult) -> str:
    """The terminal summary: models surveyed, ok/skipped/failed, wall time, failures grouped by reason (the first
    few models of each group)."""
    where = f" in {result.csv_path}" if result.csv_path is not None else ""
    lines = [f"surveyed {len(result.rows)} of {len(result.models)} models at {result.input_size} in "
             f"{_seconds(result.seconds)}: {_tally(result.rows)}"]
    if result.earlier:
        lines.append(f"{len(result.earlier)} already{where} (not surveyed again); all {len(result.all_rows)} rows: "
                     f"{_tally(result.all_rows)}")
    groups = failures(result.rows)
    if groups:
        lines.append(f"failures of this run by reason ({len(groups)}):")
        for reason, models in groups.items():
            more = f" (+{len(models) - LISTED} more)" if len(models) > LISTED else ""
            lines.append(f"  {len(models)} x {reason}: {', '.join(models[:LISTED])}{more}")
    return "\n".join(lines)


def _versions() -> str:
    import torch

    parts = [f"{os.cpu_count()} CPUs", f"Python {platform.python_version()}", f"torch {torch.__version__}"]
    for name in ("timm", "torchvision"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        parts.append(f"{name} {module.__version__}")
    return ", ".join(parts)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _gflops(row: Row) -> str:
    return "" if row.flops is None else f"{row.flops / 1e9:.3g}"


def summary_markdown(result: SweepResult, command: str) -> str:
    """The sweep as Markdown (for docs/sweep.md): the command, the machine, counts and times, every failure
    grouped by reason, the models with the largest unproductive FLOP share and with the most uneven layers."""
    rows = result.all_rows
    ok = [r for r in rows if r.status == OK]
    lines = [f"# rflens sweep: {len(result.models)} models at {result.input_size}", "",
             f"- command: `{command}`",
             f"- machine: {platform.machine()}, {_versions()}",
             f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
             f"- rows: {len(rows)} ({_tally(rows)})",
             f"- this run: {len(result.rows)} models surveyed ({_tally(result.rows)}), {len(result.earlier)} already "
             f"in the CSV; wall time {_seconds(result.seconds)} with {result.jobs} job(s); sum of per-model seconds "
             f"{_seconds(sum(r.seconds for r in result.rows))} this run, {_seconds(sum(r.seconds for r in rows))} "
             "over all rows", ""]
    groups = failures(rows)
    lines += [f"## Failures ({sum(len(m) for m in groups.values())})", ""]
    if groups:
        lines += _table(["models", "reason", "which"],
                        [(len(m), reason, ", ".join(f"`{x}`" for x in m)) for reason, m in groups.items()])
    else:
        lines.append("none")
    waste = sorted((r for r in ok if r.unproductive_flops_share), key=lambda r: -(r.unproductive_flops_share or 0))
    lines += ["", f"## Largest unproductive FLOP share (top {TOP} of {len(waste)} models with any)", ""]
    lines += _table(["model", "family", "unproductive layers", "FLOP share", "GFLOPs", "final rf"],
                    [(f"`{r.model}`", r.family, r.unproductive_layers, f"{(r.unproductive_flops_share or 0):.2%}",
                      _gflops(r), r.final_rf) for r in waste[:TOP]]) if waste else ["none"]
    uneven = sorted((r for r in ok if r.uneven_layers), key=lambda r: -(r.uneven_layers or 0))
    lines += ["", f"## Most uneven layers (top {TOP} of {len(uneven)} models with any)", ""]
    lines += _table(["model", "family", "uneven layers", "nearest even size", "culprit layers"],
                    [(f"`{r.model}`", r.family, r.uneven_layers, r.nearest_even_size or "none found",
                      r.culprit_layers) for r in uneven[:TOP]]) if uneven else ["none"]
    return "\n".join(lines) + "\n"


def _largest(text: str) -> float | None:
    """The largest number of a per-axis cell (``199``, ``35x67``), None when there is none."""
    numbers = [float(p) for p in text.split("x") if p and p != "-"]
    return max(numbers) if numbers else None


def sweep_figure(result: SweepResult) -> Figure:
    """The receptive field of each ok model's last spatial map (largest axis, px, log) against its GFLOPs (log),
    one colour per family (the most common ones; the rest grey), diamonds where the last map is also global
    (it depends on the whole input through attention, pooling gates...). Object API only, as
    :mod:`rflens.report.figures`."""
    points = [(r, _largest(r.final_rf)) for r in result.all_rows if r.status == OK and r.flops]
    drawn = [(r, rf) for r, rf in points if rf is not None]
    common = [f for f, _ in Counter(r.family for r, _ in drawn).most_common(FAMILIES)]
    colour = {f: FAMILY_COLORS[i] for i, f in enumerate(common)}
    fig = Figure(figsize=(9.5, 5.6), layout="constrained")
    ax = fig.add_subplot()
    for family in [*common, None]:
        members = [(r, rf) for r, rf in drawn if (r.family in colour) == (family is not None)
                   and (family is None or r.family == family)]
        for is_global, marker in ((False, "o"), (True, "D")):
            part = [(r.flops / 1e9, rf) for r, rf in members if bool(r.is_global) == is_global]
            if part:
                ax.scatter(*zip(*part, strict=True), s=26, marker=marker, alpha=0.85, linewidths=0.5,
                           edgecolors="#333333", color=colour.get(family, OTHER_COLOR), zorder=3 if family else 2)
    ax.axhline(_largest(result.input_size) or 1.0, color=INPUT_COLOR, ls=":", lw=1.2, zorder=1)
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # 100, 200, 500 rather than 10^2, 2x10^2
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
    else:
        ax.text(0.5, 0.5, "no model with a local receptive field", transform=ax.transAxes, ha="center",
                va="center")
    ax.set_xlabel("GFLOPs per image (torch.utils.flop_counter: 2 per multiply-add; log scale)")
    ax.set_ylabel("receptive field of the last spatial map (px, largest axis; log scale)")
    ax.grid(True, which="major", color="#e3e3e3", lw=0.7)
    ax.set_axisbelow(True)
    handles = [Line2D([], [], ls="", marker="o", ms=7, mfc=colour[f], mec="#333333", mew=0.5) for f in common]
    labels = list(common)
    if any(r.family not in colour for r, _ in drawn):
        handles.append(Line2D([], [], ls="", marker="o", ms=7, mfc=OTHER_COLOR, mec="#333333", mew=0.5))
        labels.append("other")
    handles += [Line2D([], [], ls="", marker="o", ms=7, mfc="white", mec="#333333"),
                Line2D([], [], ls="", marker="D", ms=6, mfc="white", mec="#333333"),
                Line2D([], [], color=INPUT_COLOR, ls=":", lw=1.2)]
    labels += ["last map local", "last map also global", f"input {result.input_size} px"]
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False, title="family",
               title_fontsize=8, alignment="left")
    missing = len(points) - len(drawn)
    note = f"; {missing} without a local field not drawn" if missing else ""
    fig.suptitle(f"Receptive field vs cost: {len(drawn)} models at {result.input_size}{note}")
    return fig


__all__ = ["progress_bar", "summary_markdown", "summary_text", "sweep_figure"]

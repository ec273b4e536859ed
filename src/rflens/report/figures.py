"""Figures (matplotlib, object API only: no pyplot, no global state, nothing shown; works headless).

:func:`border_figure` draws Richter & Pal's picture of a border analysis: the receptive field of every layer
against its depth, with the input resolution as a horizontal line. Where the curve crosses that line the
network stops integrating new context; the layers after it are the unproductive ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from rflens.border import BorderReport, LayerBorder

STATUS_COLORS = {"productive": "#2a9d4b", "critical": "#f0a202", "unproductive": "#d62728"}
R_MIN_COLOR, R_MAX_COLOR, INPUT_COLOR, BAND_COLOR = "#1f3b73", "#8a8a8a", "#222222", "#4c9be8"


def axis_names(ndim: int) -> list[str]:
    """Height and width for images; ``axis i`` otherwise (1-D signals, volumes)."""
    return ["height", "width"] if ndim == 2 else [f"axis {a}" for a in range(ndim)]


def _panels(report: BorderReport) -> list[int | None]:
    """The axes to draw: one panel (None: every axis alike) when the input size and every layer's numbers agree
    on all axes, else one panel per axis, so that no axis hides behind another."""
    ndim = len(report.input_size)
    alike = len(set(report.input_size)) == 1 and all(
        len(set(x.rf_min)) == 1 and len(set(x.rf_max)) == 1 and len(set(x.axis_status)) == 1 for x in report.layers)
    return [None] if alike or ndim == 1 else list(range(ndim))


def _series(layers: Sequence[LayerBorder], values: Sequence[int | None]) -> tuple[list[int], list[int]]:
    """(1-based depths, values) of the layers that have a value: a missing one is skipped, not drawn as 0."""
    pairs = [(i, v) for i, v in enumerate(values, 1) if v is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _draw_axis(ax: Axes, report: BorderReport, axis: int | None) -> list[int]:
    """One panel: r_min and r_max per layer, markers coloured by status, the input resolution and the feasible
    input range. ``axis`` None draws axis 0 for a report whose axes all agree (the layer's overall status)."""
    a = 0 if axis is None else axis
    layers = report.layers
    n = report.input_size[a]
    statuses = [x.status if axis is None else x.axis_status[a] for x in layers]

    lo_rng, hi_rng = report.resolution_range.min[a], report.resolution_range.max[a]
    if lo_rng is not None and hi_rng is not None and lo_rng <= hi_rng:
        ax.axhspan(lo_rng, hi_rng, color=BAND_COLOR, alpha=0.12, lw=0, zorder=0,
                   label=f"feasible input {lo_rng}\u2013{hi_rng}")
    elif lo_rng is not None:  # no band (range empty or unbounded): still show where unproductive layers vanish
        ax.axhline(lo_rng, color=BAND_COLOR, ls=":", lw=1.2, zorder=1,
                   label=f"no unproductive layer from input {lo_rng}")
    ax.axhline(n, color=INPUT_COLOR, ls="--", lw=1.2, zorder=1, label=f"input {n}")
    ax.annotate(f"input {n}", xy=(0, n), xycoords=("axes fraction", "data"), xytext=(4, 3),
                textcoords="offset points", ha="left", va="bottom", fontsize=8, color=INPUT_COLOR)

    xs_max, ys_max = _series(layers, [x.rf_max[a] for x in layers])
    xs_min, ys_min = _series(layers, [x.rf_min[a] for x in layers])
    scale = min(1.0, 30 / max(len(layers), 1)) ** 0.5  # smaller markers when there are many layers
    same = all(x.rf_max[a] == x.rf_min[a] for x in layers)
    ax.plot(xs_max, ys_max, color=R_MAX_COLOR, ls="--", lw=1.3, marker="s", ms=8.5 * scale, mfc="white",
            mec=R_MAX_COLOR, zorder=2, label="r_max (equal to r_min)" if same else "r_max")
    ax.plot(xs_min, ys_min, color=R_MIN_COLOR, lw=1.6, zorder=3, label="r_min")
    ax.scatter(xs_min, ys_min, c=[STATUS_COLORS[statuses[i - 1]] for i in xs_min], s=34 * scale**2,
               edgecolors=R_MIN_COLOR, linewidths=0.7, zorder=4)

    ax.set_xlim(0.3, max(len(layers), 1) + 0.7)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True, min_n_ticks=1))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # whole pixels
    ax.grid(True, which="major", color="#e3e3e3", lw=0.7, zorder=0)
    ax.set_axisbelow(True)
    if axis is None or axis == 0:  # the panels share the y axis: one label
        ax.set_ylabel("receptive field size (px)")
    ax.set_xlabel("layer depth")
    if axis is not None:
        ax.set_title(f"{axis_names(len(report.input_size))[a]} ({n} px)", loc="left", fontsize=10)

    first = next((i for i, s in enumerate(statuses, 1) if s == "unproductive"), None)
    if first is None:  # no unproductive layer: point at the border layer instead
        first = next((i for i, s in enumerate(statuses, 1) if s == "critical"), None)
    y = layers[first - 1].rf_min[a] if first is not None else None
    if first is not None and y is not None:
        ax.annotate(f"{layers[first - 1].name or '(model)'}\n({statuses[first - 1]})", xy=(first, y),
                    xytext=(-40, 16), textcoords="offset points", ha="right", fontsize=8,
                    arrowprops={"arrowstyle": "->", "color": "#555555", "lw": 0.8})
    bad, crit = statuses.count("unproductive"), statuses.count("critical")
    ax.set_title(f"{bad} unproductive, {crit} critical of {len(layers)} layers", loc="right", fontsize=9,
                 color="#444444")

    return ys_min + ys_max + [n] + [v for v in (lo_rng, hi_rng) if v is not None]


def _legend(axes: Sequence[Axes]) -> tuple[list[Any], list[str]]:
    """One legend for the figure: the input line(s) and feasible range, r_min and r_max (each label once), then
    the status colours; matplotlib fills columns first, so these come out in pairs."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if not seen:
        return [], []
    rank = {"input": 0, "r_min": 2, "r_max": 3}  # anything else (the feasible range) between inputs and r_min
    order = sorted(seen, key=lambda k: next((i for p, i in rank.items() if k.startswith(p)), 1))
    handles = [seen[k] for k in order]
    for status, color in STATUS_COLORS.items():
        handles.append(Line2D([], [], ls="", marker="o", ms=6, mfc=color, mec=R_MIN_COLOR, mew=0.7))
        order.append(status)
    return handles, order


def border_figure(report: BorderReport) -> Figure:
    """Richter & Pal's figure of ``report`` (a :class:`rflens.border.BorderReport`): r_min (solid, markers
    coloured productive / critical / unproductive) and r_max (dashed) of every layer against its depth (1 =
    first layer), with the input resolution as a dashed horizontal line and the feasible input range shaded.
    The y axis is linear: what matters is where the curve crosses the input line, and a log scale would
    squeeze exactly that region. One panel per spatial axis when the axes differ. The
    figure is built with the object API (never pyplot), so it is safe in scripts, servers and tests."""
    panels = _panels(report)
    fig = Figure(figsize=(8.5, 4.8) if len(panels) == 1 else (6.2 * len(panels), 4.8), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    values: list[int] = []
    for ax, axis in zip(axes, panels, strict=True):
        if report.layers:
            values += _draw_axis(ax, report, axis)
        else:
            ax.text(0.5, 0.5, "no layers", transform=ax.transAxes, ha="center", va="center")
    if values:  # one y range for every panel (they share it), with room above for the annotation
        axes[0].set_ylim(0, max(values) * 1.22)
    handles, labels = _legend(axes)
    if handles:  # below the panels, never over the curves
        fig.legend(handles, labels, loc="outside lower center", ncol=(len(handles) + 1) // 2, fontsize=8,
                   frameon=False)
    fig.suptitle(f"{report.model} at {'x'.join(map(str, report.input_size))}")
    return fig


__all__ = ["STATUS_COLORS", "axis_names", "border_figure"]

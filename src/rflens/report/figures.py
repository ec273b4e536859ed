"""Figures (matplotlib, object API only: no pyplot, no global state, nothing shown; works headless).

:func:`border_figure` draws Richter & Pal's picture of a border analysis: the receptive field of every layer
against its depth, with the input resolution as a horizontal line. Where the curve crosses that line the
network stops integrating new context; the layers after it are the unproductive ones.

:func:`erf_figure` draws one effective receptive field (:class:`rflens.erf.ERF`): the map as a heatmap with the
theoretical field's box and RepLKNet's area-ratio squares over it. :func:`erf_depth_figure` draws the ERF's size
against depth next to the theoretical field's, Luo et al.'s picture (the ERF grows like sqrt(depth) while the
theoretical field grows linearly) and Kim et al.'s (it saturates). Both only read the result objects.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from rflens.border import BorderReport, LayerBorder
    from rflens.erf import ERF

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


# -- ERF figures ------------------------------------------------------------------------------------------------
ERF_CMAP = "gray"  # Luo et al.'s pictures: dark where the unit does not look, bright where it does
TRF_COLOR, CENTRE_COLOR, COM_COLOR = "#ffd400", "#00e5ff", "#ff4fd8"
SQUARE_COLORS = ("#e41a1c", "#4daf4a", "#3a8ee6", "#ff7f00", "#a05cc8", "#a65628", "#f781bf", "#17becf")
ERF_COLOR, SIDE_COLOR, TRF_LINE_COLOR, GLOBAL_COLOR = "#1f3b73", "#2a9d4b", "#8a8a8a", "#d62728"
LOG_FLOOR, LOG_FLOOR_TEXT = 1e-4, "1e-4"  # log scale: values below this fraction of the peak drawn at the floor
_MEDIUM = {1: "input", 2: "image", 3: "volume"}


def _outline(lw: float) -> list[Any]:
    """A dark edge under a coloured line, so that it reads on the bright and on the dark part of the map."""
    return [patheffects.withStroke(linewidth=lw + 1.8, foreground="#111111")]


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def _geomean(values: Sequence[float]) -> float:
    return math.prod(values) ** (1.0 / len(values))


def _percent(x: float) -> str:
    """``x`` (a fraction) in percent for a label: one decimal, two significant digits below 1 %."""
    p = 100.0 * x
    return f"{p:.1f}" if p >= 1 or p == 0 else f"{p:.2g}"


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def _area_ratios(metrics: dict[str, Any]) -> list[tuple[float, float]]:
    """``(threshold, ratio)`` of ``metrics["area_ratio"]`` in their order; a None ratio (no ERF) is skipped."""
    ratios = metrics.get("area_ratio") or {}
    return [(float(t), float(r)) for t, r in ratios.items() if _finite(r)]


def _squares(metrics: dict[str, Any], medium: str) -> list[tuple[float, str]]:
    """``(ratio, legend label)`` per distinct area ratio: thresholds that share a square share its entry
    ("20 %, 30 %: 1.5 % of the image"), since two equal squares would hide each other."""
    groups: dict[float, list[float]] = {}
    for t, r in _area_ratios(metrics):
        groups.setdefault(r, []).append(t)
    return [(r, f"{', '.join(f'{100 * t:g} %' for t in ts)}: {_percent(r)} % of the {medium}")
            for r, ts in groups.items()]


def square_sides(ratio: float, shape: Sequence[int]) -> tuple[int, ...]:
    """Per axis, the extent (pixels) of the centred square, segment or cube that covers ``ratio`` of a map of
    ``shape`` once clipped to it, derived from the ratio alone (for drawing): the side is
    ``(ratio * size) ** (1 / ndim)`` (``round(sqrt(ratio * H * W))`` in 2-D) on every axis where it fits. An
    axis shorter than that is covered whole and the rest of the area is shared by the others, so a square that
    the map clips to a rectangle (a large square on a narrow image) is drawn as that rectangle, not as a too
    small square. Exact up to rounding; a clipped side is exact up to one pixel."""
    area = ratio * math.prod(shape)
    sides = [float(n) for n in shape]
    free = sorted(range(len(shape)), key=lambda a: shape[a])
    while free:
        side = area ** (1.0 / len(free))
        if side < shape[free[0]]:
            for a in free:
                sides[a] = side
            break
        area /= shape[free[0]]
        free.pop(0)
    return tuple(max(1, min(n, round(s))) for s, n in zip(sides, shape, strict=True))


def _run_edges(side: int, n: int) -> tuple[float, float]:
    """Pixel edges of a run of ``side`` pixels centred on index ``n // 2`` (as the area ratio centres its
    square), shifted inside ``0..n-1`` where it would stick out (the clipped square keeps its drawn area)."""
    start = min(max(n // 2 - (side - 1) / 2, 0.0), float(n - side))
    return start - 0.5, start + side - 0.5


def _box_edges(lo: int, hi: int, n: int) -> tuple[float, float] | None:
    """Pixel edges of ``[lo, hi]`` (inclusive) clipped to ``0..n-1``; None when it misses the input."""
    if hi < 0 or lo > n - 1:
        return None
    return max(lo, 0) - 0.5, min(hi, n - 1) + 0.5


def _norm(peak: float, log: bool) -> tuple[Normalize, str]:
    """The colour scale of a map whose largest value is ``peak``, and how the colour bar names it."""
    if not peak > 0:
        return Normalize(0.0, 1.0), "all zeros: no ERF"
    if log:
        return LogNorm(peak * LOG_FLOOR, peak, clip=True), f"log scale: LogNorm, floor {LOG_FLOOR_TEXT} x peak"
    return Normalize(0.0, peak), "linear"


def _header(result: ERF, slice_note: str = "") -> tuple[str, str]:
    """The figure's title and its small caption (the unit, how the map was computed, images left out)."""
    title = (f"ERF: {result.model}, layer {result.layer} ({result.protocol}, {_images(result.n)})" if result.n else
             f"structural map: {result.model}, layer {result.layer} (path counts, no weights)")
    unit = f"unit ({', '.join(map(str, result.unit))})" if result.unit else "unit: the whole (non-spatial) output"
    caption = f"{unit}; {result.path}"
    if result.nonfinite:
        caption += f"; {_images(result.nonfinite)} with NaN/inf gradients left out"
    return title + slice_note, textwrap.fill(caption, 110)


def _field_centre(result: ERF, shape: Sequence[int]) -> tuple[list[float], str]:
    """The probed unit's receptive-field centre (the middle of its theoretical box); the input's centre for a
    global field, which has no centre of its own."""
    if result.trf_box is not None:
        return [(lo + hi) / 2 for lo, hi in result.trf_box], "unit's RF centre"
    return [(n - 1) / 2 for n in shape], "input centre (global field)"


def _trf_label(result: ERF, shape: Sequence[int]) -> str:
    assert result.trf_box is not None
    label = "theoretical RF " + " x ".join(str(hi - lo + 1) for lo, hi in result.trf_box)
    if any(lo < 0 or hi > n - 1 for (lo, hi), n in zip(result.trf_box, shape, strict=True)):
        label += f" (clipped to the {_MEDIUM[len(shape)]})"
    return label


def _erf_legend(fig: Figure, ax: Axes, extra: Sequence[tuple[Any, str]] = ()) -> None:
    handles, labels = ax.get_legend_handles_labels()
    for handle, label in extra:
        handles.append(handle)
        labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(handles)), fontsize=8,
                   frameon=False)


def _erf_map(result: ERF, m: np.ndarray, log: bool) -> Figure:
    """2-D maps, and the central slice along the first axis of 3-D ones."""
    sliced = m.ndim == 3
    depth = m.shape[0] // 2 if sliced else 0
    image = m[depth] if sliced else m
    rows_n, cols_n = image.shape
    ya, xa = (1, 2) if sliced else (0, 1)  # the map's axes drawn as rows and columns
    medium = _MEDIUM[m.ndim]
    peak = float(image.max())
    norm, scale = _norm(peak, log)
    if sliced and not peak > 0 and float(m.max()) > 0:
        scale = "the slice is all zeros"
    shown = np.maximum(image, peak * LOG_FLOOR) if isinstance(norm, LogNorm) else image

    fig = Figure(figsize=(7.2, min(max(5.6 * rows_n / cols_n + 2.2, 4.2), 8.5)), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap=ERF_CMAP, norm=norm, origin="upper", interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.85, label=f"ERF, {result.protocol} map ({scale})")
    if not float(m.max()) > 0:
        ax.text(0.5, 0.5, "the map is all zeros: no ERF", transform=ax.transAxes, ha="center", va="center",
                color="#bbbbbb", fontsize=10)
    extra: list[tuple[Any, str]] = []

    if result.trf_box is not None:
        label = _trf_label(result, m.shape)
        rows = _box_edges(*result.trf_box[ya], rows_n)
        cols = _box_edges(*result.trf_box[xa], cols_n)
        in_slice = not sliced or result.trf_box[0][0] <= depth <= result.trf_box[0][1]
        if rows is not None and cols is not None and in_slice:
            ax.add_patch(Rectangle((cols[0], rows[0]), cols[1] - cols[0], rows[1] - rows[0], fill=False,
                                   ec=TRF_COLOR, ls="--", lw=1.6, zorder=3, label=label,
                                   path_effects=_outline(1.6)))
        else:
            extra.append((Line2D([], [], color=TRF_COLOR, ls="--"), f"{label}: misses the drawn {medium}"))
    else:
        extra.append((Line2D([], [], color=TRF_COLOR, ls="--"), "theoretical RF: global (the whole input)"))

    for k, (ratio, label) in enumerate(_squares(result.metrics, medium)):
        sides = square_sides(ratio, m.shape)
        rows_e, cols_e = _run_edges(sides[ya], rows_n), _run_edges(sides[xa], cols_n)
        ax.add_patch(Rectangle((cols_e[0], rows_e[0]), cols_e[1] - cols_e[0], rows_e[1] - rows_e[0], fill=False,
                               ec=SQUARE_COLORS[k % len(SQUARE_COLORS)], lw=2.0, zorder=4 + k, label=label,
                               path_effects=_outline(2.0)))

    centre, label = _field_centre(result, m.shape)
    if sliced and centre[0] != depth:
        label += " (projected on the slice)"
    ax.plot(centre[xa], centre[ya], ls="", marker="+", ms=13, mew=2.2, color=CENTRE_COLOR, zorder=20, label=label,
            path_effects=_outline(2.2))
    com = result.metrics.get("centre")
    if com and all(_finite(c) for c in com):
        ax.plot(com[xa], com[ya], ls="", marker="x", ms=8, mew=1.8, color=COM_COLOR, zorder=21,
                label="ERF centre of mass" + (" (projected)" if sliced else ""), path_effects=_outline(1.8))

    ax.set_xlim(-0.5, cols_n - 0.5)
    ax.set_ylim(rows_n - 0.5, -0.5)  # row 0 at the top, as images are shown
    names = ("row", "column") if not sliced else ("axis 1", "axis 2")
    ax.set_ylabel(f"{names[0]} (input px)")
    ax.set_xlabel(f"{names[1]} (input px)")
    note = f"; central slice {depth} of {m.shape[0]} along axis 0" if sliced else ""
    title, caption = _header(result, note)
    fig.suptitle(title, fontsize=11)
    ax.set_title(caption, loc="left", fontsize=7, color="#444444")
    _erf_legend(fig, ax, extra)
    return fig


def _erf_line(result: ERF, m: np.ndarray, log: bool) -> Figure:
    """1-D maps: the map as a curve, the theoretical field shaded, the area-ratio segments as bars on top."""
    n = m.size
    peak = float(m.max())
    fig = Figure(figsize=(8.5, 5.0), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(n)
    if log and peak > 0:
        floor = peak * LOG_FLOOR
        ax.set_yscale("log")
        ax.plot(x, np.maximum(m, floor), color=ERF_COLOR, lw=1.4, label="ERF")
        ax.set_ylim(floor, peak * 30)  # room above the curve for the segments
        scale = f"log scale, floor {LOG_FLOOR_TEXT} x peak"
    else:
        ax.plot(x, m, color=ERF_COLOR, lw=1.4, label="ERF")
        ax.set_ylim(0, peak * 1.35 if peak > 0 else 1.0)
        scale = "linear" if peak > 0 else "all zeros: no ERF"
    extra: list[tuple[Any, str]] = []
    if result.trf_box is not None:
        label = _trf_label(result, m.shape)
        edges = _box_edges(*result.trf_box[0], n)
        if edges is not None:
            ax.axvspan(*edges, color=TRF_COLOR, alpha=0.22, lw=0, zorder=0, label=label)
        else:
            extra.append((Rectangle((0, 0), 1, 1, color=TRF_COLOR, alpha=0.22), f"{label}: misses the input"))
    else:
        extra.append((Rectangle((0, 0), 1, 1, color=TRF_COLOR, alpha=0.22), "theoretical RF: global (the whole "
                      "input)"))
    for k, (ratio, label) in enumerate(_squares(result.metrics, "input")):
        lo, hi = _run_edges(square_sides(ratio, m.shape)[0], n)
        y = 0.96 - 0.04 * k
        ax.plot([lo, hi], [y, y], transform=ax.get_xaxis_transform(), lw=3, solid_capstyle="butt",
                color=SQUARE_COLORS[k % len(SQUARE_COLORS)], label=label)
    centre, label = _field_centre(result, m.shape)
    ax.axvline(centre[0], color="#0b7285", ls=":", lw=1.4, label=label)
    com = result.metrics.get("centre")
    if com and _finite(com[0]):
        ax.axvline(com[0], color=COM_COLOR, ls="-.", lw=1.2, label="ERF centre of mass")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xlabel("position (input px)")
    ax.set_ylabel(f"ERF, {result.protocol} map ({scale})")
    ax.grid(True, color="#e3e3e3", lw=0.7)
    ax.set_axisbelow(True)
    title, caption = _header(result)
    fig.suptitle(title, fontsize=11)
    ax.set_title(caption, loc="left", fontsize=7, color="#444444")
    _erf_legend(fig, ax, extra)
    return fig


def erf_figure(result: ERF, log: bool = False) -> Figure:
    """The ERF map of ``result`` (a :class:`rflens.erf.ERF`) as a heatmap in input pixels, row 0 at the top:
    linear, or with ``log`` on a log colour scale (``LogNorm`` from ``1e-4`` of the peak, which shows the
    faint tails; the colour bar says which). Over it: the unit's theoretical receptive field (dashed, clipped
    to the image, labelled with its full size), RepLKNet's area-ratio squares centred on ``(H // 2, W // 2)``,
    one colour per threshold (a threshold without ratio is left out), the unit's field centre (+) and the
    map's centre of mass (x). Title: model, layer, protocol and images; caption: the unit and the path (cone
    crop or full input). A 1-D map is drawn as a curve with the theoretical span shaded; a 3-D map as its
    central slice along the first axis (the title says so). An all-zero map is drawn as such, never raises.
    The squares' sides are read back from the ratios (:func:`square_sides`); nothing is computed from the map."""
    m = np.asarray(result.map, dtype=np.float64)
    if m.ndim == 1:
        return _erf_line(result, m, log)
    if m.ndim not in (2, 3):
        raise ValueError(f"an ERF map has 1, 2 or 3 axes, got {m.ndim} (shape {m.shape})")
    return _erf_map(result, m, log)


def _erf_size(result: ERF) -> float | None:
    """``2 sigma`` of the moments (geometric mean over axes), None where there is no ERF."""
    sigma = result.metrics.get("sigma") or []
    if not sigma or not all(_finite(s) and s > 0 for s in sigma):
        return None
    return 2.0 * _geomean([float(s) for s in sigma])


def _half_side(result: ERF) -> float | None:
    """The side of the 50 % area-ratio square, ``(ratio * size) ** (1 / ndim)`` (the geometric mean of the
    sides where the map clips it); None without that threshold or without an ERF."""
    ratio = next((r for t, r in _area_ratios(result.metrics) if t == 0.5), None)
    shape = np.shape(result.map)
    return None if ratio is None else (ratio * math.prod(shape)) ** (1.0 / len(shape))


def _unique_text(values: Sequence[Any]) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values))


def erf_depth_figure(results: Sequence[ERF]) -> Figure:
    """ERF size against depth for several layers of one model, in the order given (x: the layers by name), on
    a log scale of pixels: the ERF's ``2 sigma`` (moments, geometric mean over axes) and the side of the 50 %
    area-ratio square, next to each layer's theoretical receptive field (``hi - lo + 1`` of its box, geometric
    mean over axes). The input size is a dotted horizontal line (the theoretical field may outgrow it); a global
    field, which has no size, is a marker at the input size with a note. Luo et al.'s picture (the ERF grows
    like sqrt(depth), the theoretical field linearly) and Kim et al.'s (the ERF saturates)."""
    results = list(results)
    fig = Figure(figsize=(max(7.0, 3.8 + 0.5 * len(results)), 5.2), layout="constrained")
    ax = fig.add_subplot()
    if not results:
        ax.text(0.5, 0.5, "no layers", transform=ax.transAxes, ha="center", va="center")
        fig.suptitle("ERF vs theoretical RF")
        return fig

    xs = list(range(len(results)))

    def series(values: Sequence[float | None]) -> tuple[list[int], list[float]]:
        pairs = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None and v > 0]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    inputs = [_geomean([float(s) for s in r.input_size]) for r in results]
    sizes = {tuple(r.input_size) for r in results}
    if len(sizes) == 1:
        ax.axhline(inputs[0], color=INPUT_COLOR, ls=":", lw=1.3, zorder=1,
                   label=f"input {'x'.join(map(str, results[0].input_size))}")
    else:
        ax.plot(xs, inputs, color=INPUT_COLOR, ls=":", lw=1.3, zorder=1, label="input (geometric mean)")
    trf = [_geomean([hi - lo + 1 for lo, hi in r.trf_box]) if r.trf_box is not None else None for r in results]
    ax.plot(*series(trf), color=TRF_LINE_COLOR, ls="--", lw=1.4, marker="D", ms=6, mfc="white", zorder=2,
            label="theoretical RF (box side, geometric mean)")
    glob = [x for x, r in zip(xs, results, strict=True) if r.trf_box is None]
    if glob:
        ax.plot(glob, [inputs[x] for x in glob], ls="", marker="^", ms=9, color=GLOBAL_COLOR, zorder=4,
                label="global field (drawn at the input size)")
        for x in glob:
            ax.annotate("global", xy=(x, inputs[x]), xytext=(0, 8), textcoords="offset points", ha="center",
                        fontsize=8, color=GLOBAL_COLOR)
    ax.plot(*series([_erf_size(r) for r in results]), color=ERF_COLOR, lw=1.8, marker="o", ms=6, zorder=3,
            label="ERF 2\u03c3 (moments, geometric mean)")
    ax.plot(*series([_half_side(r) for r in results]), color=SIDE_COLOR, lw=1.5, marker="s", ms=5.5, zorder=3,
            label="side of the 50 % area-ratio square")

    ax.set_yscale("log")
    ax.set_xlim(-0.5, len(results) - 0.5)
    ax.set_xticks(xs, [r.layer for r in results], rotation=40, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_xlabel("layer (depth order as given)")
    ax.set_ylabel("size (input px, log scale)")
    ax.grid(True, which="major", color="#e3e3e3", lw=0.7)
    ax.set_axisbelow(True)
    ns = sorted({r.n for r in results})
    images = _images(ns[0]) if len(ns) == 1 else f"{ns[0]}\u2013{ns[-1]} images"
    fig.suptitle(f"ERF vs theoretical RF: {_unique_text([r.model for r in results])} "
                 f"({_unique_text([r.protocol for r in results])}, {images})")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return fig


__all__ = ["STATUS_COLORS", "axis_names", "border_figure", "deadpixel_figure", "erf_depth_figure", "erf_figure",
           "square_sides"]


def _centre_slices(m: np.ndarray) -> np.ndarray:
    """A 2-D view of an n-D map: the middle slice of every leading axis beyond the last two."""
    while m.ndim > 2:
        m = m[m.shape[0] // 2]
    return m


def deadpixel_figure(report: Any, zoom: int = 32) -> Figure:
    """Kim et al.'s picture: each map of a dead-pixel test (structural, ERF; before and after kernel padding)
    normalised to mean 1, full and as a ``zoom``-pixel crop at its centre where the checkerboard shows."""
    from rflens.deadpixel import scaled_to_field

    panels = [("structural", report.structural)]
    if report.erf is not None:
        panels.append(("ERF (kim)", report.erf))
    if report.after_fix is not None:
        panels.append(("structural, kernel-padded", report.after_fix.structural))
        if report.after_fix.erf is not None:
            panels.append(("ERF (kim), kernel-padded", report.after_fix.erf))
    ndim = panels[0][1].map.ndim
    fig = Figure(figsize=(3.2 * len(panels), 6.4 if ndim >= 2 else 2.8), layout="constrained")
    axes = fig.subplots(2 if ndim >= 2 else 1, len(panels), squeeze=False)
    for col, (title, test) in enumerate(panels):
        m = _centre_slices(scaled_to_field(test.map)[0])  # the scale of the indices
        ix = test.indices
        label = f"{title}\nL1 {ix.l1:.3g}, " + (f"period {ix.period} px" if ix.period else "no checkerboard")
        if m.ndim == 1:
            axes[0, col].plot(m, lw=0.8, color=R_MIN_COLOR)
            axes[0, col].set_title(label, fontsize=9)
            axes[0, col].set_xlabel("input position")
            continue
        image = axes[0, col].imshow(m, cmap="magma", interpolation="nearest")
        axes[0, col].set_title(label, fontsize=9)
        fig.colorbar(image, ax=axes[0, col], shrink=0.7)
        centre = [s // 2 for s in m.shape]
        crop = tuple(slice(max(c - zoom // 2, 0), max(c - zoom // 2, 0) + zoom) for c in centre)
        part = m[crop]
        image = axes[1, col].imshow(part, cmap="magma", interpolation="nearest",
                                    extent=(crop[1].start - 0.5, crop[1].start + part.shape[1] - 0.5,
                                            crop[0].start + part.shape[0] - 0.5, crop[0].start - 0.5))
        axes[1, col].set_title(f"centre {part.shape[0]}x{part.shape[1]} px", fontsize=9)
        fig.colorbar(image, ax=axes[1, col], shrink=0.7)
    size = "x".join(map(str, report.input_size))
    fig.suptitle(f"{report.model} at {size}: dead-pixel test of {report.layer} (maps normalised to mean 1; "
                 f"{len(report.culprits)} culprit layers"
                 + (f", {len(report.after_fix.culprits)} after kernel padding)" if report.after_fix else ")"),
                 fontsize=10)
    return fig


MODE_COLORS = {"model": "#222222", "zeros": "#1f3b73", "reflect": "#2a9d4b", "replicate": "#f0a202",
               "circular": "#8e44ad", "partial": "#d62728"}


def foveation_figure(maps: Sequence[Any], title: str = "", smooth: int = 8) -> Figure:
    """Mind the Pad's foveation picture: each padding's structural map of the whole output (top, scaled to the
    mean of its central region, one colour scale) and the profiles along every axis (bottom, each scaled to its
    mean and averaged over ``smooth`` pixels so that checkerboards do not hide the trend; a profile that is not
    its own mirror image is the asymmetry)."""
    from rflens.mapstats import central_mean

    ndim = maps[0].map.ndim
    fig = Figure(figsize=(max(2.6 * len(maps), 7.0), 6.4 if ndim >= 2 else 3.2), layout="constrained")
    if ndim >= 2:
        top_fig, bottom_fig = fig.subfigures(2, 1)
        scaled = [_centre_slices(f.map / (central_mean(f.map) or 1.0)) for f in maps]
        top = max(float(np.percentile(s, 99.5)) for s in scaled) or 1.0
        axes = top_fig.subplots(1, len(maps), squeeze=False)[0]
        for ax, f, s in zip(axes, maps, scaled, strict=True):
            image = ax.imshow(s, cmap="magma", vmin=0, vmax=top, interpolation="nearest")
            ax.set_title(f"{f.mode}\nborder/centre {_ratio(f.stats.border_ratio)}, asym "
                         f"{max(f.stats.asymmetry):.3f}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        top_fig.colorbar(image, ax=list(axes), shrink=0.8, label="paths / central mean")
        profile_axes = bottom_fig.subplots(1, ndim, squeeze=False)[0]
    else:
        profile_axes = [fig.add_subplot(1, 1, 1)]
    for axis, ax in enumerate(profile_axes):
        for f in maps:
            other = tuple(a for a in range(ndim) if a != axis)
            profile = f.map.sum(axis=other) if other else f.map
            profile = profile / (float(profile.mean()) or 1.0)
            width = max(1, min(smooth, profile.size // 4))  # short axes are drawn as they are
            averaged = np.convolve(profile, np.ones(width) / width, mode="valid")
            x = np.arange(averaged.size) + (width - 1) / 2
            ax.plot(x, averaged, lw=1.2, color=MODE_COLORS.get(f.mode), label=f.mode)
        ax.set_xlabel(f"input position ({axis_names(ndim)[axis]})")
        ax.set_ylabel(f"profile / mean ({smooth}-px average)" if smooth > 1 else "profile / mean", fontsize=8)
    profile_axes[0].legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(f"{title}: foveation (paths from each input pixel to every output unit)", fontsize=10)
    return fig


def _ratio(x: float) -> str:
    return "-" if not _finite(x) else f"{x:.2f}"

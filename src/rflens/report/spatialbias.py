"""Figures of spatial-bias maps (:class:`rflens.spatialbias.SpatialMap`), matplotlib object API only (no pyplot,
nothing shown, works headless): one panel per map, side by side, with the worst region outlined, so that a
lopsided map (Mind the Pad's uneven padding) or a blind region is seen at a glance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

if TYPE_CHECKING:
    from rflens.spatialbias import SpatialMap

CMAP = "magma"
LINE_COLOR, WORST_COLOR = "#1f3b73", "#2ec4b6"
KIND_TEXT = {"mean_activation": "mean activation", "probe": "blind-spot probe"}


def spatialbias_figure(maps: Sequence[SpatialMap]) -> Figure:
    """Every map in a panel of its own, in the order given: a heatmap with a colour bar for 2-D maps (row 0 at
    the top), a curve for 1-D, the middle slice along the first axis for 3-D. Titles: what the map is, the layer
    and the asymmetry per axis. Only reads the results."""
    maps = list(maps)
    fig = Figure(figsize=(max(4.6 * len(maps), 4.6), 4.4), layout="constrained")
    if not maps:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no maps", transform=ax.transAxes, ha="center", va="center")
        return fig
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    for ax, sm in zip(axes, maps, strict=True):
        _panel(fig, ax, sm)
    return fig


def _title(sm: SpatialMap, note: str = "") -> str:
    what = KIND_TEXT.get(sm.kind, sm.kind)
    if sm.kind == "mean_activation":
        what += " |a|" if sm.absolute else ""
        what += f", {sm.images} images" if sm.images else ""
    elif sm.probe is not None:
        what += f", stimulus {sm.probe.stimulus} px"
    asym = " x ".join(f"{a:.3f}" for a in sm.stats.asymmetry)
    return f"{sm.layer}: {what}{note}\nasymmetry {asym}"


def _panel(fig: Figure, ax: Axes, sm: SpatialMap) -> None:
    m = np.asarray(sm.map, dtype=np.float64)
    start, size = sm.stats.worst_region, sm.stats.worst_region_size
    if m.ndim == 1:
        ax.plot(np.arange(m.shape[0]), m, color=LINE_COLOR, lw=1.4)
        ax.axvspan(start[0] - 0.5, start[0] + size[0] - 0.5, color=WORST_COLOR, alpha=0.25, lw=0,
                   label="worst region")
        ax.set_xlabel("position")
        ax.legend(loc="best", fontsize=8)
        ax.set_title(_title(sm), fontsize=9)
        return
    note = ""
    if m.ndim == 3:
        mid = m.shape[0] // 2
        m = m[mid]
        note = f" (slice {mid} of axis 0)"
        inside = start[0] <= mid < start[0] + size[0]
        start, size = start[1:], size[1:]
    else:
        inside = True
    if m.ndim != 2:
        ax.text(0.5, 0.5, f"a {sm.map.ndim}-D map is not drawn", transform=ax.transAxes, ha="center", va="center")
        ax.set_title(_title(sm), fontsize=9)
        return
    im = ax.imshow(m, cmap=CMAP, origin="upper", interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8)
    if inside:
        ax.add_patch(Rectangle((start[1] - 0.5, start[0] - 0.5), size[1], size[0], fill=False,
                               edgecolor=WORST_COLOR, lw=1.5, ls="--"))
    ax.set_title(_title(sm, note), fontsize=9)

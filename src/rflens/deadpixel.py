"""Dead-pixel test (Kim et al., "Dead pixel test using effective receptive field", Pattern Recognition
Letters 167, 2023): input pixels that a network reads less than their neighbours.

A window op whose kernel is not a multiple of its stride reads interior input positions unequally: a 3x3
stride-2 convolution reads odd positions twice and even ones once, a 1x1 stride-2 shortcut never reads odd
positions (Odena et al., "Deconvolution and checkerboard artifacts", Distill 2016). Stacked, these give a
checkerboard of weak, "partially dead" pixels in the effective receptive field, with the period of the
effective stride of the last such layer. This module finds the culprit layers from the geometry alone
(:func:`culprits`), measures a map (:func:`dead_pixel_indices`: Kim et al.'s imbalance indices, the
checkerboard's period and strength, a dead-pixel mask), and runs the whole test on a model
(:func:`dead_pixel_test`): the structural map (path counts, no weights), the gradient ERF under the ``kim``
protocol (weights), the positional sensitivity of Kim et al. §5.2, and the test again after kernel padding
(:func:`rflens.transforms.kernel_pad`).

Conventions (stated once, kept everywhere): indices are computed on the bounding box of the map's nonzero
values (the field inside the image), normalised there to mean 1, so they depend neither on the map's scale nor
on the input size outside the field. Kim et al.'s own code summed the differences of the raw map, so its
numbers (Table 3) are on another scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rflens.geometry import Transposed, Window
from rflens.graph import Graph, ancestors

WINDOW_OPS = ("convolution", "max_pool", "avg_pool")
DEAD_FRACTION = 0.5  # a pixel below half the median of its neighbourhood is (partially) dead
NEIGHBOURHOOD = 5  # pixels per axis of that neighbourhood: covers the period-2 and period-4 checkerboards
MAX_PERIOD = 64
PERIOD_TOLERANCE = 0.2  # the map repeats at lag P when its lag-P roughness is at most this share of lag 1's
MIN_ROUGHNESS = 0.05  # typical neighbour-to-neighbour change below 5 % (log scale): no checkerboard to speak of
# (checkerboards of strided layers measure 0.5 to 1.4; kernel-padded networks 0.015 to 0.02, from their borders)
LOG_FLOOR = 1e-3  # log(map + floor) on the mean-1 map, so never-read pixels stay finite


# -- culprit layers ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Culprit:
    """A strided window op with uneven coverage. ``counts[axis][i mod stride]``: how many of its windows read
    an interior input index i (for a transposed convolution: how many inputs an output index receives)."""

    name: str  # module running it (named_modules; "" = the model's own forward)
    op: str
    nodes: tuple[int, ...]  # graph nodes (a module called several times has several)
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    counts: tuple[tuple[int, ...], ...]
    transposed: bool = False

    @property
    def coverage(self) -> str:
        """E.g. "3 vs 4" (7x7 stride 2) or "1 vs 0: odd positions never read" (1x1 stride 2)."""
        texts = [_axis_coverage(c) for c in self.counts]
        text = texts[0] if len(set(texts)) == 1 else "; ".join(f"axis {a}: {t}" for a, t in enumerate(texts))
        return f"outputs receive {text}" if self.transposed else text

    def _cell(self) -> np.ndarray:
        cell = np.ones((), dtype=np.int64)
        for c in self.counts:
            cell = np.multiply.outer(cell, np.asarray(c))
        return cell

    @property
    def under_read(self) -> float:
        """Share of positions (input, or output for a transposed convolution) read by fewer windows than the
        most-read ones."""
        cell = self._cell()
        return float((cell < cell.max()).mean())

    @property
    def never_read(self) -> float:
        return float((self._cell() == 0).mean())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "coverage": self.coverage, "kernel": list(self.kernel),
                "stride": list(self.stride), "dilation": list(self.dilation),
                "counts": [list(c) for c in self.counts], "under_read": self.under_read,
                "never_read": self.never_read, "transposed": self.transposed, "calls": len(self.nodes)}


def _axis_coverage(counts: Sequence[int]) -> str:
    if len(set(counts)) == 1:
        return f"uniform ({counts[0]})"
    s = len(counts)
    if s == 2:
        text = f"{counts[0]} vs {counts[1]}"
        return text + (f": {'odd' if counts[1] == 0 else 'even'} positions never read" if 0 in counts else "")
    never = [str(i) for i, c in enumerate(counts) if c == 0]
    text = " vs ".join(map(str, counts)) + f" (positions mod {s})"
    return text + (f": positions {', '.join(never)} (mod {s}) never read" if never else "")


def target_node(graph: Graph, layer: str = "output") -> int:
    """The node of ``layer`` (a module name) or of the model's output."""
    from rflens.errors import unknown_layer
    from rflens.pathcount import output_node

    if layer == "output" and "output" not in graph.module_outputs:
        return output_node(graph).id
    if layer not in graph.module_outputs:
        raise unknown_layer(layer, list(graph.module_outputs), "with a spatial output")
    return graph.module_node(layer).id


def culprits(graph: Graph, layer: str = "output") -> list[Culprit]:
    """Every convolution or pooling feeding ``layer`` whose interior coverage is not uniform (k mod s != 0 per
    axis, dilation included), in execution order, one entry per module and geometry."""
    feeding = ancestors(graph, target_node(graph, layer))
    found: dict[tuple, list[int]] = {}
    for node in graph.nodes[1:]:
        if node.id not in feeding or not node.op.startswith(WINDOW_OPS) or not node.reads:
            continue
        reads = node.reads[0]
        if not all(isinstance(r, (Window, Transposed)) for r in reads):
            continue
        counts = tuple(r.coverage() for r in reads)
        if all(len(set(c)) == 1 for c in counts):
            continue
        key = (node.module, node.op, reads)
        found.setdefault(key, []).append(node.id)
    out = []
    for (module, op, reads), nodes in found.items():
        transposed = isinstance(reads[0], Transposed)
        out.append(Culprit(module, op, tuple(nodes), tuple(r.kernel for r in reads), tuple(r.stride for r in reads),
                           tuple(r.dilation for r in reads), tuple(r.coverage() for r in reads), transposed))
    return out


# -- indices of one map -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeadPixelIndices:
    """Kim et al.'s imbalance indices and the checkerboard of one map (see the module's conventions).

    ``l1``: mean |first difference| between neighbours, averaged over the axes; ``l2``: the same with second
    differences. ``period_per_axis``: the smallest lag P >= 2 at which the map repeats up to a smooth envelope
    (the median |lag-P second difference| of log(map) is at most ``PERIOD_TOLERANCE`` of the lag-1 one: the
    spectrum's energy lies on the harmonics of 1/P); None when the map is smooth or does not repeat within
    ``MAX_PERIOD``. ``period``: their least common multiple. ``strength``: RMS of map / (its mean over a
    period-sized box around each pixel) - 1: how far a pixel strays from its neighbourhood. ``dead_share``:
    share of the region's pixels below ``DEAD_FRACTION`` of the median of their ``NEIGHBOURHOOD``-wide
    neighbourhood."""

    l1: float
    l2: float
    period: int | None
    period_per_axis: tuple[int | None, ...]
    strength: float | None
    dead_share: float
    dead_pixels: int
    region: tuple[tuple[int, int], ...]  # [lo, hi) per axis: where the indices were computed

    @property
    def checkerboard(self) -> bool:
        return self.period is not None

    def to_dict(self) -> dict[str, Any]:
        return {"l1": self.l1, "l2": self.l2, "period": self.period, "period_per_axis": list(self.period_per_axis),
                "strength": self.strength, "dead_share": self.dead_share, "dead_pixels": self.dead_pixels,
                "region": [list(r) for r in self.region]}


def _region(m: np.ndarray) -> tuple[tuple[int, int], ...]:
    nonzero = np.argwhere(m > 0)
    if nonzero.size == 0:
        raise ValueError("the map is zero everywhere: no pixel reaches the unit")
    return tuple((int(lo), int(hi) + 1) for lo, hi in zip(nonzero.min(0), nonzero.max(0), strict=True))


def scaled_to_field(erf_map: np.ndarray) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """The whole map scaled so that its mean over the bounding box of its nonzero values is 1, and that box:
    the scale of every index and picture of the test."""
    m = np.asarray(erf_map, dtype=np.float64)
    if not np.isfinite(m).all():
        raise ValueError("the map has NaN or inf values")
    if (m < 0).any():
        raise ValueError("dead-pixel indices need a non-negative map (a count or a ReLU'd gradient)")
    region = _region(m)
    return m / m[tuple(slice(lo, hi) for lo, hi in region)].mean(), region


def normalised_region(erf_map: np.ndarray) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """The map on the bounding box of its nonzero values, scaled to mean 1 there."""
    scaled, region = scaled_to_field(erf_map)
    return scaled[tuple(slice(lo, hi) for lo, hi in region)], region


def _differences(m: np.ndarray, order: int) -> float:
    parts = [np.abs(np.diff(m, order, axis=a)).mean() for a in range(m.ndim) if m.shape[a] > order]
    return float(np.mean(parts)) if parts else 0.0


def _roughness(log_map: np.ndarray, axis: int, lag: int) -> float:
    n = log_map.shape[axis]
    before = np.take(log_map, range(0, n - 2 * lag), axis=axis)
    centre = np.take(log_map, range(lag, n - lag), axis=axis)
    after = np.take(log_map, range(2 * lag, n), axis=axis)
    return float(np.median(np.abs(before + after - 2 * centre)))  # the median: the field's edges do not weigh


def _period(log_map: np.ndarray, axis: int, max_period: int) -> int | None:
    n = log_map.shape[axis]
    if n < 5:
        return None
    base = _roughness(log_map, axis, 1)
    if base < MIN_ROUGHNESS:
        return None
    for lag in range(2, min(max_period, (n - 1) // 2) + 1):
        if _roughness(log_map, axis, lag) <= PERIOD_TOLERANCE * base:
            return lag
    return None


def dead_pixel_mask(erf_map: np.ndarray, dead_fraction: float = DEAD_FRACTION,
                    neighbourhood: int = NEIGHBOURHOOD) -> np.ndarray:
    """Boolean mask (the map's shape): pixels inside the map's field whose value is below ``dead_fraction``
    times the median of their ``neighbourhood``-wide neighbourhood (borders repeat the edge pixel)."""
    box, region = normalised_region(erf_map)
    mask = np.zeros(np.shape(erf_map), dtype=bool)
    mask[tuple(slice(lo, hi) for lo, hi in region)] = _dead_in(box, dead_fraction, neighbourhood)
    return mask


def _dead_in(box: np.ndarray, dead_fraction: float, neighbourhood: int) -> np.ndarray:
    from scipy import ndimage

    median = ndimage.median_filter(box, size=neighbourhood, mode="nearest")
    return (box < dead_fraction * median) & (median > 0)


def dead_pixel_indices(erf_map: np.ndarray, *, dead_fraction: float = DEAD_FRACTION,
                       neighbourhood: int = NEIGHBOURHOOD, max_period: int = MAX_PERIOD) -> DeadPixelIndices:
    """Imbalance indices, checkerboard period and strength, and dead-pixel share of a non-negative map
    (a structural path-count map or a ReLU'd gradient ERF); see :class:`DeadPixelIndices`."""
    from scipy import ndimage

    if not 0 < dead_fraction < 1:
        raise ValueError(f"dead_fraction must lie in (0, 1), got {dead_fraction}")
    box, region = normalised_region(erf_map)
    log_map = np.log(box + LOG_FLOOR)
    periods = tuple(_period(log_map, a, max_period) for a in range(box.ndim))
    found = [p for p in periods if p is not None]
    period = math.lcm(*found) if found else None
    strength = None
    if period is not None:
        local = ndimage.uniform_filter(box, size=[p or 1 for p in periods], mode="nearest")
        strength = float(np.sqrt(np.mean((box / np.where(local > 0, local, 1.0) - 1.0) ** 2)))
    dead = _dead_in(box, dead_fraction, neighbourhood)
    return DeadPixelIndices(_differences(box, 1), _differences(box, 2), period, periods, strength,
                            float(dead.sum() / box.size), int(dead.sum()), region)


# -- positional sensitivity (Kim et al. §5.2) --------------------------------------------------------------
@dataclass
class Sensitivity:
    """Change of the target when one input pixel (every channel) is raised by ``eps``, divided by ``eps`` and
    averaged over images, on a block of adjacent pixels; ``r2``: squared correlation with the ERF map there."""

    block: tuple[tuple[int, int], ...]  # [lo, hi) per axis
    eps: float
    images: int
    change: np.ndarray = field(repr=False)
    map_values: np.ndarray = field(repr=False)
    r2: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"block": [list(b) for b in self.block], "eps": self.eps, "images": self.images, "r2": self.r2,
                "mean_change": float(self.change.mean()),
                "min_max_ratio": float(self.change.min() / self.change.max()) if self.change.max() > 0 else None}


def r_squared(a: np.ndarray, b: np.ndarray) -> float | None:
    """Squared Pearson correlation; None when either side is constant."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1] ** 2)


def centred_block(shape: Sequence[int], centre: Sequence[float], side: int) -> tuple[tuple[int, int], ...]:
    """A block of ``side`` pixels per axis around ``centre``, moved inside the map."""
    block = []
    for n, c in zip(shape, centre, strict=True):
        width = min(side, n)
        lo = min(max(int(round(c - width / 2)), 0), n - width)
        block.append((lo, lo + width))
    return tuple(block)


# -- the whole test ---------------------------------------------------------------------------------------
@dataclass
class MapTest:
    """One map under the test: the structural map (all units of the layer) or the gradient ERF."""

    kind: str  # "structural" or "erf"
    map: np.ndarray = field(repr=False)
    indices: DeadPixelIndices
    detail: dict[str, Any]  # how the map was made (the ERF's to_dict without the map, or the path-count summary)

    def to_dict(self) -> dict[str, Any]:
        return {**self.indices.to_dict(), "detail": self.detail}


@dataclass
class DeadPixelReport:
    model: str
    input_size: tuple[int, ...]
    layer: str
    culprits: list[Culprit]
    structural: MapTest
    erf: MapTest | None = None
    sensitivity: Sensitivity | None = None
    fix: Any = None  # rflens.transforms.KernelPadding
    after_fix: DeadPixelReport | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "model": self.model, "input_size": list(self.input_size), "layer": self.layer,
            "culprits": [c.to_dict() for c in self.culprits], "structural": self.structural.to_dict(),
            "erf": self.erf.to_dict() if self.erf else None,
            "sensitivity": self.sensitivity.to_dict() if self.sensitivity else None}
        if self.after_fix is not None:
            after = self.after_fix.to_dict()
            for key in ("model", "input_size", "layer", "after_fix"):
                after.pop(key, None)
            doc["after_fix"] = {**after, **self.fix.to_dict()}
        return doc

    def plot(self, path: str | Any) -> None:
        from rflens.report.figures import deadpixel_figure

        deadpixel_figure(self).savefig(path, dpi=120, bbox_inches="tight")


def structural_test(graph: Graph, layer: str = "output") -> MapTest:
    """The structural map of every unit of ``layer`` (or the output) and its indices: no weights needed."""
    from rflens.pathcount import path_counts

    counts = path_counts(graph, target_node(graph, layer), "all")
    detail = counts.to_dict()
    return MapTest("structural", counts.map, dead_pixel_indices(counts.map), detail)


def dead_pixel_test(model: Any, input_size: int | Sequence[int] | None = None, layer: str = "output", *,
                    in_channels: int | None = None, weighted: bool = False, inputs: Any = None,
                    n: int | None = None, target_class: int | None = None, sensitivity: bool = False,
                    sensitivity_block: int = 8, eps: float = 0.5, fix: str | None = None, pools: str = "auto",
                    device: str = "cpu", seed: int = 0, model_name: str | None = None,
                    progress: Callable[[str, int, int | None], None] | None = None) -> DeadPixelReport:
    """The dead-pixel test of ``model`` at ``input_size`` (default: the model's configured size, else 224).

    Always: the culprit layers feeding ``layer`` and the structural map of all of its units (no weights).
    ``weighted``: the gradient ERF under the ``kim`` protocol (the class logit: ``target_class``, else the
    folder's labels, else the predicted class) with the same indices; ``sensitivity``: Kim et al.'s one-pixel
    perturbation on a ``sensitivity_block``-wide block at the map's centre (needs ``weighted``).
    ``fix="kernel-pad"``: pad the culprits' kernels (:func:`rflens.transforms.kernel_pad`, ``pools`` as there)
    and run the same test on the fixed model (``after_fix``). ``progress(stage, done, total)`` reports long stages."""
    from rflens.erf import _tracer, erf
    from rflens.errors import RflensError

    if fix not in (None, "kernel-pad"):
        raise RflensError(f"unknown fix {fix!r}: the dead-pixel fix is 'kernel-pad'")
    if sensitivity and not weighted:
        raise RflensError("the positional sensitivity perturbs real inputs: ask for the weighted test as well")
    if weighted or fix is not None:
        from rflens.capture_onnx import require_pytorch

        require_pytorch(model, "the weighted dead-pixel test" if weighted else "kernel padding")
    import torch

    from rflens.erf import _source

    source = _source(model, None if inputs in (None, "noise") else inputs, 1, input_size, in_channels, seed)
    size, channels = source.input_size, source.in_channels
    graph = _tracer(model, channels, torch.device(device))(size)
    target_node(graph, layer)  # a clear error for an unknown layer
    name = model_name if model_name is not None else type(model).__name__
    report = DeadPixelReport(name, tuple(size), layer, culprits(graph, layer), structural_test(graph, layer))
    if weighted:
        result = erf(model, layer, inputs=inputs, protocol="kim", n=n, input_size=size, in_channels=channels,
                     device=device, seed=seed, model_name=name, target_class=target_class,
                     progress=None if progress is None else lambda d, t: progress("ERF", d, t))
        try:
            indices = dead_pixel_indices(result.map)
        except ValueError as exc:
            raise RflensError(f"the kim-protocol ERF of {layer!r}: {exc}") from None
        report.erf = MapTest("erf", result.map, indices, result.to_dict())
        if sensitivity:
            report.sensitivity = positional_sensitivity(
                model, layer, result, inputs=inputs, n=min(n or 4, 4), in_channels=channels,
                target_class=target_class,
                block=sensitivity_block, eps=eps, device=device, seed=seed,
                progress=None if progress is None else lambda d, t: progress("sensitivity", d, t))
    if fix == "kernel-pad":
        from rflens.transforms import kernel_pad

        padded = kernel_pad(model, size, in_channels=channels, pools=pools, device=device, layer=layer,
                            model_name=name)
        report.fix = padded
        report.after_fix = dead_pixel_test(padded.model, size, layer, in_channels=channels, weighted=weighted,
                                           inputs=inputs, n=n, target_class=target_class, device=device, seed=seed,
                                           model_name=f"{name} (kernel-padded)", progress=progress)
    return report


def positional_sensitivity(model: Any, layer: str, result: Any, *, inputs: Any = None, n: int = 4,
                           in_channels: int | None = None, target_class: int | None = None, block: int = 8,
                           eps: float = 0.5, device: str = "cpu", seed: int = 0,
                           progress: Callable[[int, int | None], None] | None = None) -> Sensitivity:
    """Kim et al. §5.2 on a block of adjacent pixels at the ERF ``result``'s centre of mass: raise one pixel
    (all channels) by ``eps``, measure |target change| / eps (the ``kim`` target of ``result``), average over
    ``n`` images, and correlate with the ERF map there."""
    from rflens.erf import perturbation_response

    centre = result.metrics.get("centre") if isinstance(result.metrics, dict) else None
    if not centre or any(c is None for c in centre):
        centre = tuple((s - 1) / 2 for s in result.input_size)
    cells = centred_block(result.input_size, centre, block)
    change, images = perturbation_response(model, layer, cells, inputs=inputs, n=n, input_size=result.input_size,
                                           in_channels=in_channels, target_class=target_class, eps=eps,
                                           device=device, seed=seed, progress=progress)
    values = result.map[tuple(slice(lo, hi) for lo, hi in cells)]
    return Sensitivity(cells, eps, images, change, values, r_squared(change, values))


__all__ = ["Culprit", "DeadPixelIndices", "DeadPixelReport", "MapTest", "Sensitivity", "culprits",
           "dead_pixel_indices", "dead_pixel_mask", "dead_pixel_test", "positional_sensitivity", "structural_test"]

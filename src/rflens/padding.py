"""Uneven padding and the blind spots it makes (Alsallakh et al., "Mind the Pad -- CNNs can develop blind
spots", ICLR 2021).

A window op (convolution, pooling) with kernel k, dilation d, stride s and pads (p_l, p_r) on n input units
leaves ``r = (n + p_l + p_r - d(k-1) - 1) mod s`` trailing positions that no window reaches, so its
**effective** pads are ``(p_l, p_r - r)``. It is **uneven** when they differ: explicit asymmetric pads (TF "same"
padding is (0, 1) for k=3, s=2 at n=224), right/bottom padding partly or wholly unused, or real rows/columns
never read when ``r > p_r``. The asymmetry propagates through the network and trained weights learn it.

Everything here is geometry on a captured :class:`~rflens.graph.Graph`: a padding done by its own op (a padding
mode, TF "same" padding computed in the model's code) is folded into the window that reads it, and the input
sizes without any uneven layer are found by carrying the graph to each size (:mod:`rflens.resize`) instead of
tracing the model again. The foveation map is the structural map (:mod:`rflens.pathcount`) of every output
unit: how many paths join each input pixel to the output, under the model's own padding or, as a what-if,
with every convolution's padding in another mode.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rflens.errors import CaptureError, InputSizeError, RflensError
from rflens.geometry import Pad, Window
from rflens.graph import IDENTITY_READ, Graph, Node
from rflens.mapstats import MapStats, map_stats
from rflens.pathcount import PathMap, output_node, path_counts
from rflens.resize import consumers, is_window
from rflens.rf import AxisField, propagate

EVEN, ASYMMETRIC, UNUSED, PARTLY_UNUSED, UNREAD = "even", "asymmetric", "unused", "partly unused", "unread"
PAD_OPS = ("constant_pad_nd", "reflection_pad", "replication_pad", "pad_circular")
WHAT_IF_MODES = ("zeros", "reflect", "replicate", "circular", "partial")
DEFAULT_RANGE = (32, 1024)
_SIDES = {1: [("start", "end")], 2: [("top", "bottom"), ("left", "right")],
          3: [("front", "back"), ("top", "bottom"), ("left", "right")]}
_UNITS = {1: ["position"], 2: ["row", "column"], 3: ["slice", "row", "column"]}


def _side(ndim: int, axis: int, end: bool) -> str:
    sides = _SIDES.get(ndim)
    return sides[axis][end] if sides else f"axis {axis} {'end' if end else 'start'}"


def _unit(ndim: int, axis: int) -> str:
    units = _UNITS.get(ndim)
    return units[axis] if units else f"axis-{axis} index"


@dataclass(frozen=True)
class AxisPadding:
    """One window layer along one axis at one input size."""

    name: str  # module running the window
    op: str
    node: int
    axis: int
    ndim: int
    size: int  # units of the map the layer reads, before any padding
    kernel: int
    stride: int
    dilation: int
    pads: tuple[int, int]  # all padding before the window: its own and a padding op folded into it
    mode: str  # "zeros" or the padding mode of the folded padding op
    same: bool  # TF-"same" padding computed by the model's code from the input size
    leftover: int  # r = (n + p_l + p_r - d(k-1) - 1) mod s
    effective: tuple[int, int]  # pads the windows really use
    unread: tuple[int, ...]  # indices of the layer's input no window reads (at the ends)
    unread_input: tuple[int, int] | None  # input pixels (first, last) the unread units see

    @property
    def uneven(self) -> bool:
        return self.effective[0] != self.effective[1]

    @property
    def effect(self) -> str:
        left, right = self.effective
        if left == right:
            return EVEN
        if self.unread:
            return UNREAD
        if self.leftover and right < self.pads[1]:
            return UNUSED if right == 0 else PARTLY_UNUSED
        return ASYMMETRIC

    def describe(self) -> str:
        start, end = _side(self.ndim, self.axis, False), _side(self.ndim, self.axis, True)
        effect = self.effect
        if effect == EVEN:
            return "even"
        if effect == ASYMMETRIC:
            if self.effective[1] > self.pads[1]:
                return (f"last window overhangs the {end} by {self.effective[1] - self.pads[1]} (ceil_mode): "
                        f"effective padding {self.effective[0]} {start}, {self.effective[1]} {end}")
            how = " (TF \"same\")" if self.same else ""
            return f"asymmetric padding{how}: {self.effective[0]} {start}, {self.effective[1]} {end}"
        if effect == UNUSED:
            return f"{end} padding unused ({self.effective[0]} on the {start})"
        if effect == PARTLY_UNUSED:
            return f"{end} effective padding {self.effective[1]} vs {self.effective[0]} on the {start}"
        unit = _unit(self.ndim, self.axis)
        idx = self.unread
        where = f"index {idx[0]}" if len(idx) == 1 else f"indices {idx[0]}-{idx[-1]}" if \
            idx[-1] - idx[0] == len(idx) - 1 else f"indices {', '.join(map(str, idx))}"
        count = f"{unit}" if len(idx) == 1 else f"{len(idx)} {unit}s"
        seen = f"; input pixels {self.unread_input[0]}-{self.unread_input[1]}" if self.unread_input else ""
        return f"{count} never read ({where}{seen})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "axis": self.axis, "input": self.size,
                "kernel": self.kernel, "stride": self.stride, "dilation": self.dilation, "pads": list(self.pads),
                "mode": self.mode, "same": self.same, "leftover": self.leftover,
                "effective_pads": list(self.effective), "uneven": self.uneven, "effect": self.effect,
                "description": self.describe(), "unread": list(self.unread),
                "unread_input": list(self.unread_input) if self.unread_input else None}


@dataclass(frozen=True)
class Folded:
    """A window node with the padding op it reads folded in (when only windows read that op): per axis, the
    window with both paddings and the op's mode, whether the amounts are TF "same", what a negative amount cuts
    off (left, right), and the size of the map before the padding op."""

    pad: Node | None
    windows: tuple[Window, ...]
    same: tuple[bool, ...]
    crops: tuple[tuple[int, int], ...]
    sizes: tuple[int, ...]


def folded(graph: Graph, node: Node, readers: dict[int, list[int]]) -> Folded:
    """``node`` (a window, :func:`rflens.resize.is_window`) with the padding op it reads folded in."""
    src = graph.nodes[node.inputs[0]]
    pad = src if (src.op.startswith(PAD_OPS) and len(src.inputs) == 1
                  and all(isinstance(r, Pad) or r == IDENTITY_READ for r in src.reads[0])
                  and all(is_window(graph.nodes[i]) for i in readers.get(src.id, []))) else None
    windows, same, crops = [], [], []
    for axis, w in enumerate(node.reads[0]):
        extra = pad.reads[0][axis] if pad is not None else IDENTITY_READ
        if isinstance(extra, Pad):
            w = replace(w, pad_left=w.pad_left + extra.left, pad_right=w.pad_right + extra.right,
                        mode="zeros" if extra.mode == "constant" else extra.mode)
        windows.append(w)
        same.append(isinstance(extra, Pad) and extra.same is not None)
        crops.append((max(-extra.left, 0), max(-extra.right, 0)) if isinstance(extra, Pad) else (0, 0))
    sizes = graph.nodes[(pad or node).inputs[0]].sizes
    return Folded(pad, tuple(windows), tuple(same), tuple(crops), sizes)


def audit(graph: Graph, fields: list[tuple[AxisField, ...]] | None = None, trace_back: bool = True
          ) -> list[AxisPadding]:
    """Every window layer of ``graph`` along every axis, in execution order. ``trace_back``: also say which
    input pixels the never-read units see (needs the receptive fields; ``fields`` from
    :func:`rflens.rf.propagate` when already at hand)."""
    readers = consumers(graph)
    if trace_back and fields is None:
        fields = propagate(graph)
    rows = []
    for node in graph.nodes[1:]:
        if not is_window(node):
            continue
        f = folded(graph, node, readers)
        source = f.pad if f.pad is not None else node
        for axis in range(graph.ndim):
            window, n, crop = f.windows[axis], f.sizes[axis], f.crops[axis]
            left, right = window.pad_left, window.pad_right
            out = node.sizes[axis]  # the op's own rule (ceil_mode counts a folded padding as input)
            eff_right = (out - 1) * window.stride + window.extent - left - n
            first, last = max(-left, crop[0]), min(n + eff_right, n - crop[1])  # real units the windows reach
            unread = tuple(sorted(set(range(0, min(first, n))) | set(range(max(last, 0), n))))
            unread_input = None
            if trace_back and unread:
                unread_input = _seen(fields[source.inputs[0]][axis], unread, graph.input_size[axis])
            rows.append(AxisPadding(node.module, node.op, node.id, axis, graph.ndim, n, window.kernel, window.stride,
                                    window.dilation, (left, right), window.mode, f.same[axis], window.leftover(n),
                                    (left, eff_right), unread, unread_input))
    return rows


def _seen(f: AxisField, units: Sequence[int], n_input: int) -> tuple[int, int] | None:
    """Input pixels (first, last) that the given units of a map see along one axis."""
    if not f.parts:
        return None
    lo = max(min(f.lo(u) for u in units), 0)
    hi = min(max(f.hi(u) for u in units), n_input - 1)
    return (lo, hi) if lo <= hi else None


def uneven_layers(rows: Sequence[AxisPadding]) -> list[str]:
    """Names of the layers uneven along some axis, once each, in execution order."""
    return list(dict.fromkeys(r.name for r in rows if r.uneven))


# -- input sizes without uneven layers ---------------------------------------------------------------------
@dataclass(frozen=True)
class EvenSizes:
    """The input sizes in ``searched`` (the same on every axis, or along ``axis`` only) with no uneven layer."""

    sizes: tuple[int, ...]
    searched: tuple[int, int]
    runnable: int  # sizes in the range where the model runs
    requested: int
    axis: int | None = None  # None: every axis at once
    rule: tuple[int, tuple[int, ...]] | None = None  # (modulus m, residues): even iff n mod m in residues

    @property
    def below(self) -> int | None:
        """The largest even size at or below the requested one."""
        return max((n for n in self.sizes if n <= self.requested), default=None)

    @property
    def above(self) -> int | None:
        """The smallest even size at or above the requested one."""
        return min((n for n in self.sizes if n >= self.requested), default=None)

    @property
    def nearest(self) -> int | None:
        """The even size closest to the requested one (the larger on a tie)."""
        cands = [n for n in (self.above, self.below) if n is not None]
        return min(cands, key=lambda n: (abs(n - self.requested), -n)) if cands else None

    def rule_text(self) -> str | None:
        if self.rule is None:
            return None
        m, residues = self.rule
        if m == 1:
            return "every size" if residues else "no size"
        return f"n = {' or '.join(map(str, residues))} (mod {m})"

    def to_dict(self) -> dict[str, Any]:
        return {"sizes": list(self.sizes), "searched": list(self.searched), "runnable": self.runnable,
                "axis": self.axis, "nearest": self.nearest, "below": self.below, "above": self.above,
                "rule": self.rule_text(),
                "modulus": self.rule[0] if self.rule else None,
                "residues": list(self.rule[1]) if self.rule else None}


def find_rule(runnable: Sequence[int], even: set[int]) -> tuple[int, tuple[int, ...]] | None:
    """The smallest modulus m (at most a quarter of the span, so that every residue is seen several times)
    such that whether a size is even depends only on n mod m: (m, the even residues); None if there is none."""
    runnable = sorted(runnable)
    if not runnable:
        return None
    span = runnable[-1] - runnable[0] + 1
    for m in range(1, max(span // 4, 1) + 1):
        verdict: dict[int, bool] = {}
        if all(verdict.setdefault(n % m, n in even) == (n in even) for n in runnable):
            return m, tuple(sorted(r for r, ok in verdict.items() if ok))
    return None


def even_sizes(graph_at: Callable[[tuple[int, ...]], Graph], input_size: Sequence[int], lo: int, hi: int,
               axis: int | None = None, progress: Callable[[int, int], None] | None = None) -> EvenSizes:
    """Sizes n in [lo, hi] (on every axis, or on ``axis`` with the others as in ``input_size``) where no layer
    is uneven along the varied axes. ``graph_at(size)``: the graph at a size (carried there from the captured
    one, :meth:`rflens.border.Resolutions.graph_at`); sizes where the model cannot run are skipped."""
    if lo < 1 or hi < lo:
        raise RflensError(f"the size range must be 1 <= low <= high, got {lo}..{hi}")
    base = tuple(int(n) for n in input_size)
    axes = range(len(base)) if axis is None else (axis,)
    good, runnable = set(), []
    total = hi - lo + 1
    for i, n in enumerate(range(lo, hi + 1)):
        size = tuple(n if a in axes else base[a] for a in range(len(base)))
        try:
            rows = audit(graph_at(size), trace_back=False)
        except CaptureError:  # the model cannot run at n (too small, a size rule fails)
            continue
        finally:
            if progress is not None:
                progress(i + 1, total)
        runnable.append(n)
        if not any(r.uneven for r in rows if r.axis in axes):
            good.add(n)
    requested = base[axes[0]]
    return EvenSizes(tuple(sorted(good)), (lo, hi), len(runnable), requested, axis, find_rule(runnable, good))


# -- foveation ------------------------------------------------------------------------------------------------
def with_padding_mode(graph: Graph, mode: str) -> Graph:
    """What-if: ``graph`` with every convolution's padding (its own and a padding op folded into it) in
    ``mode`` (zeros, reflect, replicate, circular, or partial-convolution padding). Poolings keep theirs.
    Raises :class:`InputSizeError` where PyTorch would refuse the padding (reflection needs pads < n)."""
    if mode not in WHAT_IF_MODES:
        raise RflensError(f"padding mode must be one of {', '.join(WHAT_IF_MODES)}, got {mode!r}")
    readers = consumers(graph)
    nodes = list(graph.nodes)
    for node in graph.nodes[1:]:
        if not is_window(node):
            continue
        f = folded(graph, node, readers)
        windows = f.windows
        if node.op == "convolution":
            windows = tuple(replace(w, mode=mode if w.pad_left or w.pad_right else "zeros") for w in windows)
            for w, n in zip(windows, f.sizes, strict=True):
                if not Pad(w.pad_left, w.pad_right, "constant" if w.mode in ("zeros", "partial") else w.mode).fits(n):
                    raise InputSizeError(f"{mode} padding of ({w.pad_left}, {w.pad_right}) does not fit the {n} "
                                         f"units that module '{node.module}' reads (PyTorch refuses it)")
        elif f.pad is None:
            continue
        nodes[node.id] = replace(node, reads=(windows,))
        if f.pad is not None:  # the padding op becomes an identity: its readers pad themselves now
            ident = (IDENTITY_READ,) * graph.ndim
            nodes[f.pad.id] = replace(f.pad, op="identity", reads=(ident,), sizes=f.sizes)
    return replace(graph, nodes=nodes)


@dataclass(frozen=True)
class FoveationMap:
    """The structural map of every unit of the output under one padding: ``"model"`` (the model's own
    padding modes) or a what-if mode."""

    mode: str
    paths: PathMap
    stats: MapStats

    @property
    def map(self) -> Any:
        return self.paths.map

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, **self.stats.to_dict(), "exact": self.paths.exact}


def last_map(graph: Graph) -> Node:
    """The model's last spatially resolved map: its output, or the map a global pooling at the end reads
    (a classifier's pooled features, and a head of 1x1 convolutions on them, see every unit of it alike)."""
    node = output_node(graph)
    while node.inputs and all(n == 1 for n in node.sizes) and any(n > 1 for n in graph.input_size):
        source = graph.nodes[node.inputs[0]]
        pooled = any(read is None for read in node.reads[0]) or all(n == 1 for n in source.sizes)
        if not pooled and node.op == "convolution":  # one that covers its whole input (LeNet's last): a map
            break  # of one unit; a pooling whose window is the whole map (F.avg_pool2d(x, 4)) is a global one
        node = source  # a pooled head (a global mean, a 1x1 convolution or a classifier on it)
    return node


def foveation(graph: Graph, modes: Sequence[str] = ("model", *WHAT_IF_MODES), layer: str | int = "output"
              ) -> list[FoveationMap]:
    """Foveation maps (Alsallakh et al.): for each input pixel, the number of paths that keep the position
    (none through a global mean, such as a squeeze-and-excitation gate's) joining it to every unit of ``layer``
    (a module name, a node id, or ``"output"``: the model's last map), under each of ``modes``."""
    from rflens.deadpixel import target_node  # the one resolver of layer names (clear error, close names)

    node = last_map(graph).id if layer == "output" and "output" not in graph.module_outputs else \
        layer if isinstance(layer, int) else target_node(graph, layer)
    out = []
    for mode in modes:
        g = graph if mode == "model" else with_padding_mode(graph, mode)
        paths = path_counts(g, node, "all", through_global=False)
        if not paths.map.any():
            where = graph.nodes[paths.node].module
            raise RflensError(f"no path keeps the position from the input to module '{where}' (it depends on the "
                              "input through global pooling only): pick an earlier layer")
        out.append(FoveationMap(mode, paths, map_stats(paths.map)))
    return out


# -- the report ---------------------------------------------------------------------------------------------
@dataclass
class PaddingReport:
    """The padding audit of a model at one input size (``rflens padding``)."""

    model: str
    input_size: tuple[int, ...]
    layers: list[AxisPadding]
    even: list[EvenSizes]  # one for every axis at once (square inputs), else one per axis
    foveation: list[FoveationMap]
    spatial_bias: list[Any] = field(default_factory=list)  # rflens.spatialbias.SpatialMap
    notes: list[str] = field(default_factory=list)

    @property
    def uneven(self) -> list[str]:
        return uneven_layers(self.layers)

    def foveation_of(self, mode: str) -> FoveationMap | None:
        """The foveation map under ``mode`` ("model": the model's own padding), None when it was not made."""
        return next((f for f in self.foveation if f.mode == mode), None)

    def suggested_size(self) -> tuple[int, ...] | None:
        """The nearest input size with no uneven layer (per axis), None if the search found none."""
        if len(self.even) == 1 and self.even[0].axis is None:
            n = self.even[0].nearest
            return None if n is None else (n,) * len(self.input_size)
        sizes = tuple(e.nearest for e in self.even)
        return None if None in sizes else sizes

    def to_dict(self) -> dict[str, Any]:
        model_map = self.foveation_of("model")
        fov: dict[str, Any] = {}
        if model_map is not None:
            fov = {"asymmetry": list(model_map.stats.asymmetry), "border_ratio": model_map.to_dict()["border_ratio"],
                   "side_ratio": list(model_map.stats.side_ratio), "never_read": model_map.stats.never_read}
        fov["modes"] = {f.mode: f.to_dict() for f in self.foveation}
        square = len(self.even) == 1 and self.even[0].axis is None
        suggested = self.suggested_size()
        return {
            "model": self.model, "input_size": list(self.input_size), "uneven": self.uneven,
            "layers": [r.to_dict() for r in self.layers],
            "even_sizes": list(self.even[0].sizes) if square else [list(e.sizes) for e in self.even],
            "even": [e.to_dict() for e in self.even],
            "suggested_input_size": list(suggested) if suggested else None,
            "foveation": fov,
            "spatial_bias": [m.to_dict() for m in self.spatial_bias], "notes": list(self.notes),
        }

    def plot(self, path: str | os.PathLike | None = None) -> Any:
        """The foveation maps side by side with their profiles. Returns the figure; saved to ``path``."""
        from rflens.report.figures import foveation_figure

        fig = foveation_figure(self.foveation, title=f"{self.model} at {'x'.join(map(str, self.input_size))}")
        if path is not None:
            fig.savefig(path, dpi=120, bbox_inches="tight")
        return fig


def padding_report(model: Any, input_size: int | Sequence[int], *, in_channels: int | None = None,
                   device: str = "meta", model_name: str | None = None, size_range: tuple[int, int] | None = None,
                   modes: Sequence[str] = ("model", *WHAT_IF_MODES), layer: str = "output", max_traces: int = 64,
                   progress: Callable[[int, int], None] | None = None) -> PaddingReport:
    """Uneven layers of ``model`` at ``input_size``, the input sizes without any (``size_range``, default
    32..1024, widened to half and twice the requested size, when the graph can be carried to other sizes, else
    the ``max_traces`` sizes around the requested one, each traced), and the foveation maps under ``modes``."""
    from rflens.border import Resolutions
    from rflens.capture import capture

    def trace(size: Sequence[int] | int) -> Graph:
        return capture(model, size, in_channels=in_channels, device=device)

    for mode in modes:
        if mode != "model" and mode not in WHAT_IF_MODES:
            raise RflensError(f"padding mode must be 'model' or one of {', '.join(WHAT_IF_MODES)}, got {mode!r}")
    graph = trace(input_size)
    res = Resolutions(graph, trace)
    notes = []
    size = graph.input_size
    # default: 32..1024, widened to reach half and twice the requested size
    ranges = [size_range or (min(DEFAULT_RANGE[0], max(1, min(size) // 2)), max(DEFAULT_RANGE[1], 2 * max(size)))
              ] * len(size)
    if not res.resizable:
        notes.append(f"every size was traced again: {res.retrace_reason}")
        if size_range is None:  # the max_traces sizes around each axis's own size
            ranges = [(max(n - max_traces // 2, 1), max(n - max_traces // 2, 1) + max_traces - 1) for n in size]
    if len(set(size)) == 1:
        even = [even_sizes(res.graph_at, size, *ranges[0], progress=progress)]
    else:
        even = [even_sizes(res.graph_at, size, *ranges[a], axis=a, progress=progress) for a in range(graph.ndim)]
    for e in even:
        if e.runnable == 0:
            notes.append(f"the model runs at no size in {e.searched[0]}..{e.searched[1]}")
    rows = audit(graph, res.fields)
    if layer != "output":
        from rflens.deadpixel import target_node

        target_node(graph, layer)  # an unknown layer is the user's error, not a note
    maps = []
    for mode in modes:
        try:
            maps.extend(foveation(graph, (mode,), layer))
        except RflensError as exc:  # a mode PyTorch refuses here, or no path that keeps the position
            notes.append(f"no {mode} foveation map: {exc}")
    return PaddingReport(model_name if model_name is not None else type(model).__name__, size, rows, even, maps,
                         notes=notes)


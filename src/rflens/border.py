"""Unproductive layers (Richter & Pal, "Receptive Field Refinement for Convolutional Neural Networks Reliably
Improves Predictive Performance", 2022; "Should You Go Deeper?", ICMLA 2021).

A layer whose inputs already see at least the whole image along an axis (their smallest receptive field,
``r_min``, is at least the input resolution) and whose own ``r_min`` exceeds it cannot integrate new context
along that axis: it is **unproductive**. So is a layer whose input map is no larger than its kernel (it acts
as a fully connected layer). A layer whose ``r_min`` exceeds the resolution but that still reads some input
that does not yet see everything is **critical** (the border layer). Layers are the modules that run a
convolution, a pooling, or a Linear/matmul over the units of a map; their ``r_min`` is that of the op's output.

Per axis, then per layer: unproductive when unproductive along every axis, productive when productive along
every axis (``r_min`` within the resolution, a map larger than the kernel), critical otherwise. A module called
more than once combines its calls the same way; its numbers are those of its last call. Everything here is
pure geometry on a captured graph: :class:`Resolutions` carries a graph to any input size without tracing the
model again.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rflens.errors import CaptureError, NotResizableError, RflensError
from rflens.geometry import IDENTITY, Resample, Window
from rflens.graph import IDENTITY_READ, Graph
from rflens.resize import mismatch, resized
from rflens.rf import AxisField, propagate

PRODUCTIVE, CRITICAL, UNPRODUCTIVE = "productive", "critical", "unproductive"
LAYER_OPS = ("convolution", "max_pool", "avg_pool", "_adaptive_avg_pool", "adaptive_avg_pool", "adaptive_max_pool")


@dataclass(frozen=True)
class LayerBorder:
    """One layer at one input resolution. Per-axis tuples follow the input's spatial axes."""

    name: str  # module name (named_modules)
    op: str
    node: int  # graph node of the layer's output
    status: str
    axis_status: tuple[str, ...]
    reason: str | None  # why unproductive: "r_min" (sees the whole image already) or "kernel" (acts as FC)
    rf_min: tuple[int | None, ...]
    rf_max: tuple[int | None, ...]
    input_rf_min: tuple[int | None, ...]
    input_size: tuple[int, ...]  # size of the map the layer reads
    kernel: tuple[int, ...] | None  # window extent (dilation included) of a convolution or pooling
    flops: int
    params: int
    calls: int = 1  # ops of the module classified (a module called twice has two)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "status": self.status, "axis_status": list(self.axis_status),
                "reason": self.reason, "rf_min": list(self.rf_min), "rf_max": list(self.rf_max),
                "input_rf_min": list(self.input_rf_min), "input_size": list(self.input_size),
                "kernel": None if self.kernel is None else list(self.kernel), "flops": self.flops,
                "params": self.params}


def _layer_nodes(graph: Graph) -> dict[str, list[tuple[int, bool]]]:
    """Module name -> its layer ops: (node of the output, whether the node is the op's own), modules in the
    order their first op ran."""
    entries: list[tuple[float, str, int, bool]] = []
    worked = {(w.module, w.node) for w in graph.work}
    for node in graph.nodes[1:]:
        identity = all(r == IDENTITY_READ or isinstance(r, Resample) and r.lo == r.hi == IDENTITY
                       for r in node.reads[0])
        if node.op.startswith(LAYER_OPS) and not (identity and (node.module, node.id) not in worked):
            entries.append((node.id, node.module, node.id, True))  # (an adaptive pooling n -> n is no layer)
    for w in graph.work:  # a Linear/matmul over a map's units has no node of its own: it runs at its input's
        if w.axes and w.op != "convolution":
            entries.append((w.order - 0.5, w.module, w.node, False))
    layers: dict[str, list[tuple[int, bool]]] = {}
    for _, module, node_id, own in sorted(entries, key=lambda e: e[0]):
        if (node_id, own) not in layers.get(module, []):
            layers.setdefault(module, []).append((node_id, own))
    return layers


def _axis_status(graph: Graph, fields: list[tuple[AxisField, ...]], node_id: int, own: bool, axis: int):
    node = graph.nodes[node_id]
    n = graph.input_size[axis]
    r = fields[node_id][axis].min_span()
    if own:
        ins = [fields[src][axis].min_span() for k, src in enumerate(node.inputs) if node.reads[k][axis] is not None]
        ins = [x for x in ins if x is not None]
        r_in = min(ins) if ins else None
        read = node.reads[0][axis]
        kernel = read.extent if isinstance(read, Window) and not node.op.startswith("_adaptive") else None
        m = graph.nodes[node.inputs[0]].sizes[axis]
    else:  # a Linear over the units: it reads its own node
        r_in, kernel, m = r, None, node.sizes[axis]
    if kernel is not None and kernel > 1 and m <= kernel:
        status, reason = UNPRODUCTIVE, "kernel"
    elif r is not None and r_in is not None and r_in >= n and r > n:
        status, reason = UNPRODUCTIVE, "r_min"
    elif r is not None and r > n:
        status, reason = CRITICAL, None
    else:
        status, reason = PRODUCTIVE, None
    return status, reason, r, fields[node_id][axis].span(node.sizes[axis]), r_in, m, kernel


def _combined(statuses: Sequence[str]) -> str:
    """Unproductive if every part is, productive if every part is, else critical."""
    kinds = set(statuses)
    return UNPRODUCTIVE if kinds == {UNPRODUCTIVE} else PRODUCTIVE if kinds == {PRODUCTIVE} else CRITICAL


def classify(graph: Graph, fields: list[tuple[AxisField, ...]] | None = None) -> list[LayerBorder]:
    """Every layer of ``graph`` at the graph's input size, in the order the layers first run."""
    fields = propagate(graph) if fields is None else fields
    flops: dict[str, int] = {}
    for w in graph.work:
        flops[w.module] = flops.get(w.module, 0) + w.flops
    out = []
    for name, ops in _layer_nodes(graph).items():
        rows = []
        for node_id, own in ops:
            per_axis = [_axis_status(graph, fields, node_id, own, a) for a in range(graph.ndim)]
            if all(p[2] is None for p in per_axis):
                continue  # reads only pooled (global) features: not a layer of the map
            rows.append((node_id, _combined([p[0] for p in per_axis]), per_axis))
        if not rows:
            continue
        node_id, _, per_axis = rows[-1]  # numbers of the last call; statuses over every call
        status = _combined([r[1] for r in rows])
        axis_status = tuple(_combined([r[2][a][0] for r in rows]) for a in range(graph.ndim))
        reasons = {p[1] for p in per_axis if p[1]}
        kernel = tuple(p[6] for p in per_axis) if all(p[6] is not None for p in per_axis) else None
        out.append(LayerBorder(
            name=name, op=graph.nodes[node_id].op, node=node_id, status=status,
            axis_status=axis_status,
            reason=("kernel" if "kernel" in reasons else "r_min") if status == UNPRODUCTIVE else None,
            rf_min=tuple(p[2] for p in per_axis), rf_max=tuple(p[3] for p in per_axis),
            input_rf_min=tuple(p[4] for p in per_axis), input_size=tuple(p[5] for p in per_axis),
            kernel=kernel, flops=flops.get(name, 0), params=graph.module_params.get(name, 0), calls=len(rows)))
    return out


@dataclass(frozen=True)
class Waste:
    """What the unproductive layers cost: their FLOPs (as ``torch.utils.flop_counter`` counts them:
    convolutions and matrix products) and their own parameters, absolute and as a share of the model."""

    flops: int
    params: int
    flops_share: float
    params_share: float

    def to_dict(self) -> dict[str, Any]:
        return {"flops": self.flops, "params": self.params, "flops_share": self.flops_share,
                "params_share": self.params_share}


def waste(layers: Sequence[LayerBorder], graph: Graph) -> Waste:
    bad = [layer for layer in layers if layer.status == UNPRODUCTIVE]
    flops, params = sum(x.flops for x in bad), sum(x.params for x in bad)
    return Waste(flops, params, flops / graph.flops if graph.flops else 0.0,
                 params / graph.params if graph.params else 0.0)


class _Statuses:
    layers: list[LayerBorder]

    @property
    def unproductive(self) -> list[str]:
        return [x.name for x in self.layers if x.status == UNPRODUCTIVE]

    @property
    def critical(self) -> list[str]:
        return [x.name for x in self.layers if x.status == CRITICAL]


@dataclass(frozen=True)
class SizeReport(_Statuses):
    """The border analysis at one input size: the graph there, its layers, and what they waste."""

    input_size: tuple[int, ...]
    graph: Graph
    layers: list[LayerBorder]
    waste: Waste


class Resolutions:
    """The border analysis of one model at any input size.

    The captured graph is carried to the new size (:func:`rflens.resize.resized`: milliseconds, no trace)
    when it shows how every op follows the input size: the model's own Python code never read the size of a
    feature map (what it computes from one looks like a constant in the graph), the size rules reproduce the
    captured sizes, and predictions match real captures at two other sizes. Otherwise (``retrace_reason`` says
    why) each new size is traced again with ``retrace``. ``check=False`` (no ``retrace`` needed) trusts the
    graph as it is.
    """

    def __init__(self, graph: Graph, retrace: Callable[[tuple[int, ...]], Graph] | None = None,
                 check: bool = True) -> None:
        self.graph = graph
        self.fields = propagate(graph)
        self.retrace = retrace
        self.retrace_reason: str | None = None
        self._cache: dict[tuple[int, ...], SizeReport | RflensError] = {}
        self._range: dict[tuple[int | None, int], ResolutionRange] = {}
        if check and retrace is None:
            raise ValueError("Resolutions needs retrace (size -> captured graph) to check the graph, or check=False "
                             "to trust it as it is")
        if check:
            self.retrace_reason = self._check()

    def _check(self) -> str | None:
        """Why the graph cannot be carried to other sizes, or None. The size rules must reproduce the captured
        sizes (a slice to a fixed end or a spatial concatenation would not), and a prediction must match a real
        capture at two other sizes where the model runs (TF-"same" padding would not)."""
        unexplained = [where for module, where in zip(self.graph.size_read_modules, self.graph.size_reads,
                                                      strict=True) if module not in self.graph.same_padding]
        if unexplained:
            return (f"the model's Python code reads the size of a feature map in {unexplained[0]}; what "
                    "it computes from it may change the graph with the input size")
        try:
            problem = mismatch(resized(self.graph, self.graph.input_size), self.graph)
        except RflensError as exc:
            problem = str(exc)
        if problem is not None:
            return f"the graph's size rules do not reproduce the captured sizes: {problem}"
        base = self.graph.input_size
        total = math.prod(r.stride for node in self.graph.nodes for reads in node.reads for r in reads
                          if isinstance(r, Window))
        compared = 0
        # n + 1 changes the parity of the first maps (TF-"same" padding), n + total stride every map's size
        for delta in dict.fromkeys((1, min(total, 512), 2, min(total, 512) + 1, 3)):
            size = tuple(n + delta for n in base)
            try:
                actual = self.retrace(size)
            except RflensError:
                continue  # the model does not run there; nothing to compare
            try:
                problem = mismatch(resized(self.graph, size), actual)
            except RflensError as exc:
                problem = f"the graph predicts the model cannot run at {size} ({exc}), but it does"
            if problem is not None:
                return problem
            compared += 1
            if compared == 2:
                return None
        return None if compared else f"the model did not run at any other size tried near {base}"

    @property
    def resizable(self) -> bool:
        return self.retrace_reason is None

    def graph_at(self, size: Sequence[int]) -> Graph:
        size = tuple(int(n) for n in size)
        if size == self.graph.input_size:
            return self.graph
        if self.retrace_reason is None:
            try:
                return resized(self.graph, size)
            except NotResizableError as exc:
                if self.retrace is None:
                    raise
                self.retrace_reason = str(exc)
        if self.retrace is None:
            raise NotResizableError(self.retrace_reason)
        return self.retrace(size)

    def at(self, size: int | Sequence[int]) -> SizeReport:
        """The analysis at ``size`` (an int: the same on every axis); raises :class:`CaptureError`
        (:class:`InputSizeError` when predicted from the graph) where the model cannot run."""
        size = (size,) * self.graph.ndim if isinstance(size, int) else tuple(int(n) for n in size)
        hit = self._cache.get(size)
        if hit is None:
            try:
                graph = self.graph_at(size)
                fields = propagate(graph, None if self.retrace_reason else (self.graph, self.fields)) \
                    if graph is not self.graph else self.fields
                layers = classify(graph, fields)
                hit = SizeReport(size, graph, layers, waste(layers, graph))
            except CaptureError as exc:  # InputSizeError, or a traced model that fails at this size
                hit = exc
            self._cache[size] = hit
        if isinstance(hit, RflensError):
            raise hit
        return hit

    def sweep(self, sizes: Sequence[int | Sequence[int]]) -> list[SizeReport | RflensError]:
        """The analysis at each size (an int is the same size on every axis); an error where it cannot run."""
        out: list[SizeReport | RflensError] = []
        for s in sizes:
            size = (s,) * self.graph.ndim if isinstance(s, int) else tuple(s)
            try:
                out.append(self.at(size))
            except CaptureError as exc:
                out.append(exc)
        return out

    def feasible_range(self, limit: int | None = None, max_traces: int = 64) -> ResolutionRange:
        """Per axis: the smallest resolution (the same on every axis) with no layer unproductive along that
        axis, and the largest useful one, the largest finite ``r_max`` of any layer (beyond it no unit sees the
        whole image). The smallest is found by trying every size upwards (layers may appear with the size, as an
        adaptive pooling that stops being an identity), from a bound below which a layer whose geometry does
        not depend on the size is unproductive; sizes where the model cannot run are stepped over. The search
        stops at ``limit`` (default: four times the larger of the input size and the largest ``r_max``) and, when
        every size is traced again, after ``max_traces`` sizes: the smallest is then None, with a reason."""
        if (limit, max_traces) not in self._range:
            self._range[limit, max_traces] = self._feasible_range(limit, max_traces)
        return self._range[limit, max_traces]

    def _feasible_range(self, limit: int | None, max_traces: int) -> ResolutionRange:
        ndim = self.graph.ndim
        base = self.at(self.graph.input_size)
        largest = tuple(max((x.rf_max[a] for x in base.layers if x.rf_max[a] is not None), default=None)
                        for a in range(ndim))
        if limit is None:
            limit = 4 * max((*self.graph.input_size, *(r for r in largest if r is not None)))
        stable = _size_free_nodes(self.graph)
        smallest, bounds = [], []
        for a in range(ndim):
            bound = max((min(x.input_rf_min[a], x.rf_min[a] - 1) for x in base.layers if x.node in stable
                         and x.calls == 1 and x.input_rf_min[a] is not None and x.rf_min[a] is not None), default=0)
            bounds.append(max(bound, 0))
            last = limit if self.resizable else min(limit, bounds[-1] + max_traces)
            smallest.append(next((n for n in range(bounds[-1] + 1, last + 1) if self._free(n, a)), None))
        notes = []
        if not self.resizable and any(bounds):
            notes.append(f"the smallest input size was searched from {per_axis_text(tuple(b + 1 for b in bounds))}"
                         " up: below it a layer is unproductive as long as the model's geometry keeps its receptive "
                         "fields, which this model's size-dependent code is assumed to do")
        if None in smallest:
            notes.append(f"no input size up to {limit} is free of unproductive layers" if self.resizable else
                         f"none of the {max_traces} input sizes traced upwards is free of unproductive layers")
        assumed = "; ".join(notes)
        return ResolutionRange(tuple(smallest), largest, assumed or None)

    def _free(self, n: int, axis: int) -> bool | None:
        """No layer unproductive along ``axis`` at size n (None: the model cannot run at n)."""
        try:
            report = self.at((n,) * self.graph.ndim)
        except CaptureError:
            return None
        return all(x.axis_status[axis] != UNPRODUCTIVE for x in report.layers)


def per_axis_text(values: Sequence[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def _size_free_nodes(graph: Graph) -> set[int]:
    """Nodes whose fields do not change with the input size as far as the graph shows: no read on the way
    there is a resampling (whose maps may follow the size; broadcasting one unit is none). Padding amounts may
    change (TF-"same"): they shift a field, never change its size."""
    free: set[int] = set()
    for node in graph.nodes:
        if all(i in free for i in node.inputs) and not any(isinstance(r, Resample) and not r.broadcast
                                                            for rs in node.reads for r in rs):
            free.add(node.id)
    return free


@dataclass(frozen=True)
class ResolutionRange:
    """Per axis: smallest resolution without an unproductive layer, largest useful resolution (None: none)."""

    min: tuple[int | None, ...]
    max: tuple[int | None, ...]
    assumption: str | None = None  # how the smallest size was found when the graph could not be resized

    def to_dict(self) -> dict[str, Any]:
        return {"min": list(self.min), "max": list(self.max)}


@dataclass
class BorderReport(_Statuses):
    """The border analysis of a model at its input size: layers, waste, feasible range, refinements."""

    model: str
    input_size: tuple[int, ...]
    layers: list[LayerBorder]
    waste: Waste
    resolution_range: ResolutionRange
    total_flops: int
    total_params: int
    suggestions: list[Any] = field(default_factory=list)  # rflens.refinement.Suggestion
    notes: list[str] = field(default_factory=list)
    resolutions: Resolutions | None = field(default=None, repr=False)  # the same model at other input sizes

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "input_size": list(self.input_size), "unproductive": self.unproductive,
            "critical": self.critical, "resolution_range": self.resolution_range.to_dict(),
            "waste": self.waste.to_dict(), "flops": self.total_flops, "params": self.total_params,
            "suggestions": [s.to_dict() for s in self.suggestions], "notes": list(self.notes),
            "layers": [x.to_dict() for x in self.layers],
        }

    def plot(self, path: str | os.PathLike | None = None) -> Any:
        """r_min and r_max of every layer against depth, the input resolution as a line (Richter & Pal's
        figure). Returns the matplotlib figure; saved to ``path`` when given."""
        from rflens.report.figures import border_figure

        fig = border_figure(self)
        if path is not None:
            fig.savefig(path, dpi=120, bbox_inches="tight")
        return fig


def border_report(model: Any, input_size: int | Sequence[int], *, in_channels: int | None = None,
                  device: str = "meta", model_name: str | None = None, top: int = 5,
                  suggestions: bool = True) -> BorderReport:
    """Unproductive and critical layers of ``model`` (an ``nn.Module``) at ``input_size``, what they cost, the
    feasible input range and the ``top`` refinements (:mod:`rflens.refinement`)."""
    from rflens.capture import capture
    from rflens.refinement import suggest
    from rflens.transforms import applicable, refine

    def trace(size: Sequence[int] | int, net: Any = model) -> Graph:
        return capture(net, size, in_channels=in_channels, device=device)

    graph = trace(input_size)
    res = Resolutions(graph, trace)
    here = res.at(graph.input_size)
    notes = []
    if res.retrace_reason is not None:
        notes.append(f"traced again at every other size: {res.retrace_reason}")
    feasible = res.feasible_range()
    if feasible.assumption:
        notes.append(feasible.assumption)
    found = []
    if suggestions:
        verify = None
        if not res.resizable:  # the geometry only estimates a change: apply it to the model and trace that
            def verify(cand: Any) -> Graph:
                return trace(graph.input_size, refine(model, {"edits": cand.edits}))
        found = suggest(res, verify, top, lambda edits: applicable(model, edits))
    return BorderReport(model_name if model_name is not None else type(model).__name__, graph.input_size,
                        here.layers, here.waste, feasible, graph.flops, graph.params, found, notes, res)

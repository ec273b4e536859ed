"""Theoretical receptive fields of every node of a captured graph (Araujo et al., Distill 2019).

Per node and axis, the *field* is the pair of index maps ``lo(u), hi(u)``: output unit u covers input pixels
``lo(u) .. hi(u)`` on the infinite line (union over all paths). From it:
``rf`` = largest span ``hi - lo + 1`` over units, ``stride`` = slope (a Fraction after upsampling),
``padding`` = ``-lo(0)``, so unit u covers ``[u*stride - padding, u*stride - padding + rf - 1]`` (exactly
when the stride is an integer). ``rf_min`` is Richter & Pal's smallest receptive field over all paths.
``global`` marks dependence on a whole axis through a global op (spatial mean, attention, GroupNorm...);
``rf`` and ``rf_min`` then describe the local paths, or are ``None`` when there is none. Where paths of
different strides meet, ``stride`` is ``None`` and ``rf`` is the largest field over the real units.
:func:`support` gives the exact set of input pixels that can influence one concrete unit, clipped to the
image and following padding modes (circular padding wraps), interpolation taps and every path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property, lru_cache
from typing import Any

import numpy as np

from rflens.geometry import IDENTITY, QuasiAffine, pointwise
from rflens.graph import Graph, Node, check_unit, walk_back

Path = tuple[QuasiAffine, QuasiAffine]


@dataclass(frozen=True)
class AxisField:
    """Unit u covers ``lo(u) .. hi(u)``: the envelope of ``parts``, one (lo, hi) pair per effective stride.
    Paths of one stride merge into one pair; different strides meet only in unusual graphs (a 7x7 map pooled
    to 3x3 and upsampled back to 7x7), where the field changes from unit to unit."""

    parts: tuple[Path, ...]  # empty: no local path reaches this axis (only global dependence)
    paths: tuple[Path, ...]  # the paths that can still turn out smallest (for rf_min)
    is_global: bool

    def lo(self, u: int) -> int:
        return min(lo(u) for lo, _ in self.parts)

    def hi(self, u: int) -> int:
        return max(hi(u) for _, hi in self.parts)

    @property
    def stride(self) -> Fraction | None:
        """The effective stride, or None where paths of different strides meet."""
        return self.parts[0][0].slope if len(self.parts) == 1 else None

    def span(self, n_units: int) -> int | None:
        """Largest field over the units: over one period when there is one stride, else over the real units."""
        if not self.parts:
            return None
        if len(self.parts) == 1:
            return self._period_span
        return max(self.hi(u) - self.lo(u) + 1 for u in range(n_units))

    @cached_property
    def _period_span(self) -> int:
        return max(self.hi(u) - self.lo(u) + 1 for u in range(math.lcm(*(f.period for f in self.parts[0]))))

    def min_span(self) -> int | None:
        return self._min_span

    @cached_property
    def _min_span(self) -> int | None:  # fields are reused across input sizes: compute once
        if not self.paths:
            return None
        return min(max(hi(u) - lo(u) + 1 for u in range(math.lcm(lo.period, hi.period))) for lo, hi in self.paths)


INPUT_FIELD = AxisField(((IDENTITY, IDENTITY),), ((IDENTITY, IDENTITY),), False)


def _prune(paths: list[Path]) -> tuple[Path, ...]:
    """Drop paths that can never be the smallest: a path contained in another stays contained through any
    later op; among affine paths of one slope the span is all that matters."""
    affine: dict[Fraction, Path] = {}
    rest: list[Path] = []
    for lo, hi in paths:
        if lo.period == 1 and hi.period == 1:
            key = lo.slope
            if key not in affine or hi.base[0] - lo.base[0] < affine[key][1].base[0] - affine[key][0].base[0]:
                affine[key] = (lo, hi)
        else:
            rest.append((lo, hi))
    kept: list[Path] = []
    for i, (lo, hi) in enumerate(rest):
        period = math.lcm(lo.period, hi.period)
        dominated = False
        for j, (lo2, hi2) in enumerate(rest):
            if i == j or lo2.slope != lo.slope:
                continue
            p = math.lcm(period, lo2.period, hi2.period)
            inside = all(lo2(u) >= lo(u) and hi2(u) <= hi(u) for u in range(p))
            same = all(lo2(u) == lo(u) and hi2(u) == hi(u) for u in range(p))
            if inside and (not same or j < i):
                dominated = True
                break
        if not dominated:
            kept.append((lo, hi))
    return tuple(affine.values()) + tuple(kept)


def propagate(graph: Graph, known: tuple[Graph, list[tuple[AxisField, ...]]] | None = None
              ) -> list[tuple[AxisField, ...]]:
    """The field of every node along every axis, in node order. ``known``: a graph of the same ops (the same
    model at another input size) and its fields, reused for every node whose reads and inputs are unchanged."""
    fields: list[tuple[AxisField, ...]] = []
    same: list[bool] = []
    for node in graph.nodes:
        if not node.inputs:
            fields.append((INPUT_FIELD,) * graph.ndim)
            same.append(True)
            continue
        if known is not None and all(same[i] for i in node.inputs) and known[0].nodes[node.id].reads == node.reads:
            fields.append(known[1][node.id])
            same.append(True)
            continue
        fields.append(tuple(_axis_field(graph, node, fields, a) for a in range(graph.ndim)))
        same.append(False)
    return fields


def _axis_field(graph: Graph, node: Node, fields: list, axis: int) -> AxisField:
    parts: list[Path] = []
    paths: list[Path] = []
    is_global = False
    for k, src in enumerate(node.inputs):
        read = node.reads[k][axis]
        f = fields[src][axis]
        is_global |= f.is_global
        if read is None:
            is_global = True
            continue
        rlo, rhi = read.maps()
        parts += [(lo.compose(rlo), hi.compose(rhi)) for lo, hi in f.parts]
        paths += [(lo.compose(rlo), hi.compose(rhi)) for lo, hi in f.paths]
    if not parts:
        return AxisField((), (), True)
    by_stride: dict[Fraction, list[Path]] = {}
    for part in parts:
        by_stride.setdefault(part[0].slope, []).append(part)
    merged = tuple((pointwise([p[0] for p in group], min), pointwise([p[1] for p in group], max))
                   for _, group in sorted(by_stride.items()))
    return AxisField(merged, _prune(paths), is_global)


def _exact(x: Fraction) -> int | Fraction:
    return x.numerator if x.denominator == 1 else x


@dataclass(frozen=True)
class LayerRF:
    """Receptive field of one layer's output, per spatial axis (Distill conventions)."""

    name: str
    op: str
    output_size: tuple[int, ...]
    rf: tuple[int | None, ...]
    rf_min: tuple[int | None, ...]
    stride: tuple[int | Fraction | None, ...]
    padding: tuple[int | None, ...]
    is_global: bool
    node: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "op": self.op, "output_size": list(self.output_size), "rf": list(self.rf),
            "rf_min": list(self.rf_min), "stride": [_json_number(s) for s in self.stride],
            "padding": list(self.padding), "global": self.is_global,
        }


def _json_number(x: int | Fraction | None) -> int | str | None:
    return str(x) if isinstance(x, Fraction) else x


def _layer(name: str, op: str, node: Node, fields: tuple[AxisField, ...]) -> LayerRF:
    return LayerRF(
        name=name, op=op, output_size=node.sizes,
        rf=tuple(f.span(n) for f, n in zip(fields, node.sizes, strict=True)),
        rf_min=tuple(f.min_span() for f in fields),
        stride=tuple(_exact(f.stride) if f.stride is not None else None for f in fields),
        padding=tuple(-f.lo(0) if f.parts else None for f in fields),
        is_global=any(f.is_global for f in fields),
        node=node.id,
    )


@dataclass
class ReceptiveFields:
    """Receptive fields of a model at one input size: ``layers`` (one per module whose output is a spatial
    map, in the order they finish) and ``nodes`` (every op of the captured graph)."""

    model: str
    graph: Graph
    fields: list[tuple[AxisField, ...]] = field(repr=False)
    layers: list[LayerRF]
    nodes: list[LayerRF] = field(repr=False)

    @property
    def input_size(self) -> tuple[int, ...]:
        return self.graph.input_size

    def layer(self, name: str) -> LayerRF:
        for layer in self.layers:
            if layer.name == name:
                return layer
        self.graph.module_node(name)  # raises a KeyError that lists known names
        raise KeyError(name)

    def support(self, layer: str | int, unit: Sequence[int]) -> np.ndarray:
        """Boolean mask over the input: the pixels that can influence ``unit`` of ``layer`` (a module name or a
        node id)."""
        node = self.graph.module_node(layer).id if isinstance(layer, str) else layer
        return support(self.graph, node, unit)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "input_size": list(self.input_size),
                "layers": [layer.to_dict() for layer in self.layers]}


def analyse(graph: Graph, model_name: str = "") -> ReceptiveFields:
    """Receptive fields of every node and every module output of a captured graph."""
    fields = propagate(graph)
    nodes = [_layer(n.module, n.op, n, fields[n.id]) for n in graph.nodes]
    layers = [_layer(name, graph.module_types.get(name, ""), graph.nodes[i], fields[i])
              for name, i in graph.module_outputs.items()]
    return ReceptiveFields(model_name, graph, fields, layers, nodes)


def receptive_field(model: Any, input_size: int | Sequence[int], *, in_channels: int | None = None,
                    device: str = "meta", model_name: str | None = None) -> ReceptiveFields:
    """Theoretical receptive field of every layer of ``model`` (an ``nn.Module``) at ``input_size``."""
    from rflens.capture import capture  # torch is needed only here

    graph = capture(model, input_size, in_channels=in_channels, device=device)
    return analyse(graph, model_name if model_name is not None else type(model).__name__)


# -- exact support of one unit ----------------------------------------------------------------------------
def support(graph: Graph, node_id: int, unit: Sequence[int]) -> np.ndarray:
    """Input pixels that can influence output ``unit`` of node ``node_id`` (exact, clipped to the image)."""
    target = graph.nodes[node_id]
    unit = check_unit(target, unit)
    seed = np.zeros(target.sizes, dtype=bool)
    seed[unit] = True
    mask = walk_back(graph, node_id, seed, _read_back, np.logical_or, _nothing)
    return mask if mask is not None else np.zeros(graph.input_size, dtype=bool)


def _nothing(mask: np.ndarray) -> bool:
    return not mask.any()


@lru_cache(maxsize=4096)
def cached_taps(read: Any, n_in: int, n_out: int) -> tuple[np.ndarray, ...]:
    """``read.taps(n_in, n_out)``, computed once per read and size (walks and checks ask again and again)."""
    return tuple(read.taps(n_in, n_out))


def _read_back(mask: np.ndarray, axis: int, read: Any, n_in: int, n_out: int) -> np.ndarray:
    """Which input indices along ``axis`` are read by the marked output units."""
    m = np.moveaxis(mask, axis, 0)
    if read is None:  # the op mixes the whole axis
        out = np.broadcast_to(m.any(axis=0, keepdims=True), (n_in,) + m.shape[1:])
    else:
        out = np.zeros((n_in,) + m.shape[1:], dtype=bool)
        for idx in cached_taps(read, n_in, n_out):
            ok = idx >= 0
            if ok.any():
                np.logical_or.at(out, idx[ok], m[ok])
    return np.moveaxis(out, 0, axis).copy()

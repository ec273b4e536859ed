"""Exact cone cropping: run a network on the part of the input one unit can see.

A unit depends only on the input inside its theoretical receptive field. When that field is smaller than the
input, the network run on a crop that covers it computes the same unit, provided every op on the unit's paths
computes the same values there: the crop starts at a multiple of every effective stride on those paths (so each
layer's grid is only shifted), its size is congruent to the input's modulo that stride (every map rounds the
same way), and its sides lie beyond the field or are the image's own borders. That is checked, not assumed: the
model is traced again at the crop size (on meta), its graph must hold the same ops, and every unit the target
depends on, at every node, must read the same inputs tap by tap in both graphs, shifted by the crop start, with
padding exactly where the full input has padding. Anything else falls back to the full input and says why.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rflens.errors import RflensError
from rflens.geometry import Resample
from rflens.graph import Graph, ancestors
from rflens.resize import resized
from rflens.rf import AxisField, cached_taps, propagate


@dataclass(frozen=True)
class ConePlan:
    """Where to run: ``crop`` is ``[start, stop)`` per axis of the input, or None for the full input; ``unit``
    is the target unit in the coordinates of that run, ``sizes`` the size of the node's output there;
    ``reason`` says why this path was taken."""

    crop: tuple[tuple[int, int], ...] | None
    unit: tuple[int, ...]
    sizes: tuple[int, ...]
    reason: str

    @property
    def cropped(self) -> bool:
        return self.crop is not None

    def describe(self) -> str:
        if self.crop is None:
            return f"full input: {self.reason}"
        box = " x ".join(f"[{a}, {b})" for a, b in self.crop)
        return f"cone crop {box}: {self.reason}"


def plan(graph: Graph, node_id: int, unit: tuple[int, ...], fields: list[tuple[AxisField, ...]] | None = None,
         capture_at: Callable[[tuple[int, ...]], Graph] | None = None) -> ConePlan:
    """How to compute ``unit`` of node ``node_id`` exactly on as little input as possible. ``capture_at(size)``
    traces the model at the crop size (the check then sees what the model's Python really does there); without
    it the graph is carried to that size by its size rules."""

    def full(why: str) -> ConePlan:
        return ConePlan(None, unit, graph.nodes[node_id].sizes, why)

    if graph.size_reads:
        return full(f"the model's Python reads the size of a feature map ({graph.size_reads[0]}), so a crop "
                    "could change its geometry")
    fields = propagate(graph) if fields is None else fields
    own = fields[node_id]
    if any(f.is_global or not f.parts for f in own):
        return full("a global op (spatial mean, attention, normalisation over the map...) makes the unit depend "
                    "on the whole input")
    cone = sorted(ancestors(graph, node_id))
    align = []
    for axis in range(graph.ndim):
        strides = [fields[v][axis].stride for v in cone]
        if any(s is None for s in strides):
            return full("paths of different strides meet, so no crop offset keeps every layer's grid")
        if any(s == 0 for s in strides):
            return full("a unit is broadcast along an axis, so every position depends on the same input")
        align.append(math.lcm(*(s.numerator for s in strides)))
    lo = [f.lo(u) for f, u in zip(own, unit, strict=True)]
    hi = [f.hi(u) for f, u in zip(own, unit, strict=True)]
    size = graph.input_size
    if any(last < 0 or first > n - 1 for first, last, n in zip(lo, hi, size, strict=True)):
        return full("the unit's field lies outside the image (it reads only padding)")
    crop = []
    for a, n, first, last in zip(align, size, lo, hi, strict=True):
        start = 0 if first <= 0 else first - first % a
        if last >= n - 1:
            stop = n
        else:  # a crop size congruent to the input's modulo the alignment keeps every map's rounding
            need = last + 1 - start
            stop = start + need + (n - start - need) % a
        crop.append((start, stop))
    if all(stop - start == n for (start, stop), n in zip(crop, size, strict=True)):
        return full("the receptive field covers the whole input")
    small_size = tuple(stop - start for start, stop in crop)
    try:
        small = capture_at(small_size) if capture_at is not None else resized(graph, small_size)
    except RflensError as exc:
        return full(f"the model does not run the same way at the crop size {small_size}: {exc}")
    problem = _same_ops(graph, small, node_id) or _cone_mismatch(graph, small, node_id, unit, crop, fields)
    if problem is not None:
        return full(f"{problem} at the crop size {small_size}")
    moved = tuple(int(u - start / f.stride) for u, (start, _), f in zip(unit, crop, own, strict=True))
    return ConePlan(tuple(crop), moved, small.nodes[node_id].sizes, "the receptive field is smaller than the input")


def _same_ops(graph: Graph, small: Graph, node_id: int) -> str | None:
    """The crop's graph must hold the same ops, in the same order, wired the same way, up to the unit's node."""
    if len(small.nodes) <= node_id:
        return "the model's graph changes with the input size"
    for a, b in zip(graph.nodes[:node_id + 1], small.nodes, strict=False):
        if (a.op, a.module, a.inputs) != (b.op, b.module, b.inputs):
            return f"the model's graph changes with the input size (aten.{a.op} in '{a.module}')"
    return None


def _cone_mismatch(graph: Graph, small: Graph, node_id: int, unit: tuple[int, ...],
                   crop: list[tuple[int, int]], fields: list[tuple[AxisField, ...]]) -> str | None:
    """Why the crop would compute the unit differently, or None. Every unit the target depends on, at every
    node, must exist in the crop's graph shifted by the crop start (in that node's units), and read the same
    inputs tap by tap, shifted the same way, with padding where the full input has padding: then by induction
    from the input every value on the unit's paths is the same. Checked per axis on the projection of the
    cone (a superset of it), with the exact taps of both graphs."""
    for axis, (start, _) in enumerate(crop):
        needed: dict[int, list[np.ndarray]] = {node_id: [np.array([unit[axis]])]}
        for node in reversed(graph.nodes[1:node_id + 1]):
            parts = needed.pop(node.id, None)
            if parts is None:
                continue
            idx = np.unique(np.concatenate(parts))
            if idx.size == 0:  # the target reads only padding of this node
                continue
            twin = small.nodes[node.id]
            where = f"aten.{node.op} in '{node.module or 'the top-level forward'}'"
            new = idx - _offset(start, fields[node.id][axis])
            if new[0] < 0 or new[-1] >= twin.sizes[axis]:
                return f"{where} lacks units the target needs"
            for k, src in enumerate(node.inputs):
                read, other = node.reads[k][axis], twin.reads[k][axis]
                if read is None or other is None:
                    return f"{where} reads the whole axis"
                if isinstance(read, Resample) and (not isinstance(other, Resample) or read.maps() != other.maps()):
                    return f"{where} resamples differently (its arithmetic follows the input size)"
                mine = cached_taps(read, graph.nodes[src].sizes[axis], node.sizes[axis])
                theirs = cached_taps(other, small.nodes[src].sizes[axis], twin.sizes[axis])
                shift = _offset(start, fields[src][axis])
                if len(mine) != len(theirs):
                    return f"{where} reads differently"
                for a, b in zip(mine, theirs, strict=True):
                    a, b = a[idx], b[new]
                    if not np.array_equal(np.where(a < 0, -1, a - shift), np.where(b < 0, -1, b)) or \
                            ((a < 0) != (b < 0)).any():
                        return f"{where} reads other pixels or padding near the crop's edge"
                    needed.setdefault(src, []).append(a[a >= 0])
    return None


def _offset(start: int, f: AxisField) -> int:
    """The crop start in a node's own units (an integer: the start is aligned to every stride of the cone)."""
    shift = start / f.stride
    if shift.denominator != 1:
        raise AssertionError(f"crop start {start} is not aligned to stride {f.stride}")
    return int(shift)


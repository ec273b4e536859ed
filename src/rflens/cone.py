"""Exact cone cropping: run a network on the part of the input one unit can see.

A unit depends only on the input inside its theoretical receptive field. When that field is smaller than the
input, the network run on a crop that covers it computes the same unit, provided every op samples the same
positions in the crop as in the full input: the crop starts at a multiple of every effective stride on the
unit's paths (so each layer's grid is only shifted), its sides either lie beyond the field (no padding is
read there) or are the image's own borders, and no op changes its arithmetic with the input size. The last
condition is checked, not assumed: the captured graph is carried to the crop size (:func:`rflens.resize.resized`)
and every op on the unit's paths must read the same way there. Anything else falls back to the full input and
says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rflens.errors import RflensError
from rflens.geometry import Resample
from rflens.graph import AxisRead, Graph
from rflens.resize import resized
from rflens.rf import AxisField, propagate, support


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


def plan(graph: Graph, node_id: int, unit: tuple[int, ...],
         fields: list[tuple[AxisField, ...]] | None = None) -> ConePlan:
    """How to compute ``unit`` of node ``node_id`` exactly on as little input as possible."""

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
    cone = _ancestors(graph, node_id)
    align = []
    for axis in range(graph.ndim):
        strides = [fields[v][axis].stride for v in cone]
        if any(s is None for s in strides):
            return full("paths of different strides meet, so no crop offset keeps every layer's grid")
        align.append(math.lcm(*(s.numerator for s in strides)))
    lo = [f.lo(u) for f, u in zip(own, unit, strict=True)]
    hi = [f.hi(u) for f, u in zip(own, unit, strict=True)]
    size = graph.input_size
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
    seen = support(graph, node_id, unit)
    for axis, (start, stop) in enumerate(crop):
        used = seen.any(axis=tuple(i for i in range(graph.ndim) if i != axis)).nonzero()[0]
        if used.size and (used[0] < start or used[-1] >= stop):
            return full("the unit reads pixels outside its field's span (circular padding or a roll wraps around)")
    small_size = tuple(stop - start for start, stop in crop)
    try:
        small = resized(graph, small_size)
    except RflensError as exc:
        return full(f"the model's geometry cannot be carried to the crop size {small_size}: {exc}")
    for v in cone:
        for mine, theirs in zip(graph.nodes[v].reads, small.nodes[v].reads, strict=True):
            if not all(_same(a, b) for a, b in zip(mine, theirs, strict=True)):
                where = graph.nodes[v].module or "the top-level forward"
                return full(f"aten.{graph.nodes[v].op} in '{where}' reads differently at the crop size "
                            f"{small_size} (its arithmetic follows the input size)")
    small_fields = propagate(small, known=(graph, fields))[node_id]
    moved = []
    for axis, ((start, _), f) in enumerate(zip(crop, own, strict=True)):
        shift = start / f.stride
        new = unit[axis] - shift
        g = small_fields[axis]
        if (new.denominator != 1 or not 0 <= new < small.nodes[node_id].sizes[axis]
                or g.lo(int(new)) != lo[axis] - start or g.hi(int(new)) != hi[axis] - start):
            return full(f"along axis {axis} the crop does not keep the unit's field (internal check)")
        moved.append(int(new))
    return ConePlan(tuple(crop), tuple(moved), small.nodes[node_id].sizes,
                    "the receptive field is smaller than the input")


def _ancestors(graph: Graph, node_id: int) -> list[int]:
    """The node and every node it reads from, directly or not."""
    seen = {node_id}
    todo = [node_id]
    while todo:
        for src in graph.nodes[todo.pop()].inputs:
            if src not in seen:
                seen.add(src)
                todo.append(src)
    return sorted(seen)


def _same(a: AxisRead, b: AxisRead) -> bool:
    """Reads that sample the same positions: equal geometry, or for a resampling equal index maps."""
    if isinstance(a, Resample) and isinstance(b, Resample):
        return a.maps() == b.maps()
    return a == b

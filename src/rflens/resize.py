"""The captured graph at another input size, or with one layer's geometry changed, without tracing again.

Every read of the graph knows how it follows the size of its input: windows, padding and transposed
convolutions by their formulas, adaptive pooling, interpolation by a scale factor, pixel shuffle and roll by
``Resample.rescale``. Sizes are recomputed node by node, and so are the FLOPs of every op that grows with the
units of its output. What Python code derived from the input size before calling an op (TF-"same" padding
amounts, an interpolation to another tensor's size, a slice to a fixed end) is not in the graph: it looks
like a constant. :func:`mismatch` finds that out by comparing a prediction with a real capture at a second size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from rflens.errors import InputSizeError, InputTooSmallError, NotResizableError
from rflens.geometry import Pad, Resample, Window, same_pads
from rflens.graph import IDENTITY_READ, Graph, Node, Work


@dataclass(frozen=True)
class SetWindow:
    """Give node ``node`` (a convolution or pooling) new windows along the axes where ``windows`` is not None;
    ``kernel``: its new convolution kernel sizes, when they change (FLOPs and parameters follow)."""

    node: int
    windows: tuple[Window | None, ...]
    kernel: tuple[int, ...] | None = None


@dataclass(frozen=True)
class MoveAfter:
    """Move the geometry of single-input node ``node`` (a pooling) behind node ``after``: ``node`` becomes an
    identity and a copy of it reads ``after``; everything that read ``after`` reads the copy."""

    node: int
    after: int


Change = SetWindow | MoveAfter


WINDOW_OPS = ("convolution", "max_pool", "avg_pool")


def consumers(graph: Graph) -> dict[int, list[int]]:
    """Node id -> the nodes that read its output."""
    out: dict[int, list[int]] = {}
    for node in graph.nodes:
        for src in node.inputs:
            out.setdefault(src, []).append(node.id)
    return out


def is_window(node: Node) -> bool:
    """A convolution or pooling with a sliding window on every axis (not transposed, not adaptive)."""
    return node.op.startswith(WINDOW_OPS) and bool(node.reads) and all(isinstance(r, Window) for r in node.reads[0])


def mark_same_padding(graph: Graph) -> None:
    """Find TensorFlow-"same" padding computed by the model's code (timm's ``Conv2dSame``, ``MaxPool2dSame``):
    a constant padding, in a module whose code read the size of a map in one place only, read only by windows of
    that module (or its submodules) that pad nothing themselves, with the "same" amounts for them on every axis. Its
    reads get the rule (:meth:`rflens.geometry.Pad.at`) so that the graph follows it to other sizes, and the
    module is listed in ``graph.same_padding``. Whether that explains everything the code does with the size
    is checked elsewhere, against real captures at other sizes (:class:`rflens.border.Resolutions`)."""
    readers = consumers(graph)
    for node in graph.nodes[1:]:
        if node.op != "constant_pad_nd" or graph.size_read_modules.count(node.module) != 1 or len(node.inputs) != 1:
            continue  # the module's code must read sizes in one place only: the padding's computation
        users = [graph.nodes[i] for i in readers.get(node.id, [])]
        if not users or not all(is_window(u) and _inside(u.module, node.module) and len(u.inputs) == 1
                                for u in users):
            continue
        n_in = graph.nodes[node.inputs[0]].sizes
        rules = []
        for axis, read in enumerate(node.reads[0]):
            windows = {(w.extent, w.stride) for w in (u.reads[0][axis] for u in users) if not w.pad_left
                       and not w.pad_right}
            amounts = (read.left, read.right) if isinstance(read, Pad) else (0, 0) if read == IDENTITY_READ else None
            if len(windows) != 1 or amounts is None or same_pads(n_in[axis], *next(iter(windows))) != amounts:
                break
            rules.append(Pad(*amounts, "constant", next(iter(windows))))
        else:
            graph.nodes[node.id] = replace(node, reads=(tuple(rules),))
            if node.module not in graph.same_padding:
                graph.same_padding.append(node.module)


def _inside(module: str, parent: str) -> bool:
    return not parent or module == parent or module.startswith(parent + ".")


def _where(node: Node) -> str:
    return f"aten.{node.op} in module '{node.module}'" if node.module else f"aten.{node.op} at the top level"


def edited(graph: Graph, changes: Sequence[Change]) -> Graph:
    """A copy of ``graph`` with ``changes`` applied (node ids of the original graph; at most one move, last).
    Sizes are those of the original until the graph is :func:`resized`."""
    nodes = list(graph.nodes)
    work = list(graph.work)
    params = dict(graph.module_params)
    outputs = dict(graph.module_outputs)
    for change in changes:
        if isinstance(change, SetWindow):
            node = nodes[change.node]
            first = tuple(w if w is not None else r for w, r in zip(change.windows, node.reads[0], strict=True))
            nodes[change.node] = replace(node, reads=(first, *node.reads[1:]))
            src = nodes[node.inputs[0]]
            if src.reads and any(isinstance(r, Pad) and r.same for r in src.reads[0]):  # TF-"same" follows the window
                nodes[src.id] = replace(src, reads=(tuple(
                    replace(r, same=(w.extent, w.stride)) if isinstance(r, Pad) and r.same and isinstance(w, Window)
                    else r for r, w in zip(src.reads[0], first, strict=True)),))
            if change.kernel is not None:
                for i, w in enumerate(work):  # the node's own convolution (not one that reads it)
                    if w.node == change.node and w.op == "convolution" and w.module == node.module and w.kernel:
                        old, new = math.prod(w.kernel), math.prod(change.kernel)
                        weight = w.weight * new // old
                        params[w.module] += weight - w.weight
                        work[i] = replace(w, flops=w.flops * new // old, kernel=change.kernel, weight=weight)
    moves = [c for c in changes if isinstance(c, MoveAfter)]
    if len(moves) > 1 or moves and not isinstance(changes[-1], MoveAfter):
        raise ValueError("at most one move, given last")
    if moves:
        nodes, work, outputs = _move(nodes, work, outputs, moves[0], graph.ndim)
    out = Graph(graph.input_shape, nodes, outputs, dict(graph.module_types), params, work)
    return out


def _move(nodes: list[Node], work: list[Work], outputs: dict[str, int], move: MoveAfter, ndim: int):
    x, y = nodes[move.node], nodes[move.after]
    if len(x.inputs) != 1 or move.after < move.node:
        raise ValueError("only a single-input node can move, and only later")
    at = move.after + 1  # id of the moved copy; later nodes shift by one

    def shift(i: int) -> int:
        return i + 1 if i >= at else i

    copy = Node(at, x.op, x.module, (y.id,), x.reads, y.sizes, ())
    new: list[Node] = []
    for node in nodes:
        inputs = tuple(at if i == y.id and node.id > y.id else shift(i) for i in node.inputs)
        node = replace(node, id=shift(node.id), inputs=inputs)
        if node.id == shift(x.id):
            node = replace(node, op="identity", reads=((IDENTITY_READ,) * ndim,))
        new.append(node)
        if node.id == at - 1:
            new.append(copy)
    work = [replace(w, node=at if w.node == x.id else shift(w.node)) for w in work]
    outputs = {name: at if i == x.id else shift(i) for name, i in outputs.items()}
    return new, work, outputs


def resized(graph: Graph, input_size: Sequence[int], changes: Sequence[Change] = ()) -> Graph:
    """``graph`` (optionally :func:`edited`) at another input size: node sizes, reads and FLOPs recomputed.

    Raises :class:`InputSizeError` when the model cannot run at that size and :class:`NotResizableError` when
    the graph does not say how some op follows the size."""
    if changes:
        graph = edited(graph, changes)
    input_size = tuple(int(n) for n in input_size)
    if len(input_size) != graph.ndim:
        raise ValueError(f"input size {input_size} has {len(input_size)} axes, the graph {graph.ndim}")
    shape = (*graph.input_shape[:2], *input_size)
    out = Graph(shape, [], dict(graph.module_outputs), graph.module_types, graph.module_params, [])
    out.add("input", "", (), (), input_size, shape)
    for node in graph.nodes[1:]:
        reads = [list(r) for r in node.reads]
        sizes = []
        for axis in range(graph.ndim):
            sizes.append(_axis_size(graph, out, node, axis, reads))
        if any(n < 1 for n in sizes):
            raise InputTooSmallError(f"input too small: {_where(node)} gives an empty output at input size "
                                     f"{input_size}")
        out.add(node.op, node.module, node.inputs, tuple(tuple(r) for r in reads), tuple(sizes), ())
    out.work = [_rescaled(w, graph, out) for w in graph.work]
    return out


def _axis_size(graph: Graph, out: Graph, node: Node, axis: int, reads: list[list]) -> int:
    """Output size of ``node`` along ``axis`` in the resized graph ``out``; updates ``reads`` in place."""
    candidates = set()
    for k, src in enumerate(node.inputs):
        read = node.reads[k][axis]
        n_in = out.nodes[src].sizes[axis]
        if isinstance(read, Resample):
            if read.rescale is None:
                raise NotResizableError(f"{_where(node)}: its output size along axis {axis} was given by the "
                                        "model's Python code (e.g. an interpolation to an explicit size)")
            try:
                n_out, read = read.rescale(n_in)
            except ValueError as exc:
                raise NotResizableError(f"{_where(node)}: {exc}") from None
            if n_out is not None:
                candidates.add(n_out)
        elif read is not None:
            if isinstance(read, Pad):
                read = read.at(n_in)  # TF-"same" padding follows the size
            if isinstance(read, Pad) and not read.fits(n_in):
                raise InputSizeError(f"the model cannot run at input size {out.input_size}: {_where(node)} pads "
                                     f"({read.left}, {read.right}) in {read.mode} mode a map of {n_in} units")
            if node.op.startswith("avg_pool3d") and n_in < read.kernel:  # PyTorch's 3-D average pooling only
                raise InputSizeError(f"the model cannot run at input size {out.input_size}: {_where(node)} needs "
                                     f"at least its kernel's {read.kernel} units, padding or not, got {n_in}")
            if node.op == "pixel_unshuffle" and n_in % read.stride:
                raise InputSizeError(f"the model cannot run at input size {out.input_size}: {_where(node)} needs a "
                                     f"multiple of {read.stride} units, got {n_in}")
            candidates.add(read.output_size(n_in))
        reads[k][axis] = read
    if len(candidates) > 1:
        raise InputSizeError(f"the model cannot run at input size {out.input_size}: {_where(node)} combines maps "
                             f"of {sorted(candidates)} units along axis {axis}")
    if candidates:
        return candidates.pop()
    # only global reads: the op reduced the axis to one unit, or kept it (a normalisation, softmax)
    before = {graph.nodes[src].sizes[axis] for src in node.inputs}
    now = {out.nodes[src].sizes[axis] for src in node.inputs}
    if node.sizes[axis] == 1 and before != {1}:
        return 1
    if before == {node.sizes[axis]} and len(now) == 1 and node.sizes[axis] > 1:
        return now.pop()
    if now == {1}:
        return 1
    raise NotResizableError(f"{_where(node)}: cannot tell whether it reduces or keeps axis {axis}")


def _rescaled(w: Work, before: Graph, after: Graph) -> Work:
    old = math.prod(before.nodes[w.node].sizes[a] for a in w.axes)
    new = math.prod(after.nodes[w.node].sizes[a] for a in w.axes)
    if old == new:
        return w
    if not w.scalable or (w.flops * new) % old:
        raise NotResizableError(f"the FLOPs of aten.{w.op} in module '{w.module}' do not grow with its output "
                                "units (it contracts over spatial positions)")
    return replace(w, flops=w.flops * new // old)


def mismatch(predicted: Graph, actual: Graph) -> str | None:
    """Where a resized graph differs from a real capture at the same size, in words; None if it does not."""
    if len(predicted.nodes) != len(actual.nodes):
        return f"the traced graph changes with the input size ({len(predicted.nodes)} vs {len(actual.nodes)} ops)"
    for p, a in zip(predicted.nodes, actual.nodes, strict=True):
        if (p.op, p.module, p.inputs) != (a.op, a.module, a.inputs):
            return f"the traced graph changes with the input size at {_where(a)}"
        if p.sizes != a.sizes:
            return f"{_where(a)} gives {a.sizes} units, but its geometry predicts {p.sizes}"
        for rp, ra in zip(p.reads, a.reads, strict=True):
            for axis, (x, y) in enumerate(zip(rp, ra, strict=True)):
                if (x is None) != (y is None) or x is not None and x.maps() != y.maps():
                    return f"the geometry of {_where(a)} along axis {axis} depends on the input size " \
                           "(e.g. TF-\"same\" padding)"
    if [w.flops for w in predicted.work] != [w.flops for w in actual.work]:
        return "the FLOPs of some op do not follow its output size"
    return None

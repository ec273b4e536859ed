"""Receptive-field refinement (Richter & Pal 2022): single-hyperparameter changes that remove unproductive
layers, each evaluated with the geometry alone (no training) and ranked by unproductive layers removed
against extra FLOPs.

The changes, read off the captured graph:

* ``stride``: set one downsampling to stride 1. Strided layers whose outputs meet (a ResNet block's strided
  convolution and its shortcut, the branches of a reduction cell) form one downsampling and change together.
* ``move``: move one downsampling later by one stage: a pooling layer moves to the end of its stage (just
  before the next downsampling); a strided convolution hands its stride to the last convolution of its stage.
* ``stem``: halve the stride of the first strided convolution and scale its kernel with it (4x4/4 to 2x2/2;
  an odd kernel stays odd, "same" padding stays "same").
* ``resolution``: feed the smallest input size without unproductive layers instead.

Each suggestion carries a recipe (``edits``) that :func:`rflens.transforms.refine` applies to the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rflens.border import LAYER_OPS, UNPRODUCTIVE, Resolutions, classify
from rflens.errors import RflensError
from rflens.geometry import Resample, Window
from rflens.graph import Graph, Node
from rflens.resize import Change, MoveAfter, SetWindow, resized

Edit = dict[str, Any]


@dataclass(frozen=True)
class Suggestion:
    """One refinement and what the geometry predicts for it."""

    change: str  # in words
    kind: str  # "stride" | "move" | "stem" | "resolution"
    edits: tuple[Edit, ...]  # the recipe: what rflens.transforms.refine changes in the model
    input_size: tuple[int, ...]
    unproductive_after: tuple[str, ...]
    critical_after: tuple[str, ...]
    flops: int
    params: int
    flops_ratio: float
    params_ratio: float
    applicable: str | None = None  # None: refine() can apply it; else why not

    def to_dict(self) -> dict[str, Any]:
        return {"change": self.change, "kind": self.kind, "edits": [dict(e) for e in self.edits],
                "input_size": list(self.input_size), "unproductive_after": list(self.unproductive_after),
                "critical_after": list(self.critical_after), "flops": self.flops, "params": self.params,
                "flops_ratio": self.flops_ratio, "params_ratio": self.params_ratio, "applicable": self.applicable}

    def recipe(self, model: str = "") -> dict[str, Any]:
        """The JSON recipe ``rflens border --apply`` writes and :func:`rflens.transforms.refine` reads."""
        return {"rflens_recipe": 1, "model": model, **self.to_dict()}


@dataclass(frozen=True)
class _Candidate:
    change: str
    kind: str
    changes: tuple[Change, ...]
    edits: tuple[Edit, ...]


def _strided(node: Node) -> bool:
    return node.op.startswith(LAYER_OPS) and any(isinstance(r, Window) and r.stride > 1 for r in node.reads[0])


def _local_inputs(node: Node) -> list[int]:
    """Inputs read along some axis with a local geometry (not a pooled, broadcast operand)."""
    return [src for k, src in enumerate(node.inputs)
            if any(r is not None and not (isinstance(r, Resample) and r.broadcast) for r in node.reads[k])]


def downsamplings(graph: Graph) -> list[list[int]]:
    """Strided layer nodes grouped into downsamplings: nodes whose outputs meet before any other stride."""
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    last: list[frozenset[int]] = []
    for node in graph.nodes:
        ins = _local_inputs(node)
        if _strided(node):
            parent[node.id] = node.id
            last.append(frozenset({node.id}))
            continue
        seen = frozenset().union(*(last[i] for i in ins)) if ins else frozenset()
        if len(ins) > 1 and len(seen) > 1:
            first, *rest = sorted(seen)
            for other in rest:
                parent[find(other)] = find(first)
        last.append(seen)
    groups: dict[int, list[int]] = {}
    for i in sorted(parent):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def _consumers(graph: Graph) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for node in graph.nodes:
        for src in _local_inputs(node):
            out.setdefault(src, []).append(node.id)
    return out


def _stage(graph: Graph, start: int, consumers: dict[int, list[int]]) -> tuple[list[int], int | None]:
    """The straight chain of nodes after ``start`` up to the next downsampling (exclusive), and that
    downsampling's node (None where the chain branches, leaves the module that holds ``start``, or reaches an
    op that is not a window: an upsampling)."""
    parent = graph.nodes[start].module.rpartition(".")[0]
    chain, cur = [], start
    while True:
        nxt = consumers.get(cur, [])
        if len(nxt) != 1 or len(_local_inputs(graph.nodes[nxt[0]])) != 1:
            return chain, None
        node = graph.nodes[nxt[0]]
        inside = not parent or node.module.startswith(parent + ".")
        if not inside or any(r is not None and not isinstance(r, Window) for r in node.reads[0]):
            return chain, None
        if _strided(node):
            return chain, node.id
        chain.append(node.id)
        cur = node.id


def _stride_one(node: Node) -> tuple[Window | None, ...]:
    return tuple(Window(r.kernel, 1, r.pad_left, r.pad_right, r.dilation, r.ceil_mode)
                 if isinstance(r, Window) and r.stride > 1 else None for r in node.reads[0])


def _strides(node: Node) -> list[int]:
    return [r.stride if isinstance(r, Window) else 1 for r in node.reads[0]]


def _has_kernel(node: Node) -> bool:
    return node.op.startswith(LAYER_OPS) and any(isinstance(r, Window) and r.kernel > 1 for r in node.reads[0])


def candidates(graph: Graph) -> list[_Candidate]:
    """Every single-hyperparameter change the graph allows (before evaluation)."""
    out: list[_Candidate] = []
    groups = downsamplings(graph)
    consumers = _consumers(graph)
    calls: dict[str, list[Node]] = {}  # a recipe changes a module: every call of it
    for node in graph.nodes:
        if node.op.startswith(LAYER_OPS):
            calls.setdefault(node.module, []).append(node)
    for group in groups:
        if any(len(calls[graph.nodes[i].module]) > 1 for i in group):
            modules = list(dict.fromkeys(graph.nodes[i].module for i in group))
            nodes = [n for m in modules for n in calls[m]]
            out.append(_Candidate(
                "stride 1 in " + ", ".join(f"'{m}'" for m in modules) + " (every call)", "stride",
                tuple(SetWindow(n.id, _stride_one(n)) for n in nodes if _strided(n)),
                tuple({"module": m, "stride": [1] * graph.ndim} for m in modules)))
            continue  # moves and stems of a shared module are not offered
        nodes = [graph.nodes[i] for i in group]
        names = ", ".join(f"'{n.module}'" for n in nodes[:3]) + (f" and {len(nodes) - 3} more layers of this "
                                                                  "downsampling" if len(nodes) > 3 else "")
        out.append(_Candidate(
            f"stride 1 in {names}", "stride", tuple(SetWindow(n.id, _stride_one(n)) for n in nodes),
            tuple({"module": n.module, "stride": [1] * graph.ndim} for n in nodes)))
        if len(group) != 1 or len(nodes[0].inputs) != 1:
            continue
        x = nodes[0]
        chain, nxt = _stage(graph, x.id, consumers)
        convs = [graph.nodes[i] for i in chain if _has_kernel(graph.nodes[i])]
        if not convs:
            continue
        if x.op.startswith(("max_pool", "avg_pool")):
            before = graph.nodes[nxt].module if nxt is not None else None
            parent = x.module.rpartition(".")[0]
            where = f"just before '{before}'" if before else f"to the end of '{parent}'" if parent else "to the end"
            out.append(_Candidate(f"move '{x.module}' {where}", "move", (MoveAfter(x.id, chain[-1]),),
                                  ({"module": x.module, "move_before": before},)))
        elif x.op == "convolution" and convs[-1].op == "convolution" and all(s == 1 for s in _strides(convs[-1])) \
                and len(calls[convs[-1].module]) == 1 and all(
                    r.extent >= s for r, s in zip(convs[-1].reads[0], _strides(x), strict=True)):
            y = convs[-1]  # (its kernel covers the stride: no pixel is skipped)
            moved = tuple(Window(r.kernel, s, r.pad_left, r.pad_right, r.dilation, r.ceil_mode) if s > 1 else None
                          for r, s in zip(y.reads[0], _strides(x), strict=True))
            out.append(_Candidate(
                f"move the stride of '{x.module}' to '{y.module}'", "move",
                (SetWindow(x.id, _stride_one(x)), SetWindow(y.id, moved)),
                ({"module": x.module, "stride": [1] * graph.ndim}, {"module": y.module, "stride": _strides(x)})))
    stem = _stem(graph, groups)
    if stem is not None and len(calls[stem.edits[0]["module"]]) == 1:
        out.append(stem)
    return list({c.change: c for c in out}.values())


def _stem(graph: Graph, groups: list[list[int]]) -> _Candidate | None:
    """Halve the first downsampling's stride and scale its kernel with it, if it is one convolution."""
    if not groups or len(groups[0]) != 1:
        return None
    x = graph.nodes[groups[0][0]]
    if x.op != "convolution" or not all(isinstance(r, Window) for r in x.reads[0]):
        return None
    windows, kernel, stride, padding = [], [], [], []
    for r in x.reads[0]:
        s = max(r.stride // 2, 1)
        if r.kernel == r.stride:  # patchify: kernel and stride stay equal
            k = s
        else:  # scaled with the stride, same parity, at least 3 (or the old kernel, if smaller)
            k = max(1, round(r.kernel * s / r.stride))
            if k % 2 != r.kernel % 2:
                k = k - 1 if k > 1 else k + 1
            k = max(k, min(r.kernel, 3))
        if r.pad_left == r.pad_right == 0:  # no padding, or padding done by a separate op (reflect, TF-"same")
            p = None
        elif r.pad_left == r.pad_right == r.dilation * (r.kernel - 1) // 2:
            p = r.dilation * (k - 1) // 2
        else:
            return None  # asymmetric or unusual padding: no obvious counterpart
        windows.append(Window(k, s, p or 0, p or 0, r.dilation))
        kernel.append(k)
        stride.append(s)
        padding.append(p)
    if None in padding and any(p is not None for p in padding):
        return None  # padded by the op on some axes only: no obvious counterpart
    if kernel == [r.kernel for r in x.reads[0]]:
        return None  # only the stride changes: that is the "stride" candidate
    old = "x".join(str(r.kernel) for r in x.reads[0])
    was = "x".join(map(str, _strides(x))) if len(set(_strides(x))) > 1 else str(_strides(x)[0])
    now = "x".join(map(str, stride)) if len(set(stride)) > 1 else str(stride[0])
    return _Candidate(
        f"stem '{x.module}': kernel {old}/{was} -> {'x'.join(map(str, kernel))}/{now}", "stem",
        (SetWindow(x.id, tuple(windows), tuple(kernel)),),
        ({"module": x.module, "kernel_size": kernel, "stride": stride,
          **({"padding": padding} if None not in padding else {})},))


Evaluate = Callable[[_Candidate], Graph]  # a candidate -> the changed model's graph


def suggest(resolutions: Resolutions, verify: Evaluate | None = None, top: int = 5,
            applicable: Callable[[Sequence[Edit]], str | None] | None = None) -> list[Suggestion]:
    """Ranked refinements at the analysed input size: fewest unproductive layers left first, then the
    smallest FLOPs ratio, then the smallest parameter ratio. Only changes that remove some unproductive
    layer are kept. Each candidate is evaluated with the geometry (the edited graph, resized). ``verify``
    (for graphs that cannot be resized: apply the recipe and trace the changed model) then replaces the
    estimates of the best candidates, in their order, until ``top`` are confirmed. ``applicable`` says why a
    recipe cannot be applied to the model (None: it can)."""
    graph = resolutions.graph
    size = graph.input_size
    before = resolutions.at(size)
    if not before.unproductive:
        return []
    n_before = len(before.unproductive)
    found: list[Suggestion] = []
    unknown: list[_Candidate] = []  # the geometry alone could not evaluate them
    by_change: dict[str, _Candidate] = {}
    for cand in candidates(graph):
        try:
            after = resized(graph, size, cand.changes)
        except RflensError:
            if verify is not None:
                unknown.append(cand)
            continue  # the change alone breaks the model (paths that meet no longer match)
        by_change[cand.change] = cand
        found.append(_suggestion(cand, graph, after, applicable))
    found = _ranked([s for s in found if len(s.unproductive_after) < n_before])
    if verify is not None:
        confirmed: list[Suggestion] = []
        for cand in [by_change[s.change] for s in found] + unknown:
            if len(confirmed) == top:
                break
            try:
                s = _suggestion(cand, graph, verify(cand), applicable)
            except RflensError:
                continue
            if len(s.unproductive_after) < n_before:
                confirmed.append(s)
        found = confirmed
    try:
        smallest = resolutions.feasible_range().min
    except RflensError:
        smallest = ()
    if smallest and all(s is not None for s in smallest) and smallest != size:
        new = tuple(max(a, b) for a, b in zip(smallest, size, strict=True))
        report = resolutions.at(new)
        change = f"input size {'x'.join(map(str, new))} instead of {'x'.join(map(str, size))}"
        found.append(_suggestion(_Candidate(change, "resolution", (), ()), graph, report.graph, None))
    return _ranked([s for s in found if len(s.unproductive_after) < n_before])[:top]


def _ranked(found: list[Suggestion]) -> list[Suggestion]:
    return sorted(found, key=lambda s: (len(s.unproductive_after), s.flops_ratio, s.params_ratio, s.change))


def _suggestion(cand: _Candidate, graph: Graph, after: Graph,
                applicable: Callable[[Sequence[Edit]], str | None] | None) -> Suggestion:
    layers = classify(after)
    return Suggestion(
        cand.change, cand.kind, cand.edits, after.input_size,
        tuple(x.name for x in layers if x.status == UNPRODUCTIVE),
        tuple(x.name for x in layers if x.status == "critical"),
        after.flops, after.params, _ratio(after.flops, graph.flops), _ratio(after.params, graph.params),
        applicable(cand.edits) if applicable and cand.edits else None)


def _ratio(a: int, b: int) -> float:
    return a / b if b else (1.0 if a == b else math.inf)

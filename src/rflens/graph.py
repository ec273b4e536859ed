"""The captured graph: nodes with per-axis geometry, data-flow edges and module names.

A node is one op that changes spatial dependence (a convolution, a pooling, an add of two paths...). Ops that
keep every unit where it was (activations, views, channel-wise layers with one input) create no node. Each
node says, for every input and every spatial axis of the network input, how an output unit reads that input:
a geometry object from :mod:`rflens.geometry` (``Window``, ``Transposed``, ``Pad``, ``Resample``) or
``None`` when the op mixes the whole axis (a global op: spatial mean, attention, GroupNorm statistics...).
:func:`walk_back` carries a map from one output unit back to the input through every path (exact support,
path counts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from rflens.geometry import Pad, Resample, Transposed, Window

AxisRead = Window | Transposed | Pad | Resample | None
IDENTITY_READ = Window()
T = TypeVar("T")


@dataclass(frozen=True)
class Node:
    id: int
    op: str  # aten op (e.g. "convolution") or "input"
    module: str  # innermost module running it, a named_modules() name ("" = top level)
    inputs: tuple[int, ...]
    reads: tuple[tuple[AxisRead, ...], ...]  # reads[k][axis]: how an output unit reads inputs[k]
    sizes: tuple[int, ...]  # output size per axis (1 along an axis the op reduced away)
    shape: tuple[int, ...]  # output tensor shape

    @property
    def label(self) -> str:
        """The op and the module that ran it, for reports: ``convolution in 'layer1.0.conv1'``."""
        return f"{self.op} in '{self.module or '(model)'}'"


@dataclass(frozen=True)
class Work:
    """FLOPs of one aten op, as ``torch.utils.flop_counter`` counts them, and how they follow the input size:
    proportional to the product of node ``node``'s sizes along ``axes`` (an axis listed twice counts squared, as
    in a token-by-token product), when ``scalable``; ops that contract over spatial units are not.
    ``kernel``/``weight``: a convolution's kernel sizes and weight elements, so a kernel change can be costed.
    ``order``: how many nodes existed when the op ran (its place in execution order)."""

    op: str
    module: str
    node: int
    flops: int
    axes: tuple[int, ...]
    scalable: bool
    kernel: tuple[int, ...] = ()
    weight: int = 0
    order: int = 0  # nodes recorded before the op ran: where it sits among the nodes in execution order


@dataclass
class Graph:
    input_shape: tuple[int, ...]  # (batch, channels, *spatial)
    nodes: list[Node] = field(default_factory=list)
    module_outputs: dict[str, int] = field(default_factory=dict)  # module name -> node of its output
    module_types: dict[str, str] = field(default_factory=dict)  # module name -> class name
    module_params: dict[str, int] = field(default_factory=dict)  # module name -> its own parameters' elements
    work: list[Work] = field(default_factory=list)  # FLOPs of every op that has any, in trace order
    size_reads: list[str] = field(default_factory=list)  # where the model's Python read the size of a map
    size_read_modules: list[str] = field(default_factory=list)  # the module of each of those places
    same_padding: list[str] = field(default_factory=list)  # modules whose size reads compute TF-"same" padding

    @property
    def ndim(self) -> int:
        return len(self.input_shape) - 2

    @property
    def input_size(self) -> tuple[int, ...]:
        return self.input_shape[2:]

    def add(self, op: str, module: str, inputs: tuple[int, ...], reads: tuple[tuple[AxisRead, ...], ...],
            sizes: tuple[int, ...], shape: tuple[int, ...]) -> Node:
        node = Node(len(self.nodes), op, module, inputs, reads, sizes, shape)
        self.nodes.append(node)
        return node

    @property
    def flops(self) -> int:
        return sum(w.flops for w in self.work)

    @property
    def params(self) -> int:
        return sum(self.module_params.values())

    def module_node(self, name: str) -> Node:
        try:
            return self.nodes[self.module_outputs[name]]
        except KeyError:
            known = ", ".join(list(self.module_outputs)[:8])
            raise KeyError(f"no module named {name!r} with a spatial output (e.g. {known})") from None


def ancestors(graph: Graph, node_id: int) -> set[int]:
    """Node ``node_id`` and every node whose output reaches it, directly or not."""
    seen = {node_id}
    todo = [node_id]
    while todo:
        for src in graph.nodes[todo.pop()].inputs:
            if src not in seen:
                seen.add(src)
                todo.append(src)
    return seen


def check_unit(node: Node, unit: Sequence[int]) -> tuple[int, ...]:
    """``unit`` as a tuple, or an IndexError when it is not a unit of ``node``'s output."""
    unit = tuple(int(u) for u in unit)
    if len(unit) != len(node.sizes) or any(not 0 <= u < n for u, n in zip(unit, node.sizes, strict=True)):
        raise IndexError(f"unit {unit} is outside the output of size {node.sizes}")
    return unit


def walk_back(graph: Graph, node_id: int, seed: T, pull: Callable[[T, int, AxisRead, int, int], T],
              merge: Callable[[T, T], T], empty: Callable[[T], bool]) -> T | None:
    """Carry a map over the output of node ``node_id`` back to the network input, through every path.

    One walk serves every backward analysis (exact support, path counts...); they differ only in what a map
    is. ``pull(value, axis, read, n_in, n_out)`` pulls a map back through one axis of one read (``read`` as in
    ``Node.reads``, ``None`` = the whole axis); ``merge(a, b)`` joins two maps that reach the same node
    (an add, a concat, a tensor used twice); ``empty(value)`` says that nothing more can come of a map.
    Nodes are visited in reverse topological order, so every map is complete before it is pulled further.
    Neither callable may change its arguments in place (a map can be shared). Returns the map over the
    input, or None when no path reaches it."""
    pending: dict[int, T] = {node_id: seed}
    for node in reversed(graph.nodes[1:node_id + 1]):
        value = pending.pop(node.id, None)
        if value is None or empty(value):
            continue
        for k, src in enumerate(node.inputs):
            v = value
            n_in = graph.nodes[src].sizes
            for axis in range(graph.ndim):
                v = pull(v, axis, node.reads[k][axis], n_in[axis], node.sizes[axis])
            pending[src] = merge(pending[src], v) if src in pending else v
    return pending.get(0)

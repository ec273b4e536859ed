"""The structural map: how many paths join each input pixel to one output unit, from the graph alone.

Replace every op of a captured :class:`~rflens.graph.Graph` by its single-channel surrogate with ones kernels:
a convolution or a pooling adds up exactly the taps the geometry gives (stride, padding, padding mode and
dilation included; reflect/replicate/circular padding reads border pixels several times), an add or a concat
sums its inputs, and a global read (``None``: spatial mean, attention...) connects every position. The input
gradient of one output unit of that surrogate counts, for each input pixel, the paths that join the two. It is
the uniform-weight effective receptive field of Luo et al. (NeurIPS 2016) and the foveation map of Alsallakh
et al. ("Mind the Pad", ICLR 2021); no weights are needed, so it is the baseline a trained ERF is judged
against.

Counts explode with depth: about 10^55 paths join a 1024x1024 input to the pooled output of a ResNet-152, and
every layer multiplies them (700 stacked 3-tap convolutions pass float64's 10^308). So every map is carried as a
float64 mantissa array and an integer power-of-two exponent, renormalised whenever its largest entry passes
2**500, and maps that meet at a node are aligned to the larger exponent before they are added. Scaling by powers
of two is exact, so the counts are exact integers as long as every count met on the way stays below 2**53
(:attr:`PathMap.exact`); beyond that each count keeps float64's relative precision.

The walk back through the graph is :func:`rflens.graph.walk_back`, the one that :func:`rflens.rf.support`
uses with boolean masks; only what a map is differs. A count whose ratio to the largest count is below
2**-1074 (float64's smallest subnormal) reads as 0 here: for the exact set of pixels that influence a unit use
:func:`rflens.rf.support`, which never loses a pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import scipy.sparse as sp

from rflens.geometry import centre_unit
from rflens.graph import AxisRead, Graph, Node, check_unit, walk_back

RENORMALISE_ABOVE = 2.0**500  # headroom: one op multiplies counts by far less than 2**500
EXACT_BELOW = 2.0**53  # float64 holds every integer below this exactly
_LOG10_2 = math.log10(2.0)

Scaled = tuple[np.ndarray, int]  # counts = mantissa * 2**exponent


@dataclass(frozen=True, eq=False)
class PathMap:
    """Number of paths from every input pixel to output ``unit`` of node ``node`` (the structural map).

    ``map`` (float64, the input's spatial shape) is scaled so that its largest entry is 1 (all zeros when no
    path reaches the input); the true count is ``map * 2**log2_scale``. ``mantissa * 2**exponent`` holds the
    same counts unscaled (``exponent`` is an integer, so that product is exact), and :meth:`counts` gives them
    as integers when they are exact. ``module`` is the module name asked for, or the one running the node."""

    map: np.ndarray
    log2_scale: float
    node: int
    unit: tuple[int, ...] | str  # "all": every unit of the node
    module: str
    exact: bool  # every count met during the walk was below 2**53: the counts are exact integers
    mantissa: np.ndarray = field(repr=False)
    exponent: int = field(repr=False)

    @classmethod
    def from_scaled(cls, mantissa: np.ndarray, exponent: int, node: int, unit: tuple[int, ...] | str, module: str,
                    exact: bool) -> PathMap:
        peak = float(mantissa.max()) if mantissa.size else 0.0
        if peak > 0:
            normalised = mantissa / peak
            log2_scale = exponent + math.log2(peak)
        else:
            normalised = np.zeros(mantissa.shape)
            log2_scale = 0.0
        return cls(normalised, log2_scale, node, unit, module, exact, mantissa, exponent)

    @property
    def input_size(self) -> tuple[int, ...]:
        return self.map.shape

    def counts(self) -> np.ndarray:
        """The path counts themselves: an int64 array when they are exact (:attr:`exact`), else a float64
        array carrying float64's relative precision. Raises OverflowError when the counts do not fit in
        float64 (deep networks at large sizes): use :attr:`map` with :attr:`log2_scale`, or :meth:`log10_counts`.
        """
        if self.exact:
            return self.mantissa.astype(np.int64)  # exact implies no renormalisation: exponent 0
        if self.log2_scale >= 1023:
            raise OverflowError(f"path counts reach 2**{self.log2_scale:.1f}, beyond float64: use map * "
                                f"2**log2_scale or log10_counts()")
        return np.ldexp(self.mantissa, self.exponent)

    def log10_counts(self) -> np.ndarray:
        """log10 of the counts (-inf where no path): finite at any depth, the scale to plot a foveation map on."""
        with np.errstate(divide="ignore"):
            return np.log10(self.map) + self.log2_scale * _LOG10_2

    @property
    def total_log10(self) -> float:
        """log10 of the total number of paths from the input to the unit (-inf when there is none)."""
        total = float(self.mantissa.sum())
        return math.log10(total) + self.exponent * _LOG10_2 if total > 0 else -math.inf

    @property
    def mean(self) -> tuple[float, ...]:
        """Per axis, the centre of mass of the map in input pixels (nan when no path reaches the input)."""
        return tuple(float(m) for m, _ in self._moments())

    @property
    def std(self) -> tuple[float, ...]:
        """Per axis, the standard deviation of the map taken as a distribution over input pixels (Luo et al.'s
        ERF size; sqrt(2n/3) for n stacked 3x3 stride-1 convolutions)."""
        return tuple(float(s) for _, s in self._moments())

    def _moments(self) -> list[tuple[float, float]]:
        from rflens.erf_metrics import moments  # the one definition of an ERF's centre and spread

        if not self.map.any():
            return [(math.nan, math.nan)] * self.map.ndim
        centre, sigma = moments(self.map)
        return list(zip(centre, sigma, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """Summary numbers only (JSON-safe; the map itself is left out)."""
        reached = bool(self.map.any())
        peak = np.unravel_index(int(np.argmax(self.map)), self.map.shape) if reached else None
        return {
            "node": self.node, "module": self.module,
            "unit": self.unit if isinstance(self.unit, str) else list(self.unit), "input_size": list(self.input_size),
            "exact": self.exact, "log2_scale": self.log2_scale if reached else None,
            "max_log10": self.log2_scale * _LOG10_2 if reached else None,
            "total_log10": self.total_log10 if reached else None,
            "pixels": int(np.count_nonzero(self.map)),
            "peak": [int(i) for i in peak] if peak is not None else None,
            "mean": list(self.mean) if reached else None, "std": list(self.std) if reached else None,
        }


# -- one op, one axis ------------------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def tap_matrix(read: Any, n_in: int, n_out: int) -> sp.csr_matrix | None:
    """``A[i, u]`` = how many taps of output unit u read input i (n_in x n_out); None for the identity.
    Cached: a network repeats the same few (read, size) pairs many times."""
    rows, cols = [], []
    u = np.arange(n_out, dtype=np.int64)
    for idx in read.taps(n_in, n_out):
        ok = idx >= 0
        rows.append(idx[ok])
        cols.append(u[ok])
    rows_, cols_ = (np.concatenate(rows), np.concatenate(cols)) if rows else (np.empty(0, np.int64),) * 2
    weights = _tap_weights(read, n_in, n_out)
    if n_in == n_out and rows_.size == n_in and np.array_equal(rows_, cols_) and np.array_equal(rows_, u) \
            and weights is None:
        return None
    data = np.ones(rows_.size, dtype=np.float64) if weights is None else weights[cols_]
    return sp.csr_matrix((data, (rows_, cols_)), shape=(n_in, n_out))  # duplicates add up


def _tap_weights(read: Any, n_in: int, n_out: int) -> np.ndarray | None:
    """Per output unit, the weight of its taps (partial-convolution padding re-weights border windows)."""
    weigh = getattr(read, "tap_weights", None)
    return weigh(n_in, n_out) if weigh is not None else None


def _pull(m: np.ndarray, axis: int, read: AxisRead, n_in: int, n_out: int, through_global: bool = True
          ) -> np.ndarray:
    if read is None and not through_global:  # a global read carries no position: no path
        shape = list(m.shape)
        shape[axis] = n_in
        return np.zeros(shape)
    if read is None:  # every output unit reads every input position once
        shape = list(m.shape)
        shape[axis] = n_in
        return np.broadcast_to(m.sum(axis=axis, keepdims=True), shape)
    matrix = tap_matrix(read, n_in, n_out)
    if matrix is None:
        return m
    moved = np.moveaxis(m, axis, 0)
    out = matrix @ moved.reshape(n_out, -1)
    return np.moveaxis(out.reshape((n_in,) + moved.shape[1:]), 0, axis)


class _Counter:
    """The path-count flavour of the backward walk: maps are (mantissa, exponent) pairs."""

    def __init__(self, through_global: bool = True) -> None:
        self.exact = True
        self.through_global = through_global

    def _normalise(self, m: np.ndarray, e: int) -> Scaled:
        peak = float(m.max()) if m.size else 0.0
        if peak >= EXACT_BELOW:
            self.exact = False
        if peak > RENORMALISE_ABOVE:
            shift = math.frexp(peak)[1]
            m, e = np.ldexp(m, -shift), e + shift
        return m, e

    def pull(self, value: Scaled, axis: int, read: AxisRead, n_in: int, n_out: int) -> Scaled:
        m, e = value
        if _tap_weights(read, n_in, n_out) is not None:
            self.exact = False  # weighted taps: the map is a weighted count, no longer integers
        out = _pull(m, axis, read, n_in, n_out, self.through_global)
        return value if out is m else self._normalise(out, e)

    def merge(self, a: Scaled, b: Scaled) -> Scaled:
        (ma, ea), (mb, eb) = a, b
        e = max(ea, eb)
        m = (ma if ea == e else np.ldexp(ma, ea - e)) + (mb if eb == e else np.ldexp(mb, eb - e))
        return self._normalise(m, e)

    @staticmethod
    def empty(value: Scaled) -> bool:
        return not value[0].any()


# -- entry points ------------------------------------------------------------------------------------------
def _resolve(graph: Graph, node: int | str) -> tuple[Node, str]:
    if isinstance(node, str):
        target = graph.module_node(node)  # a KeyError that lists known names
        return target, node
    try:
        target = graph.nodes[node]
    except IndexError:
        raise IndexError(f"node {node} is not in the graph ({len(graph.nodes)} nodes)") from None
    return target, target.module


def path_counts(graph: Graph, node: int | str, unit: Sequence[int] | str | None = None,
                through_global: bool = True) -> PathMap:
    """Number of paths joining every input pixel to output ``unit`` of ``node`` (a node id, negative ids
    counting from the end, or a module name) in the single-channel ones surrogate of ``graph``. ``unit``
    defaults to the centre unit the ERF protocols probe (:func:`rflens.geometry.centre_unit`); ``"all"`` counts
    the paths into every unit of the node (the map of the node's spatial sum, as a pooled output sees it).
    ``through_global=False`` counts only the paths that keep the position all the way (a squeeze-and-excitation
    gate's spatial mean then adds none: without that, paths through the first such mean outnumber all others
    and the map shows the stem alone)."""
    target, module = _resolve(graph, node)
    if isinstance(unit, str):
        if unit != "all":
            raise ValueError(f"unit must be a tuple of indices, None (the centre) or 'all', got {unit!r}")
        seed = np.ones(target.sizes)
    else:
        unit = check_unit(target, centre_unit(target.sizes) if unit is None else unit)
        seed = np.zeros(target.sizes)
        seed[unit] = 1.0
    counter = _Counter(through_global)
    result = walk_back(graph, target.id, (seed, 0), counter.pull, counter.merge, counter.empty)
    mantissa, exponent = result if result is not None else (np.zeros(graph.input_size), 0)
    return PathMap.from_scaled(np.ascontiguousarray(mantissa, dtype=np.float64), exponent, target.id, unit,
                               module, counter.exact)


def output_node(graph: Graph) -> Node:
    """The node of the model's output: the top-level module's output when it is a spatial map, else the last
    node recorded (the model's output was flattened or pooled from it, as a classifier's logits are)."""
    if "" in graph.module_outputs:
        return graph.nodes[graph.module_outputs[""]]
    return graph.nodes[-1]


def structural_map(model: Any, input_size: int | Sequence[int], layer: str | int = "output",
                   unit: Sequence[int] | None = None, in_channels: int | None = None) -> PathMap:
    """Structural map of ``model`` (an ``nn.Module``) at ``input_size``, captured on the meta device (no
    weights are read). ``layer``: a module name, a node id, or ``"output"`` for the model's output (a module
    literally named ``"output"`` wins)."""
    from rflens.capture import capture  # torch is needed only here

    graph = capture(model, input_size, in_channels=in_channels)
    if layer == "output" and "output" not in graph.module_outputs:
        return path_counts(graph, output_node(graph).id, unit)
    return path_counts(graph, layer, unit)

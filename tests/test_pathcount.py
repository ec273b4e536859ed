"""The structural map (rflens.pathcount) against exact counts and a brute-force ones network.

* Linear stacks: n single-channel 3x3 stride-1 convolutions give the n-fold box convolution (products of
  trinomial coefficients), exact integers, with standard deviation sqrt(2n/3) per axis.
* Brute force: the single-channel surrogate of a random architecture (tests/archgen.py) with every weight
  exactly 1 (max and average pools become plain window sums, batch norm and activations vanish, a concat
  becomes an add) is built in float64 torch; its input gradient at a unit is the path count, exactly.
* Support: ``path_counts(...).map > 0`` is ``rflens.rf.support`` on the same units.
* Size: counts beyond float64 (thousands of layers) stay finite and accurate; ResNet-152 stays finite.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from archgen import ArchNet, ConvOp, PadOp, PoolOp, TConvOp, TwoBranch, TwoBranchOp, UpsampleOp, architectures
from hypothesis import HealthCheck, event, given, note, settings
from oracle import LinearMaxPool, gradient_map

import rflens
from rflens.capture import capture
from rflens.geometry import Window
from rflens.graph import Graph
from rflens.pathcount import PathMap, path_counts, structural_map
from rflens.rf import support

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# -- exact references ----------------------------------------------------------------------------------------
def trinomial(n: int) -> list[int]:
    """Coefficients of (1 + x + x^2)^n as Python ints: one big-integer power with the coefficients packed in
    fields of ``bits`` bits (every coefficient is below 3^n < 2^bits, so no field carries into the next)."""
    bits = math.ceil(n * math.log2(3)) + 2
    packed = (1 + (1 << bits) + (1 << 2 * bits)) ** n
    mask = (1 << bits) - 1
    return [(packed >> (bits * i)) & mask for i in range(2 * n + 1)]


def chain_graph(size: int, depth: int, padding: int, skip: bool = False) -> Graph:
    """A 1-D graph of ``depth`` kernel-3 convolutions (padding ``padding`` per side), optionally with an
    identity skip from the input added at the end: built by hand, no torch needed."""
    graph = Graph((1, 1, size))
    graph.add("input", "", (), (), (size,), (1, 1, size))
    conv = Window(kernel=3, pad_left=padding, pad_right=padding)
    n = size
    for i in range(depth):
        n = conv.output_size(n)
        graph.add("convolution", f"conv{i}", (i,), ((conv,),), (n,), (1, 1, n))
    if skip:
        last = graph.nodes[-1]
        graph.add("add", "add", (last.id, 0), ((Window(),), (Window(),)), (n,), (1, 1, n))
    return graph


# -- linear stacks -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_stack_of_3x3_convs_is_the_box_convolution(n):
    size = 2 * n + 5
    model = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1) for _ in range(n)])
    result = structural_map(model, (size, size + 2))
    c = (size // 2, (size + 2) // 2)
    assert result.unit == c and result.node == len(capture(model, (size, size + 2)).nodes) - 1
    coef = np.array(trinomial(n), dtype=np.int64)
    expected = np.zeros((size, size + 2), dtype=np.int64)
    expected[c[0] - n:c[0] + n + 1, c[1] - n:c[1] + n + 1] = np.outer(coef, coef)
    counts = result.counts()
    assert result.exact and counts.dtype == np.int64
    np.testing.assert_array_equal(counts, expected)
    assert result.map.max() == 1.0
    assert result.log2_scale == pytest.approx(math.log2(expected.max()), abs=1e-12)
    assert result.total_log10 == pytest.approx(2 * n * math.log10(3), abs=1e-12)  # 9^n paths, none clipped
    for mean, std, centre in zip(result.mean, result.std, c, strict=True):
        assert abs(mean - centre) < 1e-12
        assert abs(std - math.sqrt(2 * n / 3)) < 1e-12


def test_counts_beyond_float64_stay_accurate():
    """Depth 700: 3^700 ~ 2^1109 paths, more than float64 holds; renormalisation and the exponent alignment at
    the skip connection keep every count to float64 precision (exact reference with Python ints)."""
    size, depth = 40, 700
    graph = chain_graph(size, depth, padding=1, skip=True)
    exact = np.zeros(size, dtype=object)
    exact[size // 2] = 1
    for _ in range(depth):  # pulling a one-hot back through a zero-padded 3-tap ones convolution
        padded = np.concatenate([[0], exact, [0]])
        exact = padded[:-2] + padded[1:-1] + padded[2:]
    exact[size // 2] += 1  # the skip
    result = path_counts(graph, -1)
    peak = max(exact)
    assert not result.exact and np.isfinite(result.map).all() and result.map.max() == 1.0
    assert result.log2_scale == pytest.approx(math.log2(peak), rel=1e-14)
    assert result.total_log10 == pytest.approx(math.log10(sum(exact)), rel=1e-14)
    ratio = np.array([float(v * 2**64 // peak) / 2**64 for v in exact])
    np.testing.assert_allclose(result.map, ratio, rtol=1e-12)
    np.testing.assert_allclose(result.log10_counts(), [math.log10(v) for v in exact], rtol=1e-13)
    with pytest.raises(OverflowError, match="beyond float64"):
        result.counts()
    assert support(graph, graph.nodes[-1].id, (size // 2,)).all()


def test_support_stays_exact_where_counts_underflow():
    """800 valid 3-tap convolutions: the end counts (1) are 2^-1263 of the centre one, below float64's range
    relative to the peak. The map keeps float precision wherever it can; ``rf.support`` keeps every pixel."""
    depth = 800
    graph = chain_graph(2 * depth + 1, depth, padding=0)
    result = path_counts(graph, -1)
    coef = trinomial(depth)
    peak = coef[depth]
    ratio = np.array([c / peak if c * 2**1000 > peak else 0.0 for c in coef])
    kept = ratio > 0
    np.testing.assert_allclose(result.map[kept], ratio[kept], rtol=1e-12)
    assert result.total_log10 == pytest.approx(depth * math.log10(3), rel=1e-14)
    assert not (result.map > 0).all()  # documented: relative underflow
    assert support(graph, graph.nodes[-1].id, (0,)).all()


# -- brute force on random architectures --------------------------------------------------------------------
def _ones_op(op, ndim: int) -> nn.Module:
    """Single-channel module of one archgen op with every weight exactly 1 (geometry unchanged)."""
    if isinstance(op, ConvOp):
        return _ones(dataclasses.replace(op, cin=1, cout=1, groups=1, bn=False, act=None).module(ndim))
    if isinstance(op, TConvOp):
        return _ones(dataclasses.replace(op, cin=1, cout=1, groups=1, act=None).module(ndim))
    if isinstance(op, PoolOp):  # max and average pools both become window sums (archgen's avg pools: d = 1)
        return LinearMaxPool(ndim, op.kernel, op.stride, op.padding, op.dilation, op.ceil_mode, ones=True)
    if isinstance(op, PadOp):
        return dataclasses.replace(op, value=0.0).module(ndim)
    if isinstance(op, TwoBranchOp):  # a concat sums its branches in the single-channel surrogate
        a = nn.Sequential(*[_ones_op(o, ndim) for o in op.a])
        b = nn.Sequential(*[_ones_op(o, ndim) for o in op.b])
        return TwoBranch(a, b, "add", op.crop_a, op.crop_b, op.size, None)
    return op.module(ndim)  # nearest upsampling, slicing: no weights


def _ones(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                m.weight.fill_(1.0)
                if m.bias is not None:
                    m.bias.zero_()
    return module


def ones_surrogate(arch) -> nn.Module:
    """The brute-force structural map: gradients of this float64 network are path counts."""
    return ArchNet([_ones_op(op, arch.ndim) for op in arch.blocks]).double().eval()


def probe_units(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The first and last corners, one mixed corner, and the centre."""
    first, last = tuple(0 for _ in shape), tuple(n - 1 for n in shape)
    mixed = (shape[0] - 1, *(0 for _ in shape[1:]))
    return list(dict.fromkeys([first, last, mixed, tuple(n // 2 for n in shape)]))


def _linear_upsampling(arch) -> bool:
    return any(isinstance(op, UpsampleOp) and op.mode != "nearest" for op in arch.blocks)


@settings(max_examples=50, **SETTINGS)
@given(arch=architectures())
def test_counts_equal_gradients_of_the_ones_network(arch):
    """Linear (bilinear...) upsampling is left out: its geometry taps are those of non-zero weight, and a
    ones version of it is no torch op; the support test below covers it."""
    note(arch.describe())
    if _linear_upsampling(arch):
        event("linear upsampling: skipped")
        return
    event(f"{arch.ndim}-D" + (", upsampling" if arch.has_upsampling else ""))
    graph = capture(arch.build(), arch.input_shape[2:], in_channels=arch.input_shape[1])
    surrogate = ones_surrogate(arch)
    shape = (1, 1, *arch.input_shape[2:])
    for name in arch.checkpoints:
        node = graph.module_node(name)
        for unit in probe_units(node.sizes):
            mine = path_counts(graph, name, unit)
            truth = gradient_map(surrogate, shape, unit, layer=name)
            assert mine.exact
            counts = mine.counts()
            if not np.array_equal(counts, truth):
                diff = np.argwhere(counts != truth)[:8].tolist()
                raise AssertionError(f"{name}{unit}: counts differ at {diff}: "
                                     f"{[counts[tuple(i)] for i in diff]} vs {[truth[tuple(i)] for i in diff]}")


@settings(max_examples=100, **SETTINGS)
@given(arch=architectures())
def test_positive_counts_are_the_support(arch):
    note(arch.describe())
    graph = capture(arch.build().double(), arch.input_shape[2:], in_channels=arch.input_shape[1])
    for name in arch.checkpoints:
        node = graph.module_node(name)
        for unit in probe_units(node.sizes):
            np.testing.assert_array_equal(path_counts(graph, name, unit).map > 0, support(graph, node.id, unit))


def test_concat_and_add_sum_their_branches():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 2, 3, padding=1)
            self.b = nn.Conv2d(1, 3, 1)

        def forward(self, x):
            return torch.cat([self.a(x), self.b(x)], 1) + x

    result = structural_map(Net(), (7, 7), in_channels=1)
    expected = np.zeros((7, 7), dtype=np.int64)
    expected[2:5, 2:5] = 1
    expected[3, 3] += 2  # the 1x1 branch and the skip
    np.testing.assert_array_equal(result.counts(), expected)


def test_global_read_connects_every_position():
    class Gate(nn.Module):
        def forward(self, x):
            return x * x.mean((2, 3), keepdim=True)

    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), Gate())
    conv = structural_map(model, (6, 5), layer="0", unit=(0, 0)).counts()
    assert conv[0, 0] == 1 and conv[2, 2] == 0
    gated = structural_map(model, (6, 5), unit=(0, 0)).counts()  # conv at (0, 0) times the mean of all of conv
    column = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1))
    every = sum(structural_map(column, (6, 5), unit=u).counts() for u in itertools.product(range(6), range(5)))
    np.testing.assert_array_equal(gated, conv + every)


# -- size --------------------------------------------------------------------------------------------------
def test_resnet152_stays_finite():
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        model = torchvision.models.resnet152()
    result = structural_map(model, 512)
    assert result.node == len(capture(model, 512).nodes) - 1  # the global mean feeding the classifier
    assert np.isfinite(result.map).all() and result.map.max() == 1.0 and math.isfinite(result.log2_scale)
    assert result.total_log10 > 40 and not result.exact
    deep = path_counts(capture(model, 512), "layer4")
    assert deep.unit == (8, 8) and np.isfinite(deep.map).all() and deep.total_log10 > 30
    doc = deep.to_dict()
    assert doc["module"] == "layer4" and doc["unit"] == [8, 8] and doc["input_size"] == [512, 512]
    assert "map" not in doc and all(not isinstance(v, np.ndarray) for v in doc.values())


# -- API ---------------------------------------------------------------------------------------------------
def test_errors_name_the_problem():
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3))
    graph = capture(model, (9, 9))
    with pytest.raises(KeyError, match="no module named 'nope'.*e.g. 0, 1"):
        path_counts(graph, "nope")
    with pytest.raises(IndexError, match=r"unit \(5, 0\) is outside the output of size \(5, 5\)"):
        path_counts(graph, "1", (5, 0))
    with pytest.raises(IndexError, match="outside"):
        path_counts(graph, "1", (1,))
    with pytest.raises(IndexError, match="node 7 is not in the graph"):
        path_counts(graph, 7)
    with pytest.raises(KeyError, match="no module named"):
        structural_map(model, (9, 9), layer="2")


def test_lazy_exports_and_dict():
    assert rflens.path_counts is path_counts and rflens.structural_map is structural_map
    result = rflens.structural_map(nn.Sequential(nn.Conv1d(1, 1, 2, stride=2)), (8,), unit=(1,))
    assert isinstance(result, PathMap)
    np.testing.assert_array_equal(result.counts(), [0, 0, 1, 1, 0, 0, 0, 0])
    doc = result.to_dict()
    assert doc["pixels"] == 2 and doc["total_log10"] == pytest.approx(math.log10(2)) and doc["exact"]
    assert doc["peak"] == [2] and doc["mean"] == [2.5] and doc["std"] == [0.5]


def test_unit_reading_only_padding_has_no_paths():
    model = nn.Sequential(nn.Conv1d(1, 1, 1, padding=2))
    result = structural_map(model, (5,), unit=(0,))
    assert not result.map.any() and result.total_log10 == -math.inf
    assert result.to_dict()["total_log10"] is None and result.counts().sum() == 0

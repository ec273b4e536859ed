"""Padding audit (Alsallakh et al., "Mind the Pad", ICLR 2021): uneven layers against the published reference
(../shared/reference/padding.json), brute force from real PyTorch read patterns, carried graphs against real
captures, what-if padding modes against ones-kernel gradients, and the report."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from archgen import architectures
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from oracle import linearise

from rflens.border import Resolutions
from rflens.capture import capture
from rflens.errors import CaptureError
from rflens.geometry import same_pads
from rflens.padding import (
    ASYMMETRIC,
    EVEN,
    PARTLY_UNUSED,
    UNREAD,
    UNUSED,
    EvenSizes,
    audit,
    even_sizes,
    find_rule,
    foveation,
    padding_report,
    uneven_layers,
    with_padding_mode,
)
from rflens.pathcount import output_node, path_counts
from rflens.rf import analyse

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "padding.json"
if not REFERENCE.exists():  # a checkout may have shared/ inside
    REFERENCE = Path(__file__).resolve().parents[1] / "shared" / "reference" / "padding.json"
REF = json.loads(REFERENCE.read_text())
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return torchvision.models.get_model(name)


def _resolutions(model: nn.Module, graph) -> Resolutions:
    return Resolutions(graph, lambda s: capture(model, s))


def _row_key(r) -> tuple:
    return (r.name, r.op, r.axis, r.size, r.kernel, r.stride, r.dilation, r.pads, r.mode, r.same, r.leftover,
            r.effective, r.unread)


def _rows_by_name(rows, axis: int = 0) -> dict:
    return {r.name: r for r in rows if r.axis == axis}


@pytest.fixture(scope="module")
def resnet50():
    return _meta("resnet50")


@pytest.fixture(scope="module")
def resnet50_224(resnet50):
    return capture(resnet50, 224)


@pytest.fixture(scope="module")
def tf_effnet():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("tf_efficientnet_b0")


# -- 1. the reference values --------------------------------------------------------------------------------
def test_resnet50_uneven_layers_at_224(resnet50_224):
    rows = audit(resnet50_224)
    ref = REF["torchvision_resnet50_224"]
    assert uneven_layers(rows) == ref["uneven_layers"]
    # square input: every uneven layer is uneven along both axes, the same way
    for name in ref["uneven_layers"]:
        a, b = (r for r in rows if r.name == name)
        assert (a.axis, b.axis) == (0, 1) and _row_key(a)[3:] == _row_key(b)[3:]
    expected = {"conv1": (PARTLY_UNUSED, (3, 2), ()), "maxpool": (UNUSED, (1, 0), ()),
                "layer2.0.downsample.0": (UNREAD, (0, -1), (55,))}
    by_name = _rows_by_name(rows)
    for detail in ref["details"]:
        row = by_name[detail["layer"]]
        assert (row.size, row.kernel, row.stride) == (detail["input"], *detail["k_s_p"][:2])
        assert row.pads == (detail["k_s_p"][2],) * 2
        assert row.leftover == detail["leftover"]
        effect, effective, unread = expected[detail["layer"]]
        assert (row.effect, row.effective, row.unread) == (effect, effective, unread)
        assert row.uneven and row.mode == "zeros" and not row.same
    # the descriptions say what the reference says
    assert by_name["conv1"].describe() == "bottom effective padding 2 vs 3 on the top"
    assert _rows_by_name(rows, 1)["conv1"].describe() == "right effective padding 2 vs 3 on the left"
    assert "effective padding 2 vs 3" in ref["details"][0]["effect"]
    assert by_name["maxpool"].describe().startswith("bottom padding unused")
    assert "padding unused" in ref["details"][1]["effect"]
    assert by_name["layer2.0.downsample.0"].describe().startswith("row never read (index 55")
    assert "(index 55) never read" in ref["details"][2]["effect"]
    # every other window is even at 224, and the effect words follow the numbers
    for r in rows:
        assert r.uneven == (r.name in ref["uneven_layers"])
        assert (r.effect == EVEN) == (not r.uneven)


def test_resnet50_is_even_at_225(resnet50):
    rows = audit(capture(resnet50, 225))
    assert uneven_layers(rows) == []
    assert all(r.leftover == 0 and r.effect == EVEN and r.unread == () for r in rows)


def test_vgg16_is_even_at_224_and_its_rule_is_0_mod_32():
    model = _meta("vgg16")
    graph = capture(model, 224)
    assert uneven_layers(audit(graph)) == []
    found = even_sizes(_resolutions(model, graph).graph_at, (224, 224), 32, 320)
    assert found.rule == (32, (0,)) and found.rule_text() == "n = 0 (mod 32)"
    assert "n = 0 (mod 32)" in REF["even_sizes"]["torchvision vgg16"]
    assert found.nearest == found.below == found.above == 224
    assert found.sizes == tuple(range(32, 321, 32))


def _reference_one_mod_32() -> list[int]:
    text = REF["even_sizes"]["torchvision resnet50, mobilenet_v2, efficientnet_b0"]
    assert text.startswith("n = 1 (mod 32)")
    return [int(x) for x in re.findall(r"\d+", text.split(":")[1])]


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "efficientnet_b0"])
def test_one_mod_32_rule(name):
    model = _meta(name)
    graph = capture(model, 224)
    res = _resolutions(model, graph)
    assert res.resizable, res.retrace_reason
    found = even_sizes(res.graph_at, (224, 224), 33, 520)
    assert found.rule == (32, (1,)) and found.rule_text() == "n = 1 (mod 32)"
    assert found.sizes == tuple(range(33, 521, 32))
    listed = _reference_one_mod_32()
    assert len(listed) >= 5 and set(listed) <= set(found.sizes)
    assert (found.nearest, found.below, found.above) == (225, 193, 225)
    assert found.runnable == 520 - 33 + 1
    d = found.to_dict()
    assert d["modulus"] == 32 and d["residues"] == [1] and d["nearest"] == 225


# -- 2. TF "same" padding -----------------------------------------------------------------------------------
def _tf_same(n: int, k: int, s: int) -> tuple[int, int]:
    """The formula of padding.json, written out again."""
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def test_same_pads_formula():
    assert "(0, 1)" in REF["tensorflow_same"] and "(2, 3)" in REF["tensorflow_same"]
    assert same_pads(224, 3, 2) == (0, 1)
    assert same_pads(224, 7, 2) == (2, 3)
    assert same_pads(225, 3, 2) == (1, 1) and same_pads(225, 7, 2) == (3, 3)
    for n in range(1, 70):
        for k in range(1, 8):
            for s in range(1, 5):
                left, right = same_pads(n, k, s)
                assert (left, right) == _tf_same(n, k, s), (n, k, s)
                # "same": ceil(n / s) outputs, the window never overhangs the padding
                out = (n + left + right - k) // s + 1
                assert out == math.ceil(n / s)
                if left + right:  # no leftover: every padded position is reached
                    assert (n + left + right - k) % s == 0


def test_tf_efficientnet_same_padding(tf_effnet):
    graph = capture(tf_effnet, 224)
    rows = audit(graph)
    stem = [r for r in rows if r.name == "conv_stem"]
    assert len(stem) == 2
    for r in stem:
        assert (r.size, r.kernel, r.stride, r.pads, r.same) == (224, 3, 2, (0, 1), True)
        assert r.effective == (0, 1) and r.leftover == 0 and r.effect == ASYMMETRIC
        assert 'TF "same"' in r.describe()
    uneven = uneven_layers(rows)
    assert uneven[0] == "conv_stem" and set(uneven) <= set(graph.same_padding)
    for r in rows:  # every uneven row of this model is TF "same" padding (no leftover anywhere)
        assert not r.uneven or (r.same and r.effect == ASYMMETRIC and r.pads[1] == r.pads[0] + 1)
    at225 = audit(capture(tf_effnet, 225))
    assert uneven_layers(at225) == []
    assert next(r for r in at225 if r.name == "conv_stem").pads == (1, 1)


def test_tf_efficientnet_even_sizes_match_real_captures(tf_effnet):
    graph = capture(tf_effnet, 224)
    res = _resolutions(tf_effnet, graph)
    assert res.resizable, res.retrace_reason
    found = even_sizes(res.graph_at, (224, 224), 200, 260)
    assert found.nearest == 225
    for n in (223, 224, 225, 226, 227, 255, 256, 257, 258):
        real = audit(capture(tf_effnet, n), trace_back=False)
        carried = audit(res.graph_at((n, n)), trace_back=False)
        assert [_row_key(r) for r in carried] == [_row_key(r) for r in real], n
        assert (n in found.sizes) == (uneven_layers(real) == []), n
    assert {225, 257} <= set(found.sizes) and not {223, 224, 226, 227, 255, 256, 258} & set(found.sizes)


# -- 3. foveation of ResNet-50 --------------------------------------------------------------------------------
def test_resnet50_foveation_is_asymmetric_at_224_symmetric_at_225(resnet50, resnet50_224):
    (at224,) = foveation(resnet50_224, ("model",))
    (at225,) = foveation(capture(resnet50, 225), ("model",))
    assert at224.paths.exact and at225.paths.exact
    c224, c225 = at224.paths.counts(), at225.paths.counts()
    assert c224.dtype == np.int64 and c224.shape == (224, 224) and c225.shape == (225, 225)
    for axis in (0, 1):
        other = 1 - axis
        p224, p225 = c224.sum(axis=other), c225.sum(axis=other)
        assert not np.array_equal(p224, p224[::-1])
        assert np.array_equal(p225, p225[::-1])
        # the end side (bottom/right) loses its padding: it is read less than the start side
        assert p224[: 112].sum() > p224[112:].sum()
    assert np.array_equal(c225, c225[::-1]) and np.array_equal(c225, c225[:, ::-1]) and np.array_equal(c225, c225.T)
    assert np.array_equal(c224, c224.T)
    assert at225.stats.asymmetry == (0.0, 0.0)
    assert min(at224.stats.asymmetry) > 0.05 and min(at224.stats.side_ratio) > 1
    # the structural map itself, asked for directly
    assert np.array_equal(path_counts(resnet50_224, output_node(resnet50_224).id, "all").counts(), c224)


# -- 4. brute force per window ----------------------------------------------------------------------------
class _Window1d(nn.Module):
    """F.pad (a, b) with zeros (negative: a crop), then a 1-D conv / max pool / avg pool with its own symmetric
    padding c."""

    def __init__(self, kind: str, k: int, s: int, d: int, a: int, b: int, c: int, ceil: bool):
        super().__init__()
        self.a, self.b = a, b
        if kind == "conv":
            self.op = nn.Conv1d(1, 1, k, s, padding=c, dilation=d, bias=False)
            with torch.no_grad():
                self.op.weight.fill_(1.0)
        elif kind == "max":
            self.op = nn.MaxPool1d(k, s, padding=c, dilation=d, ceil_mode=ceil)
        else:
            self.op = nn.AvgPool1d(k, s, padding=c, ceil_mode=ceil)

    def forward(self, x):
        if self.a or self.b:
            x = F.pad(x, (self.a, self.b))
        return self.op(x)


def _brute_window(kind, n, k, s, d, left, right, ceil, own):
    """The module, the output length PyTorch gives, and the input positions some output unit reads."""
    c = max(min(left, right, k // 2), 0) if own else 0
    model = _Window1d(kind, k, s, d, left - c, right - c, c, ceil).double().eval()
    try:
        with torch.no_grad():
            out = model(torch.ones(1, 1, n, dtype=torch.float64)).shape[-1]
    except RuntimeError:
        return None
    if out < 1:
        return None
    lin = linearise(model)  # max pools become sums over the same windows
    x = torch.ones(1, 1, n, dtype=torch.float64, requires_grad=True)
    lin(x).sum().backward()
    read = set(np.flatnonzero(x.grad[0, 0].numpy() != 0).tolist())
    return model, out, read


def _check_window(got, n, k, s, d, left, right, ceil):
    """The audit row of the window against what PyTorch does (``got`` from :func:`_brute_window`)."""
    model, out, read = got
    graph = capture(model, (n,), in_channels=1)
    (row,) = audit(graph)
    extent = d * (k - 1) + 1
    assert (row.size, row.kernel, row.stride, row.dilation, row.pads) == (n, k, s, d, (left, right))
    assert graph.nodes[row.node].sizes == (out,)
    # the last window really computed ends at E (input coordinates): everything after it is never reached
    end = (out - 1) * s - left + extent - 1
    assert row.effective == (left, end - (n - 1))
    assert row.leftover == (n + left + right - extent) % s
    if not ceil:
        assert row.leftover == (n + right - 1) - end  # padded positions after the last window
    # real units the windows reach: from the first window's start to the last one's end, less what an F.pad with
    # a negative amount cut off (a ceil-mode window may overhang a cropped end without reading it)
    first = max(-left, -min(model.a, 0))
    last = min(end, n - 1 + min(model.b, 0))
    unread = sorted(set(range(0, min(max(first, 0), n))) | set(range(max(last + 1, 0), n)))
    assert row.unread == tuple(unread)
    assert not set(row.unread) & read  # never-read units are really never read
    if d == 1 and s <= k or s == 1 and k == 1:  # windows overlap or touch: what is read is one run
        assert read == set(range(max(first, 0), min(last, n - 1) + 1))
        assert row.unread == tuple(sorted(set(range(n)) - read))
    assert row.uneven == (left != end - (n - 1))
    eff = end - (n - 1)
    expected = EVEN if eff == left else UNREAD if unread else UNUSED if eff == 0 < right else \
        PARTLY_UNUSED if 0 < eff < right else ASYMMETRIC
    assert row.effect == expected
    assert (row.unread_input is not None) == bool(row.unread)
    if row.unread:  # a single layer on the input: the unread units are the input pixels themselves
        assert row.unread_input == (row.unread[0], row.unread[-1])


@settings(max_examples=int(os.environ.get("PADDING_EXAMPLES", 150)), **SETTINGS)
@given(kind=st.sampled_from(["conv", "conv", "max", "avg"]), n=st.integers(1, 40), k=st.integers(1, 7),
       s=st.integers(1, 4), d=st.integers(1, 3), left=st.integers(-2, 3), right=st.integers(-2, 3),
       ceil=st.booleans(), own=st.booleans())
def test_audit_matches_the_real_read_pattern(kind, n, k, s, d, left, right, ceil, own):
    if kind == "conv":
        ceil = False
    if kind == "avg":
        d = 1
    got = _brute_window(kind, n, k, s, d, left, right, ceil, own)
    assume(got is not None)
    note(f"output length {got[1]}, read {sorted(got[2])}")
    _check_window(got, n, k, s, d, left, right, ceil)


def test_ceil_mode_pool_behind_a_right_pad():
    """PyTorch's ceil rule sees the padded map as the pool's input: 4 outputs, effective right pad 3."""
    _check_window(_brute_window("max", 5, 2, 2, 1, 0, 2, True, False), 5, 2, 2, 1, 0, 2, True)


def test_unread_when_no_window_reaches_the_input():
    """F.pad(2, 0) + Conv1d(k=1, s=3) on n=1 reads only padding: unread is (0,), no negative index."""
    _check_window(_brute_window("conv", 1, 1, 3, 1, 2, 0, False, False), 1, 1, 3, 1, 2, 0, False)


@pytest.mark.parametrize("n", [5, 6, 9, 10])
def test_ceil_mode_pool_own_padding_overhangs(n):
    """With its own padding the ceil rule is the one the audit uses: the last window may pass the right pad."""
    _check_window(_brute_window("max", n, 3, 2, 1, 1, 1, True, True), n, 3, 2, 1, 1, 1, True)
    _check_window(_brute_window("avg", n, 2, 2, 1, 0, 0, True, True), n, 2, 2, 1, 0, 0, True)


# -- 5. carried graphs against real captures ------------------------------------------------------------------
@settings(max_examples=25, **SETTINGS)
@given(arch=architectures(dims=(1, 2, 3), allow_upsampling=True, max_blocks=4),
       deltas=st.lists(st.integers(-3, 5).filter(bool), min_size=2, max_size=3, unique=True))
def test_carried_audit_matches_real_captures(arch, deltas):
    note(repr(arch))
    model = arch.build()
    base, channels = arch.input_shape[2:], arch.input_shape[1]

    def trace(size):
        return capture(model, size, in_channels=channels)

    graph = trace(base)
    res = Resolutions(graph, trace)
    note(f"resizable: {res.resizable} ({res.retrace_reason})")
    for delta in deltas:
        size = tuple(n + delta for n in base)
        if min(size) < 1:
            continue
        try:
            real = audit(trace(size))
        except CaptureError:
            with pytest.raises(CaptureError):
                audit(res.graph_at(size), trace_back=False)
            continue
        carried = audit(res.graph_at(size), trace_back=False)
        assert [_row_key(r) for r in carried] == [_row_key(r) for r in real], size
        assert [r.uneven for r in carried] == [r.uneven for r in real]

    lo, hi = max(1, min(base) - 4), max(base) + 4
    axes = [None] if len(set(base)) == 1 else [None, arch.ndim - 1]
    for axis in axes:
        traced = even_sizes(trace, base, lo, hi, axis=axis)
        predicted = even_sizes(res.graph_at, base, lo, hi, axis=axis)
        assert predicted == traced


def test_even_sizes_skip_sizes_where_avg_pool3d_refuses():
    """PyTorch's avg_pool3d (only it) refuses an input smaller than its kernel even when padding makes room."""
    model = nn.Sequential(nn.Conv3d(1, 1, 1), nn.AvgPool3d((1, 1, 3), 1, (0, 0, 1)))

    def trace(size):
        return capture(model, size)

    res = Resolutions(trace((5, 5, 5)), trace)
    with pytest.raises(CaptureError, match="smaller than kernel"):
        trace((2, 2, 2))
    assert even_sizes(res.graph_at, (5, 5, 5), 1, 8).sizes == even_sizes(trace, (5, 5, 5), 1, 8).sizes == \
        tuple(range(3, 9))


# -- 6. find_rule -------------------------------------------------------------------------------------------
def test_find_rule():
    sizes = range(32, 1025)
    assert find_rule(sizes, {n for n in sizes if n % 32 == 1}) == (32, (1,))
    assert find_rule(sizes, {n for n in sizes if n % 32 == 0}) == (32, (0,))
    small = range(10, 100)
    assert find_rule(small, {n for n in small if n % 4 in (0, 1)}) == (4, (0, 1))
    assert find_rule(small, {n for n in small if n % 2}) == (2, (1,))
    assert find_rule(small, {50}) is None  # one size alone: no period within a quarter of the span
    primes = {n for n in small if all(n % p for p in range(2, n))}
    assert find_rule(small, primes) is None
    assert find_rule(small, set(small)) == (1, (0,))
    assert find_rule(small, set()) == (1, ())
    assert find_rule([], set()) is None
    # skipped sizes (the model does not run there) do not break a rule
    runnable = [n for n in sizes if n % 7]
    assert find_rule(runnable, {n for n in runnable if n % 32 == 1}) == (32, (1,))
    assert EvenSizes((), (1, 9), 9, 5, rule=(1, (0,))).rule_text() == "every size"
    assert EvenSizes((), (1, 9), 9, 5, rule=(1, ())).rule_text() == "no size"


def test_even_sizes_nearest_below_above():
    e = EvenSizes((193, 225, 257), (32, 300), 269, 209)
    assert (e.below, e.above, e.nearest) == (193, 225, 225)  # a tie goes to the larger
    e = EvenSizes((193, 225), (32, 300), 269, 200)
    assert (e.below, e.above, e.nearest) == (193, 225, 193)
    e = EvenSizes((), (32, 300), 269, 200)
    assert (e.below, e.above, e.nearest) == (None, None, None)
    e = EvenSizes((64,), (32, 300), 269, 200)
    assert (e.below, e.above, e.nearest) == (64, None, 64)


# -- 7. what-if padding modes ------------------------------------------------------------------------------
def _ones_conv_gradient(ndim: int, n: int, mode: str) -> np.ndarray:
    conv = (nn.Conv1d, nn.Conv2d)[ndim - 1](1, 1, 3, 1, 1, bias=False, padding_mode=mode).double()
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.ones((1, 1) + (n,) * ndim, dtype=torch.float64, requires_grad=True)
    conv(x).sum().backward()
    return x.grad[0, 0].numpy()


def _all_counts(graph) -> np.ndarray:
    return path_counts(graph, output_node(graph).id, "all").counts()


@pytest.mark.parametrize("ndim", [1, 2])
def test_what_if_modes_on_one_conv(ndim):
    n = 8
    graph = capture((nn.Conv1d, nn.Conv2d)[ndim - 1](1, 1, 3, 1, 1), (n,) * ndim)
    for mode in ("reflect", "replicate", "circular"):
        got = _all_counts(with_padding_mode(graph, mode))
        assert np.array_equal(got, _ones_conv_gradient(ndim, n, mode)), mode
    zeros = _all_counts(graph)
    assert np.array_equal(zeros, _ones_conv_gradient(ndim, n, "zeros"))
    assert np.array_equal(_all_counts(with_padding_mode(graph, "zeros")), zeros)
    # partial convolution: border units have 2 of 3 taps inside, each re-weighted by 3/2 (per axis)
    line = np.array([1.5 + 1, 1.5 + 1 + 1, 3, 3, 3, 3, 1 + 1 + 1.5, 1 + 1.5])
    expected = line if ndim == 1 else np.multiply.outer(line, line)
    partial = path_counts(with_padding_mode(graph, "partial"), output_node(graph).id, "all")
    assert not partial.exact
    assert np.allclose(partial.counts(), expected, rtol=0, atol=1e-12)
    maps = {f.mode: f for f in foveation(graph)}
    assert set(maps) == {"model", "zeros", "reflect", "replicate", "circular", "partial"}
    assert np.array_equal(maps["model"].paths.counts(), zeros)
    assert maps["reflect"].stats.asymmetry == (0.0,) * ndim


class _Stack(nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, 1, 1, padding_mode=mode)
        self.b = nn.Conv2d(2, 2, 3, 2, 1, padding_mode=mode)
        self.c = nn.Conv2d(2, 1, 5, 2, 2, padding_mode=mode)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_model_padding_mode_equals_what_if(mode):
    own = capture(_Stack(mode), (14, 15))
    assert any(node.op.startswith(("reflection_pad", "replication_pad", "pad_circular")) for node in own.nodes)
    rows = audit(own)
    assert {r.mode for r in rows} == {mode} and [r.pads for r in rows if r.name == "c"] == [(2, 2)] * 2
    zeros = capture(_Stack("zeros"), (14, 15))
    (model_map,) = foveation(own, ("model",))
    (what_if,) = foveation(zeros, (mode,))
    assert np.array_equal(model_map.paths.counts(), what_if.paths.counts())
    # the audit is the same whatever the mode
    assert [(r.pads, r.effective, r.leftover) for r in rows] == [(r.pads, r.effective, r.leftover)
                                                                 for r in audit(zeros)]


def test_what_if_leaves_poolings_alone():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, 1, 1), nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(3, 2, 1),
                          nn.Conv2d(1, 1, 3, 1, 1))
    graph = capture(model, 16)
    for mode in ("reflect", "replicate", "circular", "partial"):
        g = with_padding_mode(graph, mode)
        for old, new in zip(graph.nodes, g.nodes, strict=True):
            if old.op == "convolution":
                assert all(w.mode == mode for w in new.reads[0])
            else:
                assert new == old
    assert with_padding_mode(graph, "zeros").nodes == graph.nodes
    with pytest.raises(Exception, match="padding mode"):
        with_padding_mode(graph, "mirror")


class _SharedReflectPad(nn.Module):
    """One reflect padding read by a convolution and by a max pool."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3)
        self.pool = nn.MaxPool1d(3, 1)

    def forward(self, x):
        y = F.pad(x, (2, 2), mode="reflect")
        return self.conv(y) + self.pool(y)


def test_what_if_keeps_a_pools_reflect_padding_shared_with_a_conv():
    graph = capture(_SharedReflectPad(), (8,), in_channels=1)
    # brute force of the zeros what-if: the conv pads with zeros, the pool still reads the reflected map
    x = torch.ones(1, 1, 8, dtype=torch.float64, requires_grad=True)
    ones = torch.ones(1, 1, 3, dtype=torch.float64)
    (F.conv1d(x, ones, padding=2) + F.conv1d(F.pad(x, (2, 2), mode="reflect"), ones)).sum().backward()
    assert np.array_equal(_all_counts(with_padding_mode(graph, "zeros")), x.grad[0, 0].numpy())
    # the conv's padding was reflect already: the reflect what-if is the model itself
    assert np.array_equal(_all_counts(with_padding_mode(graph, "reflect")), _all_counts(graph))


# -- 8. which input pixels the never-read units see ------------------------------------------------------------
def test_unread_input_is_the_receptive_field_of_the_unread_unit(resnet50_224):
    rows = audit(resnet50_224)
    row = _rows_by_name(rows)["layer2.0.downsample.0"]
    fields = analyse(resnet50_224)
    layer = fields.layer("layer1")
    assert layer.output_size == (56, 56)
    lo = 55 * layer.stride[0] - layer.padding[0]
    assert row.unread_input == (max(lo, 0), min(lo + layer.rf[0] - 1, 223)) == (203, 223)
    mask = fields.support("layer1", (55, 28))
    hit = np.flatnonzero(mask.any(axis=1))
    assert row.unread_input == (hit[0], hit[-1])
    assert "input pixels 203-223" in row.describe()
    assert audit(resnet50_224, fields.fields) == rows


# -- 9. 1-D and 3-D -------------------------------------------------------------------------------------------
def test_1d_stack_even_and_odd():
    model = nn.Sequential(nn.Conv1d(1, 2, 3, 2, 1), nn.ReLU(), nn.Conv1d(2, 2, 3, 2, 1), nn.Conv1d(2, 2, 1, 2))
    at16 = audit(capture(model, 16))
    assert [(r.size, r.effective, r.effect) for r in at16] == [(16, (1, 0), UNUSED), (8, (1, 0), UNUSED),
                                                               (4, (0, -1), UNREAD)]
    assert at16[0].describe() == "end padding unused (1 on the start)"
    assert at16[2].unread == (3,) and at16[2].describe().startswith("position never read (index 3")
    assert uneven_layers(audit(capture(model, 21))) == ["3"]  # 21 -> 11 -> 6: the 1x1 never reads index 5
    assert uneven_layers(audit(capture(model, 17))) == []  # 17 -> 9 -> 5: the 1x1 reads 0, 2, 4 of 5
    graph = capture(model, 16)
    found = even_sizes(_resolutions(model, graph).graph_at, (16,), 8, 80)
    assert found.rule == (8, (1,)) and found.nearest == 17 and found.sizes == tuple(range(9, 81, 8))


def test_3d_per_axis():
    model = nn.Sequential(nn.Conv3d(1, 1, 3, 2, 1), nn.Conv3d(1, 1, 3, 1, 1))
    graph = capture(model, (9, 10, 11))
    rows = audit(graph)
    first = [r for r in rows if r.name == "0"]
    assert [(r.axis, r.size, r.effective, r.uneven) for r in first] == [(0, 9, (1, 1), False), (1, 10, (1, 0), True),
                                                                        (2, 11, (1, 1), False)]
    assert first[1].describe() == "bottom padding unused (1 on the top)"
    assert uneven_layers(rows) == ["0"]
    res = _resolutions(model, graph)
    per_axis = [even_sizes(res.graph_at, (9, 10, 11), 4, 30, axis=a) for a in range(3)]
    for a, e in enumerate(per_axis):
        assert e.axis == a and e.rule == (2, (1,)) and e.sizes == tuple(range(5, 31, 2))
        for n in (7, 8):  # against real captures with only that axis changed
            size = [9, 10, 11]
            size[a] = n
            real = [r for r in audit(capture(model, tuple(size))) if r.axis == a and r.uneven]
            assert (n in e.sizes) == (not real)
    assert [e.nearest for e in per_axis] == [9, 11, 11]


# -- 10. the report -------------------------------------------------------------------------------------------
class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 2, 1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.down = nn.Conv2d(4, 4, 1, 2)

    def forward(self, x):
        return self.down(self.pool(torch.relu(self.stem(x))))


def test_padding_report_dict():
    report = padding_report(_Small(), 32, size_range=(16, 80))
    d = report.to_dict()
    json.dumps(d)
    assert {"input_size", "uneven", "layers", "even_sizes", "foveation"} <= set(d)
    assert d["input_size"] == [32, 32]
    assert d["uneven"] == ["stem", "pool", "down"] == report.uneven
    for layer in d["layers"]:
        assert {"name", "axis", "pads", "leftover", "effect", "unread"} <= set(layer)
    assert {"asymmetry", "border_ratio"} <= set(d["foveation"])
    assert d["even_sizes"] == list(range(17, 81, 8))
    assert report.suggested_size() == (33, 33) and d["suggested_input_size"] == [33, 33]
    assert d["foveation"]["asymmetry"][0] > 0
    assert set(d["foveation"]["modes"]) == {"model", "zeros", "reflect", "replicate", "circular", "partial"}
    even = padding_report(_Small(), 33, size_range=(16, 80), modes=("model",)).to_dict()
    assert even["uneven"] == [] and even["foveation"]["asymmetry"] == [0.0, 0.0]


def test_padding_report_non_square():
    report = padding_report(_Small(), (33, 40), size_range=(16, 80), modes=("model",))
    d = report.to_dict()
    json.dumps(d)
    assert d["input_size"] == [33, 40] and d["uneven"] == ["stem", "pool", "down"]
    assert all(r["axis"] == 1 for r in d["layers"] if r["uneven"])
    assert d["even_sizes"] == [list(range(17, 81, 8))] * 2  # one list per axis
    assert [e["axis"] for e in d["even"]] == [0, 1]
    assert d["suggested_input_size"] == [33, 41]
    asym = d["foveation"]["asymmetry"]
    assert asym[0] == 0.0 and asym[1] > 0


# -- regressions found in review -------------------------------------------------------------------------------
def test_foveation_of_a_model_with_a_convolution_head_on_pooled_features():
    """dla34 / MobileNetV3 put a 1x1 convolution on the pooled features: the map is the last map before it."""
    from rflens.errors import RflensError
    from rflens.padding import foveation, last_map

    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 10, 1), nn.Flatten())
    graph = capture(model, 16)
    assert last_map(graph).module == "0"
    (f,) = foveation(graph, ("model",))
    assert f.paths.exact and f.stats.never_read == 0
    assert f.paths.counts().sum() == (8 * 3 - 1) ** 2  # 8 windows of 3 per axis, one tap on the left padding
    with pytest.raises(RflensError, match="no path keeps the position .* module '2'"):
        foveation(graph, ("model",), layer="2")


def _pad_same(x, k, s):
    n = x.shape[-1]
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))


class _SameAndBranch(nn.Module):
    """TF-"same" padding, then code that reads the size again for something else."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2)

    def forward(self, x):
        y = self.conv(_pad_same(x, 3, 2))
        if x.shape[-1] > 300:
            y = F.max_pool2d(y, 3, 2, 1)
        return y


class _SameOnly(_SameAndBranch):
    def forward(self, x):
        return self.conv(_pad_same(x, 3, 2))


def test_same_padding_excuses_only_a_module_that_reads_sizes_in_one_place():
    assert capture(_SameOnly(), 224).same_padding == [""]
    graph = capture(_SameAndBranch(), 224)
    assert graph.same_padding == [] and len(graph.size_reads) == 2
    res = Resolutions(graph, lambda s: capture(_SameAndBranch(), s))
    assert not res.resizable
    m = _SameAndBranch()
    assert even_sizes(res.graph_at, (224, 224), 380, 420) == even_sizes(lambda s: capture(m, s), (224, 224), 380, 420)


def test_a_stride_change_carries_tf_same_padding_along():
    """Refinements edit a window: its TF-"same" padding must follow the new stride (FLOPs, sizes)."""
    from rflens.resize import SetWindow, resized

    pytest.importorskip("timm")
    from timm.layers import Conv2dSame

    model = nn.Sequential(Conv2dSame(3, 4, 3, stride=2), nn.Conv2d(4, 4, 3, padding=1))
    graph = capture(model, 64)
    conv = next(n for n in graph.nodes if n.op == "convolution")
    window = replace(conv.reads[0][0], stride=1)
    edited = resized(graph, (64, 64), [SetWindow(conv.id, (window, window))])
    changed = nn.Sequential(Conv2dSame(3, 4, 3, stride=1), nn.Conv2d(4, 4, 3, padding=1))
    real = capture(changed, 64)
    assert [n.sizes for n in edited.nodes] == [n.sizes for n in real.nodes] and edited.flops == real.flops


def test_padding_mode_checks_every_call_of_a_shared_convolution():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.c(x).mean((2, 3)) + self.c(F.avg_pool2d(x, 8)).mean((2, 3))

    from rflens.transforms import padding_mode_fix

    fix = padding_mode_fix(Shared(), "reflect", 8, audit_after=False)
    assert not fix.changes and fix.skipped == [("c", "reflect padding of (1, 1) does not fit a map of 1 units "
                                                      "(PyTorch refuses)")]


class _ReadsSizes(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2, 1)

    def forward(self, x):
        return self.conv(x)[..., : x.shape[-1]]


def test_non_square_input_traced_per_size_searches_around_each_axis():
    from rflens.padding import padding_report

    report = padding_report(_ReadsSizes(), (40, 200), modes=["model"], max_traces=16)
    assert [e.searched for e in report.even] == [(32, 47), (192, 207)]
    assert report.suggested_size() == (41, 201)


def test_what_if_padding_pytorch_refuses_is_a_note_not_a_map():
    from rflens.errors import InputSizeError
    from rflens.padding import foveation, padding_report

    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, padding=1))
    with pytest.raises(InputSizeError, match="module '2'"):
        foveation(capture(model, 4), ("reflect",))
    report = padding_report(model, 4, modes=["model", "reflect", "circular"], size_range=(4, 8))
    assert [f.mode for f in report.foveation] == ["model", "circular"]
    assert any("no reflect foveation map" in n for n in report.notes)


def test_profiles_of_short_axes_are_drawn():
    from rflens.padding import padding_report

    model = nn.Sequential(nn.Conv3d(1, 2, 3, 2, 1), nn.Conv3d(2, 2, 3, padding=1))
    fig = padding_report(model, (6, 7, 8), modes=["model", "zeros"], size_range=(6, 9)).plot()
    profiles = [ax for ax in fig.get_axes() if ax.get_lines()]
    assert len(profiles) == 3 and all(len(line.get_xdata()) > 1 for ax in profiles for line in ax.get_lines())

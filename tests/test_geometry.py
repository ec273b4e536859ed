"""Pure geometry: index maps against brute force, output sizes against PyTorch, coverage and leftover facts."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from rflens.geometry import QuasiAffine, Transposed, Window, adaptive_maps, adaptive_taps, upsample_maps

_HERE = Path(__file__).resolve()
PADDING = next(p for p in (_HERE.parents[2] / "shared" / "reference" / "padding.json",
                           _HERE.parents[1] / "shared" / "reference" / "padding.json") if p.exists())
PAD_REF = json.loads(PADDING.read_text())

quasi = st.builds(QuasiAffine.floor_div, st.integers(0, 7), st.integers(-20, 20), st.integers(1, 7))


@given(quasi, quasi, st.integers(-60, 60))
def test_compose_is_function_composition(outer, inner, u):
    assert outer.compose(inner)(u) == outer(inner(u))


@given(st.integers(-5, 5), st.integers(-20, 20), st.integers(1, 6), st.integers(-50, 50))
def test_floor_and_ceil_div(a, b, c, u):
    assert QuasiAffine.floor_div(a, b, c)(u) == (a * u + b) // c
    assert QuasiAffine.ceil_div(a, b, c)(u) == -(-(a * u + b) // c)


windows = st.builds(lambda k, s, d, p, ceil: Window(k, s, min(p, k // 2), min(p, k // 2), d, ceil),
                    st.integers(1, 7), st.integers(1, 4), st.integers(1, 3), st.integers(0, 3), st.booleans())


@settings(max_examples=200)
@given(windows, st.integers(1, 40))
def test_window_output_size_matches_pytorch_max_pool(w, n):
    x = torch.zeros(1, 1, n)
    try:
        out = F.max_pool1d(x, w.kernel, w.stride, w.pad_left, w.dilation, ceil_mode=w.ceil_mode).shape[-1]
    except RuntimeError:
        out = 0
    assert w.output_size(n) == out


@settings(max_examples=200)
@given(windows, st.integers(1, 40))
def test_window_taps_and_maps_agree(w, n):
    n_out = w.output_size(n)
    lo, hi = w.maps()
    taps = np.stack(w.taps(n, n_out)) if n_out else np.zeros((w.kernel, 0), dtype=int)
    for u in range(n_out):
        reads = [u * w.stride - w.pad_left + t * w.dilation for t in range(w.kernel)]
        assert (lo(u), hi(u)) == (min(reads), max(reads))
        assert sorted(i for i in taps[:, u] if i >= 0) == sorted(i for i in reads if 0 <= i < n)


@settings(max_examples=200)
@given(st.integers(1, 6), st.integers(1, 4), st.integers(0, 3), st.integers(1, 3), st.integers(1, 12))
def test_transposed_taps_match_pytorch(k, s, p, d, n):
    if d * (k - 1) + 1 < s or p > d * (k - 1):
        return
    geom = Transposed(k, s, p, d, 0)
    n_out = geom.output_size(n)
    if n_out < 1:
        return
    x = torch.eye(n, dtype=torch.float64).reshape(n, 1, n)
    y = F.conv_transpose1d(x, torch.ones(1, 1, k, dtype=torch.float64), stride=s, padding=p, dilation=d)
    assert y.shape[-1] == n_out
    reads = (y[:, 0, :] != 0).T.numpy()  # reads[u, i]: output u reads input i
    taps = np.stack(geom.taps(n, n_out))
    lo, hi = geom.maps()
    for u in range(n_out):
        got = sorted(i for i in taps[:, u] if i >= 0)
        assert got == list(np.flatnonzero(reads[u]))
        if got:  # the infinite-line span contains the clipped reads
            assert lo(u) <= got[0] and got[-1] <= hi(u)


@pytest.mark.parametrize("example", PAD_REF["coverage"]["examples"], ids=lambda e: str(e["k_s_p"]))
def test_coverage_counts_from_reference(example):
    k, s, p = example["k_s_p"]
    w = Window(k, s, p, p)
    n = 64
    counts = np.zeros(n, dtype=int)
    for idx in w.taps(n, w.output_size(n)):
        np.add.at(counts, idx[idx >= 0], 1)
    assert counts[20] == example["even_index"] and counts[21] == example["odd_index"]
    assert w.coverage() == (counts[20], counts[21])


@pytest.mark.parametrize("k,s,d,p", [(k, s, d, p) for k in (1, 2, 3, 4, 5, 7) for s in (1, 2, 3, 4) for d in (1, 2, 3)
                                     for p in (0, 1, 2, 3)])
def test_coverage_matches_brute_force(k, s, d, p):
    n = 80
    for geometry, size_in in ((Window(k, s, p, p, d), n), (Transposed(k, s, p, d), 20)):
        size_out = geometry.output_size(size_in)
        counts_in = np.zeros(size_in, dtype=int)
        counts_out = np.zeros(size_out, dtype=int)
        for idx in geometry.taps(size_in, size_out):
            np.add.at(counts_in, idx[idx >= 0], 1)
            np.add.at(counts_out, np.flatnonzero(idx >= 0), 1)
        counts = counts_in if isinstance(geometry, Window) else counts_out
        interior = range(d * k + s, len(counts) - d * k - s)
        assert all(counts[i] == geometry.coverage()[i % s] for i in interior)


@pytest.mark.parametrize("detail", PAD_REF["torchvision_resnet50_224"]["details"], ids=lambda d: d["layer"])
def test_leftover_from_reference(detail):
    k, s, p = detail["k_s_p"]
    assert Window(k, s, p, p).leftover(detail["input"]) == detail["leftover"]


@pytest.mark.parametrize("n_in,n_out", [(7, 3), (10, 4), (5, 5), (6, 13), (1, 4)])
def test_adaptive_windows_match_pytorch(n_in, n_out):
    x = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in)
    reads = (F.adaptive_avg_pool1d(x, n_out)[:, 0, :] != 0).T.numpy()
    lo, hi = adaptive_maps(n_in, n_out)
    taps = np.stack(adaptive_taps(n_in, n_out))
    for u in range(n_out):
        idx = list(np.flatnonzero(reads[u]))
        assert (lo(u), hi(u)) == (idx[0], idx[-1])
        assert sorted(i for i in taps[:, u] if i >= 0) == idx


@pytest.mark.parametrize("mode", ["nearest", "nearest-exact", "linear"])
@pytest.mark.parametrize("n_in,n_out", [(5, 10), (6, 18), (8, 12), (12, 8), (7, 7)])
def test_interpolation_maps_match_pytorch_inside(mode, n_in, n_out):
    """Away from the borders (where PyTorch clamps) the infinite-line maps are PyTorch's reads."""
    x = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in)
    kw = {"align_corners": False} if mode == "linear" else {}
    reads = (F.interpolate(x, size=n_out, mode=mode, **kw)[:, 0, :] != 0).T.numpy()
    lo, hi = upsample_maps(mode, Fraction(n_in, n_out), False, n_in, n_out)
    for u in range(n_out):
        idx = list(np.flatnonzero(reads[u]))
        if lo(u) >= 0 and hi(u) <= n_in - 1:
            assert (lo(u), hi(u)) == (idx[0], idx[-1])
        else:
            assert lo(u) <= idx[0] and idx[-1] <= max(hi(u), 0)

"""The evenness numbers of a map against hand-computed values, and the worst region against a brute-force
search over every window."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rflens.mapstats import asymmetry, border_ratio, map_stats, min_max_ratio, side_ratio, worst_region


def test_asymmetry_is_zero_for_mirror_symmetric_maps():
    assert asymmetry(np.array([1.0, 2.0, 1.0])) == (0.0,)
    m = np.array([[1.0, 2.0, 1.0], [3.0, 5.0, 3.0], [1.0, 2.0, 1.0]])
    assert asymmetry(m) == (0.0, 0.0)
    assert asymmetry(np.zeros((3, 4))) == (0.0, 0.0)
    rng = np.random.default_rng(0)
    half = rng.random((4, 3))
    assert asymmetry(np.concatenate([half, half[:, ::-1]], axis=1))[1] == 0.0


def test_asymmetry_known_values():
    assert asymmetry(np.array([1.0, 0.0])) == (1.0,)  # all the mass is on one side
    assert asymmetry(np.array([3.0, 1.0])) == (0.5,)  # 0.5 * (2 + 2) / 4
    # 0.5 * 8 / 10 along rows, 0.5 * 4 / 10 along columns
    assert asymmetry(np.array([[1.0, 2.0], [3.0, 4.0]])) == pytest.approx((0.4, 0.2))
    assert asymmetry(np.array([1.0, 2.0, 4.0])) == pytest.approx((0.5 * 6 / 7,))


def test_side_ratio():
    assert side_ratio(np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx((3 / 7,))
    assert side_ratio(np.array([1.0, 5.0, 2.0])) == (0.5,)  # the middle index belongs to neither half
    assert side_ratio(np.array([[1.0, 2.0], [3.0, 4.0]])) == pytest.approx((3 / 7, 4 / 6))
    assert side_ratio(np.array([1.0, 0.0])) == (math.inf,)
    assert side_ratio(np.array([0.0, 0.0])) == (1.0,)
    assert side_ratio(np.array([7.0])) == (1.0,)  # one pixel: both halves empty


def test_border_ratio_hand_computed():
    m = np.ones((6, 6))
    m[1:5, 1:5] = 3.0  # ring of ones; the central region (rows and columns 1..4) all threes
    assert border_ratio(m) == pytest.approx(1 / 3)
    assert border_ratio(np.array([2.0, 1.0, 1.0, 1.0, 1.0, 4.0])) == pytest.approx(3.0)  # ring mean 3, centre 1
    rows = np.tile(np.arange(8.0)[:, None], (1, 8))
    # ring: row 0 (0s), row 7 (7s), columns 0 and 7 of rows 1..6: (56 + 2 * 21) / 28; centre rows 2..5: 3.5
    assert border_ratio(rows) == pytest.approx((56 + 42) / 28 / 3.5)
    m = np.ones((8, 8))
    m[2:6, 2:6] = 2.0
    assert border_ratio(m) == 0.5


def test_border_ratio_undefined_cases():
    assert math.isnan(border_ratio(np.ones((2, 5))))  # too small to have a ring and a centre
    m = np.ones((6, 6))
    m[1:5, 1:5] = 0.0
    assert math.isnan(border_ratio(m))  # nothing in the centre


def test_min_max_ratio():
    assert min_max_ratio(np.array([2.0, 4.0, 3.0])) == 0.5
    assert min_max_ratio(np.array([0.0, 5.0])) == 0.0
    assert math.isnan(min_max_ratio(np.zeros(3)))


def test_worst_region_known():
    m = np.ones((6, 6))
    m[3:5, 1:3] = 0.0
    assert worst_region(m, 2) == ((3, 1), 0.0)
    assert worst_region(m, (1, 3)) == ((3, 0), 1 / 3)
    assert worst_region(m, 10) == ((0, 0), 32 / 36)  # the window is clipped to the map
    assert worst_region(np.array([4.0, 1.0, 1.0, 5.0]), 2) == ((1,), 1.0)


def _brute(m: np.ndarray, size: tuple[int, ...]) -> tuple[tuple[int, ...], float]:
    """Every window in C order, each mean summed directly; the first of equal means wins."""
    size = tuple(max(1, min(s, n)) for s, n in zip(size, m.shape, strict=True))
    best: tuple[tuple[int, ...], float] | None = None
    for start in itertools.product(*(range(n - s + 1) for n, s in zip(m.shape, size, strict=True))):
        mean = float(m[tuple(slice(a, a + s) for a, s in zip(start, size, strict=True))].mean())
        if best is None or mean < best[1]:
            best = (start, mean)
    assert best is not None
    return best


_shapes = st.lists(st.integers(1, 7), min_size=1, max_size=3).filter(lambda s: math.prod(s) <= 150)


@settings(max_examples=60, deadline=None)
@given(shape=_shapes, window=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_worst_region_matches_brute_force_on_integer_maps(shape, window, seed):
    """Small integer values: every window sum is exact, so even the tie rule (first in C order) must hold."""
    m = np.random.default_rng(seed).integers(0, 4, size=shape).astype(np.float64)
    size = (window,) * len(shape)
    start, mean = worst_region(m, size)
    expected_start, expected_mean = _brute(m, size)
    assert start == expected_start
    assert mean == pytest.approx(expected_mean, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(shape=_shapes, window=st.lists(st.integers(1, 8), min_size=3, max_size=3), seed=st.integers(0, 2**32 - 1))
def test_worst_region_matches_brute_force_on_real_maps(shape, window, seed):
    m = np.random.default_rng(seed).random(shape)
    size = tuple(window[:len(shape)])
    start, mean = worst_region(m, size)
    _, expected_mean = _brute(m, size)
    clipped = tuple(max(1, min(s, n)) for s, n in zip(size, m.shape, strict=True))
    assert mean == pytest.approx(expected_mean, abs=1e-12)
    assert float(m[tuple(slice(a, a + s) for a, s in zip(start, clipped, strict=True))].mean()) == \
        pytest.approx(expected_mean, abs=1e-12)


def test_worst_region_tie_rule_and_small_values_with_float_maps():
    assert worst_region(np.full(10, 0.1), 3)[0] == (0,)  # gives (3,): ties do not go to the first window
    assert worst_region(np.array([0.3, 0.1, 2e-18, 1e-18]), 1)[0] == (3,)  # gives (2,): both differences are 0


def test_map_stats_and_never_read():
    m = np.ones((16, 16))
    m[:, :4] = 0.0
    m[5, 10] = 0.0
    s = map_stats(m)
    assert s.never_read == 16 * 4 + 1
    assert s.worst_region_size == (2, 2) and s.worst_region == (0, 0)  # an eighth of every axis
    assert s.worst_region_mean == 0.0
    assert s.asymmetry[0] == pytest.approx(0.5 * 2 / m.sum())  # only the lone zero at row 5 lacks its mirror
    # the zero columns 0..3 against the ones of 12..15 (both ways), and the lone zero against (5, 5)
    assert s.asymmetry[1] == pytest.approx(0.5 * (4 * 16 * 2 + 2) / m.sum())
    assert s.min_max_ratio == 0.0
    assert map_stats(m, region=(16, 4)).worst_region == (0, 0)
    assert map_stats(np.full((4, 4), 2.0), region=1).worst_region_mean == 1.0  # relative to the map's mean
    d = map_stats(m).to_dict()
    assert d["never_read"] == 65 and d["worst_region"]["size"] == [2, 2]
    json.dumps(d, allow_nan=False)


def test_bad_maps_are_refused():
    with pytest.raises(ValueError, match="at least one axis"):
        map_stats(np.float64(3.0))
    with pytest.raises(ValueError, match="at least one axis"):
        map_stats(np.zeros((0, 3)))


def test_to_dict_is_valid_json_with_an_empty_half():
    json.dumps(map_stats(np.array([1.0, 1.0, 0.0, 0.0])).to_dict(), allow_nan=False)


def test_the_centre_of_a_three_pixel_axis_is_its_middle_pixel():
    assert border_ratio(np.array([1.0, 4.0, 1.0])) == 0.25

"""ERF-map metrics against known answers: synthetic maps, the exact box-stack sigma, a slow area-ratio reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.signal import convolve2d

from rflens.erf_metrics import (
    GaussianFit,
    area_ratios,
    centre_of_mass_offset,
    erf_trf_ratio,
    erf_trf_ratio_per_axis,
    gaussian_fit,
    moments,
    radial_mass,
    radius_for_mass,
    summary,
)


def gaussian(shape: tuple[int, ...], amplitude: float, centre: tuple[float, ...],
             sigma: tuple[float, ...]) -> np.ndarray:
    out = np.full(shape, amplitude, dtype=np.float64)
    for a, (n, c, s) in enumerate(zip(shape, centre, sigma, strict=True)):
        view = [1] * len(shape)
        view[a] = n
        out = out * np.exp(-0.5 * ((np.arange(n) - c) / s) ** 2).reshape(view)
    return out


def box_stack_1d(n: int) -> np.ndarray:
    """ERF of n single-channel 3-tap box layers (weights 1/3): the n-fold box convolution of a delta."""
    erf = np.ones(1)
    for _ in range(n):
        erf = np.convolve(erf, np.full(3, 1 / 3))
    return erf


def box_stack_2d(n: int) -> np.ndarray:
    """ERF of n single-channel 3x3 box layers (weights 1/9), by true 2-D convolution, padded by 2 px."""
    erf = np.zeros((2 * n + 5, 2 * n + 5))
    erf[n + 2, n + 2] = 1.0
    for _ in range(n):
        erf = convolve2d(erf, np.full((3, 3), 1 / 9), mode="same")
    return erf


# ----------------------------------------------------------------------------------------------- area ratios


def slow_area_ratios(m: np.ndarray, thresholds, transform=True) -> dict[float, float]:
    """Straight from the definition: grow a clipped centred square by slicing until it holds more than t."""
    m = np.asarray(m, dtype=np.float64)
    if m.max() <= 0:
        return {t: math.nan for t in thresholds}
    scaled = np.log10(m + 1) / np.log10(m.max() + 1) if transform else m / m.max()
    total = scaled.sum()
    centre = [n // 2 for n in m.shape]
    out = {}
    for t in thresholds:
        i = 1
        while True:
            box = tuple(slice(max(c - i, 0), min(c + i, n - 1) + 1) for c, n in zip(centre, m.shape, strict=True))
            covers_all = all(c - i <= 0 and c + i >= n - 1 for c, n in zip(centre, m.shape, strict=True))
            if scaled[box].sum() > t * total or covers_all:
                out[t] = scaled[box].size / m.size
                break
            i += 1
    return out


def test_centred_square_of_ones():
    m = np.zeros((64, 64))
    m[27:38, 27:38] = 1.0  # side 11 around index 32 = 64 // 2
    # more than t of 121 ones: sides 5 (25 > 24.2), 7 (49 > 36.3), 9 (81 > 60.5), 11 (121 > 119.79)
    expected = {0.2: 25 / 4096, 0.3: 49 / 4096, 0.5: 81 / 4096, 0.99: 121 / 4096}
    assert area_ratios(m) == pytest.approx(expected, abs=1e-15)
    assert area_ratios(m, transform=False) == pytest.approx(expected, abs=1e-15)


def test_delta_starts_at_side_three():
    m = np.zeros((33, 33))
    m[16, 16] = 5.0
    assert area_ratios(m) == pytest.approx({t: 9 / 33**2 for t in (0.2, 0.3, 0.5, 0.99)}, abs=1e-15)


def test_non_square_map_uses_the_clipped_square():
    m = np.ones((20, 50))
    r = area_ratios(m, (0.5, 0.99))
    assert r[0.5] == pytest.approx(20 * 27 / 1000)  # i = 13: rows clipped to 20, columns 27; 540 > 500
    assert r[0.99] == 1.0  # i = 25: the whole map (RepLKNet's loop would stop short and return None)


def test_all_equal_positive_map():
    m = np.full((9, 9), 3.7)
    # more than t of 81 pixels: side 5 (25 > 16.2, 25 > 24.3), 7 (49 > 40.5), 9 (81 > 80.19)
    assert area_ratios(m) == pytest.approx({0.2: 25 / 81, 0.3: 25 / 81, 0.5: 49 / 81, 0.99: 1.0}, abs=1e-15)


def test_one_and_three_dimensional_maps():
    line = np.zeros(101)
    line[45:56] = 2.0
    assert area_ratios(line, (0.5,))[0.5] == pytest.approx(7 / 101)  # 7 > 5.5 of 11
    cube = np.zeros((21, 22, 23))
    cube[9:12, 10:13, 10:13] = 1.0  # the 3x3x3 cube around (10, 11, 11)
    assert area_ratios(cube, (0.99,))[0.99] == pytest.approx(27 / (21 * 22 * 23))


def test_transform_changes_the_answer():
    m = np.zeros((31, 31))
    m[15, 15] = 1000.0
    m[5:26, 5:26] += 1.0
    with_log = area_ratios(m, (0.5,))[0.5]
    without = area_ratios(m, (0.5,), transform=False)[0.5]
    assert without == 9 / 961 and with_log > without


def test_zero_map_gives_nan():
    r = area_ratios(np.zeros((8, 8)))
    assert list(r) == [0.2, 0.3, 0.5, 0.99] and all(math.isnan(v) for v in r.values())


@pytest.mark.parametrize("t", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_threshold_out_of_range(t):
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        area_ratios(np.ones((5, 5)), (0.5, t))


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, st.one_of(hnp.array_shapes(min_dims=1, max_dims=1, min_side=1, max_side=12),
                                         hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=9),
                                         hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=5)),
                  elements=st.one_of(st.just(0.0), st.floats(1e-3, 100.0))),
       st.lists(st.floats(0.01, 0.99), min_size=1, max_size=4), st.booleans())
def test_area_ratios_match_slow_reference(m, thresholds, transform):
    fast = area_ratios(m, thresholds, transform=transform)
    slow = slow_area_ratios(m, thresholds, transform)
    assert list(fast) == list(slow)
    for t in thresholds:
        if math.isnan(slow[t]):
            assert math.isnan(fast[t])
            continue
        if fast[t] != pytest.approx(slow[t], rel=1e-12):
            # only a rounding tie may differ: the reference's sum at the chosen square equals t * total
            scaled = np.log10(m + 1) if transform else m
            assert abs(scaled.sum() * t - _square_sum(scaled, fast[t])) <= 1e-9 * scaled.sum()


def _square_sum(scaled: np.ndarray, ratio: float) -> float:
    centre = [n // 2 for n in scaled.shape]
    for i in range(1, max(scaled.shape) + 1):
        box = tuple(slice(max(c - i, 0), min(c + i, n - 1) + 1) for c, n in zip(centre, scaled.shape, strict=True))
        if math.isclose(scaled[box].size / scaled.size, ratio):
            return float(scaled[box].sum())
    raise AssertionError("no square with that area")


def test_large_map_runs():
    m = gaussian((1024, 1024), 1.0, (512, 512), (60.0, 80.0))
    ratios = area_ratios(m)
    assert 0 < ratios[0.2] < ratios[0.3] < ratios[0.5] < ratios[0.99] < 1


# ----------------------------------------------------------------------------------------------- moments


@pytest.mark.parametrize("n", range(1, 11))
def test_box_stack_sigma_is_exact(n):
    expected = math.sqrt(2 * n / 3)
    centre, sigma = moments(box_stack_1d(n))
    assert centre[0] == pytest.approx(n, abs=1e-12)
    assert sigma[0] == pytest.approx(expected, abs=1e-12)
    centre, sigma = moments(box_stack_2d(n))
    assert centre == pytest.approx((n + 2, n + 2), abs=1e-12)
    assert sigma == pytest.approx((expected, expected), abs=1e-12)


def test_moments_of_delta_and_flat_maps():
    m = np.zeros((7, 10))
    m[2, 6] = 4.0
    assert moments(m) == ((2.0, 6.0), (0.0, 0.0))
    centre, sigma = moments(np.ones((7, 10)))
    assert centre == pytest.approx((3.0, 4.5))
    assert sigma == pytest.approx((math.sqrt(48 / 12), math.sqrt(99 / 12)))  # (n^2 - 1) / 12
    centre, sigma = moments(np.zeros((3, 4, 5)))
    assert len(centre) == len(sigma) == 3 and all(math.isnan(v) for v in centre + sigma)


def test_centre_of_mass_offset_of_off_centre_gaussian():
    m = gaussian((101, 101), 3.0, (30.25, 40.5), (4.0, 6.0))
    assert centre_of_mass_offset(m, (50, 50)) == pytest.approx((-19.75, -9.5), abs=1e-9)
    assert all(math.isnan(v) for v in centre_of_mass_offset(np.zeros((4, 4)), (2, 2)))
    with pytest.raises(ValueError, match="one coordinate per axis"):
        centre_of_mass_offset(m, (50,))


# ----------------------------------------------------------------------------------------------- Gaussian fit


@pytest.mark.parametrize(("shape", "amplitude", "centre", "sigma"), [
    ((101, 131), 2.5, (40.3, 61.7), (7.5, 12.3)),
    ((64,), 0.7, (30.2,), (5.0,)),
    ((30, 40, 35), 1.0, (14.2, 20.1, 17.9), (3.0, 4.0, 5.0)),
    ((1024, 1024), 1.0, (500.5, 530.2), (150.0, 90.0)),  # cropped and subsampled
    ((1024, 1024), 1e-4, (700.0, 300.0), (2.5, 4.0)),
])
def test_gaussian_fit_recovers_known_gaussian(shape, amplitude, centre, sigma):
    fit = gaussian_fit(gaussian(shape, amplitude, centre, sigma))
    assert fit.ok
    assert fit.amplitude == pytest.approx(amplitude, rel=1e-6)
    assert fit.centre == pytest.approx(centre, abs=1e-6)
    assert fit.sigma == pytest.approx(sigma, abs=1e-6)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)


def test_gaussian_fit_with_centre_guess_and_noise():
    rng = np.random.default_rng(0)
    m = np.abs(gaussian((200, 240), 1.0, (90.0, 130.0), (10.0, 15.0)) + 0.002 * rng.standard_normal((200, 240)))
    fit = gaussian_fit(m, centre_guess=(100, 120))
    assert fit.centre == pytest.approx((90.0, 130.0), abs=0.05)
    assert fit.sigma == pytest.approx((10.0, 15.0), abs=0.05)
    assert 0.99 < fit.r2 < 1.0


def test_narrow_gaussian_on_faint_floor():
    """The floor holds most of the mass, so the moments start is wide; the peak start finds the Gaussian."""
    rng = np.random.default_rng(1)
    m = np.abs(gaussian((512, 512), 1.0, (250.0, 260.0), (3.0, 3.0)) + 0.002 * rng.standard_normal((512, 512)))
    fit = gaussian_fit(m)
    assert fit.sigma == pytest.approx((3.0, 3.0), abs=0.02)


def test_gaussian_fit_of_delta_is_its_limit():
    m = np.zeros((33, 33))
    m[16, 15] = 2.0
    assert gaussian_fit(m) == GaussianFit(2.0, (16.0, 15.0), (0.0, 0.0), 1.0)


@pytest.mark.parametrize("m", [np.zeros((16, 16)), np.full((16, 16), 0.3), np.zeros(5), np.ones((3, 3, 3))])
def test_flat_map_fit_fails_quietly(m):
    fit = gaussian_fit(m)
    assert not fit.ok
    assert all(math.isnan(v) for v in (fit.amplitude, fit.r2, *fit.centre, *fit.sigma))
    assert len(fit.centre) == len(fit.sigma) == m.ndim
    assert fit.to_dict() == {"sigma": [None] * m.ndim, "centre": [None] * m.ndim, "amplitude": None, "r2": None}


def test_non_gaussian_map_has_low_r2():
    m = np.zeros((64, 64))
    m[::2, ::2] = 1.0  # a checkerboard-like grid: no Gaussian shape
    fit = gaussian_fit(m)
    assert fit.ok and fit.r2 < 0.5


def test_gaussian_fit_of_a_noisy_1024_map():
    rng = np.random.default_rng(2)
    m = np.abs(gaussian((1024, 1024), 1.0, (500.5, 530.2), (150.0, 90.0)) + 0.01 * rng.standard_normal((1024, 1024)))
    fit = gaussian_fit(m)
    assert fit.sigma == pytest.approx((150.0, 90.0), rel=0.01)


# ----------------------------------------------------------------------------------------------- radial mass


def test_radial_mass_of_delta():
    m = np.zeros((9, 9))
    m[4, 4] = 1.0
    radii, cumulative = radial_mass(m, (4, 4))
    assert radii[0] == 0 and radii[-1] == math.ceil(math.sqrt(32))
    assert np.all(cumulative == 1.0)
    assert radius_for_mass(m, (4, 4), 0.5) == 0.0


def test_radial_mass_counts_pixels_within_r():
    m = np.ones((5, 5))
    radii, cumulative = radial_mass(m, (2, 2))
    # distances from the centre: 0 (1 px), 1 (4), sqrt 2 (4), 2 (4), sqrt 5 (8), sqrt 8 (4)
    assert radii.tolist() == [0, 1, 2, 3]
    assert cumulative.tolist() == pytest.approx([1 / 25, 5 / 25, 13 / 25, 1.0])
    assert cumulative[-1] == 1.0
    assert radius_for_mass(m, (2, 2), 0.2) == 1.0
    assert radius_for_mass(m, (2, 2), 0.21) == 2.0
    assert radius_for_mass(m, (2, 2), 1.0) == 3.0
    with pytest.raises(ValueError, match="fraction"):
        radius_for_mass(m, (2, 2), 0.0)


def test_radial_mass_ends_at_one_on_random_map():
    m = np.random.default_rng(3).random((37, 50))
    radii, cumulative = radial_mass(m, (18.3, 24.9))
    assert cumulative[-1] == 1.0 and np.all(np.diff(cumulative) >= 0)
    assert radii[-1] == math.ceil(max(math.hypot(r - 18.3, c - 24.9) for r in (0, 36) for c in (0, 49)))


def test_radial_mass_of_zero_map_is_nan():
    radii, cumulative = radial_mass(np.zeros((4, 6)), (2, 3))
    assert radii.size == cumulative.size and np.all(np.isnan(cumulative))
    assert math.isnan(radius_for_mass(np.zeros((4, 6)), (2, 3), 0.5))


# ----------------------------------------------------------------------------------------------- ERF / TRF


def test_erf_trf_ratio():
    assert erf_trf_ratio((3.0, 12.0), (30, 30)) == pytest.approx(2 * 6.0 / 30)
    assert erf_trf_ratio((3.0, 12.0), (10, 40)) == pytest.approx(2 * 6.0 / 20)
    assert erf_trf_ratio((5.0, 5.0), 20) == pytest.approx(0.5)
    assert erf_trf_ratio_per_axis((3.0, 12.0), (10, 40)) == pytest.approx((0.6, 0.6))
    assert math.isnan(erf_trf_ratio((3.0, 4.0), (10, None)))
    assert math.isnan(erf_trf_ratio((3.0, 4.0), None))
    assert math.isnan(erf_trf_ratio((math.nan, 4.0), (10, 10)))
    ratios = erf_trf_ratio_per_axis((3.0, 4.0), (10, None))
    assert ratios[0] == pytest.approx(0.6) and math.isnan(ratios[1])
    with pytest.raises(ValueError):
        erf_trf_ratio((3.0, 4.0), (10,))
    with pytest.raises(ValueError):
        erf_trf_ratio((3.0, 4.0), (10, 0))


# ----------------------------------------------------------------------------------------------- summary


def test_summary_of_gaussian():
    m = gaussian((65, 81), 2.0, (30.0, 45.0), (4.0, 5.0))
    s = summary(m, (32, 40), (33, 41))
    json.dumps(s, allow_nan=False)
    assert set(s) == {"area_ratio", "sigma", "centre", "fit", "r2", "erf_trf_ratio", "com_offset",
                      "radius_50", "radius_90"}
    assert list(s["area_ratio"]) == ["0.2", "0.3", "0.5", "0.99"]
    assert s["area_ratio"] == pytest.approx({str(t): v for t, v in area_ratios(m).items()})
    assert s["sigma"] == pytest.approx([4.0, 5.0], abs=1e-6)
    assert s["centre"] == pytest.approx([30.0, 45.0], abs=1e-9)
    assert s["com_offset"] == pytest.approx([-2.0, 5.0], abs=1e-9)
    assert s["fit"]["sigma"] == pytest.approx([4.0, 5.0], abs=1e-6)
    assert s["fit"]["amplitude"] == pytest.approx(2.0, abs=1e-6)
    assert s["r2"] == s["fit"]["r2"] == pytest.approx(1.0)
    assert s["erf_trf_ratio"] == pytest.approx(2 * math.sqrt(20) / math.sqrt(33 * 41), abs=1e-9)
    assert s["radius_50"] == radius_for_mass(m, (32, 40), 0.5)
    assert s["radius_90"] == radius_for_mass(m, (32, 40), 0.9)
    assert 0 < s["radius_50"] <= s["radius_90"]


def test_summary_of_zero_map_is_all_none():
    s = summary(np.zeros((12, 10)), (6, 5), (7, None))
    json.dumps(s, allow_nan=False)
    assert s == {
        "area_ratio": {"0.2": None, "0.3": None, "0.5": None, "0.99": None},
        "sigma": [None, None], "centre": [None, None],
        "fit": {"sigma": [None, None], "centre": [None, None], "amplitude": None, "r2": None},
        "r2": None, "erf_trf_ratio": None, "com_offset": [None, None], "radius_50": None, "radius_90": None,
    }


def test_summary_of_flat_positive_1d_and_3d_maps():
    s = summary(np.full(11, 2.0), (5,), (11,), thresholds=(0.25,))
    assert s["area_ratio"] == {"0.25": 3 / 11}  # 3 > 2.75 of 11
    assert s["r2"] is None and s["sigma"] == pytest.approx([math.sqrt(120 / 12)])
    s = summary(gaussian((15, 16, 17), 1.0, (7.0, 7.5, 8.0), (1.5, 2.0, 2.5)), (7, 7.5, 8), (15, 16, 17))
    json.dumps(s, allow_nan=False)
    assert s["fit"]["sigma"] == pytest.approx([1.5, 2.0, 2.5], abs=1e-6)
    assert s["com_offset"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_map_is_an_error(bad):
    m = np.ones((6, 6))
    m[1, 2] = bad
    m[3, 3] = bad
    with pytest.raises(ValueError, match="2 non-finite"):
        summary(m, (3, 3), (5, 5))
    for fn in (area_ratios, moments, gaussian_fit):
        with pytest.raises(ValueError, match="2 non-finite"):
            fn(m)


def test_invalid_maps():
    with pytest.raises(ValueError, match="negative"):
        moments(np.array([1.0, -0.5, 2.0]))
    with pytest.raises(ValueError, match="axes"):
        area_ratios(np.ones((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="entry"):
        area_ratios(np.ones((0, 3)))

"""Metrics of an effective-receptive-field (ERF) map: pure numpy + scipy, no torch.

An ERF map is a non-negative, finite float array the size of the input (1-D, 2-D or 3-D; 2-D is the main
case), e.g. the mean over images of the input-gradient magnitude of one output unit. Conventions, kept by every
function here:

* **Axis order** is the array's: a 2-D map is ``(row, column)``, i.e. ``(y, x)``. Every per-axis tuple
  (centre, sigma, offsets, TRF sizes) follows that order.
* **Positions** are pixel indices: pixel ``i`` sits at coordinate ``i`` (the Distill convention used in
  :mod:`rflens.geometry`). The probed unit is ``n // 2`` per axis (:func:`rflens.geometry.centre_unit`); its
  receptive-field centre, the *expected* centre of its ERF, is passed in by the caller.
* **Invalid input** (NaN/inf or negative entries, no entries, more than 3 axes) raises ``ValueError`` naming
  how many entries are bad: the caller drops bad per-image maps before averaging. A valid map without mass
  (all zeros) is not an error: "no ERF", every metric is NaN (``None`` in :func:`summary`).

Why these metrics (side by side in ``ARCHITECTURE.md``, "ERF protocols"):

* :func:`area_ratios`: RepLKNet's high-contribution area ratio (Ding et al., "Scaling Up Your Kernels to
  31x31: Revisiting Large Kernel Design in CNNs", CVPR 2022).
* :func:`moments`: the map as a distribution; its mean and standard deviation are the moment-matching
  (maximum-likelihood) Gaussian, exact for linear stacks, whose ERF is a repeated box convolution with
  standard deviation ``sqrt(2n/3)`` after n 3x3 layers (Luo et al., "Understanding the Effective Receptive
  Field in Deep Convolutional Neural Networks", NeurIPS 2016, for the Gaussian shape and the sqrt(n) growth).
* :func:`gaussian_fit`: least-squares Gaussian surface with R², as Kim et al. fit their ERFs ("Dead pixel
  test using effective receptive field", arXiv 2021 / Pattern Recognition Letters 2023).
* :func:`radial_mass`, :func:`radius_for_mass`, :func:`centre_of_mass_offset`, :func:`erf_trf_ratio`: how far
  the mass spreads, whether it sits where the theory puts it, and how much of the theoretical receptive
  field (TRF) it actually uses (Luo et al. 2016: the ERF occupies a fraction of the TRF).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import OptimizeWarning, curve_fit

from rflens.mapstats import json_float

__all__ = [
    "DEFAULT_THRESHOLDS",
    "GaussianFit",
    "area_ratios",
    "centre_of_mass_offset",
    "erf_trf_ratio",
    "erf_trf_ratio_per_axis",
    "gaussian_fit",
    "moments",
    "radial_mass",
    "radius_for_mass",
    "summary",
]

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.2, 0.3, 0.5, 0.99)

# gaussian_fit: mass kept by the crop, its padding, and the most samples handed to the optimiser.
_CROP_MASS = 0.999
_CROP_PAD_FRACTION = 0.25
_CROP_PAD_MIN = 3
_MAX_FIT_POINTS = 1 << 16
# radial_mass: a pixel at distance d counts within radius r when d <= r + this (absorbs rounding of d).
_RADIUS_TOLERANCE = 1e-9

_NAN = float("nan")


# ----------------------------------------------------------------------------------------------- input checks


def _check_map(erf_map: ArrayLike) -> np.ndarray:
    """The map as float64, or ``ValueError`` naming what is wrong (bad entries are counted)."""
    m = np.asarray(erf_map, dtype=np.float64)
    if not 1 <= m.ndim <= 3:
        raise ValueError(f"an ERF map has 1, 2 or 3 axes, got {m.ndim} (shape {m.shape})")
    if m.size == 0:
        raise ValueError(f"an ERF map needs at least one entry, got shape {m.shape}")
    bad = int(m.size - np.count_nonzero(np.isfinite(m)))
    if bad:
        raise ValueError(f"ERF map has {bad} non-finite entries (NaN or inf) out of {m.size}; "
                         "remove the bad per-image maps before averaging")
    negative = int(np.count_nonzero(m < 0))
    if negative:
        raise ValueError(f"ERF map has {negative} negative entries out of {m.size}; an ERF map is non-negative "
                         "(take ReLU or |.| of the gradient first)")
    return m


def _check_point(point: Sequence[float], ndim: int, name: str) -> tuple[float, ...]:
    p = tuple(float(v) for v in point)
    if len(p) != ndim:
        raise ValueError(f"{name} needs one coordinate per axis ({ndim}), got {len(p)}")
    return p


def _check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    ts = tuple(float(t) for t in thresholds)
    bad = [t for t in ts if not 0.0 < t < 1.0]
    if bad:
        raise ValueError(f"area-ratio thresholds must lie in (0, 1), got {bad}")
    return ts


def _axis_coords(shape: Sequence[int], axis: int) -> np.ndarray:
    """Index coordinates of one axis, shaped to broadcast against a map of ``shape``."""
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return np.arange(shape[axis], dtype=np.float64).reshape(view)


def _marginals(m: np.ndarray) -> list[np.ndarray]:
    """The mass per index of each axis (sum over the other axes)."""
    return [m.sum(axis=tuple(b for b in range(m.ndim) if b != a)) for a in range(m.ndim)]


# ----------------------------------------------------------------------------------------------- area ratios


def area_ratios(erf_map: ArrayLike, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, *,
                transform: bool = True, centre: Sequence[int] | None = None) -> dict[float, float]:
    """RepLKNet's high-contribution area ratio of an ERF map, for each threshold ``t`` in (0, 1).

    Why: a single number per threshold saying how much of the input a unit draws on, the measure Ding et al.
    ("Scaling Up Your Kernels to 31x31", CVPR 2022) use to compare kernel sizes. Definition: scale the map to
    ``log10(x + 1) / max`` (``transform=False``: ``x / max``, the variant without the log, as in SLaK's
    analysis), then find the smallest centred square of side ``2i + 1`` with the **sum more than t of the
    total**, and report its area over the map's area. The square (a segment in 1-D, a cube in 3-D) is centred
    at index ``n // 2`` on every axis and clipped to the map.

    Decisions, documented:

    * ``i`` starts at 1 (side 3), as in RepLKNet: a map whose centre pixel alone holds more than t still
      reports a 3x3 square.
    * The area is that of the **clipped** square over the map's area, so ratios never exceed 1. RepLKNet
      reports ``(side/h) * (side/w)`` with the unclipped side; both agree whenever the square fits.
    * The square keeps growing until it covers the whole map (RepLKNet stops at ``i < h // 2`` and returns
      None), so every ``t < 1`` is reached when the total is positive. A map without mass gives NaN for
      every threshold ("no ERF").
    * ``log1p(x)`` replaces ``log10(x + 1)``: the constant ``ln 10`` cancels in the division by the max, and
      ``log1p`` keeps full precision for tiny gradients, where ``x + 1`` rounds to 1.

    O(size): the sum of every square at once is a cumulative sum over the Chebyshev distance to the centre.
    Returns ``{t: ratio}`` in the order given; ``ValueError`` for a threshold outside (0, 1).
    """
    ts = _check_thresholds(thresholds)
    m = _check_map(erf_map)
    peak = m.max()
    if peak <= 0:
        return {t: _NAN for t in ts}
    scaled = (np.log1p(m) / np.log1p(peak)) if transform else (m / peak)
    shape = m.shape
    centre = [n // 2 for n in shape] if centre is None else [int(c) for c in centre]
    if len(centre) != m.ndim or any(not 0 <= c < n for c, n in zip(centre, shape, strict=True)):
        raise ValueError(f"centre {tuple(centre)} is not a pixel of a map of shape {shape}")
    # Chebyshev distance of every pixel to the centre: the square of half-width i holds the pixels with d <= i.
    cheb = np.zeros(shape, dtype=np.int64)
    for a, n in enumerate(shape):
        view = [1] * m.ndim
        view[a] = n
        cheb = np.maximum(cheb, np.abs(np.arange(n) - centre[a]).reshape(view))
    half_max = max(1, int(cheb.max()))  # the half-width that covers the whole map
    inside = np.cumsum(np.bincount(cheb.ravel(), weights=scaled.ravel(), minlength=half_max + 1))
    total = inside[-1]
    result: dict[float, float] = {}
    for t in ts:
        # first half-width whose square holds more than t of the total, at least 1 (side 3)
        i = int(np.searchsorted(inside, t * total, side="right"))
        i = min(max(i, 1), half_max)
        area = 1
        for c, n in zip(centre, shape, strict=True):
            area *= min(c + i, n - 1) - max(c - i, 0) + 1
        result[t] = area / m.size
    return result


# ----------------------------------------------------------------------------------------------- moments


def moments(erf_map: ArrayLike) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Centre and standard deviation per axis of the map seen as a distribution (normalised to sum 1).

    Why: this is the moment-matching (maximum-likelihood) Gaussian fit: robust, closed form, defined for any
    map with mass, and exact for linear stacks (n single-channel 3x3 box layers give ``sqrt(2n/3)``, the
    n-fold box convolution; Luo et al., NeurIPS 2016). Two-pass variance (no ``E[x^2] - E[x]^2`` cancellation).
    Returns ``(centre, sigma)``; NaNs for a map without mass.
    """
    m = _check_map(erf_map)
    total = m.sum()
    if total <= 0:
        nans = (_NAN,) * m.ndim
        return nans, nans
    centre: list[float] = []
    sigma: list[float] = []
    for marginal in _marginals(m):
        p = marginal / total
        x = np.arange(marginal.size, dtype=np.float64)
        mu = float(p @ x)
        centre.append(mu)
        sigma.append(math.sqrt(float(p @ (x - mu) ** 2)))
    return tuple(centre), tuple(sigma)


def centre_of_mass_offset(erf_map: ArrayLike, expected_centre: Sequence[float]) -> tuple[float, ...]:
    """Centre of mass minus the expected centre (the unit's receptive-field centre), per axis.

    Why: an ERF off the centre of its theoretical receptive field reveals asymmetric padding (e.g. TF-"same")
    or uneven coverage by strided layers; centred metrics such as RepLKNet's squares (Ding et al., CVPR 2022)
    silently assume this offset is zero. NaNs for a map without mass.
    """
    m = _check_map(erf_map)
    expected = _check_point(expected_centre, m.ndim, "expected_centre")
    centre, _ = moments(m)
    return tuple(c - e for c, e in zip(centre, expected, strict=True))


# ----------------------------------------------------------------------------------------------- Gaussian fit


@dataclass(frozen=True)
class GaussianFit:
    """An axis-aligned Gaussian ``amplitude * prod_a exp(-(x_a - centre_a)^2 / (2 sigma_a^2))``, no offset.

    ``r2`` is ``1 - SS_res / SS_tot`` of the fitted surface over the **whole** map. A failed fit holds NaNs.
    """

    amplitude: float
    centre: tuple[float, ...]
    sigma: tuple[float, ...]
    r2: float

    @property
    def ok(self) -> bool:
        """Whether the fit succeeded (every number finite)."""
        return all(math.isfinite(v) for v in (self.amplitude, self.r2, *self.centre, *self.sigma))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: NaN becomes ``None``."""
        return {"sigma": [json_float(s) for s in self.sigma], "centre": [json_float(c) for c in self.centre],
                "amplitude": json_float(self.amplitude), "r2": json_float(self.r2)}

    @staticmethod
    def failed(ndim: int) -> GaussianFit:
        return GaussianFit(_NAN, (_NAN,) * ndim, (_NAN,) * ndim, _NAN)


def _gauss_factors(coords: Sequence[np.ndarray], centre: Sequence[float],
                   sigma: Sequence[float]) -> list[np.ndarray]:
    """Per-axis Gaussian factors, each shaped to broadcast along its own axis."""
    return [np.exp(-0.5 * ((x - c) / s) ** 2) for x, c, s in zip(coords, centre, sigma, strict=True)]


def _product(factors: Sequence[np.ndarray]) -> np.ndarray:
    out = factors[0]
    for f in factors[1:]:
        out = out * f
    return out


def _sampled(spans: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Per axis, the indices ``lo..hi`` of each span, every k-th one so that at most ``_MAX_FIT_POINTS`` remain.

    The same k on every axis. Every sample is an exact pixel of the map, so an exact Gaussian is still
    recovered exactly.
    """
    lengths = [hi - lo + 1 for lo, hi in spans]
    step = max(1, math.floor((math.prod(lengths) / _MAX_FIT_POINTS) ** (1.0 / len(spans))))
    while math.prod(-(-n // step) for n in lengths) > _MAX_FIT_POINTS:
        step += 1
    return [np.arange(lo, hi + 1, step) for lo, hi in spans]


def _mass_start(m: np.ndarray, centre_guess: tuple[float, ...] | None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Start from the moments; fit on the box holding 99.9 % of the mass, padded 25 % (at least 3 px)."""
    centre, sigma = moments(m)
    if centre_guess is not None:
        centre = centre_guess
    tail = (1.0 - _CROP_MASS) / 2
    spans: list[tuple[int, int]] = []
    for marginal in _marginals(m):
        cum = np.cumsum(marginal)
        lo = int(np.searchsorted(cum, tail * cum[-1], side="right"))
        hi = int(np.searchsorted(cum, (1.0 - tail) * cum[-1], side="left"))
        hi = min(max(hi, lo), marginal.size - 1)
        pad = max(_CROP_PAD_MIN, math.ceil(_CROP_PAD_FRACTION * (hi - lo + 1)))
        spans.append((max(lo - pad, 0), min(hi + pad, marginal.size - 1)))
    p0 = np.array([float(m.max()), *centre, *(max(s, 0.5) for s in sigma)])
    return p0, _sampled(spans)


def _peak_start(m: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Start from the peak: its position, and per axis sigma from the half-maximum run through it (FWHM / 2.355);
    fit on the peak +- (4 sigma + 3 px). Rescues narrow ERFs whose mass a wide, faint floor dominates."""
    peak = np.unravel_index(int(np.argmax(m)), m.shape)
    half = m[peak] / 2
    sigma: list[float] = []
    spans: list[tuple[int, int]] = []
    for a, n in enumerate(m.shape):
        line = m[tuple(slice(None) if b == a else peak[b] for b in range(m.ndim))] >= half
        lo = hi = peak[a]
        while lo > 0 and line[lo - 1]:
            lo -= 1
        while hi < n - 1 and line[hi + 1]:
            hi += 1
        s = max((hi - lo + 1) / (2 * math.sqrt(2 * math.log(2))), 0.5)
        reach = math.ceil(4 * s) + _CROP_PAD_MIN
        sigma.append(s)
        spans.append((max(peak[a] - reach, 0), min(peak[a] + reach, n - 1)))
    p0 = np.array([float(m[peak]), *(float(c) for c in peak), *sigma])
    return p0, _sampled(spans)


def _least_squares(m: np.ndarray, index: Sequence[np.ndarray], p0: np.ndarray) -> np.ndarray | None:
    """``curve_fit`` of the separable Gaussian on the pixels ``np.ix_(*index)``, analytic Jacobian; None if it
    fails or ends non-finite."""
    ndim = m.ndim
    coords = [idx.astype(np.float64).reshape([-1 if b == a else 1 for b in range(ndim)])
              for a, idx in enumerate(index)]
    ydata = m[np.ix_(*index)].ravel()

    def model(_x: np.ndarray, *params: float) -> np.ndarray:
        return params[0] * _product(_gauss_factors(coords, params[1:1 + ndim], params[1 + ndim:])).ravel()

    def jacobian(_x: np.ndarray, *params: float) -> np.ndarray:
        amp, mu, sig = params[0], params[1:1 + ndim], params[1 + ndim:]
        surface = _product(_gauss_factors(coords, mu, sig))
        d_mu, d_sig = [], []
        for x, c, s in zip(coords, mu, sig, strict=True):
            u = (x - c) / s
            d_mu.append((amp * surface * (u / s)).ravel())
            d_sig.append((amp * surface * (u * u / s)).ravel())
        return np.stack([surface.ravel(), *d_mu, *d_sig], axis=1)

    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", OptimizeWarning)
            popt, _ = curve_fit(model, np.zeros(ydata.size), ydata, p0=p0, jac=jacobian)
    except (RuntimeError, ValueError, FloatingPointError, np.linalg.LinAlgError):
        return None
    popt = np.asarray(popt, dtype=np.float64)
    popt[1 + ndim:] = np.abs(popt[1 + ndim:])
    if not np.all(np.isfinite(popt)) or popt[0] <= 0 or np.any(popt[1 + ndim:] == 0):
        return None
    return popt


def _residual(m: np.ndarray, popt: np.ndarray) -> float:
    """Sum of squared residuals of the Gaussian ``popt`` over the whole map."""
    ndim = m.ndim
    full = [_axis_coords(m.shape, a) for a in range(ndim)]
    with np.errstate(all="ignore"):
        fitted = popt[0] * _product(_gauss_factors(full, popt[1:1 + ndim], popt[1 + ndim:]))
        return float(((m - fitted) ** 2).sum())


def gaussian_fit(erf_map: ArrayLike, centre_guess: Sequence[float] | None = None) -> GaussianFit:
    """Least-squares axis-aligned Gaussian surface (``scipy.optimize.curve_fit``) with its R².

    Why: Kim et al. ("Dead pixel test using effective receptive field", 2021/2023) summarise an ERF by the
    sigmas of a fitted 2-D Gaussian and judge its shape by R²; a low R² flags a non-Gaussian ERF (dead
    pixels, checkerboards, holes). Works in 1-D, 2-D and 3-D.

    Decisions, documented:

    * **No offset.** ERF maps are non-negative and exactly zero outside the theoretical receptive field, so a
      constant floor has no meaning, and it would trade off against sigma for wide ERFs.
    * **Two starts**, the better one (smaller residual over the whole map) wins: the moments
      (:func:`moments`; ``centre_guess`` replaces their centre), fitted on the box holding 99.9 % of the mass
      padded by 25 % of its extent (at least 3 px); and the peak, with sigma from its half-maximum width,
      fitted on the peak +- (4 sigma + 3 px), which rescues a narrow ERF on a wide faint floor.
    * **Speed:** each window is subsampled evenly (every k-th pixel, same k on all axes) to at most 65,536
      points, and the model is evaluated separably with an analytic Jacobian: a 1024x1024 map fits in tens
      of milliseconds. Samples are exact pixels, so an exact Gaussian is recovered exactly. R² is computed
      on the whole map.
    * A map with **one positive pixel** returns its limit: sigma 0, the pixel's position and value, R² 1.
    * A **failed fit** returns NaNs (``GaussianFit.ok`` is False) and never raises: a flat map (all values
      equal, zero included: no shape to fit), optimiser errors, or non-finite results. Invalid input
      (NaN/inf, negative entries) still raises ``ValueError``, as everywhere in this module.
    """
    m = _check_map(erf_map)
    ndim = m.ndim
    guess = None if centre_guess is None else _check_point(centre_guess, ndim, "centre_guess")
    if m.max() <= m.min():
        return GaussianFit.failed(ndim)
    if np.count_nonzero(m) == 1:
        peak = np.unravel_index(int(np.argmax(m)), m.shape)
        return GaussianFit(float(m[peak]), tuple(float(c) for c in peak), (0.0,) * ndim, 1.0)
    best: tuple[float, np.ndarray] | None = None
    for p0, index in (_mass_start(m, guess), _peak_start(m)):
        popt = _least_squares(m, index, p0)
        if popt is None:
            continue
        ss_res = _residual(m, popt)
        if math.isfinite(ss_res) and (best is None or ss_res < best[0]):
            best = (ss_res, popt)
    if best is None:
        return GaussianFit.failed(ndim)
    ss_res, popt = best
    r2 = 1.0 - ss_res / float(((m - m.mean()) ** 2).sum())
    if not math.isfinite(r2):
        return GaussianFit.failed(ndim)
    return GaussianFit(float(popt[0]), tuple(float(c) for c in popt[1:1 + ndim]),
                       tuple(float(s) for s in popt[1 + ndim:]), r2)


# ----------------------------------------------------------------------------------------------- radial mass


def radial_mass(erf_map: ArrayLike, centre: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of the total mass within Euclidean distance r of ``centre``, for r = 0, 1, 2, ...

    Why: how far from the unit's receptive-field centre its ERF reaches, independent of any shape model
    (Luo et al., NeurIPS 2016: most of the mass sits in a small central part of the theoretical field).
    Returns ``(radii, cumulative)``: radii ``0, 1, ..., ceil(farthest pixel's distance)`` and the cumulative
    fraction, non-decreasing, ending at exactly 1.0. A pixel counts within r when its distance is at most
    r (up to 1e-9 for rounding). A map without mass gives NaN fractions.
    """
    m = _check_map(erf_map)
    c = _check_point(centre, m.ndim, "centre")
    dist2 = np.zeros(m.shape, dtype=np.float64)
    for a in range(m.ndim):
        dist2 = dist2 + (_axis_coords(m.shape, a) - c[a]) ** 2
    ring = np.maximum(np.ceil(np.sqrt(dist2) - _RADIUS_TOLERANCE), 0).astype(np.int64)
    radii = np.arange(int(ring.max()) + 1, dtype=np.float64)
    inside = np.cumsum(np.bincount(ring.ravel(), weights=m.ravel(), minlength=radii.size))
    total = inside[-1]
    if total <= 0:
        return radii, np.full(radii.size, _NAN)
    return radii, inside / total  # total / total is exactly 1.0


def radius_for_mass(erf_map: ArrayLike, centre: Sequence[float], fraction: float) -> float:
    """Smallest integer radius around ``centre`` holding at least ``fraction`` (in (0, 1]) of the mass.

    Why: one number for the ERF's reach (e.g. the radius holding 50 % or 90 % of the mass); see
    :func:`radial_mass`. NaN for a map without mass; ``ValueError`` for a fraction outside (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    radii, cumulative = radial_mass(erf_map, centre)
    return _radius_at(radii, cumulative, fraction)


def _radius_at(radii: np.ndarray, cumulative: np.ndarray, fraction: float) -> float:
    if not np.isfinite(cumulative[-1]):
        return _NAN
    k = int(np.searchsorted(cumulative, fraction, side="left"))
    return float(radii[min(k, radii.size - 1)])


# ----------------------------------------------------------------------------------------------- ERF / TRF


def _trf_per_axis(trf_size: float | Sequence[float | None] | None, ndim: int) -> list[float | None]:
    if trf_size is None or isinstance(trf_size, numbers.Real):
        sizes: list[float | None] = [trf_size] * ndim
    else:
        sizes = list(trf_size)
    if len(sizes) != ndim:
        raise ValueError(f"trf_size needs one size per axis ({ndim}), got {len(sizes)}")
    for r in sizes:
        if r is not None and not float(r) > 0:
            raise ValueError(f"a theoretical receptive-field size must be positive, got {r}")
    return sizes


def erf_trf_ratio_per_axis(sigma: Sequence[float],
                           trf_size: float | Sequence[float | None] | None) -> tuple[float, ...]:
    """Per axis, the ERF's Gaussian width ``2 sigma`` over the theoretical receptive-field size.

    Why: Luo et al. (NeurIPS 2016) show the ERF fills only a fraction of the TRF, a fraction that shrinks
    as depth grows. ``trf_size`` is one size per axis or one for all; an axis whose TRF is unknown (``None``)
    gives NaN. A TRF larger than the image (global) is used as given.
    """
    sigmas = [float(s) for s in sigma]
    sizes = _trf_per_axis(trf_size, len(sigmas))
    return tuple(_NAN if r is None else 2.0 * s / float(r) for s, r in zip(sigmas, sizes, strict=True))


def erf_trf_ratio(sigma: Sequence[float], trf_size: float | Sequence[float | None] | None) -> float:
    """``2 * geomean(sigma) / geomean(trf_size)``: one ERF/TRF ratio for all axes (see the per-axis version).

    The geometric mean makes the ratio that of the sides of squares with the same area as the ERF's
    ``2 sigma`` box and the TRF box. NaN when any axis' TRF is ``None`` or any sigma is NaN.
    """
    sigmas = [float(s) for s in sigma]
    sizes = _trf_per_axis(trf_size, len(sigmas))
    if not sigmas or any(r is None for r in sizes) or not all(math.isfinite(s) for s in sigmas):
        return _NAN
    geo_sigma = math.prod(sigmas) ** (1.0 / len(sigmas))
    geo_trf = math.prod(float(r) for r in sizes) ** (1.0 / len(sizes))  # type: ignore[arg-type]
    return 2.0 * geo_sigma / geo_trf


# ----------------------------------------------------------------------------------------------- summary


def summary(erf_map: ArrayLike, expected_centre: Sequence[float],
            trf_size: float | Sequence[float | None] | None,
            thresholds: Sequence[float] = DEFAULT_THRESHOLDS, square_centre: Sequence[int] | None = None
            ) -> dict[str, Any]:
    """Every metric of one ERF map in a JSON-safe dict (NaN becomes ``None``, keys are strings).

    Keys: ``area_ratio`` (``{str(t): ratio}``, :func:`area_ratios` with the log transform, its squares centred
    at ``square_centre``, default the map's centre), ``sigma`` and
    ``centre`` (:func:`moments`), ``fit`` (``sigma``, ``centre``, ``amplitude``, ``r2`` of
    :func:`gaussian_fit`), ``r2`` (the fit's R² again, at top level), ``erf_trf_ratio`` (from the moments'
    sigma: the maximum-likelihood Gaussian, defined whenever there is mass), ``com_offset``
    (:func:`centre_of_mass_offset`), ``radius_50`` and ``radius_90`` (:func:`radius_for_mass` around the
    expected centre, the unit's receptive-field centre). ``ValueError`` for NaN/inf entries, naming how many.
    """
    m = _check_map(erf_map)
    expected = _check_point(expected_centre, m.ndim, "expected_centre")
    ratios = area_ratios(m, thresholds, centre=square_centre)
    centre, sigma = moments(m)
    fit = gaussian_fit(m, centre_guess=expected)
    radii, cumulative = radial_mass(m, expected)
    return {
        "area_ratio": {str(t): json_float(v) for t, v in ratios.items()},
        "sigma": [json_float(s) for s in sigma],
        "centre": [json_float(c) for c in centre],
        "fit": fit.to_dict(),
        "r2": json_float(fit.r2),
        "erf_trf_ratio": json_float(erf_trf_ratio(sigma, trf_size)),
        "com_offset": [json_float(c - e) for c, e in zip(centre, expected, strict=True)],
        "radius_50": json_float(_radius_at(radii, cumulative, 0.5)),
        "radius_90": json_float(_radius_at(radii, cumulative, 0.9)),
    }

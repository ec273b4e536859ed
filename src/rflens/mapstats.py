"""How even a map over the input is: the numbers that foveation maps and spatial-bias maps share.

A map here is a non-negative array over the input's spatial axes (path counts, mean activations, the response
to a probe). Conventions, stated once (Alsallakh et al., "Mind the Pad", ICLR 2021, look at the same things):

* **asymmetry** per axis: ``0.5 * sum|m - flip(m, axis)| / sum(m)``, the share of the mass that has no mirror
  image across the centre line of that axis; 0 exactly when the map is mirror-symmetric along it.
* **side ratio** per axis: mass in the first half over mass in the second half (the middle index of an odd
  axis belongs to neither): < 1 when the map leans to the end (right, bottom), > 1 to the start.
* **border ratio**: mean over the outermost ring of pixels (one pixel wide) over mean of the central region
  (the middle half of every axis); < 1 when the border is seen less than the centre (foveation).
* **min/max ratio**: smallest over largest value.
* **worst region**: the window of a given size with the smallest mean (the most blind part of the input).
* **never read**: pixels with value 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def json_float(value: float) -> float | None:
    """``None`` for NaN/inf (JSON has no NaN), else a plain Python float."""
    value = float(value)
    return value if math.isfinite(value) else None


def _as_map(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.ndim < 1 or m.size == 0:
        raise ValueError(f"a map needs at least one axis and one value, got shape {m.shape}")
    return m


def asymmetry(m: np.ndarray) -> tuple[float, ...]:
    """Per axis, the share of the mass with no mirror image across the centre line (0 = symmetric)."""
    m = _as_map(m)
    total = float(np.abs(m).sum())
    if total == 0:
        return (0.0,) * m.ndim
    return tuple(float(0.5 * np.abs(m - np.flip(m, axis)).sum() / total) for axis in range(m.ndim))


def side_ratio(m: np.ndarray) -> tuple[float, ...]:
    """Per axis, mass in the first half over mass in the second half (inf when the second half is empty)."""
    m = _as_map(m)
    out = []
    for axis in range(m.ndim):
        n = m.shape[axis]
        first = float(np.take(m, range(n // 2), axis=axis).sum())
        second = float(np.take(m, range(n - n // 2, n), axis=axis).sum())
        out.append(first / second if second else (1.0 if first == 0 else float("inf")))
    return tuple(out)


def central_mean(m: np.ndarray) -> float:
    """Mean of the central region: the middle half of every axis (never the outermost pixels of an axis of 3 or
    more)."""
    m = _as_map(m)
    return float(m[tuple(slice(max(n // 4, 1), n - max(n // 4, 1)) if n >= 3 else slice(None)
                         for n in m.shape)].mean())


def border_ratio(m: np.ndarray) -> float:
    """Mean of the outermost one-pixel ring over the mean of the central region (middle half of every axis);
    nan when the centre is all zero or the map is too small to have both (an axis under 3 pixels)."""
    m = _as_map(m)
    if min(m.shape) < 3:
        return float("nan")
    ring = np.ones(m.shape, dtype=bool)
    ring[tuple(slice(1, n - 1) for n in m.shape)] = False
    c = central_mean(m)
    return float(m[ring].mean()) / c if c else float("nan")


def min_max_ratio(m: np.ndarray) -> float:
    m = _as_map(m)
    top = float(m.max())
    return float(m.min()) / top if top else float("nan")


def worst_region(m: np.ndarray, size: int | Sequence[int]) -> tuple[tuple[int, ...], float]:
    """Start index and mean of the window of ``size`` (clipped to the map) with the smallest mean; ties go to
    the first in C order."""
    m = _as_map(m)
    size = (size,) * m.ndim if isinstance(size, int) else tuple(size)
    size = tuple(max(1, min(int(s), n)) for s, n in zip(size, m.shape, strict=True))
    # every window summed on its own, in the same order (cumulative sums would round ties apart)
    sums = np.lib.stride_tricks.sliding_window_view(m, size).sum(axis=tuple(range(m.ndim, 2 * m.ndim)))
    flat = int(np.argmin(sums))
    start = tuple(int(i) for i in np.unravel_index(flat, sums.shape))
    return start, float(sums.flat[flat]) / float(np.prod(size))


@dataclass(frozen=True)
class MapStats:
    """The evenness numbers of one map (see the module docstring for their definitions)."""

    asymmetry: tuple[float, ...]
    side_ratio: tuple[float, ...]
    border_ratio: float
    min_max_ratio: float
    never_read: int
    worst_region: tuple[int, ...]  # start index of the worst window
    worst_region_size: tuple[int, ...]
    worst_region_mean: float  # relative to the map's mean

    def to_dict(self) -> dict[str, Any]:
        return {"asymmetry": list(self.asymmetry), "side_ratio": [json_float(x) for x in self.side_ratio],
                "border_ratio": json_float(self.border_ratio), "min_max_ratio": json_float(self.min_max_ratio),
                "never_read": self.never_read, "worst_region": {"start": list(self.worst_region),
                                                                "size": list(self.worst_region_size),
                                                                "relative_mean": json_float(self.worst_region_mean)}}


def map_stats(m: np.ndarray, region: int | Sequence[int] | None = None) -> MapStats:
    """Every evenness number of ``m``; ``region``: the worst-region window (default: an eighth of every axis)."""
    m = _as_map(m)
    size = tuple(max(1, n // 8) for n in m.shape) if region is None else \
        ((region,) * m.ndim if isinstance(region, int) else tuple(region))
    start, mean = worst_region(m, size)
    size = tuple(max(1, min(int(s), n)) for s, n in zip(size, m.shape, strict=True))
    overall = float(m.mean())
    return MapStats(asymmetry(m), side_ratio(m), border_ratio(m), min_max_ratio(m), int(np.count_nonzero(m == 0)),
                    start, size, mean / overall if overall else float("nan"))

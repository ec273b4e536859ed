"""Per-axis arithmetic of spatial ops, exact and free of torch.

Two views of one op along one spatial axis:

* **Index maps** on the infinite line (the Distill convention, Araujo et al. 2019): output unit ``u`` reads
  input units ``lo(u) .. hi(u)``. Padding positions are positions like any other, so the numbers do not
  depend on the image size. Every op rflens understands has index maps of the form
  ``f(u) = base[u mod q] + step * (u div q)`` (:class:`QuasiAffine`): affine for convolutions and pooling
  (q = 1), periodic for upsampling, where the stride becomes the fraction ``step / q``.
* **Taps** at a concrete size: for each output unit, the exact input indices it reads (``-1`` where it
  reads padding), the ground truth for the support of one unit at the borders.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

Taps = list[np.ndarray]  # one int64 array of length n_out per tap; -1 marks a tap that reads nothing


def centre_unit(sizes: Sequence[int]) -> tuple[int, ...]:
    """The unit ERF protocols probe: index ``n // 2`` on every axis (RepLKNet's ``h // 2``, Luo's centre)."""
    return tuple(n // 2 for n in sizes)


@dataclass(frozen=True)
class QuasiAffine:
    """An integer map ``f(u) = base[u mod period] + step * (u div period)``, exact for every integer u."""

    period: int
    step: int
    base: tuple[int, ...]

    @staticmethod
    def affine(slope: int, offset: int) -> QuasiAffine:
        return QuasiAffine(1, slope, (offset,))

    @staticmethod
    def floor_div(a: int, b: int, c: int) -> QuasiAffine:
        """``floor((a*u + b) / c)`` for c > 0."""
        g = math.gcd(a, c) or c
        period, step = c // g, a // g
        return QuasiAffine(period, step, tuple((a * u + b) // c for u in range(period)))

    @staticmethod
    def ceil_div(a: int, b: int, c: int) -> QuasiAffine:
        """``ceil((a*u + b) / c)`` for c > 0."""
        return QuasiAffine.floor_div(a, b + c - 1, c)

    @staticmethod
    def sample(fn: Callable[[int], int], period: int, step: int) -> QuasiAffine:
        """Tabulate ``fn``, which must satisfy ``fn(u + period) == fn(u) + step``."""
        return QuasiAffine(period, step, tuple(fn(u) for u in range(period)))

    def __call__(self, u: int) -> int:
        q, r = divmod(u, self.period)
        return self.base[r] + self.step * q

    @property
    def slope(self) -> Fraction:
        return Fraction(self.step, self.period)

    def shifted(self, delta: int) -> QuasiAffine:
        return QuasiAffine(self.period, self.step, tuple(b + delta for b in self.base))

    def compose(self, inner: QuasiAffine) -> QuasiAffine:
        """``u -> self(inner(u))``: the index map of two ops in sequence."""
        # inner advances by inner.step every inner.period units; self repeats every self.period units.
        k = self.period // math.gcd(inner.step, self.period) if inner.step else 1
        period = inner.period * k
        step = self.step * (inner.step * k // self.period)
        return QuasiAffine(period, step, tuple(self(inner(u)) for u in range(period)))


def pointwise(fns: Sequence[QuasiAffine], pick: Callable[..., int]) -> QuasiAffine:
    """Pointwise min or max of maps with the same slope (the union of several paths)."""
    slope = fns[0].slope
    if any(f.slope != slope for f in fns):
        raise ValueError("maps with different slopes")
    if len(fns) == 1:
        return fns[0]
    period = math.lcm(*(f.period for f in fns))
    step = int(slope * period)
    return QuasiAffine(period, step, tuple(pick(f(u) for f in fns) for u in range(period)))


IDENTITY = QuasiAffine.affine(1, 0)


@dataclass(frozen=True)
class Window:
    """A sliding window along one axis: convolution, pooling, padding, slicing.

    Output unit u reads input units ``u*stride - pad_left + t*dilation`` for t in 0..kernel-1. Padding and
    slicing are windows of kernel 1 (slicing ``a::b`` is stride b and pad_left -a). ``pad_right`` only decides
    the output size; ``ceil_mode`` is PyTorch's pooling rule. ``mode`` says what a tap outside the input reads:
    nothing (``"zeros"``, the captured form of every padding; padding modes of a model are separate
    :class:`Pad` reads), border pixels by a padding mode (``"reflect"``, ``"replicate"``, ``"circular"``), or
    nothing with the other taps re-weighted by kernel / valid taps (``"partial"``, partial-convolution padding,
    Liu et al. 2018). Modes other than zeros appear in what-if graphs (:func:`rflens.padding.with_padding_mode`).
    """

    kernel: int = 1
    stride: int = 1
    pad_left: int = 0
    pad_right: int = 0
    dilation: int = 1
    ceil_mode: bool = False
    mode: str = "zeros"

    @property
    def extent(self) -> int:
        """Span of one window in input units: d*(k-1) + 1."""
        return self.dilation * (self.kernel - 1) + 1

    def output_size(self, n: int) -> int:
        span = n + self.pad_left + self.pad_right - self.extent
        if not self.ceil_mode:
            return max(span // self.stride + 1, 0)
        out = -(-span // self.stride) + 1
        # PyTorch: the last window must start inside the input or the left padding.
        if (out - 1) * self.stride >= n + self.pad_left:
            out -= 1
        return max(out, 0)

    def leftover(self, n: int) -> int:
        """Trailing positions of the padded input that no window reaches (Mind the Pad)."""
        return (n + self.pad_left + self.pad_right - self.extent) % self.stride

    def maps(self) -> tuple[QuasiAffine, QuasiAffine]:
        lo = QuasiAffine.affine(self.stride, -self.pad_left)
        return lo, lo.shifted(self.extent - 1)

    def taps(self, n_in: int, n_out: int) -> Taps:
        u = np.arange(n_out, dtype=np.int64)
        mode = "constant" if self.mode in ("zeros", "partial") else self.mode
        return [_valid(padded_index(u * self.stride - self.pad_left + t * self.dilation, n_in, mode), n_in)
                for t in range(self.kernel)]

    def tap_weights(self, n_in: int, n_out: int) -> np.ndarray | None:
        """Per output unit, the factor its taps are scaled by: kernel / taps inside the input for partial
        convolution, None (all 1) otherwise."""
        if self.mode != "partial":
            return None
        valid = sum((idx >= 0).astype(np.int64) for idx in self.taps(n_in, n_out))
        return np.where(valid > 0, self.kernel / np.maximum(valid, 1), 0.0)

    def coverage(self) -> tuple[int, ...]:
        """How many windows read an interior input index i, for i mod stride = 0, 1, ...: floor(k/s) or
        ceil(k/s) with dilation 1, uniform iff k mod s == 0 (Odena et al., Distill 2016)."""
        return residue_counts(self.kernel, self.stride, self.dilation, self.pad_left)


@dataclass(frozen=True)
class Transposed:
    """Transposed convolution along one axis: input unit i writes outputs ``i*stride - pad + t*dilation``."""

    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    output_padding: int = 0

    def output_size(self, n: int) -> int:
        k_ext = self.dilation * (self.kernel - 1) + 1
        return (n - 1) * self.stride - 2 * self.padding + k_ext + self.output_padding

    def maps(self) -> tuple[QuasiAffine, QuasiAffine]:
        k_ext = self.dilation * (self.kernel - 1)
        # inputs i with i*s - p <= u <= i*s - p + k_ext (their tap positions are a subset of that span)
        lo = QuasiAffine.ceil_div(1, self.padding - k_ext, self.stride)
        hi = QuasiAffine.floor_div(1, self.padding, self.stride)
        return lo, hi

    def coverage(self) -> tuple[int, ...]:
        """How many input units an interior output index o receives, for o mod stride = 0, 1, ...: uneven
        when k mod s != 0 (the checkerboard of transposed convolutions, Odena et al., Distill 2016)."""
        return residue_counts(self.kernel, self.stride, self.dilation, self.padding)

    def taps(self, n_in: int, n_out: int) -> Taps:
        u = np.arange(n_out, dtype=np.int64)
        taps = []
        for t in range(self.kernel):
            num = u + self.padding - t * self.dilation
            i = np.where(num % self.stride == 0, num // self.stride, -1)
            taps.append(_valid(i, n_in))
        return taps


def residue_counts(kernel: int, stride: int, dilation: int, offset: int) -> tuple[int, ...]:
    """For index i = 0 .. stride-1 (mod stride): the taps t in 0..kernel-1 with t*dilation = i + offset
    (mod stride), i.e. how many windows of a strided window op meet an interior index of that residue."""
    counts = [0] * stride
    for t in range(kernel):
        counts[(t * dilation - offset) % stride] += 1
    return tuple(counts)


def _valid(idx: np.ndarray, n: int) -> np.ndarray:
    return np.where((idx >= 0) & (idx < n), idx, -1)


@dataclass(frozen=True)
class Pad:
    """Explicit padding (negative amounts crop). On the infinite line every mode is a shift by ``left``;
    the concrete taps follow the mode (reflect and replicate read border pixels, circular wraps). ``same``:
    (window extent, stride) when the amounts are TensorFlow's "same" padding, which the model's code computes
    from the input size at every call (timm's ``Conv2dSame``): :meth:`at` recomputes them for another size."""

    left: int
    right: int
    mode: str = "constant"
    same: tuple[int, int] | None = None

    def output_size(self, n: int) -> int:
        return n + self.left + self.right

    def fits(self, n: int) -> bool:
        """Whether PyTorch accepts this padding of n units: reflection needs pads < n, wrapping pads <= n."""
        if self.mode == "reflect":
            return max(self.left, self.right) < n
        if self.mode == "circular":
            return max(self.left, self.right) <= n
        return True

    def maps(self) -> tuple[QuasiAffine, QuasiAffine]:
        m = QuasiAffine.affine(1, -self.left)
        return m, m

    def at(self, n: int) -> Pad:
        """This padding for an input of n units: TF-"same" amounts are recomputed, fixed ones kept."""
        if self.same is None:
            return self
        return Pad(*same_pads(n, *self.same), self.mode, self.same)

    def taps(self, n_in: int, n_out: int) -> Taps:
        return [_valid(padded_index(np.arange(n_out, dtype=np.int64) - self.left, n_in, self.mode), n_in)]


def same_pads(n: int, extent: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding of n units for a window of ``extent`` (d*(k-1)+1) and ``stride``:
    total = max((ceil(n/s) - 1)*s + extent - n, 0), the smaller half before (timm's ``pad_same``)."""
    total = max((-(-n // stride) - 1) * stride + extent - n, 0)
    return total // 2, total - total // 2


def padded_index(i: np.ndarray, n: int, mode: str) -> np.ndarray:
    """The input index that position i of a padded axis of n units reads in PyTorch's padding ``mode``
    (constant: i itself, out of range where it reads the constant)."""
    if mode == "constant":
        return i
    if mode == "reflect":
        period = 2 * (n - 1) if n > 1 else 1
        r = np.mod(i, period)
        return np.where(r < n, r, period - r)
    if mode == "replicate":
        return np.clip(i, 0, n - 1)
    if mode == "circular":
        return np.mod(i, n)
    raise ValueError(f"unknown padding mode {mode!r}")


@dataclass(frozen=True)
class Resample:
    """Size-changing op whose reads are given by index maps and concrete taps measured elsewhere
    (upsampling, adaptive pooling, pixel shuffle, roll, broadcasting from one unit).

    ``rescale(n_in)`` says what the op does on an input of another size: ``(n_out, read)``, where ``n_out`` is
    ``None`` when the other inputs of the node set the size (broadcasting) and ``read`` may be ``None`` (the op
    became global). It is ``None`` when the op's output size came from Python code rflens cannot see (an
    interpolation to an explicit size)."""

    lo: QuasiAffine
    hi: QuasiAffine
    concrete: Callable[[int, int], Taps]
    rescale: Callable[[int], tuple[int | None, Resample | None]] | None = None

    def maps(self) -> tuple[QuasiAffine, QuasiAffine]:
        return self.lo, self.hi

    @property
    def broadcast(self) -> bool:
        """Every output unit reads the same single unit (a pooled map broadcast back)."""
        return self.lo.slope == 0

    def taps(self, n_in: int, n_out: int) -> Taps:
        return self.concrete(n_in, n_out)


def upsample_maps(mode: str, scale: Fraction, align_corners: bool, n_in: int, n_out: int):
    """Index maps of PyTorch interpolation on the infinite line. ``scale`` is the source step per output unit
    (input/output), exact. Taps with weight zero are not reads (a linear sample that lands on a pixel reads
    one pixel only), matching the gradient."""
    if mode in ("nearest", "nearest-exact"):
        a, c = scale.numerator, scale.denominator
        b = 0 if mode == "nearest" else a  # nearest-exact samples at (u + 1/2) * scale
        if mode == "nearest-exact":
            a, c = 2 * a, 2 * c
        f = QuasiAffine.floor_div(a, b, c)
        return f, f
    if align_corners:
        src = Fraction(n_in - 1, n_out - 1) if n_out > 1 else Fraction(0)
        a, b, c = src.numerator, 0, src.denominator
    else:  # src = (u + 1/2) * scale - 1/2
        a, b, c = 2 * scale.numerator, scale.numerator - scale.denominator, 2 * scale.denominator
    lo, hi = QuasiAffine.floor_div(a, b, c), QuasiAffine.ceil_div(a, b, c)
    if mode in ("linear", "bilinear", "trilinear"):
        return lo, hi
    if mode == "bicubic":  # taps floor-1 .. floor+2; an exact hit reads only that pixel
        period = lo.period

        def first(u: int) -> int:
            return lo(u) if lo(u) == hi(u) else lo(u) - 1

        def last(u: int) -> int:
            return lo(u) if lo(u) == hi(u) else lo(u) + 2

        return QuasiAffine.sample(first, period, lo.step), QuasiAffine.sample(last, period, lo.step)
    raise ValueError(f"unknown interpolation mode {mode!r}")


def adaptive_maps(n_in: int, n_out: int) -> tuple[QuasiAffine, QuasiAffine]:
    """Adaptive pooling window i: [floor(i*n_in/n_out), ceil((i+1)*n_in/n_out) - 1]."""
    return QuasiAffine.floor_div(n_in, 0, n_out), QuasiAffine.ceil_div(n_in, n_in, n_out).shifted(-1)


def adaptive_read(n_in: int, n_out: int) -> Resample | None:
    """Adaptive pooling from n_in to n_out units; ``None`` when one window covers the whole axis (global)."""
    if n_out == 1 and n_in > 1:
        return None
    return Resample(*adaptive_maps(n_in, n_out), adaptive_taps, lambda m: (n_out, adaptive_read(m, n_out)))


def adaptive_taps(n_in: int, n_out: int) -> Taps:
    i = np.arange(n_out, dtype=np.int64)
    start = (i * n_in) // n_out
    end = -((-(i + 1) * n_in) // n_out)
    width = int((end - start).max()) if n_out else 0
    return [np.where(start + t < end, start + t, -1) for t in range(width)]


def block_mix(m: int) -> Resample:
    """Every unit reads its whole aligned block of m units (attention inside non-overlapping windows)."""
    lo = QuasiAffine(m, m, (0,) * m)

    def taps(n_in: int, n_out: int) -> Taps:
        u = np.arange(n_out, dtype=np.int64)
        return [_valid((u // m) * m + t, n_in) for t in range(m)]

    return Resample(lo, lo.shifted(m - 1), taps)

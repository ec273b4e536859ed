"""Hypothesis strategy of small random CNN architectures (independent of rflens).

``architectures(dims=(1, 2, 3), allow_upsampling=True, max_blocks=6)`` draws an :class:`Architecture`:

* ``.ndim`` (1, 2 or 3) and ``.input_shape`` ``(1, C, *spatial)``;
* ``.build()`` -> a fresh ``nn.Module`` (eval mode, random init seeded by ``.seed``) made of real ops
  (ReLU & co., batch norm, max pools...): give it to the code under test as is, and
  ``oracle.linearise(arch.build())`` to the gradient oracle;
* ``.checkpoints``: ``named_modules()`` names of every block output (``blocks.0`` ... ``blocks.{n-1}``;
  the last one is the final block, whose output is the model output); ``.output_shapes[name]`` is the
  tensor shape there;
* ``.has_upsampling``: True when some block makes strides fractional (``nn.Upsample`` or a transposed conv
  with stride > 1); ``.integer_checkpoints``: the checkpoints before the first such block (integer
  stride and padding: ``oracle.oracle_rf`` applies there);
* ``.describe()``: one line per block (two-branch blocks list their branches), also used as ``repr``.

Blocks: conv (kernel 1..5 per axis, stride 1..3, dilation 1..3, padding 0..k//2 or ``'same'`` at stride 1,
padding modes zeros/reflect/replicate/circular, groups 1 or C, optional batch norm and activation);
max pool (kernel 1..4, stride 1..3, padding <= k//2, dilation, ceil_mode) and avg pool (ceil_mode,
count_include_pad); explicit pad modules (Constant/Reflection/Replication/CircularPad{1,2,3}d, asymmetric
amounts valid for the size); transposed conv (kernel >= stride, output_padding < stride, dilation 1 so
that every output position except an ``output_padding`` tail reads some input); nn.Upsample (nearest x2 /
x3, linear/bilinear/trilinear x2 with ``align_corners=False``); strided slicing ``x[..., a::b]`` on one
spatial axis (:class:`StridedSlice`); two-branch blocks (:class:`TwoBranch`, branches ``a`` (0..2 ops,
empty = identity) and ``b`` (1..2 ops) of conv/pool/pad/crop-slice with the **same total stride** per axis
(one conv or pool of each branch carries it, as in real networks; different strides would make the RF
depend on the unit), outputs cropped by slicing to a common size at drawn offsets, merged by ADD (a 1x1
conv matches channels when needed) or channel CONCAT; channels may reach 8 after a CONCAT).

Geometry notes for whoever compares against the oracle: reflect/replicate/circular padding makes border
units read mirrored or wrapped pixels (``oracle.gradient_support`` honours that by default); transposed
convs with stride > 1 and ``nn.Upsample`` give rational strides (``.has_upsampling``); output units may
read nothing at all (a strided transposed conv's ``output_padding`` tail, or a unit that only reads
padding), in which case their support is empty.

Sizes stay small (1-D <= 96, 2-D <= 48, 3-D <= 12 per axis; 1..4 channels); parameters are drawn within
what the current size allows (a kernel that would not fit shrinks its dilation, then its size), and the
rare draws that still fail to run or drop a size below 1 are rejected with ``assume``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
from hypothesis import assume
from hypothesis import strategies as st

__all__ = [
    "Architecture",
    "ArchNet",
    "StridedSlice",
    "TwoBranch",
    "architectures",
]

CAPS = {1: 96, 2: 48, 3: 12}
MIN_START = {1: 12, 2: 8, 3: 5}
MAX_CHANNELS = 4

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_TCONV = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVGPOOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_PADS = {
    "constant": {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d},
    "reflect": {1: nn.ReflectionPad1d, 2: nn.ReflectionPad2d, 3: nn.ReflectionPad3d},
    "replicate": {1: nn.ReplicationPad1d, 2: nn.ReplicationPad2d, 3: nn.ReplicationPad3d},
    "circular": {1: nn.CircularPad1d, 2: nn.CircularPad2d, 3: nn.CircularPad3d},
}
_LINEAR_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}
_ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU, "gelu": nn.GELU,
         "hardswish": nn.Hardswish}


# --------------------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------------------


class StridedSlice(nn.Module):
    """``x[..., start::step]`` on spatial axis ``axis`` (0-based among the spatial axes)."""

    def __init__(self, axis: int, start: int, step: int):
        super().__init__()
        self.axis, self.start, self.step = axis, start, step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = (slice(None),) * (2 + self.axis) + (slice(self.start, None, self.step),)
        return x[index]

    def extra_repr(self) -> str:
        return f"axis={self.axis}, start={self.start}, step={self.step}"


class TwoBranch(nn.Module):
    """``merge(crop(a(x)), crop(b(x)))``; crop = ``y[..., o:o+m]`` per spatial axis where needed."""

    def __init__(self, a: nn.Module, b: nn.Module, merge: str, crop_a, crop_b, size, act: nn.Module | None):
        super().__init__()
        self.a, self.b = a, b
        self.merge = merge
        self.crop_a, self.crop_b, self.size = tuple(crop_a), tuple(crop_b), tuple(size)
        self.act = act

    @staticmethod
    def _crop(y: torch.Tensor, offsets, size) -> torch.Tensor:
        for axis, (o, m) in enumerate(zip(offsets, size, strict=True)):
            if o != 0 or y.shape[2 + axis] != m:
                y = y[(slice(None),) * (2 + axis) + (slice(o, o + m),)]
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ya = self._crop(self.a(x), self.crop_a, self.size)
        yb = self._crop(self.b(x), self.crop_b, self.size)
        y = ya + yb if self.merge == "add" else torch.cat([ya, yb], dim=1)
        return y if self.act is None else self.act(y)

    def extra_repr(self) -> str:
        return f"merge={self.merge}, crop_a={self.crop_a}, crop_b={self.crop_b}, size={self.size}"


class ArchNet(nn.Module):
    """``blocks`` applied in order; block ``i`` is the module named ``blocks.i``."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


# --------------------------------------------------------------------------------------------------------
# op specifications
# --------------------------------------------------------------------------------------------------------


def _fmt(t) -> str:
    if isinstance(t, tuple) and len(set(t)) == 1:
        return str(t[0])
    return str(t)


@dataclass(frozen=True)
class ConvOp:
    cin: int
    cout: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    padding_mode: str
    bn: bool
    act: str | None

    fractional = False

    def module(self, ndim: int) -> nn.Module:
        layers: list[nn.Module] = [_CONV[ndim](self.cin, self.cout, self.kernel, stride=self.stride,
                                               padding=self.padding, dilation=self.dilation,
                                               groups=self.groups, bias=not self.bn,
                                               padding_mode=self.padding_mode)]
        if self.bn:
            layers.append(_BN[ndim](self.cout))
        if self.act:
            layers.append(_ACTS[self.act]())
        return nn.Sequential(*layers)

    def describe(self) -> str:
        extra = "".join([" +BN" if self.bn else "", f" +{self.act}" if self.act else ""])
        mode = "" if self.padding_mode == "zeros" else f" mode={self.padding_mode}"
        return (f"conv {self.cin}->{self.cout} k={_fmt(self.kernel)} s={_fmt(self.stride)} "
                f"p={self.padding if isinstance(self.padding, str) else _fmt(self.padding)} "
                f"d={_fmt(self.dilation)} g={self.groups}{mode}{extra}")


@dataclass(frozen=True)
class TConvOp:
    cin: int
    cout: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    groups: int
    act: str | None

    @property
    def fractional(self) -> bool:
        return any(s > 1 for s in self.stride)

    def module(self, ndim: int) -> nn.Module:
        layers: list[nn.Module] = [_TCONV[ndim](self.cin, self.cout, self.kernel, stride=self.stride,
                                                padding=self.padding, output_padding=self.output_padding,
                                                groups=self.groups)]
        if self.act:
            layers.append(_ACTS[self.act]())
        return nn.Sequential(*layers)

    def describe(self) -> str:
        return (f"tconv {self.cin}->{self.cout} k={_fmt(self.kernel)} s={_fmt(self.stride)} "
                f"p={_fmt(self.padding)} op={_fmt(self.output_padding)} g={self.groups}"
                + (f" +{self.act}" if self.act else ""))


@dataclass(frozen=True)
class PoolOp:
    kind: str  # "max" | "avg"
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    ceil_mode: bool
    count_include_pad: bool

    fractional = False

    def module(self, ndim: int) -> nn.Module:
        if self.kind == "max":
            return _MAXPOOL[ndim](self.kernel, stride=self.stride, padding=self.padding,
                                  dilation=self.dilation, ceil_mode=self.ceil_mode)
        return _AVGPOOL[ndim](self.kernel, stride=self.stride, padding=self.padding,
                              ceil_mode=self.ceil_mode, count_include_pad=self.count_include_pad)

    def describe(self) -> str:
        extra = f" d={_fmt(self.dilation)}" if self.kind == "max" else f" count_pad={self.count_include_pad}"
        return (f"{self.kind}pool k={_fmt(self.kernel)} s={_fmt(self.stride)} p={_fmt(self.padding)}{extra}"
                f" ceil={self.ceil_mode}")


@dataclass(frozen=True)
class PadOp:
    mode: str
    amounts: tuple[tuple[int, int], ...]  # per spatial axis (before, after), in axis order
    value: float = 0.0

    fractional = False

    def torch_padding(self) -> tuple[int, ...]:
        out: list[int] = []
        for before, after in reversed(self.amounts):
            out += [before, after]
        return tuple(out)

    def module(self, ndim: int) -> nn.Module:
        cls = _PADS[self.mode][ndim]
        if self.mode == "constant":
            return cls(self.torch_padding(), self.value)
        return cls(self.torch_padding())

    def describe(self) -> str:
        value = f" value={self.value}" if self.mode == "constant" else ""
        return f"pad {self.mode} (before, after) per axis={self.amounts}{value}"


@dataclass(frozen=True)
class UpsampleOp:
    mode: str
    scale: int

    fractional = True

    def module(self, ndim: int) -> nn.Module:
        if self.mode == "nearest":
            return nn.Upsample(scale_factor=self.scale, mode="nearest")
        return nn.Upsample(scale_factor=self.scale, mode=self.mode, align_corners=False)

    def describe(self) -> str:
        return f"upsample {self.mode} x{self.scale}"


@dataclass(frozen=True)
class SliceOp:
    axis: int
    start: int
    step: int

    fractional = False

    def module(self, ndim: int) -> nn.Module:
        return StridedSlice(self.axis, self.start, self.step)

    def describe(self) -> str:
        return f"slice axis {self.axis} [{self.start}::{self.step}]"


@dataclass(frozen=True)
class TwoBranchOp:
    a: tuple
    b: tuple
    merge: str
    crop_a: tuple[int, ...]
    crop_b: tuple[int, ...]
    size: tuple[int, ...]
    act: str | None

    @property
    def fractional(self) -> bool:
        return any(op.fractional for op in self.a + self.b)

    def module(self, ndim: int) -> nn.Module:
        a = nn.Sequential(*[op.module(ndim) for op in self.a])
        b = nn.Sequential(*[op.module(ndim) for op in self.b])
        return TwoBranch(a, b, self.merge, self.crop_a, self.crop_b, self.size,
                         _ACTS[self.act]() if self.act else None)

    def describe(self) -> str:
        lines = [f"two-branch {self.merge.upper()} -> crop to {self.size} (offsets a={self.crop_a}, "
                 f"b={self.crop_b})" + (f" +{self.act}" if self.act else "")]
        lines += [f"    a.{i}: {op.describe()}" for i, op in enumerate(self.a)] or ["    a: identity"]
        lines += [f"    b.{i}: {op.describe()}" for i, op in enumerate(self.b)]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# architecture
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Architecture:
    ndim: int
    input_shape: tuple[int, ...]
    blocks: tuple
    shapes: tuple[tuple[int, ...], ...]  # output shape of each block
    seed: int = 0

    def build(self) -> nn.Module:
        """Fresh module (eval mode), parameters initialised from ``seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = ArchNet([op.module(self.ndim) for op in self.blocks])
        return model.eval()

    @property
    def checkpoints(self) -> list[str]:
        return [f"blocks.{i}" for i in range(len(self.blocks))]

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(zip(self.checkpoints, self.shapes, strict=True))

    @property
    def has_upsampling(self) -> bool:
        return any(op.fractional for op in self.blocks)

    @property
    def integer_checkpoints(self) -> list[str]:
        out = []
        for name, op in zip(self.checkpoints, self.blocks, strict=True):
            if op.fractional:
                break
            out.append(name)
        return out

    def describe(self) -> str:
        lines = [f"{self.ndim}-D input {self.input_shape} (seed {self.seed})"]
        for name, op, shape in zip(self.checkpoints, self.blocks, self.shapes, strict=True):
            lines.append(f"  {name}: {op.describe()}  -> {shape}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return "Architecture(\n" + self.describe() + "\n)"


# --------------------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------------------


def _out_shape(op, ndim: int, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Run the op on the meta device (shape checks only; a CPU run if some meta kernel is missing); None if
    PyTorch refuses the combination or a size drops below 1. The strategy's own test runs the real thing."""
    try:
        try:
            with torch.device("meta"), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y = op.module(ndim).eval()(torch.zeros(shape))
        except NotImplementedError:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                y = op.module(ndim).eval()(torch.zeros(shape))
    except (RuntimeError, ValueError):
        return None
    if y.dim() != len(shape) or any(n < 1 for n in y.shape):
        return None
    return tuple(y.shape)


def _per_axis(draw, ndim: int, strategy) -> tuple:
    if draw(st.booleans()):
        v = draw(strategy)
        return (v,) * ndim
    return tuple(draw(strategy) for _ in range(ndim))


def _fit(n: int, k: int, d: int, p: int) -> tuple[int, int, int]:
    """Shrink dilation, then kernel, until the window fits the padded size."""
    while d * (k - 1) + 1 > n + 2 * p:
        if d > 1:
            d -= 1
        else:
            k -= 1
            p = min(p, k // 2)
    return k, d, p


_STRIDES = st.sampled_from([1, 1, 1, 2, 2, 3])
_DILATIONS = st.sampled_from([1, 1, 1, 2, 3])


def _draw_act(draw) -> str | None:
    return draw(st.sampled_from(["relu", "relu", "relu", None, None, "relu6", "leaky_relu", "silu", "gelu",
                                 "hardswish"]))


def _draw_conv(draw, ndim: int, shape, cout: int | None = None, pointwise: bool = False,
               stride: tuple[int, ...] | None = None) -> ConvOp:
    cin, sizes = shape[1], shape[2:]
    if pointwise:
        k, s, d, p = (1,) * ndim, (1,) * ndim, (1,) * ndim, (0,) * ndim
    else:
        k = _per_axis(draw, ndim, st.integers(1, 5))
        s = _per_axis(draw, ndim, _STRIDES) if stride is None else stride
        d = _per_axis(draw, ndim, _DILATIONS)
        p = tuple(draw(st.integers(0, ki // 2)) for ki in k)
        fitted = [_fit(n, ki, di, pi) for n, ki, di, pi in zip(sizes, k, d, p, strict=True)]
        k, d, p = (tuple(f[i] for f in fitted) for i in range(3))
    padding: tuple[int, ...] | str = p
    if not pointwise and all(si == 1 for si in s) and draw(st.integers(0, 4)) == 0:
        padding = "same"
    modes = ["zeros"] * 5 + ["reflect", "replicate", "circular"]
    mode = "zeros" if pointwise else draw(st.sampled_from(modes))
    if cout is None:
        if draw(st.booleans()) and cin > 1:
            groups = cin
            cout = cin * draw(st.integers(1, max(1, MAX_CHANNELS // cin)))
        else:
            groups = 1
            cout = draw(st.integers(1, MAX_CHANNELS))
    else:
        groups = cin if (cin > 1 and cout % cin == 0 and draw(st.booleans())) else 1
    return ConvOp(cin, cout, k, s, padding, d, groups, mode, draw(st.booleans()), _draw_act(draw))


def _draw_pool(draw, ndim: int, shape, stride: tuple[int, ...] | None = None) -> PoolOp:
    sizes = shape[2:]
    kind = draw(st.sampled_from(["max", "avg"]))
    k = _per_axis(draw, ndim, st.integers(1, 4))
    s = _per_axis(draw, ndim, _STRIDES) if stride is None else stride
    d = _per_axis(draw, ndim, st.sampled_from([1, 1, 2])) if kind == "max" else (1,) * ndim
    p = tuple(draw(st.integers(0, ki // 2)) for ki in k)
    fitted = [_fit(n, ki, di, pi) for n, ki, di, pi in zip(sizes, k, d, p, strict=True)]
    k, d, p = (tuple(f[i] for f in fitted) for i in range(3))
    return PoolOp(kind, k, s, p, d, draw(st.booleans()), draw(st.booleans()))


def _draw_pad(draw, ndim: int, shape) -> PadOp:
    sizes = shape[2:]
    cap = CAPS[ndim]
    mode = draw(st.sampled_from(["constant", "reflect", "replicate", "circular"]))
    amounts = []
    for n in sizes:
        limit = {"reflect": n - 1, "circular": n}.get(mode, 3)
        before = min(draw(st.integers(0, 3)), limit, max(cap - n, 0))
        after = min(draw(st.integers(0, 3)), limit, max(cap - n - before, 0))
        amounts.append((before, after))
    value = draw(st.sampled_from([0.0, 0.0, 1.0])) if mode == "constant" else 0.0
    return PadOp(mode, tuple(amounts), value)


def _draw_tconv(draw, ndim: int, shape, allow_stride: bool) -> TConvOp:
    cin, sizes = shape[1], shape[2:]
    cap = CAPS[ndim]
    s = _per_axis(draw, ndim, st.integers(1, 3)) if allow_stride else (1,) * ndim
    k = tuple(draw(st.integers(si, 5)) for si in s)
    p = tuple(draw(st.integers(0, (ki - 1) // 2)) for ki in k)
    op = tuple(draw(st.integers(0, si - 1)) for si in s)
    s, op = list(s), list(op)
    for i, n in enumerate(sizes):  # shrink the stride until the output fits the size cap
        while (n - 1) * s[i] - 2 * p[i] + k[i] + op[i] > cap and s[i] > 1:
            s[i] -= 1
            op[i] = min(op[i], s[i] - 1)
    if draw(st.booleans()) and cin > 1:
        groups = cin
        cout = cin * draw(st.integers(1, max(1, MAX_CHANNELS // cin)))
    else:
        groups, cout = 1, draw(st.integers(1, MAX_CHANNELS))
    return TConvOp(cin, cout, k, tuple(s), p, tuple(op), groups, _draw_act(draw))


def _draw_upsample(draw, ndim: int, shape) -> UpsampleOp:
    sizes = shape[2:]
    mode = draw(st.sampled_from(["nearest", "nearest", _LINEAR_MODE[ndim]]))
    scale = 2
    if mode == "nearest" and all(3 * n <= CAPS[ndim] for n in sizes) and draw(st.booleans()):
        scale = 3
    return UpsampleOp(mode, scale)


def _draw_slice(draw, ndim: int, shape, step: int | None = None) -> SliceOp:
    axis = draw(st.integers(0, ndim - 1))
    n = shape[2 + axis]
    start = draw(st.integers(0, min(2, n - 1)))
    return SliceOp(axis, start, draw(st.integers(1, 3)) if step is None else step)


def _draw_branch(draw, ndim: int, shape, min_ops: int, stride: tuple[int, ...]) -> tuple[tuple, tuple]:
    """1-2 ops (0-2 if ``min_ops`` is 0 and ``stride`` is all ones) whose total stride is ``stride``:
    one conv or pool carries it, every other op has stride 1 (slices in branches only crop)."""
    strided = any(s > 1 for s in stride)
    n_ops = draw(st.integers(max(min_ops, 1 if strided else 0), 2))
    carrier = draw(st.integers(0, n_ops - 1)) if n_ops else -1
    ones = (1,) * ndim
    ops = []
    for i in range(n_ops):
        if i == carrier:
            kind = draw(st.sampled_from(["conv", "conv", "pool"]))
        else:
            kind = draw(st.sampled_from(["conv", "conv", "pool", "pad", "slice"]))
        s = stride if i == carrier else ones
        if kind == "conv":
            op = _draw_conv(draw, ndim, shape, stride=s)
        elif kind == "pool":
            op = _draw_pool(draw, ndim, shape, stride=s)
        elif kind == "pad":
            op = _draw_pad(draw, ndim, shape)
        else:
            op = _draw_slice(draw, ndim, shape, step=1)
        new = _out_shape(op, ndim, shape)
        assume(new is not None)
        ops.append(op)
        shape = new
    return tuple(ops), shape


def _draw_two_branch(draw, ndim: int, shape) -> TwoBranchOp:
    merge = draw(st.sampled_from(["add", "add", "cat"]))
    stride = _per_axis(draw, ndim, st.sampled_from([1, 1, 2, 3]))
    a, shape_a = _draw_branch(draw, ndim, shape, 0, stride)
    b, shape_b = _draw_branch(draw, ndim, shape, 1, stride)
    if merge == "add" and shape_a[1] != shape_b[1]:
        b = b + (_draw_conv(draw, ndim, shape_b, cout=shape_a[1], pointwise=True),)
    if merge == "cat" and shape_a[1] + shape_b[1] > 2 * MAX_CHANNELS:
        merge = "add"
        if shape_a[1] != shape_b[1]:
            b = b + (_draw_conv(draw, ndim, shape_b, cout=shape_a[1], pointwise=True),)
    size = tuple(min(na, nb) for na, nb in zip(shape_a[2:], shape_b[2:], strict=True))
    crop_a = tuple(draw(st.integers(0, na - m)) for na, m in zip(shape_a[2:], size, strict=True))
    crop_b = tuple(draw(st.integers(0, nb - m)) for nb, m in zip(shape_b[2:], size, strict=True))
    return TwoBranchOp(a, b, merge, crop_a, crop_b, size, draw(st.sampled_from([None, "relu"])))


def architectures(dims=(1, 2, 3), allow_upsampling: bool = True, max_blocks: int = 6):
    """Strategy of :class:`Architecture` (see the module docstring)."""
    dims = tuple(dims)

    @st.composite
    def _architecture(draw) -> Architecture:
        ndim = draw(st.sampled_from(dims))
        cap = CAPS[ndim]
        sizes = _per_axis(draw, ndim, st.integers(MIN_START[ndim], cap))
        shape = (1, draw(st.integers(1, MAX_CHANNELS)), *sizes)
        input_shape = shape
        blocks, shapes = [], []
        for _ in range(draw(st.integers(1, max_blocks))):
            sp = shape[2:]
            kinds = ["conv", "conv", "conv", "pool", "pool", "pad", "slice", "two_branch", "two_branch"]
            if all(n + 4 <= cap for n in sp):
                kinds.append("tconv")
            if allow_upsampling and all(2 * n <= cap for n in sp):
                kinds.append("upsample")
            kind = draw(st.sampled_from(kinds))
            if kind == "conv":
                op = _draw_conv(draw, ndim, shape)
            elif kind == "pool":
                op = _draw_pool(draw, ndim, shape)
            elif kind == "pad":
                op = _draw_pad(draw, ndim, shape)
            elif kind == "slice":
                op = _draw_slice(draw, ndim, shape)
            elif kind == "tconv":
                op = _draw_tconv(draw, ndim, shape, allow_upsampling)
            elif kind == "upsample":
                op = _draw_upsample(draw, ndim, shape)
            else:
                op = _draw_two_branch(draw, ndim, shape)
            new = _out_shape(op, ndim, shape)
            assume(new is not None and all(n <= cap for n in new[2:]) and new[1] <= 2 * MAX_CHANNELS)
            blocks.append(op)
            shapes.append(new)
            shape = new
        seed = draw(st.integers(0, 2**31 - 1))
        return Architecture(ndim, input_shape, tuple(blocks), tuple(shapes), seed)

    return _architecture()

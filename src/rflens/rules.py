"""Per-op rules of the capture: how each aten op moves spatial axes between dims and what it reads.

A rule gets the recorder (its state of every tensor, and ``emit``/``carry`` to record the result), the op, its
arguments and its output. Rules are looked up by overload packet in ``RULES``; pointwise ops (by their tag) use
``pointwise``; an op without a rule that touches a spatial dim raises :class:`UnsupportedOpError`
(``not_spatial``). Vocabulary: :mod:`rflens.dims` (atoms) and :mod:`rflens.geometry` (what a unit reads).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

from rflens import dims as D
from rflens.geometry import (
    Pad,
    QuasiAffine,
    Resample,
    Transposed,
    Window,
    adaptive_read,
    block_mix,
    upsample_maps,
)
from rflens.graph import IDENTITY_READ, AxisRead

aten = torch.ops.aten


def _op_name(func: Any) -> str:
    return func if isinstance(func, str) else str(func.overloadpacket).split(".")[-1]


def _broadcast_rescale(n_in: int) -> tuple[None, Resample]:
    if n_in != 1:
        raise ValueError(f"broadcasting reads a single unit, but this input has {n_in}")
    return None, BROADCAST


BROADCAST = Resample(QuasiAffine.affine(0, 0), QuasiAffine.affine(0, 0),
                     lambda n_in, n_out: [np.zeros(n_out, dtype=np.int64)], _broadcast_rescale)


@dataclass(frozen=True)
class State:
    """What the trace knows of one tensor: the node it came from, its dims' atoms, and size-1 spatial axes
    held by no dim (an axis in neither was reduced away by a global op)."""

    node: int
    dims: D.Dims
    hidden: frozenset[int] = frozenset()

    def has_spatial(self) -> bool:
        return any(a[0] == "s" for d in self.dims for a in d)

    def is_map(self) -> bool:
        """Spatial dims are still there, if only as a globally pooled 1x1 map (not once flattened away)."""
        return self.has_spatial() or any(D.reduced_axis(d) is not None for d in self.dims)


# ---------------------------------------------------------------------------------------------------------
# rules
# ---------------------------------------------------------------------------------------------------------
Rule = Callable[[Any, Any, tuple, dict, Any], None]
RULES: dict[Any, Rule] = {}


def rule(*packets: Any) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for p in packets:
            RULES[p] = fn
        return fn
    return register


def _norm_dim(d: int, n: int) -> int:
    return d + n if d < 0 else d


def _bind(func: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The op's arguments by their schema names."""
    bound = dict(zip([a.name for a in func._schema.arguments], args, strict=False))
    bound.update(kwargs)
    return bound


def _mix_reads(rec: Any, st: State, mixed: Sequence[D.Atom], out_dims: Sequence[tuple]):
    """Reads along each axis when an op combines all indices of the ``mixed`` atoms of ``st`` into each output
    element, and the output's dims (``out_dims``, rescaled where a block of units becomes one unit).

    Mixing a whole axis is global. Mixing only the inner factor of a split axis (attention inside Swin
    windows, a Linear over a 2x2 patch) is local: a block of units, or a window of block size and stride."""
    sizes = rec.sizes(st)
    reads = rec.identity_reads(st)
    out_dims = [list(d) for d in out_dims]
    for axis in sorted({a[1] for a in mixed if a[0] == "s"}):
        factors = sorted((a for a in mixed if a[0] == "s" and a[1] == axis), key=lambda a: a[3])
        if sizes[axis] == 1:
            continue
        block = 1
        for a in factors:
            block = block * a[2] if a[3] == block else -1
        kept = [a for d in out_dims for a in d if a[0] == "s" and a[1] == axis]
        if block < 0 or block >= sizes[axis] or not kept:
            reads[axis] = None
        elif any(a[3] < block for a in kept):
            reads[axis] = block_mix(block)
        else:
            reads[axis] = Window(block, block)
            for d in out_dims:
                d[:] = [(k, ax, n, inner // block if ax == axis else inner) for k, ax, n, inner in d]
    changed = any(r is not IDENTITY_READ for r in reads)
    return reads, tuple(D.merge_adjacent(d) for d in out_dims), changed


def _same_resolution(rec: Any, func: Any, states: Sequence[State], mixed: Sequence[Sequence[D.Atom]] = ()) -> None:
    """Atoms describe factors of an axis at their node's resolution, so an op may line up tensors whose dims
    hold one axis only at one resolution (a size-1 axis broadcasts). An operand that is mixed over a whole axis
    (``mixed[i]``: its atoms combined into every output element) is read globally whatever its resolution.
    Anything else is refused, never guessed."""
    for axis in range(rec.graph.ndim):
        sizes = set()
        for i, st in enumerate(states):
            held = [a for d in st.dims for a in d if a[0] == "s" and a[1] == axis]
            whole = i < len(mixed) and held and all(a in mixed[i] for a in held) and \
                np.prod([a[2] for a in held]) == rec.sizes(st)[axis]
            if held and not whole:
                sizes.add(rec.sizes(st)[axis])
        sizes -= {1}
        if len(sizes) > 1:
            raise rec.unsupported(func, f"it combines spatial axis {axis} at different resolutions "
                                        f"({sorted(sizes)} units)")


def _hidden_after(st: State, dims: Sequence[tuple]) -> frozenset[int]:
    """Size-1 axes that no dim holds any more stay known as hidden (not reduced)."""
    held = set().union(*(D.axes_of(d) for d in dims)) if dims else set()
    gone = set().union(*(D.axes_of(d) for d in st.dims)) - held
    return frozenset((st.hidden | gone) - held)


def _spatial_op(rec: Any, func: Any, x: torch.Tensor, out: torch.Tensor, per_dim: dict[int, AxisRead],
                new_dims: dict[int, tuple] | None = None, pooled: Sequence[State] = ()) -> None:
    """A new node for an op acting on some dims of ``x``: ``per_dim`` maps a dim of ``x`` to the geometry along
    it (``None``: mixes it whole). Other dims keep their atoms unless ``new_dims`` replaces them. ``pooled``:
    further inputs that hold no spatial axis (weights computed from pooled features), read globally."""
    st = rec.state(x)
    sizes = rec.sizes(st)
    dims = list(st.dims)
    mixed: list[D.Atom] = []
    window: dict[int, AxisRead] = {}
    for d, geom in per_dim.items():
        atoms = st.dims[d]
        grown = D.reduced_axis(atoms)
        if grown is not None and geom is not None and out.shape[d] > 1:  # e.g. upsampling a pooled 1x1 map
            window[grown] = BROADCAST
            dims[d] = D.spatial(grown, out.shape[d])
            continue
        if geom is None or not D.axes_of(atoms):
            mixed += atoms if geom is None else []
            if geom is None and out.shape[d] == 1 and grown is None:
                dims[d] = D.reduced(atoms, sizes)  # a global pooling leaves the marker of its axis
            elif grown is None:
                dims[d] = D.other(out.shape[d])
            continue
        axis = D.whole_axis(atoms, sizes)
        if axis is None and geom == IDENTITY_READ and out.shape[d] == x.shape[d]:
            continue  # a 1x1 window (a pointwise conv over token dims): every unit reads itself
        if axis is None:
            raise rec.unsupported(func, f"a window op over dim {d}, which holds a part or a merge of spatial axes "
                                        f"{sorted(D.axes_of(atoms))}")
        window[axis] = geom
        dims[d] = D.spatial(axis, out.shape[d])
    for d, atoms in (new_dims or {}).items():
        mixed += [a for a in st.dims[d] if a not in atoms]
        dims[d] = atoms
    reads, dims, _ = _mix_reads(rec, st, mixed, dims)
    reads = [window.get(a, r) for a, r in enumerate(reads)]
    rec.emit(func, out, [st, *pooled], [reads, *(rec.identity_reads(p) for p in pooled)], dims,
             _hidden_after(st, dims))


def _ints(v: Any, n: int, default: int | None = None) -> list[int]:
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        return [default] * n
    if isinstance(v, int):
        return [v] * n
    v = list(v)
    return v * n if len(v) == 1 else v


@rule(aten.convolution)
def _conv(rec, func, args, kwargs, out):
    x, w, _bias, stride, padding, dilation, transposed, output_padding, _groups = args[:9]
    weights = [rec.state(t) for t in (w, _bias) if rec.state(t) is not None]  # CondConv: routed by pooled features
    if any(st.has_spatial() for st in weights):
        raise rec.unsupported(func, "convolution weights that vary with the position in the input")
    nsp = x.dim() - 2
    k = list(w.shape[2:])
    stride, padding, dilation = _ints(stride, nsp), _ints(padding, nsp), _ints(dilation, nsp)
    output_padding = _ints(output_padding, nsp, 0)
    per_dim = {}
    for i in range(nsp):
        if transposed:
            if dilation[i] * (k[i] - 1) + 1 < stride[i]:
                raise rec.unsupported(func, f"transposed convolution with kernel extent "
                                            f"{dilation[i] * (k[i] - 1) + 1} < stride {stride[i]} leaves output "
                                            "units that read no input")
            per_dim[2 + i] = Transposed(k[i], stride[i], padding[i], dilation[i], output_padding[i])
        else:
            per_dim[2 + i] = Window(k[i], stride[i], padding[i], padding[i], dilation[i])
    _spatial_op(rec, func, x, out, per_dim, {1: D.other(out.shape[1])}, pooled=weights)


def _pool(rec, func, x, out, kernel, stride, padding, dilation, ceil_mode, nsp):
    kernel = _ints(kernel, nsp)
    stride = _ints(stride, nsp) if stride else kernel
    padding, dilation = _ints(padding, nsp, 0), _ints(dilation, nsp, 1)
    first = x.dim() - nsp
    per_dim = {first + i: Window(kernel[i], stride[i], padding[i], padding[i], dilation[i], bool(ceil_mode))
               for i in range(nsp)}
    _values_and_indices(rec, func, x, out, per_dim)


def _values_and_indices(rec, func, x, out, per_dim):
    """One node for a pooling's values; its indices (max pooling) are the same units."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    _spatial_op(rec, func, x, outs[0], per_dim)
    for o in outs[1:]:
        rec.set(o, rec.state(outs[0]))


def _max_pool(nsp):
    def fn(rec, func, args, kwargs, out):
        a = list(args) + [None] * (6 - len(args))
        _pool(rec, func, a[0], out, a[1], kwargs.get("stride", a[2]), kwargs.get("padding", a[3]),
              kwargs.get("dilation", a[4]), kwargs.get("ceil_mode", a[5] or False), nsp)
    return fn


def _avg_pool(nsp):
    def fn(rec, func, args, kwargs, out):
        a = list(args) + [None] * (5 - len(args))
        _pool(rec, func, a[0], out, a[1], kwargs.get("stride", a[2]), kwargs.get("padding", a[3]), 1,
              kwargs.get("ceil_mode", a[4] or False), nsp)
    return fn


for _n in (1, 2, 3):
    for _name in (f"max_pool{_n}d_with_indices", f"max_pool{_n}d"):
        if hasattr(aten, _name):
            RULES[getattr(aten, _name)] = _max_pool(_n)
    if hasattr(aten, f"avg_pool{_n}d"):
        RULES[getattr(aten, f"avg_pool{_n}d")] = _avg_pool(_n)


def _adaptive(rec, func, args, kwargs, out):
    x = args[0]
    outs = out if isinstance(out, (tuple, list)) else (out,)
    nsp = len(args[1])
    first = x.dim() - nsp
    per_dim: dict[int, AxisRead] = {}
    for i in range(nsp):
        per_dim[first + i] = adaptive_read(x.shape[first + i], outs[0].shape[first + i])
    _values_and_indices(rec, func, x, out, per_dim)


for _name in ("_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_max_pool2d", "adaptive_max_pool3d",
              "adaptive_avg_pool1d", "adaptive_max_pool1d"):
    if hasattr(aten, _name):
        RULES[getattr(aten, _name)] = _adaptive

_INTERP_MODES = {
    "upsample_nearest": "nearest", "_upsample_nearest_exact": "nearest-exact", "upsample_linear": "linear",
    "upsample_bilinear": "bilinear", "upsample_trilinear": "trilinear", "upsample_bicubic": "bicubic",
}


def _interpolate(rec, func, args, kwargs, out):
    name = _op_name(func)
    mode = next(m for prefix, m in _INTERP_MODES.items() if name.startswith(prefix) and name[len(prefix)].isdigit())
    schema = [a.name for a in func._schema.arguments]
    bound = _bind(func, args, kwargs)
    x = bound.get("input", bound.get("self"))
    nsp = int(name[-2])
    first = x.dim() - nsp
    align = bool(bound.get("align_corners") or False)
    scale_args = [s for s in schema if s.startswith("scales")]
    if "scale_factors" in bound and bound["scale_factors"] is not None:
        scales = list(bound["scale_factors"])
    else:
        scales = [bound.get(s) for s in scale_args] if len(scale_args) == nsp else [None] * nsp
    per_dim = {}
    for i in range(nsp):
        n_in, n_out = x.shape[first + i], out.shape[first + i]
        probe = _InterpolationProbe(func, schema, bound, nsp, i, x.dtype)
        per_dim[first + i] = _interpolation_read(mode, align, scales[i], probe, n_in, n_out)
    _spatial_op(rec, func, x, out, per_dim)


def _interpolation_read(mode: str, align: bool, scale: float | None, probe: Any, n_in: int, n_out: int) -> Resample:
    """One axis of an interpolation. With a scale factor the output size follows the input (PyTorch's
    ``floor(n * scale)``); an explicit output size came from Python code, so it cannot be followed."""
    if scale is not None and scale > 0:
        step = 1 / Fraction(scale).limit_denominator(10_000)
        rescale = lambda m: (math.floor(m * scale), _interpolation_read(mode, align, scale, probe, m,  # noqa: E731
                                                                         math.floor(m * scale)))
    else:
        step, rescale = Fraction(n_in, n_out), None
    lo, hi = upsample_maps(mode, step, align, n_in, n_out)
    return Resample(lo, hi, probe, rescale)


@dataclass(frozen=True, eq=False)
class _InterpolationProbe:
    """Concrete taps of one axis of an interpolation, measured by running the same aten op on the CPU with
    one-hot inputs: exact, PyTorch's own float rounding included. Called only when a support is asked for."""

    func: Any
    schema: list[str]
    bound: dict
    nsp: int
    axis: int
    dtype: torch.dtype

    def __call__(self, n_in: int, n_out: int) -> list[np.ndarray]:
        shape = [1] * self.nsp
        shape[self.axis] = n_in
        x = torch.eye(n_in, dtype=self.dtype).reshape(1, n_in, *shape)
        call = dict(self.bound)
        call["input" if "input" in call else "self"] = x
        out_size = [1] * self.nsp
        out_size[self.axis] = n_out
        if call.get("output_size") is not None or "scale_factors" not in call:
            call["output_size"] = out_size
        for j, s in enumerate(s for s in self.schema if s.startswith("scales_") or s == "scales"):
            if j != self.axis:
                call[s] = None
        if call.get("scale_factors") is not None:
            call["scale_factors"] = [f if j == self.axis else 1.0 for j, f in enumerate(call["scale_factors"])]
        with torch.no_grad():
            y = self.func(**call).reshape(n_in, n_out)
        reads = (y != 0).T.numpy()
        width = int(reads.sum(1).max()) if n_out else 0
        taps = np.full((width, n_out), -1, dtype=np.int64)
        for u in range(n_out):
            idx = np.flatnonzero(reads[u])
            taps[: len(idx), u] = idx
        return list(taps)


for _name in dir(aten):
    if any(_name.startswith(p) and _name[len(p):len(p) + 1].isdigit() for p in _INTERP_MODES) \
            and not _name.endswith("_aa") and "backward" not in _name:
        RULES[getattr(aten, _name)] = _interpolate


def pad_rule(rec, func, x, pad, mode, out):
    st = rec.state(x)
    per_dim = {}
    dims = list(st.dims)
    for i in range(len(pad) // 2):
        d = x.dim() - 1 - i
        left, right = pad[2 * i], pad[2 * i + 1]
        if left == right == 0:
            continue
        atoms = st.dims[d]
        if mode == "constant" and left > 0 and right == 0 and D.axes_of(atoms) and D.whole_axis(atoms, rec.sizes(st)) \
                is None:  # zeros put in front of flattened tokens: prefix tokens
            dims[d] = (("x", -1, left + D.prefix(atoms), 1),) + tuple(a for a in atoms if a[0] != "x")
            continue
        per_dim[d] = Pad(left, right, mode)
    if not per_dim:
        return rec.carry(out, st, tuple(dims))
    if dims != list(st.dims):
        raise rec.unsupported(func, "padding that adds prefix tokens and pads a spatial axis at once")
    _spatial_op(rec, func, x, out, per_dim)


@rule(aten.constant_pad_nd)
def _constant_pad(rec, func, args, kwargs, out):
    pad_rule(rec, func, args[0], list(args[1]), "constant", out)


for _n in (1, 2, 3):
    for _mode, _prefix in (("reflect", "reflection_pad"), ("replicate", "replication_pad")):
        if hasattr(aten, f"{_prefix}{_n}d"):
            RULES[getattr(aten, f"{_prefix}{_n}d")] = (
                lambda m: lambda rec, func, args, kwargs, out: pad_rule(rec, func, args[0], list(args[1]), m, out)
            )(_mode)


@rule(aten.im2col)
def _im2col(rec, func, args, kwargs, out):
    """nn.Unfold: sliding windows, the kernel taps moved into channels and the windows flattened."""
    x, kernel, dilation, padding, stride = args[:5]
    st = rec.state(x)
    reads = rec.identity_reads(st)
    rows = []
    for i in range(2):
        axis = D.whole_axis(st.dims[x.dim() - 2 + i], rec.sizes(st))
        if axis is None:
            raise rec.unsupported(func, "unfolding dims that are not whole spatial axes")
        geom = Window(kernel[i], stride[i], padding[i], padding[i], dilation[i])
        reads[axis] = geom
        rows.append(D.spatial(axis, geom.output_size(x.shape[x.dim() - 2 + i]))[0])
    dims = (*st.dims[: x.dim() - 3], D.other(out.shape[-2]), tuple(rows))
    rec.emit(func, out, [st], [reads], dims, st.hidden)


@rule(aten.col2im)
def _col2im(rec, func, args, kwargs, out):
    """nn.Fold: each window writes back its taps, a transposed convolution on the flattened windows."""
    x, output_size, kernel, dilation, padding, stride = args[:6]
    st = rec.state(x)
    atoms = D.spatial_atoms(st.dims[-1])
    if len(atoms) != 2 or len(D.axes_of(atoms)) != 2:
        raise rec.unsupported(func, "folding blocks that are not flattened spatial windows")
    reads = rec.identity_reads(st)
    for i, atom in enumerate(atoms):
        reads[atom[1]] = Transposed(kernel[i], stride[i], padding[i], dilation[i],
                                    output_size[i] - Transposed(kernel[i], stride[i], padding[i], dilation[i])
                                    .output_size(atom[2]))
    dims = (*st.dims[:-2], D.other(out.shape[-3]), D.spatial(atoms[0][1], out.shape[-2]),
            D.spatial(atoms[1][1], out.shape[-1]))
    rec.emit(func, out, [st], [reads], dims, st.hidden)


@rule(aten.pixel_shuffle)
def _pixel_shuffle(rec, func, args, kwargs, out):
    x, r = args[0], args[1]
    geom = _shuffle_read(r)
    _spatial_op(rec, func, x, out, {x.dim() - 2: geom, x.dim() - 1: geom}, {x.dim() - 3: D.other(out.shape[-3])})


def _shuffle_read(r: int) -> Resample:
    f = QuasiAffine.floor_div(1, 0, r)
    return Resample(f, f, lambda n_in, n_out: [np.arange(n_out, dtype=np.int64) // r],
                    lambda m: (m * r, _shuffle_read(r)))


@rule(aten.pixel_unshuffle)
def _pixel_unshuffle(rec, func, args, kwargs, out):
    x, r = args[0], args[1]
    geom = Window(r, r)
    _spatial_op(rec, func, x, out, {x.dim() - 2: geom, x.dim() - 1: geom}, {x.dim() - 3: D.other(out.shape[-3])})


@rule(aten.roll)
def _roll(rec, func, args, kwargs, out):
    x, shifts = args[0], _ints(args[1], 1)
    dims = list(args[2]) if len(args) > 2 and args[2] else []
    st = rec.state(x)
    if not dims:
        if st.has_spatial():
            raise rec.unsupported(func, "roll over the flattened tensor")
        return rec.carry(out, st, st.dims)
    per_dim = {}
    for shift, d in zip(shifts * (len(dims) if len(shifts) == 1 else 1), dims, strict=True):
        d = _norm_dim(d, x.dim())
        if D.axes_of(st.dims[d]):
            per_dim[d] = _roll_read(shift)
    if not per_dim:
        return rec.carry(out, st, st.dims)
    _spatial_op(rec, func, x, out, per_dim)


def _roll_read(shift: int) -> Resample:
    m = QuasiAffine.affine(1, -shift)
    return Resample(m, m, lambda n_in, n_out: [np.mod(np.arange(n_out) - shift, n_in)],
                    lambda n: (n, _roll_read(shift)))


@rule(aten.flip)
def _flip(rec, func, args, kwargs, out):
    st = rec.state(args[0])
    if any(D.axes_of(st.dims[_norm_dim(d, args[0].dim())]) for d in args[1]):
        raise rec.unsupported(func, "flipping a spatial axis (the receptive field would run backwards)")
    rec.carry(out, st, st.dims)


# -- slicing -----------------------------------------------------------------------------------------------
def _slice(rec, func, x, out, d, start, step, drop_dim=False, end=None):
    st = rec.state(x)
    atoms = st.dims[d]
    n_out = 1 if drop_dim else out.shape[d]
    k = D.prefix(atoms)
    if k and step == 1:
        dims = list(st.dims)
        if start == k and n_out == x.shape[d] - k:  # the patch tokens without the prefix tokens
            dims[d] = atoms[1:]
            return rec.carry(out, st, tuple(dims))
        if start + n_out <= k:  # prefix tokens only (a class token)
            if drop_dim:
                del dims[d]
            else:
                dims[d] = D.other(n_out)
            return rec.carry(out, st, tuple(dims))
    if k:
        raise rec.unsupported(func, "slicing across the prefix tokens and the patch tokens of a token sequence")
    if not D.axes_of(atoms):
        dims = list(st.dims)
        if drop_dim:
            del dims[d]
        else:
            dims[d] = D.other(n_out)
        return rec.carry(out, st, tuple(dims))
    axis = D.whole_axis(atoms, rec.sizes(st))
    if axis is None:
        raise rec.unsupported(func, f"slicing dim {d}, which holds a part or a merge of spatial axes")
    if start == 0 and step == 1 and n_out == x.shape[d] and not drop_dim:
        return rec.carry(out, st, st.dims)
    reads = rec.identity_reads(st)
    # units from ``end`` on are cropped: a constant when the end follows the size (x[1:-1], x[2::3])
    reads[axis] = Window(1, step, -start, -(x.shape[d] - (x.shape[d] if end is None else end)))
    dims = list(st.dims)
    hidden = set(st.hidden)
    if drop_dim:
        del dims[d]
        hidden.add(axis)
    else:
        dims[d] = D.spatial(axis, n_out)
    rec.emit(func, out, [st], [reads], tuple(dims), frozenset(hidden))


@rule(aten.slice)
def _slice_rule(rec, func, args, kwargs, out):
    a = list(args) + [None] * (5 - len(args))
    x = a[0]
    d = _norm_dim(kwargs.get("dim", a[1] if a[1] is not None else 0), x.dim())
    n = x.shape[d]
    start = kwargs.get("start", a[2])
    start = 0 if start is None else start
    start = max(0, min(n, start + n if start < 0 else start))
    step = kwargs.get("step", a[4]) or 1
    end = kwargs.get("end", a[3])
    end = None if end is None or end >= n else max(start, end + n if end < 0 else end)
    _slice(rec, func, x, out, d, start, step, end=end)


@rule(aten.select)
def _select(rec, func, args, kwargs, out):
    x, d, index = args[0], _norm_dim(args[1], args[0].dim()), args[2]
    index = index + x.shape[d] if index < 0 else index
    _slice(rec, func, x, out, d, index, 1, drop_dim=True, end=index + 1)


@rule(aten.index_select)
def _index_select(rec, func, args, kwargs, out):
    """Picking entries of a dim that holds no spatial axis (channels, in any order) keeps every unit in place."""
    x = args[0]
    st = rec.state(x)
    d = _norm_dim(args[1], x.dim())
    if rec.state(args[2]) is not None or D.axes_of(st.dims[d]) or D.prefix(st.dims[d]):
        raise rec.unsupported(func, "picking entries of a dim that holds spatial axes, or by computed indices")
    dims = list(st.dims)
    dims[d] = D.other(out.shape[d])
    rec.carry(out, st, tuple(dims))


@rule(aten.split, aten.split_with_sizes, aten.unbind)
def _split(rec, func, args, kwargs, out):
    x = args[0]
    unbind = func.overloadpacket is aten.unbind
    d = _norm_dim(kwargs.get("dim", args[-1] if len(args) > 2 or unbind and len(args) > 1 else 0), x.dim())
    start = 0
    for piece in out:
        size = 1 if unbind else piece.shape[d]
        _slice(rec, func, x, piece, d, start, 1, drop_dim=unbind, end=start + size)
        start += 1 if unbind else piece.shape[d]


# -- views ------------------------------------------------------------------------------------------------
@rule(aten.view, aten._unsafe_view, aten.reshape, aten.view_copy, aten._reshape_alias)
def _view(rec, func, args, kwargs, out):
    st = rec.state(args[0])
    try:
        dims = D.regroup(st.dims, tuple(out.shape))
    except D.RegroupError as exc:
        raise rec.unsupported(func, str(exc)) from None
    rec.carry(out, st, dims)


@rule(aten.permute)
def _permute(rec, func, args, kwargs, out):
    st = rec.state(args[0])
    order = [_norm_dim(d, args[0].dim()) for d in args[1]]
    rec.carry(out, st, tuple(st.dims[d] for d in order))


@rule(aten.transpose, aten.t)
def _transpose(rec, func, args, kwargs, out):
    st = rec.state(args[0])
    n = args[0].dim()
    d0, d1 = (_norm_dim(args[1], n), _norm_dim(args[2], n)) if len(args) > 2 else (0, 1 if n > 1 else 0)
    dims = list(st.dims)
    dims[d0], dims[d1] = dims[d1], dims[d0]
    rec.carry(out, st, tuple(dims))


@rule(aten.unsqueeze)
def _unsqueeze(rec, func, args, kwargs, out):
    st = rec.state(args[0])
    dims = list(st.dims)
    dims.insert(_norm_dim(args[1], out.dim()), ())
    rec.carry(out, st, tuple(dims))


@rule(aten.squeeze)
def _squeeze(rec, func, args, kwargs, out):
    x = args[0]
    st = rec.state(x)
    which = args[1] if len(args) > 1 else range(x.dim())
    which = {_norm_dim(d, x.dim()) for d in ([which] if isinstance(which, int) else which)}
    dims, hidden = [], set(st.hidden)
    for d, atoms in enumerate(st.dims):
        if d in which and x.shape[d] == 1:
            hidden |= D.axes_of(atoms)
        else:
            dims.append(atoms)
    rec.carry(out, st, tuple(dims), frozenset(hidden))


@rule(aten.expand)
def _expand(rec, func, args, kwargs, out):
    x = args[0]
    st = rec.state(x)
    lead = out.dim() - x.dim()
    dims = [() for _ in range(lead)] + list(st.dims)
    reads = rec.identity_reads(st)
    grown = False
    for d in range(lead, out.dim()):
        if x.shape[d - lead] == 1 and out.shape[d] != 1:
            axes = D.axes_of(dims[d]) or ({D.reduced_axis(dims[d])} - {None})
            for a in axes:
                reads[a] = BROADCAST
                grown = True
            dims[d] = D.spatial(axes.pop(), out.shape[d]) if len(axes) == 1 else D.other(out.shape[d])
    if grown:
        rec.emit(func, out, [st], [reads], tuple(dims), st.hidden)
    else:
        rec.carry(out, st, tuple(dims))


_SAME_SHAPE_OPS = ("alias", "detach", "clone", "_to_copy", "lift_fresh", "lift_fresh_copy", "contiguous",
                   "_native_batch_norm_legit_no_training", "native_dropout", "dropout", "hardswish", "hardswish_",
                   "hardsigmoid", "hardsigmoid_", "silu", "silu_", "mish", "mish_", "gelu", "gelu_", "elu", "elu_",
                   "softplus", "leaky_relu_", "prelu", "_prelu_kernel", "celu", "selu", "relu6", "hardtanh")


def _same(rec, func, args, kwargs, out):
    x = args[0]
    st = rec.state(x)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if st is None or outs[0].shape != x.shape:
        return pointwise(rec, func, args, kwargs, outs[0])
    rec.carry(outs[0], st, st.dims)


for _name in _SAME_SHAPE_OPS:
    if hasattr(aten, _name):
        RULES[getattr(aten, _name)] = _same


@rule(aten.as_strided, aten.as_strided_)
def _as_strided(rec, func, args, kwargs, out):
    """A restride that keeps the shape (PyTorch's adaptive pooling of a 1x1 map): the same units, as long as
    every dim that holds a spatial axis keeps its stride or has one element."""
    x = args[0]
    st = rec.state(x)
    size, stride = list(args[1]), list(args[2])
    if list(x.shape) != size or any(D.axes_of(d) and n > 1 and s != t
                                    for d, n, s, t in zip(st.dims, size, stride, x.stride(), strict=True)):
        raise rec.unsupported(func, "a restride that moves spatial units")
    rec.carry(out, st, st.dims)


@rule(aten.copy_)
def _copy_(rec, func, args, kwargs, out):
    pointwise(rec, func, (args[1],), {}, out)


def write_through(rec, func, view):
    """An in-place op on a view (``out[:, :c] += y``) changes the tensor it views as well. Followed when the view
    holds the same spatial dims as its base (a channel slice); anything else is refused."""
    base, vst = view._base, rec.state(view)
    bst = rec.state(base)
    if vst is None or (bst is not None and bst.node == vst.node):
        return
    if base.dim() != view.dim() or any(D.spatial_atoms(v) != D.spatial_atoms(b) for v, b in
                                       zip(vst.dims, bst.dims if bst is not None else [()] * base.dim(), strict=True)):
        raise rec.unsupported(func, "an in-place write into a view that selects part of a spatial axis (rflens "
                                    "cannot follow the aliasing)")
    inputs = [vst] if bst is None else [bst, vst]
    _same_resolution(rec, func, inputs)
    rec.emit(func, base, inputs, [rec.identity_reads(st) for st in inputs], bst.dims if bst else vst.dims,
             vst.hidden if bst is None else bst.hidden | vst.hidden)


# -- mixing of several inputs -------------------------------------------------------------------------------
def pointwise(rec, func, args, kwargs, out):
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                pointwise(rec, func, args, kwargs, o)
        return
    tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    stateful = [(t, rec.state(t)) for t in tensors if rec.state(t) is not None]
    if len({st for _, st in stateful}) == 1 and all(t.shape == out.shape for t, _ in stateful):
        st = stateful[0][1]  # a function of one map, unit by unit (x * sigmoid(x) is SiLU written out): one path
        return rec.carry(out, st, st.dims)
    _same_resolution(rec, func, [st for _, st in stateful])
    nd = out.dim()
    dims: list[tuple | None] = [None] * nd
    for t, st in stateful:
        off = nd - t.dim()
        for j, atoms in enumerate(st.dims):
            if t.shape[j] != out.shape[off + j] or not atoms:
                continue
            have = dims[off + j]
            if have is None or (not D.axes_of(have) and D.axes_of(atoms)):
                dims[off + j] = atoms
            elif D.axes_of(atoms) and D.spatial_atoms(have) != D.spatial_atoms(atoms):
                raise rec.unsupported(func, f"it combines dims holding different spatial axes ({have} "
                                            f"and {atoms})")
    for t, st in stateful:  # a size-1 spatial axis broadcast by a constant operand
        off = nd - t.dim()
        for j, atoms in enumerate(st.dims):
            if dims[off + j] is None and D.axes_of(atoms) and out.shape[off + j] != 1:
                dims[off + j] = D.spatial(D.axes_of(atoms).pop(), out.shape[off + j])
    dims = [d if d is not None else D.other(out.shape[j]) for j, d in enumerate(dims)]
    factors = [(a[1], a[3]) for d in dims for a in D.spatial_atoms(d)]
    if len(factors) != len(set(factors)):
        raise rec.unsupported(func, "it lines up one spatial axis with another dim (e.g. x + x.transpose)")
    present = {axis for axis, _ in factors}
    hidden = frozenset(set().union(*(st.hidden for _, st in stateful)) - present)
    out_sizes = {a: D.axis_size(dims, a) for a in present}
    reads = []
    for _, st in stateful:
        sizes = rec.sizes(st)
        reads.append([BROADCAST if r is not None and a in out_sizes and sizes[a] == 1 and out_sizes[a] > 1 else r
                      for a, r in enumerate(rec.identity_reads(st))])
    rec.emit(func, out, [st for _, st in stateful], reads, tuple(dims), hidden)


@rule(aten.cat, aten.stack)
def _cat(rec, func, args, kwargs, out):
    tensors = [t for t in args[0]]
    d = _norm_dim(kwargs.get("dim", args[1] if len(args) > 1 else 0), out.dim())
    stack = func.overloadpacket is aten.stack
    stateful = [(t, rec.state(t)) for t in tensors if rec.state(t) is not None]
    st0 = next((st for _, st in stateful if st.has_spatial()), stateful[0][1])
    if not (not stack and D.whole_axis(st0.dims[d], rec.sizes(st0)) is not None):  # joined along a whole axis:
        _same_resolution(rec, func, [st for _, st in stateful])                  # pieces may differ in size
    along = set() if stack else set().union(*(D.axes_of(st.dims[d]) for _, st in stateful))
    if not along:  # joined along channels (or a new dim): every unit reads the same unit of each input
        dims = list(st0.dims)
        if stack:
            dims.insert(d, D.other(out.shape[d]))
        else:
            dims[d] = D.other(out.shape[d])
        for _, st in stateful:
            for j, atoms in enumerate(st.dims):
                jj = j + (1 if stack and j >= d else 0)
                if (j != d or stack) and D.axes_of(atoms) and D.spatial_atoms(atoms) != D.spatial_atoms(dims[jj]):
                    raise rec.unsupported(func, "it joins tensors whose dims hold different spatial axes")
        reads = [rec.identity_reads(st) for _, st in stateful]
        return rec.emit(func, out, [st for _, st in stateful], reads, tuple(dims),
                        frozenset().union(*(st.hidden for _, st in stateful)))
    # concatenation along a spatial axis: each piece is the input shifted by its offset
    spatial_inputs = [i for i, t in enumerate(tensors) if rec.state(t) is not None and D.axes_of(rec.state(t).dims[d])]
    last = rec.state(tensors[-1])
    if spatial_inputs == [len(tensors) - 1] and len(tensors) > 1 and \
            D.whole_axis(last.dims[d], rec.sizes(last)) is None:
        # tokens put in front of the patch tokens (a ViT's class token): prefix tokens of that dim. No patch
        # token reads them; they reach patch tokens only through a later mixing op (attention), which is global.
        dims = list(last.dims)
        k = sum(t.shape[d] for t in tensors[:-1]) + D.prefix(dims[d])
        dims[d] = (("x", -1, k, 1),) + tuple(a for a in dims[d] if a[0] != "x")
        return rec.carry(out, last, tuple(dims))
    axis = D.whole_axis(st0.dims[d], rec.sizes(st0))
    if axis is None or len(along) != 1:
        # any other join along a dim of merged axes: positions are no longer a product of axes, so from
        # here on the sequence counts as global.
        dims = list(st0.dims)
        dims[d] = D.other(out.shape[d])
        states = [st for _, st in stateful]
        reads = [_mix_reads(rec, st, st.dims[d], dims)[0] for st in states]
        return rec.emit(func, out, states, reads, tuple(dims), frozenset().union(*(st.hidden for st in states)))
    reads, inputs, offset = [], [], 0
    for t in tensors:
        st = rec.state(t)
        if st is not None:
            r = rec.identity_reads(st)
            r[axis] = Pad(offset, out.shape[d] - offset - t.shape[d])
            reads.append(r)
            inputs.append(st)
        offset += t.shape[d]
    dims = list(st0.dims)
    dims[d] = D.spatial(axis, out.shape[d])
    rec.emit(func, out, inputs, reads, tuple(dims), st0.hidden)


def _mix(rec, func, x, out, mixed: set[int], keepdim: bool, normalises: bool = False):
    """Reductions and normalisations: each output element combines every index of the ``mixed`` dims of ``x``
    (``keepdim``: the output keeps x's shape, as a softmax or a norm does, or size-1 dims in their place).
    ``normalises``: a normalisation (group, layer, instance norm): every element stays at its position, scaled by
    statistics of the mixed dims."""
    st = rec.state(x)
    outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, torch.Tensor)]
    same_shape = outs[0].shape == x.shape
    dims = []
    for d, atoms in enumerate(st.dims):
        if d not in mixed or same_shape:
            dims.append(atoms)
        elif keepdim:
            dims.append(D.reduced(atoms, rec.sizes(st)))
    atoms = [a for d in sorted(mixed) for a in st.dims[d]]
    reads, dims, changed = _mix_reads(rec, st, atoms, dims)
    # factors left of an axis that was mixed globally (patches summed, pixels within a patch kept) no longer
    # mark positions: the result is global along that axis
    if not normalises:
        dims = tuple(D.merge_adjacent(tuple(("n", -1, a[2], 1) if a[0] == "s" and reads[a[1]] is None else a
                                            for a in d)) for d in dims)
    # a softmax or a norm combines each element itself (local) with statistics of the mixed dims
    inputs, all_reads = ([st, st], [rec.identity_reads(st), reads]) if same_shape else ([st], [reads])
    for o in outs:
        odims = dims if o.dim() == len(dims) else tuple(D.other(n) for n in o.shape)
        if changed:
            rec.emit(func, o, inputs, all_reads, odims, _hidden_after(st, odims))
        else:
            rec.carry(o, st, odims, _hidden_after(st, odims))


def _reduce_rule(default_keep: bool = False):
    def fn(rec, func, args, kwargs, out):
        x = args[0]
        bound = _bind(func, args, kwargs)
        dim = bound.get("dim")
        if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
            mixed = set(range(x.dim()))
        else:
            mixed = {_norm_dim(d, x.dim()) for d in ([dim] if isinstance(dim, int) else dim)}
        _mix(rec, func, x, out, mixed, bool(bound.get("keepdim", default_keep)))
    return fn


for _name in ("mean", "sum", "amax", "amin", "max", "min", "var", "std", "var_mean", "std_mean", "logsumexp",
              "norm", "linalg_vector_norm", "argmax", "argmin", "prod", "nansum", "any", "all", "count_nonzero"):
    if hasattr(aten, _name):
        RULES[getattr(aten, _name)] = _reduce_rule()
for _name in ("_softmax", "_log_softmax", "_safe_softmax", "softmax", "log_softmax"):
    RULES[getattr(aten, _name)] = _reduce_rule(default_keep=True)


@rule(aten.native_layer_norm)
def _layer_norm(rec, func, args, kwargs, out):
    x, shape = args[0], args[1]
    _mix(rec, func, x, out[0], set(range(x.dim() - len(shape), x.dim())), True, normalises=True)


@rule(aten.native_group_norm)
def _group_norm(rec, func, args, kwargs, out):
    x = args[0]
    _mix(rec, func, x, out[0], set(range(1, x.dim())), True, normalises=True)


@rule(aten.native_batch_norm, aten._native_batch_norm_legit)
def _batch_norm(rec, func, args, kwargs, out):
    x = args[0]
    training = args[5] if len(args) > 5 else kwargs.get("training", False)
    if not training:
        return rec.carry(out[0], rec.state(x), rec.state(x).dims)
    _mix(rec, func, x, out[0], {0} | set(range(2, x.dim())), True, normalises=True)


def _matmul(rec, func, a, b, out):
    """``out[..., i, j] = sum_k a[..., i, k] * b[..., k, j]`` (mm, bmm, addmm, attention)."""
    sa, sb = rec.state(a), rec.state(b)
    nd = out.dim()
    dims: list[tuple] = []
    for j in range(nd - 2):  # batch dims: elementwise
        cands = [s.dims[j - (nd - t.dim())] for t, s in ((a, sa), (b, sb)) if s is not None and j >= nd - t.dim()]
        dims.append(next((c for c in cands if c), ()))
    row = sa.dims[-2] if sa is not None else D.other(out.shape[-2])
    col = sb.dims[-1] if sb is not None else D.other(out.shape[-1])
    clash = D.axes_of(row) & D.axes_of(col)
    mixed_b = list(sb.dims[-2]) if sb is not None else []
    if clash:  # a[i] against b[j] along one axis (attention scores): every j reaches every i
        mixed_b += D.spatial_atoms(col)
        col = D.other(out.shape[-1])
    dims = tuple(dims) + (row, col)
    operands = [(st, m) for st, m in ((sa, list(sa.dims[-1]) if sa is not None else []), (sb, mixed_b))
                if st is not None]
    _same_resolution(rec, func, [st for st, _ in operands], [m for _, m in operands])
    states, reads, changed, out_dims = [], [], False, None
    for st, mixed in operands:
        r, odims, ch = _mix_reads(rec, st, mixed, dims)
        if out_dims is not None and odims != out_dims:
            raise rec.unsupported(func, "a matrix product whose operands pool different blocks of a spatial axis")
        out_dims = odims
        states.append(st)
        reads.append(r)
        changed |= ch
    dims = out_dims
    hidden = frozenset().union(*(_hidden_after(st, dims) for st in states))
    if not changed and len(states) == 1:
        return rec.carry(out, states[0], dims, hidden)
    rec.emit(func, out, states, reads, dims, hidden)


@rule(aten.mm, aten.bmm)
def _mm(rec, func, args, kwargs, out):
    _matmul(rec, func, args[0], args[1], out)


@rule(aten.addmm, aten.baddbmm)
def _addmm(rec, func, args, kwargs, out):
    if rec.state(args[0]) is not None and (rec.state(args[1]) is not None or rec.state(args[2]) is not None):
        raise rec.unsupported(func, "a matrix product added to an input-dependent tensor")
    if rec.state(args[0]) is not None:
        return pointwise(rec, func, (args[0],), {}, out)
    _matmul(rec, func, args[1], args[2], out)


def _sdpa(rec, func, args, kwargs, out):
    """Fused attention (seen when capturing on a real device): each query reads every key and value token."""
    q, k, v = args[:3]
    o = out[0] if isinstance(out, (tuple, list)) else out
    sq = rec.state(q)
    operands = [(rec.state(t), [] if t is q else list(rec.state(t).dims[-2])) for t in (q, k, v)
                if rec.state(t) is not None]
    _same_resolution(rec, func, [st for st, _ in operands], [m for _, m in operands])
    dims = (tuple(sq.dims[:-1]) + (D.other(o.shape[-1]),)) if sq is not None else tuple(D.other(s) for s in o.shape)
    states, reads = [], []
    for t in (q, k, v):
        st = rec.state(t)
        if st is not None:
            states.append(st)
            reads.append(rec.identity_reads(st) if t is q else _mix_reads(rec, st, list(st.dims[-2]), dims)[0])
    rec.emit(func, o, states, reads, dims)


for _name in dir(aten):
    if _name.startswith("_scaled_dot_product") and "backward" not in _name:
        RULES[getattr(aten, _name)] = _sdpa


@rule(aten.fill_, aten.zero_, aten.zeros_like, aten.ones_like, aten.empty_like, aten.full_like, aten.rand_like,
      aten.randn_like, aten.new_empty, aten.new_zeros, aten.new_ones, aten.new_full, aten.bernoulli_)
def _constant(rec, func, args, kwargs, out):
    """Ops whose output does not depend on the values of their input (it may still have the map's shape)."""
    source = rec.state(args[0]) if args else None
    if isinstance(out, torch.Tensor) and out in rec.states:
        del rec.states[out]
    if isinstance(out, torch.Tensor) and source is not None and source.has_spatial():
        rec.shaped[out] = True


def not_spatial(rec, func, args, kwargs, out):
    """An op without a rule: fine on tensors that hold no spatial axis (pooled features, logits)."""
    stateful = [rec.state(t) for t in pytree.tree_leaves((args, kwargs)) if rec.state(t) is not None]
    if any(st.has_spatial() for st in stateful):
        axes = sorted(set().union(*(D.axes_of(a) for st in stateful for a in st.dims)))
        raise rec.unsupported(func, f"it touches spatial axes {axes} and rflens has no rule for it")
    hidden = frozenset().union(*(st.hidden for st in stateful))
    for o in pytree.tree_leaves(out):
        if isinstance(o, torch.Tensor):
            rec.set(o, State(stateful[0].node, tuple(D.other(s) for s in o.shape), hidden))



"""Gradient-support oracle for theoretical receptive fields (independent of rflens).

The idea (Araujo et al. 2019, Distill; /work/shared/ARCHITECTURE.md "Independent checks"): make a network
*monotone* -- every weight strictly positive, biases zero, normalisation layers neutral, every pointwise
nonlinearity the identity, every max pooling a sum over the same windows -- and feed it a positive input.
Then every partial derivative d(unit)/d(pixel) is a sum of products of positive numbers over all paths that
join the pixel to the unit, so it is non-zero **exactly** when at least one path exists: the support of the
input gradient is the theoretical receptive field (union over all paths, holes included).

Conventions (per spatial axis): input pixels are ``0..n-1``; output unit ``u`` covers input pixels
``[u*S - P, u*S - P + r - 1]`` before clipping, where ``r`` is the span of the support (holes included),
``S`` the effective stride and ``P`` the effective padding.

Public API
----------
``linearise(model, seed=0)``
    Deep copy in float64 with the replacements above (the copy is in eval mode, parameters frozen).
``gradient_map(model, input_shape, unit, layer=None, zero_pad=False)``
    d(sum over channels of the captured output at ``unit``)/d(input), summed over input channels (float64).
``gradient_support(model, input_shape, unit, layer=None, zero_pad=False)``
    Bool array of the spatial input shape: the gradient is non-zero on some input channel.
``support_bounds(model, input_shape, units, layer=None, zero_pad=False)``
    Per unit, per axis, the ``(first, last)`` input index of the (clipped) support, or ``None`` if empty.
    Use it for networks with upsampling, where strides are rational and ``oracle_rf`` does not apply.
``oracle_rf(model, input_shape, layer=None)``
    ``{"rf": [...], "stride": [...], "padding": [...], "unit": [...]}`` per axis, from two adjacent units.
``output_shape(model, input_shape, layer=None)``
    Spatial shape of the captured output.

``input_shape`` is ``(1, C, *spatial)`` with 1, 2 or 3 spatial axes; ``unit`` indexes the spatial axes of the
captured output. By default the model's padding modes are honoured (a border unit behind reflection padding
depends on mirrored pixels); ``zero_pad=True`` turns reflect/replicate/circular padding into zero padding
of the same amounts (``oracle_rf`` always does, see there).

Layers are addressed by their ``named_modules()`` name; the output of the *first* call of that module is
captured and the forward pass is stopped right there (so deep models are cheap to probe at shallow layers).

Besides the module replacements done by ``linearise``, every forward pass of this oracle runs under a
``TorchFunctionMode`` that makes *functional* nonlinearities (``F.relu``, ``x.relu()``, ``F.hardtanh``,
``F.softmax``, ``clamp``...) the identity, turns functional max pooling (``F.max_pool2d``; this also covers
subclasses of ``nn.MaxPool2d`` with their own ``forward``, such as TF-"same" pools) into the linear window
sum, and turns ``-inf`` constant padding (used in front of TF-"same" max pools) into zero padding.

"Unclipped" (``oracle_rf``, ``reads_padding``): instead of guessing from the border distance, the oracle
*tags padding*. During its forward pass every padded position -- ``F.pad`` of any mode, the implicit
padding of convolutions (``padding=int`` or ``'same'``) and average pools, the extra zeros behind
``ceil_mode`` windows, the outputs of a transposed conv that read outside its input -- gets a zero-valued
"ghost" scalar per batch item and axis added, and the gradient with respect to the ghost is non-zero
exactly when the unit reads a position outside the image (or outside an intermediate map) along that axis.
A unit that reads no padding has its whole theoretical RF inside the image, so its support is exact.
Supply an input big enough that two adjacent central units have their RF ``[u*S - P, u*S - P + r - 1]``
inside ``[0, n - 1]``; the oracle tries the most central pairs first and moves outwards. The two units of
a pair must in addition be exact translates of each other by a positive shift (this rejects rational
strides after upsampling). Limitation: padding applied to tensors that are not laid out as
``(B, C, *spatial)`` of the probed input is not tagged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = [
    "LinearMaxPool",
    "gradient_map",
    "gradient_support",
    "linearise",
    "oracle_rf",
    "output_shape",
    "pool_output_size",
    "reads_padding",
    "support_bounds",
]

# --------------------------------------------------------------------------------------------------------
# linear stand-in for max pooling
# --------------------------------------------------------------------------------------------------------


def _tuple(value, n: int) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return tuple(int(value[0]) for _ in range(n))
        if len(value) != n:
            raise ValueError(f"expected {n} values, got {value!r}")
        return tuple(int(v) for v in value)
    return tuple(int(value) for _ in range(n))


def pool_output_size(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output length (the rule of ``pooling_output_shape`` in ATen).

    With ``ceil_mode`` the last window is kept when it starts inside the input or the *left* padding, and
    dropped when it would start in the right padding.
    """
    span = n + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def _linear_max_pool(x: torch.Tensor, ndim: int, kernel, stride, padding, dilation, ceil_mode,
                     pad_fn=None, ones: bool = False) -> torch.Tensor:
    """Sum (normalised; a plain sum with ``ones``) over exactly the windows a max pool of this geometry would
    read.

    Zero padding on both sides plus, when ``ceil_mode`` asks for a last partial window, extra zeros on the
    right: zeros contribute nothing and receive no gradient, just like ``-inf`` padding of a max pool.
    """
    k = _tuple(kernel, ndim)
    s = _tuple(stride if stride not in (None, (), []) else kernel, ndim)
    p = _tuple(padding, ndim)
    d = _tuple(dilation, ndim)
    spatial = x.shape[-ndim:]
    outs = [pool_output_size(spatial[i], k[i], s[i], p[i], d[i], bool(ceil_mode)) for i in range(ndim)]
    pads: list[int] = []
    for i in reversed(range(ndim)):  # F.pad wants the last axis first
        needed = (outs[i] - 1) * s[i] + d[i] * (k[i] - 1) + 1
        right = p[i] + max(needed - (spatial[i] + 2 * p[i]), 0)
        pads += [p[i], right]
    batched = x.dim() == ndim + 2
    y = x if batched else x.unsqueeze(0)
    y = F.pad(y, pads) if pad_fn is None else pad_fn(y, pads)
    channels = y.shape[1]
    weight = torch.full((channels, 1, *k), 1.0 if ones else 1.0 / math.prod(k), dtype=y.dtype,
                        device=y.device)
    conv = (F.conv1d, F.conv2d, F.conv3d)[ndim - 1]
    y = conv(y, weight, stride=s, dilation=d, groups=channels)
    y = y[(slice(None), slice(None), *(slice(0, o) for o in outs))]
    return y if batched else y.squeeze(0)


class LinearMaxPool(nn.Module):
    """Drop-in for ``nn.MaxPool{1,2,3}d`` that sums over the same windows (same output size); the sum is
    normalised by the window size unless ``ones`` (then every tap has weight exactly 1: path counting)."""

    def __init__(self, ndim: int, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 ones: bool = False):
        super().__init__()
        self.ndim = ndim
        self.kernel_size = kernel_size
        self.stride = stride if stride not in (None, (), []) else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = ceil_mode
        self.ones = ones

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear_max_pool(x, self.ndim, self.kernel_size, self.stride, self.padding, self.dilation,
                                self.ceil_mode, ones=self.ones)

    def extra_repr(self) -> str:
        return (f"ndim={self.ndim}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, ceil_mode={self.ceil_mode}")


# --------------------------------------------------------------------------------------------------------
# linearise
# --------------------------------------------------------------------------------------------------------

_NONLINEAR_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Hardshrink, nn.Softshrink, nn.Tanhshrink, nn.Sigmoid,
    nn.LogSigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Threshold, nn.Softmax, nn.Softmin, nn.LogSoftmax,
    nn.Softmax2d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
# statistics over space (or non-monotone rescaling): identity keeps the geometry and removes cancellations
_NORM_MODULES: tuple[type[nn.Module], ...] = (
    nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
_BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_MAXPOOL_TYPES = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}
_ADAPTIVE_MAX = {nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool3d: nn.AdaptiveAvgPool3d}


def _replacement(module: nn.Module) -> nn.Module | None:
    if isinstance(module, _NONLINEAR_MODULES) or isinstance(module, _NORM_MODULES):
        return nn.Identity()
    ndim = _MAXPOOL_TYPES.get(type(module))  # exact type: subclasses keep their own forward (mode handles it)
    if ndim is not None:
        if module.return_indices:
            raise ValueError("max pooling with return_indices=True cannot be linearised")
        return LinearMaxPool(ndim, module.kernel_size, module.stride, module.padding, module.dilation,
                             module.ceil_mode)
    adaptive = _ADAPTIVE_MAX.get(type(module))
    if adaptive is not None:
        return adaptive(module.output_size)
    return None


def _replace_children(module: nn.Module) -> None:
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        new = _replacement(child)
        if new is not None:
            module._modules[name] = new
        else:
            _replace_children(child)


_LINEAR_WEIGHT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


@torch.no_grad()
def linearise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Monotone float64 copy of ``model`` whose input-gradient support is its receptive field.

    * conv / transposed conv / linear weights: random values in [0.5, 1.5] (a fixed ``seed``), normalised so
      that the weights feeding each output channel sum to 1 (activations stay near 1 even in very deep
      networks, so nothing overflows or underflows in float64); biases zero;
    * BatchNorm: running mean 0, running var 1, weight 1, bias 0, eval mode;
    * GroupNorm / LayerNorm / InstanceNorm / LRN / RMSNorm, every pointwise nonlinearity, softmax and
      dropout: ``nn.Identity``;
    * ``nn.MaxPool{1,2,3}d`` (exact type): :class:`LinearMaxPool` (same windows, same output size, incl.
      ``ceil_mode`` and dilation); adaptive max pools: adaptive average pools (same windows);
    * any other floating parameter: ``abs() + 0.1`` (e.g. layer scales; an additive parameter such as a
      position embedding does not matter).

    The model must use modules (or the functional ops listed in the module docstring) for its max pools
    and nonlinearities; anything else non-monotone (e.g. ``x - pool(x)``) may cancel gradients.
    """
    lin = copy.deepcopy(model).double().eval()
    _replace_children(lin)
    gen = torch.Generator().manual_seed(seed)
    handled: set[int] = set()
    for mod in lin.modules():
        if isinstance(mod, _LINEAR_WEIGHT_TYPES):
            w = mod.weight
            values = torch.rand(w.shape, generator=gen, dtype=torch.float64) + 0.5
            # output channel is dim 0 for conv/linear, dim 1 for transposed conv
            out_dim = 1 if getattr(mod, "transposed", False) else 0
            other = tuple(i for i in range(values.dim()) if i != out_dim)
            values = values / values.sum(dim=other, keepdim=True)
            w.copy_(values)
            handled.add(id(w))
            if mod.bias is not None:
                mod.bias.zero_()
                handled.add(id(mod.bias))
        elif isinstance(mod, _BN_MODULES):
            if mod.running_mean is not None:
                mod.running_mean.zero_()
                mod.running_var.fill_(1.0)
            else:  # no running stats: batch statistics would couple pixels; make it the identity
                mod.track_running_stats = True
                mod.register_buffer("running_mean", torch.zeros(mod.num_features, dtype=torch.float64))
                mod.register_buffer("running_var", torch.ones(mod.num_features, dtype=torch.float64))
            if mod.weight is not None:
                mod.weight.fill_(1.0)
                mod.bias.zero_()
                handled.update((id(mod.weight), id(mod.bias)))
    for p in lin.parameters():
        if id(p) not in handled and p.is_floating_point():
            p.copy_(p.abs() + 0.1)
        p.requires_grad_(False)
    return lin


# --------------------------------------------------------------------------------------------------------
# functional safety net
# --------------------------------------------------------------------------------------------------------

_IDENTITY_FUNCS = {
    F.relu, F.relu_, F.relu6, F.hardtanh, F.hardtanh_, F.leaky_relu, F.leaky_relu_, F.elu, F.elu_, F.selu,
    F.selu_, F.celu, F.celu_, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh,
    F.softplus, F.softsign, F.logsigmoid, F.rrelu, F.rrelu_, F.threshold, F.threshold_, F.softmax, F.softmin,
    F.log_softmax, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.clamp, torch.clip, torch.clamp_min,
    torch.clamp_max, torch.softmax, torch.log_softmax, torch.dropout,
    torch.Tensor.relu, torch.Tensor.relu_, torch.Tensor.sigmoid, torch.Tensor.sigmoid_, torch.Tensor.tanh,
    torch.Tensor.tanh_, torch.Tensor.clamp, torch.Tensor.clamp_, torch.Tensor.clip, torch.Tensor.clip_,
    torch.Tensor.clamp_min, torch.Tensor.clamp_min_, torch.Tensor.clamp_max, torch.Tensor.clamp_max_,
    torch.Tensor.softmax, torch.Tensor.log_softmax,
}
_MAXPOOL_FUNCS = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3,
                  torch.max_pool1d: 1, torch.max_pool2d: 2, torch.max_pool3d: 3}
_MAXPOOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_CONV_FUNCS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_TCONV_FUNCS = {F.conv_transpose1d: 1, F.conv_transpose2d: 2, F.conv_transpose3d: 3}
_TCONV_ARGS = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
_AVGPOOL_FUNCS = {F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3}
_AVGPOOL_ARGS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                 "divisor_override")


def _bind(names, args, kwargs) -> dict:
    bound = dict(zip(names, args, strict=False))
    bound.update(kwargs)
    return bound


class _MonotoneMode(TorchFunctionMode):
    """Makes functional nonlinearities / max pools / ``-inf`` padding monotone during the oracle's forward.

    ``zero_pad=True``: every ``F.pad`` in reflect/replicate/circular mode (pad modules, convs with a
    ``padding_mode``) becomes zero padding of the same amounts.

    ``ghost`` (a ``(B, ndim)`` tensor of zeros that requires grad; implies ``zero_pad``): every padded
    position -- ``F.pad``, the implicit padding of convolutions (incl. ``'same'``) and average pools, the
    extra right windows of ``ceil_mode`` pools -- and every output of a transposed convolution that reads a
    position outside its input (its implicit full padding, incl. the ``output_padding`` tail) gets the value
    ``ghost[b, a]`` added, where ``a`` is the spatial axis concerned.
    The forward values do not change; d(unit of batch item b)/d(ghost[b, a]) is non-zero exactly when that
    unit reads a virtual position outside the image (or outside an intermediate map) along axis ``a``.
    """

    def __init__(self, zero_pad: bool = False, ghost: torch.Tensor | None = None):
        super().__init__()
        self.zero_pad = zero_pad or ghost is not None
        self.ghost = ghost

    # -- helpers (run with the mode switched off, inside __torch_function__) --------------------------

    def _ghost_mask_add(self, y: torch.Tensor, ranges: list[tuple[int, int, int]]) -> torch.Tensor:
        """Add ghost[b, axis] on the index ranges [lo, hi) of the given spatial axes of y (B, C, *sp)."""
        ndim = self.ghost.shape[1]
        if y.dim() != ndim + 2 or y.shape[0] != self.ghost.shape[0]:
            return y  # not a (B, C, *spatial) map of this input: no attribution (documented limitation)
        for axis, lo, hi in ranges:
            if hi <= lo:
                continue
            n = y.shape[2 + axis]
            idx = torch.arange(n, device=y.device)
            mask = ((idx >= lo) & (idx < hi)).to(y.dtype)
            shape = [1] * y.dim()
            shape[2 + axis] = n
            y = y + self.ghost[:, axis].view(-1, *([1] * (y.dim() - 1))) * mask.view(shape)
        return y

    def _pad(self, x: torch.Tensor, pads) -> torch.Tensor:
        """Zero padding (F.pad order: last axis first) + ghost on the padded positions."""
        pads = [int(p) for p in pads]
        y = F.pad(x, pads)
        if self.ghost is None:
            return y
        ranges = []
        nsp = y.dim() - 2
        for j in range(len(pads) // 2):
            before, after = pads[2 * j], pads[2 * j + 1]
            axis = nsp - 1 - j
            n = y.shape[-1 - j]
            if before > 0:
                ranges.append((axis, 0, before))
            if after > 0:
                ranges.append((axis, n - after, n))
        return self._ghost_mask_add(y, ranges)

    # -- dispatch -------------------------------------------------------------------------------------

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _IDENTITY_FUNCS:
            return args[0] if args else kwargs["input"]
        ndim = _MAXPOOL_FUNCS.get(func)
        if ndim is not None:
            b = _bind(_MAXPOOL_ARGS, args, kwargs)
            if b.get("return_indices"):
                raise ValueError("max pooling with return_indices=True cannot be linearised")
            return _linear_max_pool(b["input"], ndim, b["kernel_size"], b.get("stride"), b.get("padding", 0),
                                    b.get("dilation", 1), b.get("ceil_mode", False),
                                    pad_fn=self._pad if self.ghost is not None else None)
        if func is F.pad:
            b = _bind(("input", "pad", "mode", "value"), args, kwargs)
            mode = b.get("mode", "constant")
            value = b.get("value")
            if mode == "constant" and (self.ghost is not None or (value is not None and math.isinf(value))):
                return self._pad(b["input"], b["pad"])
            if self.zero_pad and mode != "constant":
                return self._pad(b["input"], b["pad"])
            return func(*args, **kwargs)
        if self.ghost is None:
            return func(*args, **kwargs)
        ndim = _CONV_FUNCS.get(func)
        if ndim is not None:
            return self._conv(func, ndim, _bind(_CONV_ARGS, args, kwargs))
        ndim = _AVGPOOL_FUNCS.get(func)
        if ndim is not None:
            return self._avg_pool(func, ndim, _bind(_AVGPOOL_ARGS, args, kwargs))
        ndim = _TCONV_FUNCS.get(func)
        if ndim is not None:
            return self._tconv(func, ndim, args, kwargs)
        return func(*args, **kwargs)

    def _conv(self, func, ndim: int, b: dict) -> torch.Tensor:
        padding = b.get("padding", 0)
        dilation = _tuple(b.get("dilation", 1), ndim)
        kernel = tuple(b["weight"].shape[2:])
        if padding == "valid":
            pad = [(0, 0)] * ndim
        elif padding == "same":  # PyTorch: total d*(k-1), left total//2, the odd one on the right
            pad = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation,
                                                                                       strict=True)]
        else:
            pad = [(p, p) for p in _tuple(padding, ndim)]
        x = b["input"]
        if any(p for pair in pad for p in pair):
            x = self._pad(x, [v for pair in reversed(pad) for v in pair])
        return func(x, b["weight"], b.get("bias"), b.get("stride", 1), 0, dilation, b.get("groups", 1))

    def _avg_pool(self, func, ndim: int, b: dict) -> torch.Tensor:
        x = b["input"]
        k = _tuple(b["kernel_size"], ndim)
        stride = b.get("stride")
        s = _tuple(stride if stride not in (None, (), []) else b["kernel_size"], ndim)
        p = _tuple(b.get("padding", 0), ndim)
        ceil_mode = bool(b.get("ceil_mode", False))
        if not any(p) and not ceil_mode:
            return func(x, k, s)
        spatial = x.shape[-ndim:]
        outs = [pool_output_size(spatial[i], k[i], s[i], p[i], 1, ceil_mode) for i in range(ndim)]
        pads: list[int] = []
        for i in reversed(range(ndim)):
            needed = (outs[i] - 1) * s[i] + k[i]
            pads += [p[i], p[i] + max(needed - (spatial[i] + 2 * p[i]), 0)]
        y = func(self._pad(x, pads), k, s)
        return y[(Ellipsis, *(slice(0, o) for o in outs))]

    def _tconv(self, func, ndim: int, args, kwargs) -> torch.Tensor:
        """Output position o reads input i = (o + p - j*d) / s for the taps j with an integer quotient; tag
        o when one of those i lies outside [0, n) (the implicit full padding of a transposed conv, incl.
        the ``output_padding`` tail)."""
        y = func(*args, **kwargs)
        b = _bind(_TCONV_ARGS, args, kwargs)
        x = b["input"]
        k = tuple(b["weight"].shape[2:])
        s = _tuple(b.get("stride", 1), ndim)
        p = _tuple(b.get("padding", 0), ndim)
        d = _tuple(b.get("dilation", 1), ndim)
        if y.dim() != ndim + 2 or y.shape[0] != self.ghost.shape[0]:
            return y
        for a in range(ndim):
            n, m = x.shape[-ndim + a], y.shape[-ndim + a]
            f = np.arange(m) + p[a]
            virtual = np.zeros(m, dtype=bool)
            for j in range(k[a]):
                t = f - j * d[a]
                i = t // s[a]
                virtual |= (t % s[a] == 0) & ((i < 0) | (i >= n))
            if virtual.any():
                shape = [1] * y.dim()
                shape[2 + a] = m
                mask = torch.as_tensor(virtual, dtype=y.dtype, device=y.device).view(shape)
                y = y + self.ghost[:, a].view(-1, *([1] * (y.dim() - 1))) * mask
        return y


# --------------------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot take a spatial unit of an output of type {type(out).__name__}")


def _forward(model: nn.Module, x: torch.Tensor, layer: str | None, mode: _MonotoneMode) -> torch.Tensor:
    """Output of ``layer`` (first call) or of the model, stopping the forward pass early."""
    if layer is None:
        with mode:
            return _first_tensor(model(x))
    modules = dict(model.named_modules())
    if layer not in modules:
        raise KeyError(f"no module named {layer!r}; some names: {list(modules)[:20]}")
    captured: list[torch.Tensor] = []

    def hook(_mod, _inp, out):
        captured.append(_first_tensor(out))
        raise _Stop

    handle = modules[layer].register_forward_hook(hook)
    try:
        with mode:
            model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"module {layer!r} was never called in the forward pass")
    return captured[0]


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float64


def _model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _gradient_maps(model: nn.Module, input_shape: Sequence[int], units: Sequence[Sequence[int]],
                   layer: str | None, zero_pad: bool = False,
                   ghost: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One batched forward/backward: batch item b carries the gradient of unit ``units[b]``.

    Exact because the linearised model is in eval mode (no coupling between batch items).
    Returns (gradients summed over input channels, non-zero anywhere over input channels) of shape
    (B, *spatial), and with ``ghost`` a (B, ndim) bool array: the unit reads padding along that axis
    (``ghost`` implies ``zero_pad``; see :class:`_MonotoneMode`).
    """
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) < 3 or input_shape[0] != 1:
        raise ValueError(f"input_shape must be (1, C, *spatial), got {input_shape}")
    if not units:
        raise ValueError("no unit requested")
    spatial_in = input_shape[2:]
    dtype, device = _model_dtype(model), _model_device(model)
    x = torch.ones((len(units), *input_shape[1:]), dtype=dtype, device=device, requires_grad=True)
    g = torch.zeros((len(units), len(spatial_in)), dtype=dtype, device=device, requires_grad=True) \
        if ghost else None
    with torch.enable_grad():
        y = _forward(model, x, layer, _MonotoneMode(zero_pad, g))
        if y.dim() != len(spatial_in) + 2:
            raise ValueError(f"output of {layer or 'the model'} has shape {tuple(y.shape)}; expected "
                             f"(N, C, {len(spatial_in)} spatial dims)")
        out_spatial = tuple(y.shape[2:])
        target = y.new_zeros(())
        for b, unit in enumerate(units):
            unit = tuple(int(u) for u in unit)
            if len(unit) != len(out_spatial) or any(not 0 <= u < m for u, m in zip(unit, out_spatial,
                                                                                   strict=True)):
                raise IndexError(f"unit {unit} outside the output spatial shape {out_spatial}")
            target = target + y[(b, slice(None), *unit)].sum()
        inputs = (x, g) if ghost else (x,)
        grads = torch.autograd.grad(target, inputs, allow_unused=True)
    grad = grads[0] if grads[0] is not None else torch.zeros_like(x)
    grad = grad.detach()
    padded = None
    if ghost:
        gg = grads[1] if grads[1] is not None else torch.zeros_like(g)
        padded = (gg.detach() != 0).cpu().numpy()
    return grad.sum(dim=1).cpu().numpy(), (grad != 0).any(dim=1).cpu().numpy(), padded


def output_shape(model: nn.Module, input_shape: Sequence[int], layer: str | None = None) -> tuple[int, ...]:
    """Spatial shape of the captured output (forward only)."""
    input_shape = tuple(int(v) for v in input_shape)
    x = torch.ones(input_shape, dtype=_model_dtype(model), device=_model_device(model))
    with torch.no_grad():
        return tuple(_forward(model, x, layer, _MonotoneMode()).shape[2:])


def reads_padding(model: nn.Module, input_shape: tuple[int, ...], units: Sequence[tuple[int, ...]],
                  layer: str | None = None) -> list[list[bool]]:
    """Per unit, per axis: does the unit's theoretical RF reach outside the image along that axis, i.e. does
    it read a padded position (of the input or of any intermediate map; any padding mode counts) through
    some path? Exact for the linearised model (see :class:`_MonotoneMode`, ``ghost``)."""
    _, _, padded = _gradient_maps(model, input_shape, list(units), layer, ghost=True)
    return padded.tolist()


def gradient_map(model: nn.Module, input_shape: tuple[int, ...], unit: tuple[int, ...],
                 layer: str | None = None, zero_pad: bool = False) -> np.ndarray:
    """d(sum over channels of output[0, :, *unit])/d(input), summed over input channels (float64).

    ``zero_pad=True`` treats reflect/replicate/circular padding as zero padding (see :func:`oracle_rf`).
    """
    maps, _, _ = _gradient_maps(model, input_shape, [unit], layer, zero_pad)
    return maps[0]


def gradient_support(model: nn.Module, input_shape: tuple[int, ...], unit: tuple[int, ...],
                     layer: str | None = None, zero_pad: bool = False) -> np.ndarray:
    """Bool array (spatial input shape): pixels on which output unit ``unit`` of ``layer`` depends.

    ``model`` must already be linearised (see :func:`linearise`); the input is all ones in float64. By
    default the padding modes of the model are honoured (a border unit behind reflection padding depends on
    the reflected pixels); ``zero_pad=True`` treats every padding as zeros.
    """
    _, nonzero, _ = _gradient_maps(model, input_shape, [unit], layer, zero_pad)
    return nonzero[0]


def _axis_profile(support: np.ndarray, axis: int) -> np.ndarray:
    other = tuple(i for i in range(support.ndim) if i != axis)
    return support.any(axis=other) if other else support


def _bounds_1d(profile: np.ndarray) -> tuple[int, int] | None:
    idx = np.flatnonzero(profile)
    if idx.size == 0:
        return None
    return int(idx[0]), int(idx[-1])


def support_bounds(model: nn.Module, input_shape: tuple[int, ...], units: Sequence[tuple[int, ...]],
                   layer: str | None = None, zero_pad: bool = False) -> list[list[tuple[int, int] | None]]:
    """For each unit (one batched backward), per axis the (first, last) supported input index, clipped to
    the image; ``None`` on every axis when the unit reads nothing (e.g. an ``output_padding`` tail).
    ``zero_pad`` as in :func:`gradient_support`."""
    _, nonzero, _ = _gradient_maps(model, input_shape, list(units), layer, zero_pad)
    result = []
    for s in nonzero:
        result.append([_bounds_1d(_axis_profile(s, a)) for a in range(s.ndim)])
    return result


def _pair_units(point: Sequence[int], axis: int, u: int) -> list[tuple[int, ...]]:
    units = []
    for du in (0, 1):
        unit = list(point)
        unit[axis] = u + du
        units.append(tuple(unit))
    return units


def _clean(support: np.ndarray, padded: np.ndarray, axes: Sequence[int] | None = None) -> bool:
    """Non-empty support and no padded position read (along ``axes``; None: every axis)."""
    if not support.any():
        return False
    return not any(padded[a] for a in (range(len(padded)) if axes is None else axes))


def _pair_ok(s0, s1, p0, p1, axis: int, all_axes: bool) -> bool:
    """Both units clean (on ``axis`` or on every axis) and the second support is the first one shifted by a
    positive amount along ``axis``."""
    axes = None if all_axes else [axis]
    if not (_clean(s0, p0, axes) and _clean(s1, p1, axes)):
        return False
    q0, q1 = _axis_profile(s0, axis), _axis_profile(s1, axis)
    (f0, l0), (f1, l1) = _bounds_1d(q0), _bounds_1d(q1)
    return f1 > f0 and np.array_equal(q0[f0:l0 + 1], q1[f1:l1 + 1])


def oracle_rf(model: nn.Module, input_shape: tuple[int, ...], layer: str | None = None,
              max_tries: int = 64) -> dict:
    """RF size, stride and padding per axis of ``layer`` (None: model output) of a linearised model.

    A unit is *clean* (unclipped) when its support is non-empty and it reads no padded position along the
    axis, i.e. its theoretical RF lies inside the image: padded positions are tagged exactly with the
    ``ghost`` of :class:`_MonotoneMode` (input and intermediate padding, any padding mode, convs, pools,
    ``ceil_mode`` windows, ``output_padding`` tails). A pair ``(c, c + e_a)`` qualifies when both units are
    clean and the second support is an exact translate of the first along ``a`` by a positive shift.

    Fast path: ``c = max((m - 2) // 2, 0)`` on every axis (the most central pairs). Otherwise, per axis ``a``
    (other axes at that centre), left units ``u`` are tried from the centre outwards (at most ``max_tries``)
    until a pair qualifies along ``a``; the point made of the chosen ``u`` of every axis must then qualify
    on every axis. rf = span of the support along ``a`` (holes included), stride = start(c + e_a) -
    start(c), padding = c_a*stride - start(c).

    Raises ``ValueError`` if no pair qualifies: the input is too small for a unit to be clean, or the
    supports of clean adjacent units are not translates (rational strides after upsampling or strided
    transposed convs: use :func:`support_bounds` there). Returns ``{"rf": [...], "stride": [...],
    "padding": [...], "unit": [...]}`` (``unit``: the point ``c`` used).
    """
    out_spatial = output_shape(model, input_shape, layer)
    ndim = len(out_spatial)
    where = layer or "the model output"
    base = tuple(max((m - 2) // 2, 0) for m in out_spatial)
    for a in range(ndim):
        if out_spatial[a] < 2:
            raise ValueError(f"axis {a}: {where} has size {out_spatial[a]}; the oracle needs two adjacent "
                             f"units, so the input {tuple(input_shape)} is too small")

    def probe(units):
        _, sup, pad = _gradient_maps(model, input_shape, units, layer, ghost=True)
        return sup, pad

    # fast path: the central pair of every axis is fine
    units = [base] + [_pair_units(base, a, base[a])[1] for a in range(ndim)]
    sup, pad = probe(units)
    if all(_pair_ok(sup[0], sup[1 + a], pad[0], pad[1 + a], a, True) for a in range(ndim)):
        return _measure(sup, base)
    point = base
    for _ in range(3):  # the search may need to be redone around the point it found (dead border paths)
        chosen: list[int] = []
        for a in range(ndim):
            m = out_spatial[a]
            order = sorted(range(m - 1), key=lambda u, c=point[a]: (abs(u - c), u))[:max_tries]
            found = None
            mismatch = None
            for start in range(0, len(order), 4):
                cands = order[start:start + 4]
                units = [unit for u in cands for unit in _pair_units(point, a, u)]
                sup, pad = probe(units)
                for i, u in enumerate(cands):
                    i0, i1 = 2 * i, 2 * i + 1
                    if _pair_ok(sup[i0], sup[i1], pad[i0], pad[i1], a, False):
                        found = u
                        break
                    if mismatch is None and _clean(sup[i0], pad[i0], [a]) and _clean(sup[i1], pad[i1], [a]):
                        mismatch = (units[i0], units[i1])
                if found is not None:
                    break
            if found is None:
                if mismatch is not None:
                    raise ValueError(f"axis {a}: clean adjacent units of {where} (e.g. {mismatch[0]} and "
                                     f"{mismatch[1]}) are not translates of each other by a positive shift: "
                                     f"rational stride (upsampling / strided transposed conv)?")
                raise ValueError(f"axis {a}: no two adjacent units of {where} (output spatial shape "
                                 f"{out_spatial}) have receptive fields inside the image (they read "
                                 f"padding); the input {tuple(input_shape)} is too small for the oracle")
            chosen.append(found)
        point = tuple(chosen)
        units = [point] + [_pair_units(point, a, chosen[a])[1] for a in range(ndim)]
        sup, pad = probe(units)
        if all(_pair_ok(sup[0], sup[1 + a], pad[0], pad[1 + a], a, True) for a in range(ndim)):
            return _measure(sup, point)
    raise ValueError(f"no unit of {where} has clean neighbours along every axis at once (each axis alone "
                     f"has a good pair); the input {tuple(input_shape)} is too small for the oracle")


def _measure(sup: np.ndarray, point: tuple[int, ...]) -> dict:
    rf, stride, padding = [], [], []
    for a in range(len(point)):
        f0, l0 = _bounds_1d(_axis_profile(sup[0], a))
        f1, _ = _bounds_1d(_axis_profile(sup[1 + a], a))
        rf.append(l0 - f0 + 1)
        stride.append(f1 - f0)
        padding.append(point[a] * (f1 - f0) - f0)
    return {"rf": rf, "stride": stride, "padding": padding, "unit": list(point)}

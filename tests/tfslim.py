"""TF-Slim network layouts rebuilt in plain PyTorch (geometry only; independent of rflens).

Only the spatial geometry matters for receptive fields, so channel counts are scaled by ``width``
(``max(1, round(c * width))`` channels) to keep tests cheap. Every builder takes ``ndim`` (1, 2 or 3; default
2): the per-axis geometry is identical for any number of spatial axes, and 1-D copies make the very deep
ResNets affordable for the gradient oracle.

Every builder returns a :class:`SlimNet` whose ``features`` attribute is an ``nn.Sequential`` named after
the TF-Slim scopes (``features.conv1``, ``features.block4``, ``features.Conv2d_13_pointwise``...). The model
output **is** the output of the module named ``features`` (the final feature map: ResNet ``block4``,
MobileNet ``Conv2d_13_pointwise``, AlexNet ``pool5``); no classifier head is built.

TF padding semantics used here
------------------------------
* ``'VALID'``: no padding.
* ``'SAME'``: output size ``ceil(n / s)``; total padding ``max((ceil(n/s) - 1)*s + k_eff - n, 0)``, split
  ``before = total // 2``, ``after = total - before`` (the extra pixel goes to the end). It depends on the
  input size ``n``, so it is computed in ``forward`` (:class:`TFSamePad`, zero-valued; in front of max pools
  the inputs are ReLU outputs >= 0, so zero padding selects the same maxima as TF's ignored padding).
* ``conv2d_same`` (``resnet_utils.conv2d_same``): stride 1 -> ``'SAME'``; stride > 1 -> explicit fixed
  padding ``pad_beg = (k_eff - 1) // 2``, ``pad_end = k_eff - 1 - pad_beg`` and a ``'VALID'`` conv, so the
  geometry does not depend on the input size.

Reference geometry (Araujo et al. 2019) and what produces it
-------------------------------------------------------------
* ``resnet_v1_{50,101,152,200}`` block4: rf 483/1027/1507/1763, stride 32, padding 239/511/751/879.
  Root: ``conv1`` = ``conv2d_same(7, stride 2)`` (fixed padding 3/3) and ``pool1`` = 3x3 stride-2 max pool
  with ``'SAME'`` padding; for an input size divisible by 4 the pool's input size is even and TF pads it
  0 before / 1 after, which is what gives padding 239. (With a true ``'SAME'`` ``conv1`` the padding at
  even sizes would be 2 instead of 3, i.e. 238 in total: see ``conv1_same=True``.) Bottleneck units:
  1x1 conv, 3x3 ``conv2d_same`` carrying the unit's stride, 1x1 conv; shortcut = the input subsampled by
  a 1x1 max pool with the unit's stride when the depth is unchanged, else a 1x1 conv with that stride;
  ``relu(shortcut + residual)``. Blocks ``(base depth, units, stride)``: (64, n1, 2), (128, n2, 2),
  (256, n3, 2), (512, n4, 1) with the stride in the **last** unit of a block; unit counts 50: [3, 4, 6, 3],
  101: [3, 4, 23, 3], 152: [3, 8, 36, 3], 200: [3, 24, 36, 3].
* ``mobilenet_v1`` Conv2d_13_pointwise: rf 315, stride 32, padding 126. ``Conv2d_0`` = 3x3 stride 2, then
  13 depthwise-separable layers (3x3 depthwise with strides 1,2,1,2,1,2,1,1,1,1,1,2,1, then 1x1
  pointwise), all ``'SAME'``. Every 3x3 stride-1 layer pads 1/1; every stride-2 layer pads **0 before /
  1 after** because its input size is even whenever the network input size is a multiple of 32 (the five
  stride-2 layers see n, n/2, n/4, n/8, n/16). Symmetric padding 1 everywhere would give 157 =
  126 + (1 + 2 + 4 + 8 + 16); the 'SAME' layout at input sizes divisible by 32 gives exactly 126. The rf
  3 + 2*(2 + 2 + 4 + 4 + 8 + 8 + 5*16 + 16 + 32) = 315 and the stride 32 do not depend on the padding.
* ``alexnet_v2`` pool5: rf 195, stride 32, padding 64. ``conv1`` 11x11 stride 4 ``'VALID'``, ``pool1`` 3x3
  stride 2 ``'VALID'``, ``conv2`` 5x5 ``'SAME'``, ``pool2`` 3x3/2 ``'VALID'``, ``conv3``-``conv5`` 3x3
  ``'SAME'``, ``pool5`` 3x3/2 ``'VALID'`` (TF-Slim's arg scope: convs 'SAME', pools 'VALID'). Stride-1
  'SAME' convs with odd kernels pad symmetrically, so the padding is 2*8 + 3*16 = 64 at any input size.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "RESNET_V1_UNITS",
    "SlimNet",
    "TFSamePad",
    "alexnet_v2",
    "mobilenet_v1",
    "resnet_v1",
]

RESNET_V1_UNITS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3], 200: [3, 24, 36, 3]}

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class TFSamePad(nn.Module):
    """Zero padding that makes a following VALID window op behave like TF ``'SAME'`` (size-dependent)."""

    def __init__(self, ndim: int, kernel: int, stride: int, dilation: int = 1):
        super().__init__()
        self.ndim, self.kernel, self.stride, self.dilation = ndim, kernel, stride, dilation

    def amounts(self, n: int) -> tuple[int, int]:
        k_eff = self.dilation * (self.kernel - 1) + 1
        total = max((math.ceil(n / self.stride) - 1) * self.stride + k_eff - n, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for n in reversed(x.shape[-self.ndim:]):  # F.pad order: last axis first
            pads += list(self.amounts(int(n)))
        if not any(pads):
            return x
        return F.pad(x, pads)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, dilation={self.dilation}"


def _conv_unit(ndim: int, cin: int, cout: int, k: int, stride: int, padding: str, groups: int = 1,
               bn: bool = True, act: str | None = "relu") -> nn.Sequential:
    """``slim.conv2d`` (+ batch norm + activation). ``padding``: 'SAME', 'VALID' or 'conv2d_same'."""
    layers: list[tuple[str, nn.Module]] = []
    if padding == "SAME" or (padding == "conv2d_same" and stride == 1):
        if k > 1 or stride > 1:
            layers.append(("pad", TFSamePad(ndim, k, stride)))
    elif padding == "conv2d_same":
        beg = (k - 1) // 2
        end = k - 1 - beg
        layers.append(("pad", nn.Identity() if beg == end == 0 else _ConstPad(ndim, beg, end)))
    elif padding != "VALID":
        raise ValueError(padding)
    layers.append(("conv", _CONV[ndim](cin, cout, k, stride=stride, groups=groups, bias=not bn)))
    if bn:
        layers.append(("bn", _BN[ndim](cout)))
    if act == "relu":
        layers.append(("relu", nn.ReLU()))
    elif act == "relu6":
        layers.append(("relu", nn.ReLU6()))
    return nn.Sequential(OrderedDict(layers))


class _ConstPad(nn.Module):
    """Fixed zero padding ``beg`` before / ``end`` after on every spatial axis."""

    def __init__(self, ndim: int, beg: int, end: int):
        super().__init__()
        self.ndim, self.beg, self.end = ndim, beg, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, [self.beg, self.end] * self.ndim)

    def extra_repr(self) -> str:
        return f"beg={self.beg}, end={self.end}"


class SlimNet(nn.Module):
    """Container: ``forward(x) = features(x)``."""

    def __init__(self, features: nn.Sequential, name: str):
        super().__init__()
        self.features = features
        self.slim_name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# --------------------------------------------------------------------------------------------------------
# ResNet v1
# --------------------------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """TF-Slim ``resnet_v1.bottleneck``: stride on the 3x3 ``conv2d_same``; ``relu(shortcut + residual)``."""

    def __init__(self, ndim: int, cin: int, depth: int, depth_bottleneck: int, stride: int):
        super().__init__()
        if cin == depth:
            # resnet_utils.subsample: 1x1 max pool with the stride (identity when stride 1)
            self.shortcut = nn.Identity() if stride == 1 else _MAXPOOL[ndim](1, stride=stride)
        else:
            self.shortcut = _conv_unit(ndim, cin, depth, 1, stride, "SAME", act=None)
        self.conv1 = _conv_unit(ndim, cin, depth_bottleneck, 1, 1, "SAME")
        self.conv2 = _conv_unit(ndim, depth_bottleneck, depth_bottleneck, 3, stride, "conv2d_same")
        self.conv3 = _conv_unit(ndim, depth_bottleneck, depth, 1, 1, "SAME", act=None)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.shortcut(x) + self.conv3(self.conv2(self.conv1(x))))


def resnet_v1(depth: int = 50, width: float = 1 / 16, ndim: int = 2, in_channels: int = 3,
              conv1_same: bool = False) -> SlimNet:
    """TF-Slim ``resnet_v1_<depth>`` up to ``block4`` (module ``features``; also ``features.block1..4``).

    ``conv1_same=True`` replaces the root ``conv2d_same`` by a true size-dependent ``'SAME'`` conv (not the
    TF-Slim layout; only to show that it changes the padding). Input sizes divisible by 4 reproduce the
    reference padding (see the module docstring).
    """
    if depth not in RESNET_V1_UNITS:
        raise ValueError(f"depth must be one of {sorted(RESNET_V1_UNITS)}")
    layers: list[tuple[str, nn.Module]] = []
    c64 = _ch(64, width)
    root_padding = "SAME" if conv1_same else "conv2d_same"
    layers.append(("conv1", _conv_unit(ndim, in_channels, c64, 7, 2, root_padding)))
    layers.append(("pool1", nn.Sequential(OrderedDict([("pad", TFSamePad(ndim, 3, 2)),
                                                       ("pool", _MAXPOOL[ndim](3, stride=2))]))))
    cin = c64
    for b, (base, units, stride) in enumerate(zip((64, 128, 256, 512), RESNET_V1_UNITS[depth], (2, 2, 2, 1),
                                                  strict=True)):
        block: list[tuple[str, nn.Module]] = []
        for i in range(units):
            unit_stride = stride if i == units - 1 else 1
            out = _ch(base * 4, width)
            block.append((f"unit_{i + 1}", Bottleneck(ndim, cin, out, _ch(base, width), unit_stride)))
            cin = out
        layers.append((f"block{b + 1}", nn.Sequential(OrderedDict(block))))
    return SlimNet(nn.Sequential(OrderedDict(layers)), f"resnet_v1_{depth}")


# --------------------------------------------------------------------------------------------------------
# MobileNet v1
# --------------------------------------------------------------------------------------------------------

# (kind, stride, depth) as in TF-Slim's MOBILENETV1_CONV_DEFS
MOBILENET_V1_DEFS = [("conv", 2, 32)] + [("sep", s, d) for s, d in [
    (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), (1, 512), (1, 512), (1, 512), (1, 512),
    (1, 512), (2, 1024), (1, 1024)]]


def mobilenet_v1(width: float = 1 / 16, ndim: int = 2, in_channels: int = 3) -> SlimNet:
    """TF-Slim ``mobilenet_v1_base`` up to ``Conv2d_13_pointwise`` (= module ``features``, the model output).

    All convs ``'SAME'`` (size-dependent, :class:`TFSamePad`), batch norm and ReLU6. Use input sizes that
    are multiples of 32 to reproduce the reference padding 126 (see the module docstring).
    """
    layers: list[tuple[str, nn.Module]] = []
    cin = in_channels
    for i, (kind, stride, depth) in enumerate(MOBILENET_V1_DEFS):
        cout = _ch(depth, width)
        if kind == "conv":
            layers.append((f"Conv2d_{i}", _conv_unit(ndim, cin, cout, 3, stride, "SAME", act="relu6")))
        else:
            layers.append((f"Conv2d_{i}_depthwise",
                           _conv_unit(ndim, cin, cin, 3, stride, "SAME", groups=cin, act="relu6")))
            layers.append((f"Conv2d_{i}_pointwise", _conv_unit(ndim, cin, cout, 1, 1, "SAME", act="relu6")))
        cin = cout
    return SlimNet(nn.Sequential(OrderedDict(layers)), "mobilenet_v1")


# --------------------------------------------------------------------------------------------------------
# AlexNet v2
# --------------------------------------------------------------------------------------------------------


def alexnet_v2(width: float = 1 / 16, ndim: int = 2, in_channels: int = 3) -> SlimNet:
    """TF-Slim ``alexnet_v2`` up to ``pool5`` (= module ``features``, the model output); no batch norm."""

    def conv(cin, cout, k, s, pad):
        return _conv_unit(ndim, cin, cout, k, s, pad, bn=False)

    def pool():
        return _MAXPOOL[ndim](3, stride=2)  # 'VALID'

    c64, c192, c384, c256 = (_ch(c, width) for c in (64, 192, 384, 256))
    layers = [
        ("conv1", conv(in_channels, c64, 11, 4, "VALID")),
        ("pool1", pool()),
        ("conv2", conv(c64, c192, 5, 1, "SAME")),
        ("pool2", pool()),
        ("conv3", conv(c192, c384, 3, 1, "SAME")),
        ("conv4", conv(c384, c384, 3, 1, "SAME")),
        ("conv5", conv(c384, c256, 3, 1, "SAME")),
        ("pool5", pool()),
    ]
    return SlimNet(nn.Sequential(OrderedDict(layers)), "alexnet_v2")

"""rflens against the independent gradient-support oracle (tests/oracle.py) on fixed and random architectures.

* Exact supports: for several units of every block, the pixels rflens says can influence the unit are exactly
  the pixels with a non-zero gradient in the linearised network (borders, padding modes, dilation holes,
  transposed convolutions and upsampling included).
* Distill numbers: rf, stride and padding agree with the oracle's measurement on two adjacent unclipped units.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from archgen import architectures
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from oracle import gradient_support, linearise, oracle_rf

import rflens

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def probe_units(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every corner, the centre, and the unit next to the first corner of a spatial output shape."""
    corners = list(itertools.product(*((0, n - 1) for n in shape)))
    centre = tuple(n // 2 for n in shape)
    second = tuple(min(1, n - 1) for n in shape)
    return list(dict.fromkeys([*corners, centre, second]))


def check_supports(model: nn.Module, input_shape: tuple[int, ...], names: list[str]) -> None:
    # the oracle runs in float64; interpolation taps of weight exactly zero depend on the dtype's rounding
    result = rflens.receptive_field(copy.deepcopy(model).double(), input_shape[2:], in_channels=input_shape[1])
    linear = linearise(model)
    for name in names:
        layer = result.layer(name)
        for unit in probe_units(layer.output_size):
            mine = result.support(name, unit)
            truth = gradient_support(linear, input_shape, unit, layer=name)
            assert mine.shape == truth.shape
            if not np.array_equal(mine, truth):
                raise AssertionError(f"support of {name}{unit} differs: rflens {np.argwhere(mine).tolist()[:12]} "
                                     f"vs oracle {np.argwhere(truth).tolist()[:12]}")


@settings(max_examples=250, **SETTINGS)
@given(arch=architectures())
def test_exact_support_on_random_architectures(arch):
    note(arch.describe())
    event(f"{arch.ndim}-D" + (", upsampling" if arch.has_upsampling else ""))
    check_supports(arch.build(), arch.input_shape, arch.checkpoints)


def _enlarged(arch, factor: int) -> tuple[int, ...]:
    return (*arch.input_shape[:2], *(n * factor for n in arch.input_shape[2:]))


@settings(max_examples=200, **SETTINGS)
@given(arch=architectures(allow_upsampling=False), factor=st.sampled_from([3, 4]))
def test_rf_stride_padding_agree_with_oracle(arch, factor):
    """rflens's numbers do not depend on the input size, so the oracle measures them on an input large enough
    for unclipped units."""
    note(arch.describe())
    model = arch.build()
    big = _enlarged(arch, factor)
    name = arch.integer_checkpoints[-1]
    try:
        truth = oracle_rf(linearise(model), big, layer=name)
    except (ValueError, RuntimeError) as exc:  # the model refuses the size, or no unit is unclipped
        note(f"oracle cannot measure: {exc}")
        event("oracle cannot measure at this size")
        return
    event(f"measured ({arch.ndim}-D, {len(arch.blocks)} blocks)")
    layer = rflens.receptive_field(model, big[2:], in_channels=big[1]).layer(name)
    assert list(layer.rf) == list(truth["rf"])
    assert list(layer.stride) == list(truth["stride"])
    assert list(layer.padding) == list(truth["padding"])


# -- fixed models with the oracle ---------------------------------------------------------------------------
def test_resnet_block_supports_match_oracle():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()
    check_supports(nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2),
                   (1, 3, 64, 64), ["4", "5"])


def test_resnet50_layer1_numbers_match_oracle():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet50()
    truth = oracle_rf(linearise(model), (1, 3, 96, 96), layer="layer1")
    layer = rflens.receptive_field(model, 96).layer("layer1")
    assert list(layer.rf) == truth["rf"] == [35, 35]
    assert list(layer.stride) == truth["stride"] and list(layer.padding) == truth["padding"]


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_interpolation_supports_match_oracle(mode, align_corners):
    if mode == "nearest" and align_corners:
        pytest.skip("nearest has no align_corners")
    kw = {} if mode == "nearest" else {"align_corners": align_corners}
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.Upsample(size=(13, 17), mode=mode, **kw),
                          nn.Conv2d(2, 1, 3, padding=1))
    check_supports(model, (1, 1, 15, 19), ["1", "2"])


def test_circular_and_reflect_padding_supports_match_oracle():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=2, padding_mode="circular"),
                          nn.Conv2d(2, 2, 3, stride=2, padding=1, padding_mode="reflect"),
                          nn.Conv2d(2, 1, 3, padding=1, padding_mode="replicate"))
    check_supports(model, (1, 1, 12, 9), ["0", "1", "2"])


class ASPPish(nn.Module):
    """DeepLab's pattern: a global-pooling branch upsampled back and concatenated with a local branch."""

    def __init__(self):
        super().__init__()
        self.local = nn.Conv2d(1, 2, 3, padding=2, dilation=2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(1, 2, 1))
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([self.local(x), pooled], 1))


def test_global_pooling_branch_supports_match_oracle():
    check_supports(ASPPish(), (1, 1, 9, 11), ["local", "pool", "head"])
    result = rflens.receptive_field(ASPPish(), (9, 11))
    assert result.layer("head").is_global and result.layer("head").rf == (5, 5)


def test_paths_of_different_strides_supports_match_oracle():
    from test_capture import PoolUpsampleGate

    check_supports(PoolUpsampleGate(ndim=2), (1, 1, 7, 9), [""])


def test_tf_same_padding_depthwise_and_se_supports_match_oracle():
    """timm's tf_efficientnet_b0 stem and first stages: dynamic TF-"same" padding (asymmetric at even sizes),
    depthwise convolutions, squeeze-excitation; at an odd and an even size."""
    timm = pytest.importorskip("timm")
    net = timm.create_model("tf_efficientnet_b0")
    model = nn.Sequential(net.conv_stem, net.bn1, net.blocks[0], net.blocks[1])
    for size in (33, 40):
        check_supports(model, (1, 3, size, size), ["0", "2", "3"])

"""Every value of ../shared/reference/receptive_fields.json, reproduced by rflens."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision
from refnets import GoogleTest1, GoogleTest8, dilated, google5, patchgan

import rflens

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "receptive_fields.json"
if not REFERENCE.exists():  # CI clones the repo with shared/ beside it; a checkout may have it inside
    REFERENCE = Path(__file__).resolve().parents[1] / "shared" / "reference" / "receptive_fields.json"
REF = json.loads(REFERENCE.read_text())


def _meta_model(name: str) -> nn.Module:
    with torch.device("meta"):
        return torchvision.models.get_model(name)


@pytest.fixture(scope="module")
def torchvision_results():
    cache: dict[str, rflens.ReceptiveFields] = {}

    def get(name: str) -> rflens.ReceptiveFields:
        if name not in cache:
            cache[name] = rflens.receptive_field(_meta_model(name), 224)
        return cache[name]

    return get


@pytest.mark.parametrize("row", REF["torchvision"], ids=lambda r: f"{r['model']}:{r['layer']}")
def test_torchvision_reference(row, torchvision_results):
    layer = torchvision_results(row["model"]).layer(row["layer"])
    assert layer.rf == (row["rf"], row["rf"])
    if "stride" in row:
        assert layer.stride == (row["stride"], row["stride"])
        assert layer.padding == (row["padding"], row["padding"])


# -- TF-Slim layouts rebuilt in plain PyTorch (tests/tfslim.py) ------------------------------------------------
TFSLIM = {row["model"]: row for row in REF["tf_slim_layouts_rebuilt_in_pytorch"]}


@pytest.mark.parametrize("depth", [50, 101, 152, 200])
def test_tf_slim_resnet_v1(depth):
    import tfslim

    row = TFSLIM[f"resnet_v1_{depth} block4"]
    result = rflens.receptive_field(tfslim.resnet_v1(depth), 224)
    final = result.layers[-1]
    assert (final.rf[0], final.stride[0], final.padding[0]) == (row["rf"], row["stride"], row["padding"])


def test_tf_slim_mobilenet_v1():
    import tfslim

    row = TFSLIM["mobilenet_v1 Conv2d_13_pointwise"]
    final = rflens.receptive_field(tfslim.mobilenet_v1(), 224).layers[-1]
    assert (final.rf[0], final.stride[0], final.padding[0]) == (row["rf"], row["stride"], row["padding"])


def test_tf_slim_alexnet_v2():
    import tfslim

    row = TFSLIM["alexnet_v2 pool5 (conv1 11x11 s4 VALID)"]
    final = rflens.receptive_field(tfslim.alexnet_v2(), 224).layers[-1]
    assert (final.rf[0], final.stride[0], final.padding[0]) == (row["rf"], row["stride"], row["padding"])


# -- small hand-checkable networks ----------------------------------------------------------------------------
SMALL = {
    "google1": (GoogleTest1, 64, 3, 4, 1),
    "google8": (GoogleTest8, 64, 11, 8, 5),
    "dilated": (dilated, 32, 15, 1, 7),
    "patchgan": (patchgan, 256, 70, 8, 23),
}


@pytest.mark.parametrize("name", SMALL)
def test_small_networks(name):
    build, size, rf, stride, padding = SMALL[name]
    result = rflens.receptive_field(build(), size)
    final = max(result.layers, key=lambda layer: layer.node)
    assert final.rf == (rf, rf) and final.stride == (stride, stride) and final.padding == (padding, padding)


def test_rectangular_kernels_per_axis():
    final = rflens.receptive_field(google5(), (40, 40)).layer("1")
    assert final.rf == (7, 5) and final.stride == (4, 4) and final.padding == (0, 0)


@pytest.mark.parametrize("n", [5, 10, 20, 40])
def test_linear_stack_rf_and_erf_std(n):
    """n single-channel 3x3 convs: rf 2n+1; the ERF (gradient of the centre unit, weights 1/9) has standard
    deviation sqrt(2n/3), the n-fold box convolution (Luo et al. 2016)."""
    model = nn.Sequential(*(nn.Conv2d(1, 1, 3, padding=1, bias=False) for _ in range(n))).double()
    for conv in model:
        nn.init.constant_(conv.weight, 1 / 9)
    size = 4 * n + 5
    assert rflens.receptive_field(model, size).layers[-1].rf == (2 * n + 1, 2 * n + 1)
    x = torch.zeros(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    model(x)[0, 0, size // 2, size // 2].backward()
    profile = x.grad[0, 0].sum(0)
    pos = torch.arange(size, dtype=torch.float64) - size // 2
    std = math.sqrt(float((profile * pos**2).sum() / profile.sum()))
    assert std == pytest.approx(math.sqrt(2 * n / 3), rel=1e-9)

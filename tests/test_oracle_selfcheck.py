"""The independent checking side checks itself: oracle.py, archgen.py and tfslim.py against published
receptive fields and exact arithmetic, with torch/torchvision only (no rflens import anywhere here)."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import tfslim
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from archgen import architectures
from hypothesis import HealthCheck, given, settings
from oracle import (
    LinearMaxPool,
    _gradient_maps,
    gradient_map,
    gradient_support,
    linearise,
    oracle_rf,
    output_shape,
    pool_output_size,
    reads_padding,
    support_bounds,
)
from refnets import GoogleTest1, GoogleTest8, dilated, google5, patchgan

# Expected values (Araujo et al. 2019 and /work/shared/reference/receptive_fields.json): (rf, stride, padding)
VGG16 = {"features.4": (6, 2, 2), "features.9": (16, 4, 6), "features.16": (44, 8, 18)}
ALEXNET = (195, 32, 66)
RESNET50 = {"layer1": (35, 4, 17), "layer2": (91, 8, 45)}
RESNET_V1 = {50: (483, 32, 239), 101: (1027, 32, 511), 152: (1507, 32, 751), 200: (1763, 32, 879)}
MOBILENET_V1 = (315, 32, 126)
ALEXNET_V2 = (195, 32, 64)

_REF_PATHS = [Path(__file__).resolve().parents[2] / "shared" / "reference" / "receptive_fields.json",
              Path(__file__).resolve().parents[1] / "shared" / "reference" / "receptive_fields.json"]


@contextlib.contextmanager
def _single_thread():
    """Tiny tensors: intra-op threads cost far more than they save (10x on a 2-core runner)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    with _single_thread():
        yield


def _rf(result: dict) -> list[tuple[int, int, int]]:
    return list(zip(result["rf"], result["stride"], result["padding"], strict=True))


def _meta_then_cpu(factory, **kwargs) -> nn.Module:
    """torchvision model without paying for its huge classifier (the oracle never reaches it)."""
    with torch.device("meta"):
        model = factory(**kwargs)
    model.classifier = nn.Identity()
    return model.to_empty(device="cpu")  # linearise() overwrites every weight of the feature extractor


def test_embedded_expectations_match_reference_json():
    path = next((p for p in _REF_PATHS if p.exists()), None)
    if path is None:
        pytest.skip("shared/reference/receptive_fields.json not available")
    ref = json.loads(path.read_text())
    tv = {(r["model"], r["layer"]): (r["rf"], r.get("stride"), r.get("padding")) for r in ref["torchvision"]}
    for layer, want in VGG16.items():
        assert tv["vgg16", layer] == want
    assert tv["alexnet", "features"] == ALEXNET
    for layer, want in RESNET50.items():
        assert tv["resnet50", layer] == want
    rows = ref["tf_slim_layouts_rebuilt_in_pytorch"]
    slim = {r["model"].split()[0]: (r["rf"], r["stride"], r["padding"]) for r in rows}
    for depth, want in RESNET_V1.items():
        assert slim[f"resnet_v1_{depth}"] == want
    assert slim["mobilenet_v1"] == MOBILENET_V1
    assert slim["alexnet_v2"] == ALEXNET_V2


# --------------------------------------------------------------------------------------------------------
# building blocks of the oracle
# --------------------------------------------------------------------------------------------------------


def _windows(n, k, s, p, d, ceil_mode):
    m = pool_output_size(n, k, s, p, d, ceil_mode)
    return [{u * s - p + j * d for j in range(k)} & set(range(n)) for u in range(m)]


def test_linear_max_pool_reads_exactly_the_max_pool_windows(one_thread):
    """1-D grid over n, k, s, p, d, ceil_mode: same output size as F.max_pool1d, and the Jacobian of the
    linear stand-in is non-zero exactly on the in-bounds window positions u*s - p + j*d."""
    checked = 0
    for n in range(1, 11):
        eye = torch.eye(n, dtype=torch.float64).unsqueeze(1)  # batch of basis vectors: Jacobian columns
        for k in range(1, 5):
            for s in range(1, 4):
                for p in range(k // 2 + 1):
                    for d in (1, 2):
                        for ceil_mode in (False, True):
                            try:
                                ref = F.max_pool1d(eye, k, s, p, d, ceil_mode)
                            except RuntimeError:
                                continue
                            lin = LinearMaxPool(1, k, s, p, d, ceil_mode)(eye)
                            assert lin.shape == ref.shape
                            jac = lin[:, 0, :].T.numpy()  # (units, pixels)
                            got = [set(np.flatnonzero(row).tolist()) for row in jac]
                            assert got == _windows(n, k, s, p, d, ceil_mode), (n, k, s, p, d, ceil_mode)
                            checked += 1
    assert checked > 500


def test_linearise_replaces_and_does_not_touch_the_original():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU6(),
                          nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.GroupNorm(1, 3), nn.Dropout(0.5),
                          nn.ConvTranspose2d(3, 2, 3, 2), nn.SiLU())
    before = [p.clone() for p in model.parameters()]
    lin = linearise(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(isinstance(lin[i], nn.Identity) for i in (2, 4, 5, 7))
    assert isinstance(lin[3], LinearMaxPool)
    assert not lin.training and lin[0].weight.dtype == torch.float64
    for conv in (lin[0], lin[6]):
        assert (conv.weight > 0).all() and (conv.bias == 0).all()
    assert torch.all(lin[1].running_mean == 0) and torch.all(lin[1].running_var == 1)
    x = torch.randn(1, 2, 13, 11)
    assert lin(x.double()).shape == model.eval()(x).shape


def test_functional_ops_are_made_monotone():
    """F.relu6 / -inf padding + F.max_pool2d in forward (TF-'same' max pool as timm writes it) give the same
    support as the module version, and as a size-dependent 'SAME' pad + VALID pool."""

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            x = F.relu6(self.conv(x) * 100)  # would saturate (zero gradient) without the safety net
            x = F.pad(x, [0, 1, 0, 1], value=-float("inf"))
            return F.max_pool2d(x, 3, 2)

    modular = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU6(), tfslim.TFSamePad(2, 3, 2),
                            nn.MaxPool2d(3, 2))
    shape = (1, 1, 16, 16)
    a, b = linearise(Functional()), linearise(modular)
    for unit in [(0, 0), (3, 4), (7, 7)]:
        sa, sb = gradient_support(a, shape, unit), gradient_support(b, shape, unit)
        assert sa.dtype == bool and sa.shape == (16, 16)
        assert np.array_equal(sa, sb)
    assert _rf(oracle_rf(a, shape)) == [(5, 2, 1)] * 2


@pytest.mark.parametrize("n", [16, 17])
def test_timm_same_max_pool_subclass(n):
    """timm's MaxPool2dSame subclasses nn.MaxPool2d with its own forward (-inf pad + F.max_pool2d): linearise
    leaves it alone (exact-type rule) and the functional safety net makes it linear; it must agree with
    TF 'SAME' arithmetic (pad 0/1 at even sizes, 1/1 at odd sizes)."""
    timm_layers = pytest.importorskip("timm.layers")
    pool = timm_layers.create_pool2d("max", kernel_size=3, stride=2, padding="same")
    assert type(pool) is not nn.MaxPool2d and isinstance(pool, nn.MaxPool2d)
    a = linearise(nn.Sequential(nn.Conv2d(1, 1, 1), pool))
    b = linearise(nn.Sequential(nn.Conv2d(1, 1, 1), tfslim.TFSamePad(2, 3, 2), nn.MaxPool2d(3, 2)))
    shape = (1, 1, n, n)
    assert output_shape(a, shape) == output_shape(b, shape) == (math.ceil(n / 2),) * 2
    for unit in [(0, 0), (4, 5), (math.ceil(n / 2) - 1,) * 2]:
        assert np.array_equal(gradient_support(a, shape, unit), gradient_support(b, shape, unit))
    assert _rf(oracle_rf(a, shape)) == [(3, 2, 0 if n % 2 == 0 else 1)] * 2


def test_padding_modes_honoured_unless_zero_pad():
    model = linearise(nn.Sequential(nn.ReflectionPad1d(3), nn.Conv1d(1, 1, 2)))
    shape = (1, 1, 10)
    # unit 0 reads padded positions 0, 1 = pixels -3, -2, reflected to 3, 2
    assert np.flatnonzero(gradient_support(model, shape, (0,))).tolist() == [2, 3]
    assert not gradient_support(model, shape, (0,), zero_pad=True).any()
    assert support_bounds(model, shape, [(0,), (5,)]) == [[(2, 3)], [(2, 3)]]
    assert support_bounds(model, shape, [(0,), (5,)], zero_pad=True) == [[None], [(2, 3)]]
    # the oracle ignores the mirrored border units and measures the interior ones
    assert _rf(oracle_rf(model, shape)) == [(2, 1, 3)]


@pytest.mark.parametrize(("module", "n", "expected"), [
    # avg/max pool k3 s2 p1 ceil_mode: unit 0 reads pixel -1, unit 4 the extra right window [7, 9]
    (nn.AvgPool1d(3, 2, 1, ceil_mode=True), 8, [True, False, False, False, True]),
    (nn.MaxPool1d(3, 2, 1, ceil_mode=True), 8, [True, False, False, False, True]),
    # 'same' with an even kernel: total 3 = 1 before + 2 after
    (nn.Conv1d(1, 1, 4, padding="same"), 6, [True, False, False, False, True, True]),
    # VALID ops never read padding, even at the borders
    (nn.Conv1d(1, 1, 3, stride=2), 7, [False, False, False]),
    # transposed conv k2 s2, output_padding 1: the last output reads nothing (virtual input position 3)
    (nn.ConvTranspose1d(1, 1, 2, stride=2, output_padding=1), 3, [False] * 6 + [True]),
    # transposed conv k3 s1 (a full conv): the first and last two outputs read virtual inputs -1 / n
    (nn.ConvTranspose1d(1, 1, 3), 4, [True, True, False, False, True, True]),
    (nn.ConvTranspose1d(1, 1, 3, padding=1), 4, [True, False, False, True]),
    (nn.ReplicationPad1d((0, 2)), 3, [False, False, False, True, True]),
])
@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_reads_padding_tags_every_kind_of_padding(module, n, expected):
    lin = linearise(nn.Sequential(module))
    m = output_shape(lin, (1, 1, n))[0]
    assert [row[0] for row in reads_padding(lin, (1, 1, n), [(u,) for u in range(m)])] == expected


def test_oracle_is_not_fooled_by_holes_at_the_border():
    """Taps {u - 1, u + 2} ('same', k=2, d=3): near the right border only one tap is inside the image and
    looks like a hole-free 1-pixel RF; the padding tags reject those units."""
    lin = linearise(nn.Sequential(nn.Conv2d(1, 1, (1, 2), padding="same", dilation=3)))
    assert _rf(oracle_rf(lin, (1, 1, 8, 8))) == [(1, 1, 0), (4, 1, 1)]
    flags = [row[1] for row in reads_padding(lin, (1, 1, 8, 8), [(3, u) for u in range(8)])]
    assert flags == [True, False, False, False, False, False, True, True]
    valid = linearise(nn.Sequential(nn.Conv1d(1, 1, 3), nn.Conv1d(1, 1, 3, stride=2)))
    assert _rf(oracle_rf(valid, (1, 1, 7))) == [(5, 2, 0)]  # border units of VALID nets are fine


def test_oracle_refuses_small_inputs():
    model = linearise(nn.Sequential(*(nn.Conv1d(1, 1, 3, padding=1) for _ in range(6))))
    with pytest.raises(ValueError, match="too small"):
        oracle_rf(model, (1, 1, 12))
    assert _rf(oracle_rf(model, (1, 1, 17))) == [(13, 1, 6)]


# --------------------------------------------------------------------------------------------------------
# torchvision models (as they are)
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg16():
    return linearise(_meta_then_cpu(torchvision.models.vgg16))


@pytest.mark.parametrize(("layer", "size"), [("features.4", 24), ("features.9", 32), ("features.16", 64)])
def test_vgg16(vgg16, layer, size):
    assert _rf(oracle_rf(vgg16, (1, 3, size, size), layer)) == [VGG16[layer]] * 2


SLOW = pytest.mark.skipif(not os.environ.get("ORACLE_SLOW"), reason="slow (seconds to minutes on 2 cores); "
                          "set ORACLE_SLOW=1 to run")


@SLOW
@pytest.mark.parametrize(("model", "layer", "size", "expected"), [
    ("vgg16", "features.23", 124, (100, 16, 42)),
    ("vgg16", "features", 252, (212, 32, 90)),
    ("resnet50", "layer3", 304, (267, 16, 133)),
])
def test_torchvision_deeper_layers(model, layer, size, expected):
    if model == "vgg16":
        net = _meta_then_cpu(torchvision.models.vgg16)
    else:
        net = torchvision.models.resnet50()
        net.fc = nn.Identity()
    assert _rf(oracle_rf(linearise(net), (1, 3, size, size), layer)) == [expected] * 2


def test_alexnet():
    model = linearise(_meta_then_cpu(torchvision.models.alexnet))
    # 291 -> features 8x8; units 3 and 4 read [30, 224] and [62, 256], inside 0..290
    assert _rf(oracle_rf(model, (1, 3, 291, 291), "features")) == [ALEXNET] * 2


def test_resnet50():
    model = torchvision.models.resnet50()
    model.fc = nn.Identity()
    lin = linearise(model)
    assert _rf(oracle_rf(lin, (1, 3, 48, 48), "layer1")) == [RESNET50["layer1"]] * 2
    assert _rf(oracle_rf(lin, (1, 3, 112, 112), "layer2")) == [RESNET50["layer2"]] * 2
    # layer3 (267/16/133) would need about 300x300: skipped for time


# --------------------------------------------------------------------------------------------------------
# small networks of receptive_fields.json
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "model", "shape", "expected"), [
    ("google test 1", GoogleTest1, (1, 1, 32, 32), [(3, 4, 1)] * 2),
    ("google test 8", GoogleTest8, (1, 1, 64, 64), [(11, 8, 5)] * 2),
    ("google test 5: 3x5 then 3x1", google5, (1, 1, 32, 32), [(7, 4, 0), (5, 4, 0)]),
    ("dilated 1, 2, 4 same", dilated, (1, 1, 24, 24), [(15, 1, 7)] * 2),
    ("pix2pix PatchGAN", patchgan, (1, 3, 96, 96), [(70, 8, 23)] * 2),
], ids=lambda v: v if isinstance(v, str) else "")
def test_small_networks(name, model, shape, expected):
    lin = linearise(model())
    assert _rf(oracle_rf(lin, shape)) == expected, name


def test_google_test_1_has_a_hole_free_union():
    """Branch (a) alone reads one pixel per unit; the union with (b) is the 3-pixel run around it."""
    lin = linearise(GoogleTest1())
    sup = gradient_support(lin, (1, 1, 32, 32), (3, 4))
    rows, cols = np.nonzero(sup)
    assert sorted(set(rows.tolist())) == [11, 12, 13] and sorted(set(cols.tolist())) == [15, 16, 17]


# --------------------------------------------------------------------------------------------------------
# TF-Slim rebuilds
# --------------------------------------------------------------------------------------------------------


def test_tfslim_alexnet_v2():
    lin = linearise(tfslim.alexnet_v2(width=1 / 64))
    assert _rf(oracle_rf(lin, (1, 3, 291, 291))) == [ALEXNET_V2] * 2
    assert _rf(oracle_rf(lin, (1, 3, 291, 291), "features")) == [ALEXNET_V2] * 2


def test_tfslim_mobilenet_v1():
    lin = linearise(tfslim.mobilenet_v1(width=1 / 32))
    # 352 = 11 * 32: every stride-2 'SAME' layer sees an even size (pad 0 before, 1 after)
    assert _rf(oracle_rf(lin, (1, 3, 352, 352), "features.Conv2d_13_pointwise")) == [MOBILENET_V1] * 2
    one_d = linearise(tfslim.mobilenet_v1(width=1 / 32, ndim=1))
    assert _rf(oracle_rf(one_d, (1, 3, 352))) == [MOBILENET_V1]
    # 'SAME' padding depends on the size: at 369 the stride-2 layers see 369, 185, 93, 47 (odd: pad 1
    # before, adding 1 + 2 + 4 + 8) and 24 (even: 0): padding 126 + 15 = 141
    assert _rf(oracle_rf(one_d, (1, 3, 369))) == [(315, 32, 141)]


def test_tfslim_resnet_v1_50_2d():
    lin = linearise(tfslim.resnet_v1(50, width=1 / 64))
    # 576 = 18 * 32 (a multiple of 4: pool1 pads 0 before); the central units 8, 9 of the 18 read [17, 499]
    # and [49, 531], inside the image (fast path of the oracle: one batched backward)
    assert _rf(oracle_rf(lin, (1, 3, 576, 576), "features.block4")) == [RESNET_V1[50]] * 2


@pytest.mark.parametrize("depth", [50, 101, 152, 200])
def test_tfslim_resnet_v1_1d(depth):
    """Same layouts with one spatial axis (the per-axis geometry is identical): the deep ones stay cheap."""
    rf, stride, padding = RESNET_V1[depth]
    n = 32 * (math.ceil((padding + 1) / 32) * 2 + 2)  # a multiple of 32 with unclipped central units
    lin = linearise(tfslim.resnet_v1(depth, width=1 / 64, ndim=1))
    assert _rf(oracle_rf(lin, (1, 3, n))) == [RESNET_V1[depth]]
    if depth == 50:  # a true 'SAME' conv1 pads 2 before at even sizes: one pixel less than conv2d_same
        same = linearise(tfslim.resnet_v1(50, width=1 / 64, ndim=1, conv1_same=True))
        assert _rf(oracle_rf(same, (1, 3, n))) == [(rf, stride, padding - 1)]


# --------------------------------------------------------------------------------------------------------
# linear stacks: the ERF of n box filters
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 10, 20, 40])
def test_linear_stack_erf_std(n):
    """n single-channel 3x3 stride-1 convs with weights 1/9: the gradient map is the n-fold box convolution,
    per axis a sum of n uniform variables on {-1, 0, 1}: standard deviation sqrt(2n/3), support 2n+1."""
    model = nn.Sequential(*(nn.Conv2d(1, 1, 3, padding=1, bias=False) for _ in range(n))).double()
    for conv in model:
        nn.init.constant_(conv.weight, 1 / 9)  # in float64
    size = 2 * n + 5
    centre = size // 2
    g = gradient_map(model, (1, 1, size, size), (centre, centre))
    assert np.isclose(g.sum(), 1.0)
    idx = np.arange(size)
    for axis in (0, 1):
        marginal = g.sum(axis=1 - axis)
        mean = (idx * marginal).sum()
        std = math.sqrt(((idx - mean) ** 2 * marginal).sum())
        assert mean == pytest.approx(centre)
        assert std == pytest.approx(math.sqrt(2 * n / 3), rel=1e-9)
    support = gradient_support(model, (1, 1, size, size), (centre, centre))
    assert support.sum() == (2 * n + 1) ** 2
    assert _rf(oracle_rf(linearise(model), (1, 1, size, size))) == [(2 * n + 1, 1, n)] * 2


# --------------------------------------------------------------------------------------------------------
# the architecture strategy
# --------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(architectures())
def test_architectures_smoke(arch):
    with _single_thread():
        _smoke(arch)


def _smoke(arch):
    model = arch.build()
    modules = dict(model.named_modules())
    assert arch.checkpoints and arch.checkpoints[-1] == f"blocks.{len(arch.blocks) - 1}"
    assert all(name in modules for name in arch.checkpoints), arch.describe()
    assert len(arch.input_shape) == arch.ndim + 2 and arch.input_shape[0] == 1
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name):
        return lambda _mod, _inp, out: shapes.__setitem__(name, tuple(out.shape))

    hooks = [modules[name].register_forward_hook(record(name)) for name in arch.checkpoints]
    with torch.no_grad():
        out = model(torch.randn(arch.input_shape))
    for h in hooks:
        h.remove()
    assert shapes == arch.output_shapes, arch.describe()
    assert tuple(out.shape) == arch.shapes[-1]
    assert isinstance(arch.describe(), str) and len(arch.describe().splitlines()) > len(arch.blocks)

    lin = linearise(model)
    last = arch.checkpoints[-1]
    assert output_shape(lin, arch.input_shape, last) == arch.shapes[-1][2:]
    centre = tuple(m // 2 for m in arch.shapes[-1][2:])
    support = gradient_support(lin, arch.input_shape, centre, last)
    assert support.dtype == bool and support.shape == tuple(arch.input_shape[2:])

    # where the oracle answers, its interval [u*S - P, u*S - P + r - 1] must be exactly the support of every
    # unit that reads no padding, and contain the (clipped) support of every other unit on that line
    for name in arch.integer_checkpoints:
        try:
            res = oracle_rf(lin, arch.input_shape, name)
        except ValueError:
            continue
        assert all(r >= 1 and s >= 1 for r, s in zip(res["rf"], res["stride"], strict=True)), arch.describe()
        shape = arch.output_shapes[name][2:]
        for a in range(arch.ndim):
            units = [tuple(res["unit"][:a]) + (u,) + tuple(res["unit"][a + 1:]) for u in range(shape[a])]
            _, tagged, padded = _gradient_maps(lin, arch.input_shape, units, name, ghost=True)
            _, plain, _ = _gradient_maps(lin, arch.input_shape, units, name, zero_pad=True)
            assert np.array_equal(tagged, plain), (name, arch.describe())  # tags do not change supports
            for unit, sup, pad in zip(units, plain, padded, strict=True):
                idx = np.flatnonzero(sup.any(axis=tuple(i for i in range(arch.ndim) if i != a)))
                start = unit[a] * res["stride"][a] - res["padding"][a]
                end = start + res["rf"][a] - 1
                if not pad.any():
                    assert (idx[0], idx[-1]) == (start, end), (name, unit, arch.describe())
                elif idx.size:
                    assert start <= idx[0] and idx[-1] <= end, (name, unit, arch.describe())


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_architectures_cover_the_block_kinds():
    """The strategy reaches every kind of block (checked on a fixed sample of draws)."""
    seen: set[str] = set()

    @settings(max_examples=150, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(architectures())
    def collect(arch):
        for op in arch.blocks:
            seen.add(type(op).__name__)
        if arch.has_upsampling:
            seen.add("has_upsampling")

    with _single_thread():
        collect()
    assert {"ConvOp", "PoolOp", "PadOp", "SliceOp", "TwoBranchOp", "UpsampleOp", "TConvOp",
            "has_upsampling"} <= seen


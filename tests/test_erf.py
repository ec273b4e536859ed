"""The gradient ERF engine: protocols against a plain per-image implementation, batching, cone cropping against
the full input (float64), NaN handling, inputs, the model left untouched, and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from archgen import architectures
from hypothesis import HealthCheck, given, settings
from torch import nn

from rflens.capture import capture
from rflens.erf import erf
from rflens.erf_inputs import IMAGENET_MEAN, IMAGENET_STD
from rflens.errors import CaptureError, RflensError
from rflens.rf import support


def _box_stack(layers: int, ndim: int = 2) -> nn.Module:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[ndim]
    convs = [conv(1, 1, 3, padding=1, bias=False) for _ in range(layers)]
    for c in convs:
        nn.init.constant_(c.weight, 1 / 3**ndim)
    return nn.Sequential(*convs)


def _reference(model: nn.Module, layer: str, images: torch.Tensor, protocol: str) -> np.ndarray:
    """The published per-image protocol, written out plainly: batch 1, forward to the layer, autograd.grad."""
    model.eval()
    total = None
    store: list[torch.Tensor] = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: store.append(o))
    for img in images:
        x = img[None].clone().requires_grad_(True)
        store.clear()
        model(x)
        out = store[0]
        centre = tuple(s // 2 for s in out.shape[2:])
        feat = out[(slice(None), slice(None), *centre)]
        target = {"replknet": torch.relu(feat).sum(), "kim": feat.mean(1).sum(), "luo": feat.sum()}[protocol]
        (g,) = torch.autograd.grad(target, x)
        per = {"replknet": torch.relu(g).sum(1), "kim": torch.relu(g.mean(1)), "luo": g.abs().sum(1)}[protocol]
        total = per[0] if total is None else total + per[0]
    handle.remove()
    return (total / len(images)).detach().double().numpy()


def _images(n: int, shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("n_layers", [1, 2, 5, 9])
def test_box_stack_sigma_is_sqrt_2n_over_3(n_layers):
    model = _box_stack(n_layers).double()
    result = erf(model, "output", protocol="luo", n=2, input_size=41, dtype=torch.float64)
    assert result.metrics["sigma"] == pytest.approx([math.sqrt(2 * n_layers / 3)] * 2, abs=1e-9)
    assert result.metrics["com_offset"] == pytest.approx([0, 0], abs=1e-9)


@pytest.mark.parametrize("ndim", [1, 3])
def test_box_stack_sigma_in_1d_and_3d(ndim):
    model = _box_stack(4, ndim).double()
    result = erf(model, "output", protocol="luo", n=1, input_size=(15,) * ndim, dtype=torch.float64)
    assert result.metrics["sigma"] == pytest.approx([math.sqrt(8 / 3)] * ndim, abs=1e-9)


@pytest.mark.parametrize("protocol", ["replknet", "kim", "luo"])
def test_protocols_match_the_plain_per_image_implementation(protocol):
    torch.manual_seed(0)
    model = torchvision.models.resnet18().double()
    images = _images(3, (3, 64, 64))
    got = erf(model, "layer2", inputs=images, protocol=protocol, batch_size=2, dtype=torch.float64, crop=False)
    want = _reference(model, "layer2", images, protocol)
    np.testing.assert_allclose(got.map, want, rtol=1e-10, atol=1e-14 * np.abs(want).max())
    assert got.n == 3 and got.nonfinite == 0


def test_kim_on_a_classifier_output_uses_the_predicted_class_logit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    model = model.double()
    images = _images(2, (3, 12, 12))
    got = erf(model, "output", inputs=images, protocol="kim", dtype=torch.float64)
    want = 0
    for img in images:
        x = img[None].clone().requires_grad_(True)
        logits = model(x)
        (g,) = torch.autograd.grad(logits[0, logits[0].argmax()], x)
        want = want + torch.relu(g.mean(1))[0].numpy()
    np.testing.assert_allclose(got.map, want / 2, rtol=1e-12)
    assert got.path.startswith("full input") and got.trf_box is None


def test_batched_equals_one_by_one_and_is_deterministic():
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    kw = dict(n=3, input_size=64, dtype=torch.float64, seed=3)
    one = erf(model, "layer3", batch_size=1, **kw)
    many = erf(model, "layer3", batch_size=2, **kw)  # 2 + 1: a short last batch too
    assert np.abs(one.map - many.map).max() <= 1e-12 * one.map.max()
    again = erf(model, "layer3", batch_size=2, **kw)
    assert np.array_equal(many.map, again.map)
    other = erf(model, "layer3", batch_size=2, **{**kw, "seed": 4})
    assert not np.array_equal(many.map, other.map)


@pytest.mark.parametrize("unit", [None, (0, 0), (0, 7), (5, 2)])
def test_erf_lies_inside_the_theoretical_support(unit):
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    result = erf(model, "layer2", n=2, input_size=64, unit=unit, dtype=torch.float64, crop=False)
    graph = capture(model, 64)
    sup = support(graph, graph.module_outputs["layer2"], result.unit)  # the map of a full-input run (crop=False)
    assert np.all(result.map[~sup] == 0)
    assert result.map[sup].max() > 0


# -- cone cropping -----------------------------------------------------------------------------------------
def _same_with_and_without_crop(model, layer, size, unit=None, n=2, **kw):
    a = erf(model, layer, n=n, input_size=size, unit=unit, dtype=torch.float64, **kw)
    b = erf(model, layer, n=n, input_size=size, unit=unit, dtype=torch.float64, crop=False, **kw)
    assert np.abs(a.map - b.map).max() <= 1e-13 * max(b.map.max(), 1e-300), (a.path, b.path)
    assert a.unit == b.unit
    return a


@pytest.mark.parametrize(("layer", "unit"), [("layer2", None), ("layer2", (0, 0)), ("layer2", (15, 3)),
                                             ("layer3", (7, 0)), ("layer1.1.conv2", (31, 31))])
def test_cone_crop_equals_full_input_resnet(layer, unit):
    torch.manual_seed(0)
    result = _same_with_and_without_crop(torchvision.models.resnet18(), layer, 128, unit)
    assert result.crop is not None, result.path


def test_cone_crop_equals_full_input_on_other_layouts():
    torch.manual_seed(0)
    dilated = nn.Sequential(nn.Conv2d(3, 4, 3, padding=2, dilation=2), nn.ReLU(),
                            nn.Conv2d(4, 4, 3, stride=2, padding=1, padding_mode="reflect"), nn.ReLU(),
                            nn.MaxPool2d(3, 2, ceil_mode=True), nn.Conv2d(4, 4, 5, padding=2))
    for unit in [None, (0, 0), (9, 1)]:
        assert _same_with_and_without_crop(dilated, "output", 80, unit).crop is not None
    oned = nn.Sequential(nn.Conv1d(2, 3, 5, stride=2), nn.ReLU(), nn.Conv1d(3, 3, 3, stride=3, padding=1))
    assert _same_with_and_without_crop(oned, "output", (200,), (7,)).crop is not None
    threed = nn.Sequential(nn.Conv3d(1, 2, 3, stride=2, padding=1), nn.ReLU(), nn.Conv3d(2, 2, 3, padding=1))
    assert _same_with_and_without_crop(threed, "output", (20, 24, 28), (9, 0, 5)).crop is not None


class _UNetish(nn.Module):
    def __init__(self, mode: str, align_corners: bool | None):
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(4, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode=mode, align_corners=align_corners)
        self.skip = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x):
        y = self.up(self.mid(torch.relu(self.down(x))))
        return self.head(torch.cat([y, self.skip(x)], 1))


def test_cone_crop_with_upsampling_and_concat():
    torch.manual_seed(0)
    for mode, ac in [("nearest", None), ("bilinear", False)]:
        result = _same_with_and_without_crop(_UNetish(mode, ac), "output", 64, (20, 33))
        assert result.crop is not None and all(a % 2 == 0 for a, _ in result.crop)
    # align_corners=True: the sampling depends on the size, so the crop must be refused
    result = _same_with_and_without_crop(_UNetish("bilinear", True), "output", 64, (20, 33))
    assert result.crop is None


def test_size_dependent_ops_are_not_cropped():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(16), nn.Conv2d(4, 4, 3, padding=1))
    result = _same_with_and_without_crop(model, "output", 64, (8, 8))
    assert result.crop is None and "resamples differently" in result.path, result.path


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures(max_blocks=5))
def test_cone_crop_equals_full_input_on_random_architectures(arch):
    model = arch.build().double()
    graph = capture(model, arch.input_shape[2:], in_channels=arch.input_shape[1])
    sizes = graph.module_node(arch.checkpoints[-1]).sizes
    for unit in {tuple(s // 2 for s in sizes), tuple(0 for _ in sizes), tuple(s - 1 for s in sizes)}:
        kw = dict(n=1, input_size=arch.input_shape[2:], in_channels=arch.input_shape[1], unit=unit,
                  dtype=torch.float64, protocol="luo")
        a = erf(model, arch.checkpoints[-1], **kw)
        b = erf(model, arch.checkpoints[-1], crop=False, **kw)
        assert np.abs(a.map - b.map).max() <= 1e-12 * max(b.map.max(), 1e-300), (a.path, arch)


def test_global_models_are_not_cropped():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small()
    result = erf(model, "features.4", n=1, input_size=96)  # its SE block pools the whole map
    assert result.crop is None and "global" in result.path
    result = erf(torchvision.models.resnet18(), "output", n=1, input_size=64)
    assert result.crop is None and "not a spatial map" in result.path


def test_circular_padding_falls_back_at_the_border():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular"), nn.Conv2d(1, 1, 3, padding=1))
    edge = _same_with_and_without_crop(model, "output", 32, (0, 16))
    assert edge.crop is None and "near the crop's edge" in edge.path
    assert _same_with_and_without_crop(model, "output", 32, (16, 16)).crop is not None


def test_a_module_called_twice_is_probed_at_its_last_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(x))

    result = erf(Twice().double(), "conv", n=1, input_size=21, dtype=torch.float64, protocol="luo")
    assert result.trf_box == ((8, 12), (8, 12))
    assert np.count_nonzero(result.map) == 25


# -- NaN handling ------------------------------------------------------------------------------------------
class _Poisoned(nn.Module):
    """Gradients are inf for images whose first pixel is positive."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        scale = torch.where(x[:, :1, :1, :1] > 0, torch.tensor(float("inf"), dtype=x.dtype), 1.0)
        return self.conv(x * scale)


def test_nonfinite_maps_are_counted_and_left_out():
    torch.manual_seed(0)
    model = _Poisoned().double()
    images = _images(6, (1, 9, 9), seed=5)
    bad = int((images[:, 0, 0, 0] > 0).sum())
    assert 0 < bad < 6
    result = erf(model, "output", inputs=images, dtype=torch.float64, batch_size=4, protocol="luo")
    assert (result.n, result.nonfinite) == (6 - bad, bad)
    good = images[images[:, 0, 0, 0] <= 0]
    clean = erf(model, "output", inputs=good, dtype=torch.float64, protocol="luo")
    np.testing.assert_allclose(result.map, clean.map, rtol=1e-12)
    assert np.isfinite(result.map).all()
    with pytest.raises(RflensError, match="all 2 gradient maps had NaN or inf"):
        erf(model, "output", inputs=torch.ones(2, 1, 9, 9), dtype=torch.float64)


# -- inputs, state, errors ---------------------------------------------------------------------------------
def test_image_folder_is_preprocessed_and_counted(tmp_path):
    from PIL import Image

    for i, colour in enumerate([(255, 0, 0), (0, 128, 255), (10, 20, 30)]):
        Image.new("RGB", (40 + 10 * i, 32), colour).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)

        def forward(self, x):
            if x.device.type != "meta":  # not the capture's trace
                seen.append(x.detach().clone())
            return self.conv(x)

    result = erf(Spy(), "output", inputs=tmp_path, input_size=24, batch_size=2, crop=False)
    assert result.n == 3 and "3 images" in result.inputs
    first = torch.cat(seen)[0]
    want = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(first[:, 12, 12], want)
    assert first.shape == (3, 24, 24)
    two = erf(Spy(), "output", inputs=tmp_path, input_size=24, n=2)
    assert two.n == 2


def test_corrupt_image_and_bad_folders(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    model = nn.Conv2d(3, 2, 3)
    with pytest.raises(RflensError, match="cannot read image"):
        erf(model, inputs=tmp_path, input_size=16)
    with pytest.raises(RflensError, match="does not exist"):
        erf(model, inputs=tmp_path / "missing", input_size=16)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RflensError, match="no images"):
        erf(model, inputs=empty, input_size=16)


def test_the_model_is_left_untouched():
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    model.train()
    model.layer1.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(m, m.training) for m in model.modules()]
    erf(model, "layer2", n=2, input_size=64, dtype=torch.float64)
    assert all(m.training == f for m, f in flags)
    assert all(p.grad is None and p.requires_grad and p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_errors_name_the_problem():
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    with pytest.raises(RflensError, match="no module 'layer9'.*close: layer"):
        erf(model, "layer9", n=1, input_size=64)
    with pytest.raises(RflensError, match=r"layer 'layer2': unit \(9, 0\) is outside the output of size \(8, 8\)"):
        erf(model, "layer2", n=1, input_size=64, unit=(9, 0))
    with pytest.raises(RflensError, match="noise seed must be a non-negative integer"):
        erf(model, n=1, input_size=64, seed=-1)
    with pytest.raises(RflensError, match="unknown ERF protocol"):
        erf(model, protocol="magic")
    with pytest.raises(RflensError, match="real numbers"):
        erf(model, n=1, input_size=64, device="meta")
    with pytest.raises(CaptureError, match="wrong channel count"):
        erf(model, inputs=torch.randn(2, 1, 64, 64))
    with pytest.raises(CaptureError, match="too small"):
        erf(nn.Conv2d(3, 2, 5), n=1, input_size=3)
    with pytest.raises(RflensError, match="shape"):
        erf(model, inputs=torch.randn(64, 64))


def test_to_dict_has_the_documented_keys():
    result = erf(_box_stack(2), "output", n=2, input_size=15)
    doc = result.to_dict("map.npy")
    assert {"model", "layer", "protocol", "n", "input_size", "metrics", "map"} <= set(doc)
    assert set(doc["metrics"]["area_ratio"]) == {"0.2", "0.3", "0.5", "0.99"}
    assert doc["map"] == "map.npy" and doc["input_size"] == [15, 15]
    assert {"sigma", "r2", "erf_trf_ratio"} <= set(doc["metrics"])


def test_a_channels_last_layer_output_is_refused():
    class ChannelsLast(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    with pytest.raises(RflensError, match="channels-last"):
        erf(ChannelsLast(), "lin", n=1, input_size=12)
    assert erf(ChannelsLast(), "output", n=1, input_size=12).map.shape == (12, 12)


def test_structural_map_as_an_erf_result():
    from rflens.erf import structural

    result = structural(_box_stack(6), "output", input_size=41)
    assert result.protocol == "structural" and result.map.max() == 1
    assert result.metrics["sigma"] == pytest.approx([math.sqrt(2 * 6 / 3)] * 2, abs=1e-12)
    assert result.trf_box == ((14, 26), (14, 26))  # six 3x3 layers: 13 pixels around the centre 20
    pooled = structural(torchvision.models.resnet18(), "output", input_size=64)  # the paths into the logits
    assert pooled.trf_box is None and pooled.map.min() > 0


def test_batchnorm_folding_keeps_the_map():
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.normal_()
    folded = erf(model, "layer2", n=2, input_size=64, dtype=torch.float64)
    plain = erf(model, "layer2", n=2, input_size=64, dtype=torch.float64, fold=False, channels_last=False)
    assert "folded into" in folded.engine and "not folded" in plain.engine
    np.testing.assert_allclose(folded.map, plain.map, rtol=1e-9, atol=1e-12 * plain.map.max())


def test_rflens_erf_is_the_call_and_the_module():
    import rflens

    result = rflens.erf(nn.Conv2d(1, 1, 3), n=1, input_size=9)
    assert isinstance(result, rflens.ERF) and "replknet" in rflens.erf.PROTOCOLS
    assert rflens.structural(nn.Conv2d(1, 1, 3), input_size=9).map.max() == 1


def test_pictures_use_the_timm_data_config_when_the_model_has_one():
    timm = pytest.importorskip("timm")
    from rflens.erf_inputs import Preprocess

    model = timm.create_model("resnet18", pretrained=False)
    pre = Preprocess.for_model(model)
    cfg = model.pretrained_cfg
    assert pre.source == "the model's timm data config"
    assert pre.mean == tuple(cfg["mean"]) and pre.std == tuple(cfg["std"]) and pre.crop_pct == cfg["crop_pct"]
    assert Preprocess.for_model(torchvision.models.resnet18()).source == "ImageNet statistics"


class _Sliced(nn.Module):
    """Two 3x3 convs after a slice or a negative pad: the crop must not read pixels the slice dropped."""

    def __init__(self, cut):
        super().__init__()
        self.cut = cut
        self.c1 = nn.Conv2d(1, 2, 3, padding=1)
        self.c2 = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(self.cut(x))))


@pytest.mark.parametrize("cut", [lambda x: x[..., 2:], lambda x: x[..., :-2], lambda x: x[..., 0:28],
                                 lambda x: torch.nn.functional.pad(x, (-2, 0)), lambda x: x[..., 1::2],
                                 lambda x: x[..., :1].expand(-1, -1, -1, 32)])
def test_slices_and_negative_padding_in_the_cone(cut):
    torch.manual_seed(0)
    model = _Sliced(cut).double()
    for unit in [None, (16, 0), (0, 1)]:
        _same_with_and_without_crop(model, "output", 32, unit, protocol="luo")


def test_a_unit_that_reads_only_padding():
    model = nn.Conv2d(1, 1, 1, padding=2).double()
    result = _same_with_and_without_crop(model, "output", 8, (0, 0), protocol="luo")
    assert result.crop is None and "only padding" in result.path and result.map.max() == 0


def test_inputs_from_a_loader_of_pairs_stop_at_n_and_channels_are_checked():
    pulled = []

    def loader():
        for i in range(100):
            pulled.append(i)
            yield torch.randn(2, 1, 9, 9), torch.zeros(2)

    result = erf(nn.Conv2d(1, 1, 3), inputs=loader(), n=3)
    assert result.n == 3 and len(pulled) == 2
    with pytest.raises(RflensError, match="in_channels 3 differs"):
        erf(nn.Conv2d(1, 1, 3), inputs=torch.randn(2, 1, 9, 9), in_channels=3)


def test_meta_models_stop_exceptions_and_batch_statistics():
    with pytest.raises(RflensError, match="meta device"):
        erf(nn.Conv2d(1, 1, 3, device="meta"), n=1, input_size=9)

    class Guarded(nn.Module):  # a model that catches every Exception of its layers must not swallow the stop
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3)

        def forward(self, x):
            try:
                y = self.a(x)
            except Exception:  # noqa: BLE001
                y = x[..., 1:-1, 1:-1] * 0
            return self.b(y)

    result = erf(Guarded().double(), "a", n=1, input_size=9, dtype=torch.float64, protocol="luo")
    assert result.map.max() > 0
    stats = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False), nn.Conv2d(2, 1, 3))
    result = erf(stats, "0", n=3, input_size=12)
    assert "batch size 1 because '1' normalises with batch statistics" in result.engine


@pytest.mark.parametrize("shape", [(301, 257), (200, 420)])
def test_pictures_match_timms_eval_transform(tmp_path, shape):
    timm = pytest.importorskip("timm")
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from rflens.erf_inputs import Preprocess, _picture

    model = timm.create_model("resnet18", pretrained=False)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    config = resolve_data_config({}, model=model)
    want = create_transform(**config)(Image.open(tmp_path / "x.png").convert("RGB"))
    got = _picture(tmp_path / "x.png", 3, tuple(config["input_size"][1:]), Preprocess.for_model(model))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


class _CoordChannel(nn.Module):
    """A position channel built from a map-shaped constant: the graph cannot see its values."""

    def __init__(self, position: bool):
        super().__init__()
        self.position = position
        self.conv = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        extra = torch.ones_like(x[:, :1])
        extra = extra.cumsum(-1) / 64 if self.position else extra * 0.5
        return self.conv(torch.cat([x, extra], 1))


def test_position_maps_built_from_constants_disable_the_crop():
    torch.manual_seed(0)
    coord = _same_with_and_without_crop(_CoordChannel(True).double(), "output", 32, (16, 5), protocol="luo",
                                        in_channels=1)
    assert coord.crop is None and "aten.cumsum on a tensor shaped like a feature map" in coord.path
    uniform = _same_with_and_without_crop(_CoordChannel(False).double(), "output", 32, (16, 5), protocol="luo",
                                          in_channels=1)
    assert uniform.crop is not None


class _PaddingOnlyBranch(nn.Module):
    """At the border, one branch of the unit reads nothing but padding of an inner layer (found by hypothesis)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 1, 3, padding=1)
        self.b = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1, padding=1))

    def forward(self, x):
        return self.a(x) + torch.nn.functional.pad(self.b(x), (0, -2, 0, -2))


@pytest.mark.parametrize("unit", [(0, 0), (0, 9), (9, 9)])
def test_a_branch_that_reads_only_padding(unit):
    torch.manual_seed(0)
    result = _same_with_and_without_crop(_PaddingOnlyBranch().double(), "output", 32, unit, protocol="luo")
    assert result.crop is not None, result.path

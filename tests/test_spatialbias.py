"""Spatial bias: mean activation maps against hand-computed ones (ones kernels on ones inputs, uneven padding),
the blind-spot probe against a model blind to a known region and a per-placement reference, inputs, errors,
JSON and figures, and the user's model left as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from rflens.erf_inputs import noise
from rflens.errors import RflensError
from rflens.mapstats import map_stats
from rflens.report.spatialbias import spatialbias_figure
from rflens.spatialbias import SpatialMap, _starts, blind_spot_probe, mean_activation

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ones_conv(ndim: int = 2, stride: int = 1, channels: int = 1) -> nn.Module:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[ndim](channels, 1, 3, stride=stride, padding=1, bias=False)
    nn.init.ones_(conv.weight)
    return nn.Sequential(conv)


def _ones_map_2d(n: int) -> np.ndarray:
    """What a 3x3 ones kernel with zero padding 1 gives on an n x n ones image: the in-image neighbours."""
    per_axis = np.full(n, 3.0)
    per_axis[[0, -1]] = 2.0
    return np.outer(per_axis, per_axis)


class _Mask(nn.Module):
    """Multiplies the input by a fixed 0/1 mask: exactly blind where it is 0."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


def _blind_left(n: int = 32, blind: int = 8) -> nn.Module:
    torch.manual_seed(0)
    mask = torch.ones(n, n)
    mask[:, :blind] = 0
    return nn.Sequential(_Mask(mask), nn.Conv2d(1, 2, 3, padding=1))


def _classifier() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


# -- mean activation ---------------------------------------------------------------------------------------
def test_ones_kernel_on_ones_input_counts_the_neighbours_in_the_image():
    result = mean_activation(_ones_conv(), inputs=torch.ones(3, 1, 8, 8))["output"]
    assert isinstance(result, SpatialMap)
    assert result.kind == "mean_activation" and result.images == 3 and result.layer == "output"
    assert result.map.dtype == np.float64 and result.map.shape == (8, 8)
    np.testing.assert_array_equal(result.map, _ones_map_2d(8))  # 9 inside, 6 on the edges, 4 in the corners
    assert result.map[0, 0] == 4 and result.map[0, 3] == 6 and result.map[4, 4] == 9
    assert result.stats.asymmetry == (0.0, 0.0)
    assert result.input_size == (8, 8)


def test_stride_two_on_even_input_pads_one_side_only():
    even = mean_activation(_ones_conv(stride=2), inputs=torch.ones(1, 1, 8, 8))["output"]
    # output unit u reads input rows 2u-1..2u+1: only u = 0 reads the padding (top and left), none the far end
    expected = np.array([[4, 6, 6, 6]] + [[6, 9, 9, 9]] * 3, dtype=np.float64)
    np.testing.assert_array_equal(even.map, expected)
    assert all(a > 0 for a in even.stats.asymmetry)
    assert all(r < 1 for r in even.stats.side_ratio)  # the first half sees less
    odd = mean_activation(_ones_conv(stride=2), inputs=torch.ones(1, 1, 9, 9))["output"]
    assert odd.map.shape == (5, 5)
    np.testing.assert_array_equal(odd.map, _ones_map_2d(5))
    assert odd.stats.asymmetry == (0.0, 0.0)


def test_several_layers_match_a_plain_hooked_forward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2, padding=1))
    result = mean_activation(model, ["0", "output", "1"], n=5, input_size=12, batch_size=2)
    assert list(result) == ["0", "output", "1"]
    images = next(noise(5, 2, (12, 12)).batches(5))
    with torch.no_grad():
        first = model[0](images)
        last = model(images)
    np.testing.assert_allclose(result["0"].map, first.double().mean((0, 1)).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result["1"].map, first.relu().double().mean((0, 1)).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result["output"].map, last.double().mean((0, 1)).numpy(), rtol=1e-6, atol=1e-6)
    assert result["output"].map.shape == (6, 6)
    assert all(r.images == 5 and "noise" in r.inputs for r in result.values())


def test_absolute_keeps_what_opposite_channels_cancel():
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight[0] = 1.0
        conv.weight[1] = -1.0
    model = nn.Sequential(conv)
    signed = mean_activation(model, inputs=torch.ones(2, 1, 6, 6))["output"]
    absolute = mean_activation(model, inputs=torch.ones(2, 1, 6, 6), absolute=True)["output"]
    np.testing.assert_array_equal(signed.map, np.zeros((6, 6)))
    np.testing.assert_array_equal(absolute.map, _ones_map_2d(6))
    assert absolute.absolute and not signed.absolute


def test_noise_is_seeded_and_independent_of_the_batch_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh())
    a = mean_activation(model, n=6, input_size=10, seed=3, batch_size=4)["output"].map
    b = mean_activation(model, n=6, input_size=10, seed=3, batch_size=1)["output"].map
    c = mean_activation(model, n=6, input_size=10, seed=4)["output"].map
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # float32 convolutions of other batch shapes
    assert not np.allclose(a, c)


def test_progress_is_called_after_every_batch():
    calls = []
    mean_activation(_ones_conv(), n=5, input_size=8, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_a_folder_of_pictures(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    result = mean_activation(model, ["0"], inputs=tmp_path, input_size=16)["0"]
    assert result.images == 3 and result.map.shape == (16, 16)
    assert str(tmp_path) in result.inputs
    assert np.isfinite(result.map).all()


def test_one_and_three_dimensional_models():
    line = mean_activation(_ones_conv(1), inputs=torch.ones(2, 1, 7))["output"]
    np.testing.assert_array_equal(line.map, [2, 3, 3, 3, 3, 3, 2])
    assert line.stats.asymmetry == (0.0,)
    cube = mean_activation(_ones_conv(3), inputs=torch.ones(1, 1, 5, 5, 5))["output"]
    assert cube.map.shape == (5, 5, 5)
    assert cube.map[0, 0, 0] == 8 and cube.map[2, 2, 2] == 27 and cube.map[0, 2, 2] == 18
    assert cube.stats.asymmetry == (0.0, 0.0, 0.0)
    cube_even = mean_activation(_ones_conv(3, stride=2), inputs=torch.ones(1, 1, 6, 6, 6))["output"]
    assert all(a > 0 for a in cube_even.stats.asymmetry)


def test_unknown_layer_is_named_with_valid_names():
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(1, 1, 3))
    model.add_module("conv2", nn.Conv2d(1, 1, 3))
    with pytest.raises(RflensError, match=r"no module 'conv9'.*conv1"):
        mean_activation(model, ["conv1", "conv9"], n=1, input_size=8)
    with pytest.raises(RflensError, match=r"no module 'zzz'.*conv1, conv2"):
        blind_spot_probe(model, input_size=8, layer="zzz")


def test_layers_without_a_spatial_map_are_refused():
    model = _classifier()
    with pytest.raises(RflensError, match=r"'output' outputs shape \(1, 3\): no 2-D spatial map"):
        mean_activation(model, n=1, input_size=8, batch_size=1)
    with pytest.raises(RflensError, match="'3'.*no 2-D spatial map"):
        mean_activation(model, ["0", "3"], n=1, input_size=8)
    ok = mean_activation(model, ["0", "2"], n=2, input_size=8)  # the pooled map is 1x1: still a map
    assert ok["2"].map.shape == (1, 1)


def test_channels_last_outputs_are_refused():
    class Permute(nn.Module):
        def __init__(self, *order: int) -> None:
            super().__init__()
            self.order = order

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.permute(*self.order)

    model = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), Permute(0, 2, 3, 1), nn.LayerNorm(5), nn.Linear(5, 6),
                          Permute(0, 3, 1, 2))
    for layer in ("2", "3"):
        with pytest.raises(RflensError, match="channels-last"):
            mean_activation(model, [layer], n=1, input_size=8)
    assert mean_activation(model, ["0", "4"], n=1, input_size=8)["4"].map.shape == (8, 8)


def test_a_module_that_does_not_run_is_an_error():
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)
            self.unused = nn.Conv2d(1, 1, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    with pytest.raises(RflensError, match="'unused' does not run"):
        mean_activation(Skips(), ["unused"], n=1, input_size=8)


def test_argument_errors():
    with pytest.raises(RflensError, match="n must be"):
        mean_activation(_ones_conv(), n=0, input_size=8)
    with pytest.raises(RflensError, match="batch size"):
        mean_activation(_ones_conv(), n=1, input_size=8, batch_size=0)
    with pytest.raises(RflensError, match="no layers"):
        mean_activation(_ones_conv(), [], n=1, input_size=8)


# -- blind-spot probe --------------------------------------------------------------------------------------
def test_probe_is_exactly_zero_where_the_model_is_blind():
    model = _blind_left()
    probe = blind_spot_probe(model, input_size=32, stimulus=4, stride=4)
    assert probe.kind == "probe" and probe.map.shape == (32, 32)
    assert probe.probe is not None and probe.probe.placements == 64 and probe.probe.stride == 4
    assert (probe.map[:, :8] == 0).all()
    assert (probe.map[:, 8:] > 0).all()
    assert probe.stats.never_read == 32 * 8
    start, size = probe.stats.worst_region, probe.stats.worst_region_size
    assert start[1] + size[1] <= 8  # the worst window lies inside the blind quarter
    assert probe.stats.worst_region_mean == 0
    assert probe.stats.asymmetry[1] > 0.1 and probe.stats.side_ratio[1] < 1


def test_probe_pixels_covered_by_a_seeing_placement_respond():
    probe = blind_spot_probe(_blind_left(), input_size=32, stimulus=4)  # stride 2 by default
    # columns 0..5 are covered only by placements inside the blind columns 0..7; column 6 also by 6..9
    assert (probe.map[:, :6] == 0).all()
    assert (probe.map[:, 6:] > 0).all()
    assert probe.probe.stride == 2


def test_probe_of_a_linear_model_is_translation_invariant_inside():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, bias=False))
    probe = blind_spot_probe(model, input_size=24, stimulus=4, stride=3)
    # placements 3..18 keep the whole response in the image; pixels 4..19 are covered by those alone, some by
    # one placement and some by two: only the mean per pixel is flat there, not the sum
    inner = probe.map[4:20, 4:20]
    np.testing.assert_allclose(inner, inner[0, 0], rtol=1e-6)
    assert probe.map[0, 0] < inner[0, 0]  # the corner loses the part of the response that falls off the image


def test_placements_reach_the_far_border():
    assert _starts(10, 4, 2) == [0, 2, 4, 6]
    assert _starts(11, 4, 2) == [0, 2, 4, 6, 7]
    assert _starts(4, 4, 3) == [0]
    assert _starts(9, 1, 4) == [0, 4, 8]


@pytest.mark.parametrize("model_kind, target", [("spatial", 1), ("classifier", 2), ("classifier", "norm")])
def test_probe_matches_one_placement_at_a_time(model_kind, target):
    torch.manual_seed(2)
    model = _classifier() if model_kind == "classifier" else nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1))
    n, s, stride = 11, 3, 2
    probe = blind_spot_probe(model, input_size=n, stimulus=s, stride=stride, value=2.0, background=0.5,
                             target=target, batch_size=4)
    starts = _starts(n, s, stride)
    total, count = np.zeros((n, n)), np.zeros((n, n))
    with torch.no_grad():
        base = model(torch.full((1, 1, n, n), 0.5)).double()
        for i in starts:
            for j in starts:
                x = torch.full((1, 1, n, n), 0.5)
                x[..., i:i + s, j:j + s] = 2.0
                diff = model(x).double() - base
                if target == "norm":
                    r = float(diff.norm())
                elif diff.dim() == 2:
                    r = float(diff[0, target])
                else:
                    r = float(diff[0, target].sum())
                total[i:i + s, j:j + s] += r
                count[i:i + s, j:j + s] += 1
    np.testing.assert_allclose(probe.map, total / count, rtol=1e-5, atol=1e-6)
    assert probe.probe.placements == len(starts) ** 2


def test_probe_of_an_inner_layer_and_progress():
    calls = []
    probe = blind_spot_probe(_classifier(), input_size=8, layer="0", stimulus=2, stride=2, batch_size=5,
                             progress=lambda d, t: calls.append((d, t)))
    assert probe.layer == "0" and probe.map.shape == (8, 8)
    assert calls == [(5, 16), (10, 16), (15, 16), (16, 16)]


def test_probe_in_one_and_three_dimensions():
    line = blind_spot_probe(_ones_conv(1), input_size=16, stimulus=4)
    assert line.map.shape == (16,) and (line.map > 0).all()
    assert line.stats.asymmetry[0] < 1e-9
    # the spatial sum of a ones kernel's output counts, per stimulus pixel, its in-image neighbours: per axis 11
    # for a placement touching a border (2 + 3 + 3 + 3), 12 inside
    cube = blind_spot_probe(_ones_conv(3), input_size=12, stimulus=4, stride=4, target=0)
    assert cube.map.shape == (12, 12, 12)
    assert cube.map[0, 0, 0] == 11**3 and cube.map[5, 6, 7] == 12**3 and cube.map[0, 4, 11] == 11 * 12 * 11
    assert cube.stats.asymmetry == (0.0, 0.0, 0.0)


def test_probe_argument_errors():
    model = _ones_conv()
    with pytest.raises(RflensError, match="stimulus 40 is larger than the input 32x32"):
        blind_spot_probe(model, input_size=32, stimulus=40)
    with pytest.raises(RflensError, match="stimulus must be a positive integer"):
        blind_spot_probe(model, input_size=32, stimulus=0)
    with pytest.raises(RflensError, match="stride must be a positive integer"):
        blind_spot_probe(model, input_size=32, stride=0)
    with pytest.raises(RflensError, match="target must be 'norm'"):
        blind_spot_probe(model, input_size=16, target="max")
    with pytest.raises(RflensError, match="target 5 is out of range"):
        blind_spot_probe(model, input_size=16, target=5)
    with pytest.raises(RflensError, match="batch size"):
        blind_spot_probe(model, input_size=16, batch_size=0)


# -- results, pictures, the user's model -------------------------------------------------------------------
def test_to_dict_is_json_and_plots_are_pngs(tmp_path):
    maps = [mean_activation(_ones_conv(), inputs=torch.ones(1, 1, 8, 8))["output"],
            blind_spot_probe(_blind_left(16, 4), input_size=16, stimulus=4),
            mean_activation(_ones_conv(1), inputs=torch.ones(1, 1, 9))["output"],
            blind_spot_probe(_ones_conv(3), input_size=6, stimulus=2, stride=2)]
    for m in maps:
        d = m.to_dict()
        text = json.dumps(d, allow_nan=False)
        assert "map" not in json.loads(text)
        assert d["kind"] == m.kind and d["map_shape"] == list(m.map.shape)
    lopsided = np.array([1.0, 1.0, 0.0, 0.0])  # side ratio inf, border ratio nan: still valid JSON
    d = SpatialMap(lopsided, "x", "probe", (4,), map_stats(lopsided)).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["stats"]["side_ratio"] == [None]
    path = tmp_path / "probe.png"
    fig = maps[1].plot(path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert "asymmetry" in fig.axes[0].get_title()
    fig = spatialbias_figure(maps)
    fig.savefig(tmp_path / "all.png")
    assert (tmp_path / "all.png").read_bytes()[:8] == PNG_MAGIC


def test_the_users_model_is_left_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5),
                          nn.Conv2d(3, 2, 3, padding=1))
    model.train()
    model[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    a = mean_activation(model, ["1", "output"], n=4, input_size=10)["output"].map
    b = mean_activation(model, ["output"], n=4, input_size=10)["output"].map
    np.testing.assert_array_equal(a, b)  # eval mode: dropout off, batch norm on its running statistics
    blind_spot_probe(model, input_size=10, stimulus=3)
    assert [m.training for m in model.modules()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())

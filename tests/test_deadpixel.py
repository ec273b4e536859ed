"""Dead-pixel test (Kim et al. 2023): culprit layers, indices, checkerboard period, kernel padding, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from archgen import architectures
from hypothesis import HealthCheck, given, settings

from rflens.capture import capture
from rflens.cli import main
from rflens.deadpixel import (
    culprits,
    dead_pixel_indices,
    dead_pixel_mask,
    dead_pixel_test,
    structural_test,
)
from rflens.errors import RefineError, RflensError
from rflens.pathcount import path_counts
from rflens.transforms import apply_recipe, kernel_pad

REF = json.loads((Path(__file__).resolve().parents[2] / "shared" / "reference" / "padding.json").read_text())


def _outputs_close(a: nn.Module, b: nn.Module, shape, seed: int = 1) -> bool:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    a, b = a.double().eval(), b.double().eval()
    with torch.no_grad():
        return torch.allclose(a(x), b(x), rtol=1e-10, atol=1e-10)


# -- culprits ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("example", REF["coverage"]["examples"], ids=lambda e: str(e["k_s_p"]))
def test_culprit_coverage_from_reference(example):
    k, s, p = example["k_s_p"]
    graph = capture(nn.Conv2d(1, 1, k, s, p), 32)
    found = culprits(graph)
    even, odd = example["even_index"], example["odd_index"]
    if even == odd:
        assert found == []
        return
    (c,) = found
    assert c.counts == ((even, odd), (even, odd))
    assert c.coverage == f"{even} vs {odd}" + (": odd positions never read" if odd == 0 else "")
    assert c.under_read == 0.75 and c.never_read == (0.75 if odd == 0 else 0.0)


def test_resnet50_culprits_are_the_reference_layers():
    graph = capture(torchvision.models.resnet50(), 224)
    assert [c.name for c in culprits(graph)] == REF["kernel_padding"]["torchvision_resnet50_layers"]


def test_culprits_only_feed_the_layer_and_cover_transposed_and_axes():
    net = nn.Sequential(nn.Conv2d(1, 2, (1, 3), stride=2, padding=(0, 1)), nn.ConvTranspose2d(2, 2, 3, 2, 1),
                        nn.Conv2d(2, 2, 3, stride=2))
    graph = capture(net, 33)
    names = [c.name for c in culprits(graph)]
    assert names == ["0", "1", "2"]
    first, transposed, _ = culprits(graph)
    assert first.coverage == "axis 0: 1 vs 0: odd positions never read; axis 1: 1 vs 2"
    assert transposed.transposed and transposed.coverage.startswith("outputs receive")
    assert [c.name for c in culprits(graph, "0")] == ["0"]  # only what feeds that layer


# -- indices on maps with known answers --------------------------------------------------------------------
def test_indices_of_known_maps():
    flat = dead_pixel_indices(np.ones((40, 40)))
    assert flat.l1 == 0 and flat.l2 == 0 and flat.period is None and flat.dead_share == 0
    board = np.where((np.arange(40)[:, None] + np.arange(40)[None]) % 2 == 0, 1.0, 3.0)
    ix = dead_pixel_indices(board)  # mean-1 values 0.5 / 1.5: every step is 1, every second difference 2
    assert ix.l1 == pytest.approx(1.0) and ix.l2 == pytest.approx(2.0) and ix.period == 2
    holes = np.ones((30, 30))
    holes[10, 12] = holes[20, 5] = 0.0
    padded = np.pad(holes, 5)  # the zero frame is outside the field: not dead, not in the indices' region
    assert dead_pixel_mask(padded).sum() == 2 and np.argwhere(dead_pixel_mask(padded)).tolist() == [[15, 17], [25, 10]]
    assert dead_pixel_indices(padded).region == ((5, 35), (5, 35))
    with pytest.raises(ValueError, match="zero everywhere"):
        dead_pixel_indices(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="non-negative"):
        dead_pixel_indices(-np.ones((8, 8)))


def _stem(stages: int) -> nn.Module:
    layers = [nn.Conv2d(1, 1, 7, 2, 3), nn.MaxPool2d(3, 2, 1)] + [nn.Conv2d(1, 1, 3, 2, 1) for _ in range(stages)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))


@pytest.mark.parametrize("stages,size,period", [(0, 64, 4), (0, 96, 4), (0, 224, 4), (3, 256, 32), (3, 320, 32),
                                               (3, 416, 32)])
def test_checkerboard_period(stages, size, period):
    ix = structural_test(capture(_stem(stages), size)).indices
    assert ix.period == period and ix.period_per_axis == (period, period) and ix.strength > 0.1


@pytest.mark.parametrize("size", [48, 64, 80, 128])
def test_period_of_small_maps(size):
    net = nn.Sequential(nn.Conv2d(1, 1, 3, 1, 1), nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(3, 2, 1),
                        nn.Conv2d(1, 1, 3, 2, 1), nn.AdaptiveAvgPool2d(1))
    assert structural_test(capture(net, size)).indices.period == 8


def test_all_units_map_is_the_sum_of_unit_maps():
    net = nn.Sequential(nn.Conv2d(1, 1, 3, 2, 1), nn.Conv2d(1, 1, 1, 2), nn.Conv2d(1, 1, 3, 1, 1))
    graph = capture(net, 21)
    node = graph.nodes[-1]
    total = sum(path_counts(graph, node.id, u).counts() for u in np.ndindex(*node.sizes))
    assert np.array_equal(path_counts(graph, node.id, "all").counts(), total)


# -- kernel padding ---------------------------------------------------------------------------------------
def test_resnet50_kernel_padding_removes_the_checkerboard_and_keeps_outputs():
    model = torchvision.models.resnet50().eval()
    before = structural_test(capture(model, 224)).indices
    fixed = kernel_pad(model, 224)
    after = structural_test(capture(fixed.model, 224)).indices
    assert before.period == 4 and after.period is None
    assert before.l1 >= 10 * after.l1
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(model(x), fixed.model.eval()(x), rtol=1e-4, atol=1e-4)
    assert fixed.exact and {c["module"] for c in fixed.changes} == set(REF["kernel_padding"]
                                                                         ["torchvision_resnet50_layers"]) - {"maxpool"}
    assert fixed.refused and fixed.refused[0][0] == "maxpool"  # the padded 8x8 stem already evens it out
    assert capture(fixed.model, 224).module_outputs.keys() == capture(model, 224).module_outputs.keys()


def test_widened_max_pool_is_reported_as_a_change_of_function():
    model = torchvision.models.resnet18()
    fixed = kernel_pad(model, 64, pools="widen")
    pool = next(c for c in fixed.changes if c["module"] == "maxpool")
    assert pool["kernel"] == [[3, 3], [4, 4]] and not pool["exact"] and not fixed.exact
    assert fixed.max_abs_output_change > 0 and culprits(capture(fixed.model, 64)) == []


@pytest.mark.parametrize("size", [224, 225, 223, 97])
def test_odd_sizes_keep_shapes_by_moving_the_zeros(size):
    model = torchvision.models.resnet18()
    fixed = kernel_pad(model, size, pools="widen")
    offsets = {c["module"]: c["kernel_offset"] for c in fixed.changes}
    graph, after = capture(model, size), capture(fixed.model, size)
    assert {m: graph.nodes[i].shape for m, i in graph.module_outputs.items()} == \
        {m: after.nodes[i].shape for m, i in after.module_outputs.items()}
    if size == 224:
        assert not any(any(o) for o in offsets.values())  # Kim et al.'s bottom/right placement fits
    if size == 225:
        assert offsets["conv1"] == [1, 1]  # (225 + 6 - 7) is even: a bottom/right tap would drop a row
    exact_only = kernel_pad(model, size, pools="keep")
    assert _outputs_close(model, exact_only.model, (1, 3, size, size))


def test_grouped_depthwise_one_and_three_dimensional_convolutions():
    nets = [(nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1, groups=2), nn.Conv2d(8, 8, 5, 2, 2, groups=8)), (1, 4, 30, 30)),
            (nn.Sequential(nn.Conv1d(2, 3, 7, 2, 3), nn.Conv1d(3, 3, 1, 2)), (1, 2, 64)),
            (nn.Sequential(nn.Conv3d(1, 2, 3, (1, 2, 2), 1), nn.Conv3d(2, 2, (1, 3, 3), 2, (0, 1, 1))),
             (1, 1, 9, 20, 20))]
    for net, shape in nets:
        fixed = kernel_pad(net, shape[2:], in_channels=shape[1])
        assert fixed.exact and len(fixed.changes) == 2 and not fixed.refused
        assert _outputs_close(net, fixed.model, shape)
        assert culprits(capture(fixed.model, shape[2:], in_channels=shape[1])) == []


def test_dilated_convolution_with_coprime_stride_is_padded_and_shared_factor_is_refused():
    ok = nn.Sequential(nn.Conv2d(1, 1, 3, 3, 2, dilation=2))  # taps 0,2,4 mod 3 = 0,2,1: uniform already
    assert culprits(capture(ok, 40)) == []
    odd = nn.Sequential(nn.Conv2d(1, 1, 2, 3, 1, dilation=2))
    fixed = kernel_pad(odd, 40)
    assert fixed.changes[0]["kernel"][1] == [3, 3] and _outputs_close(odd, fixed.model, (1, 1, 40, 40))
    shared = nn.Sequential(nn.Conv2d(1, 1, 3, 2, 2, dilation=2))
    fixed = kernel_pad(shared, 40)
    assert fixed.changes == [] and "share a factor" in fixed.refused[0][1]


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 1, 3, 3))

    def forward(self, x):
        return F.conv2d(x, self.weight, stride=2, padding=1)


def test_layers_rflens_cannot_pad_are_refused_with_the_reason():
    net = nn.Sequential(_Functional(), nn.ConvTranspose2d(2, 2, 3, 2, 1), nn.Conv2d(2, 2, 3, 2, 1))
    fixed = kernel_pad(net, 33, in_channels=1)
    reasons = dict(fixed.refused)
    assert "forward code of _Functional" in reasons["0"] and "transposed convolution" in reasons["1"]
    assert [c["module"] for c in fixed.changes] == ["2"]
    with pytest.raises(RflensError, match="pools must be"):
        kernel_pad(net, 33, in_channels=1, pools="sometimes")
    with pytest.raises(RefineError, match="is not a plain PyTorch"):
        apply_recipe(net, {"edits": [{"module": "1", "kernel_size": [4, 4], "padding": [1, 1],
                                      "kernel_offset": [0, 0]}]})


def test_timm_same_padding_conv_is_refused():
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnet_b0", pretrained=False)
    fixed = kernel_pad(model, 64)
    assert fixed.refused and all("Conv2dSame" in why or "forward code" in why for _, why in fixed.refused)
    assert fixed.exact


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(architectures(dims=(1, 2, 3), allow_upsampling=False, max_blocks=5))
def test_kernel_padding_keeps_the_function_of_random_architectures(arch):
    model = arch.build()
    fixed = kernel_pad(model, arch.input_shape[2:], in_channels=arch.input_shape[1], pools="keep")
    assert _outputs_close(model, fixed.model, arch.input_shape)
    left = {c.name for c in culprits(capture(fixed.model, arch.input_shape[2:], in_channels=arch.input_shape[1]))}
    assert left <= {name for name, _ in fixed.refused}  # every changed layer now reads evenly


def test_recipe_and_safetensors_rebuild_the_fixed_model(tmp_path):
    from safetensors.torch import save_model

    model = torchvision.models.resnet18().eval()
    fixed = kernel_pad(model, 96)
    (tmp_path / "recipe.json").write_text(json.dumps(fixed.recipe))
    save_model(fixed.model, str(tmp_path / "model.safetensors"))
    rebuilt = apply_recipe(torchvision.models.resnet18(), json.loads((tmp_path / "recipe.json").read_text()),
                           weights=tmp_path / "model.safetensors").eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), fixed.model.eval()(x))
    assert torch.equal(apply_recipe(model, fixed.recipe).conv1.weight, fixed.model.conv1.weight)


# -- weighted test, sensitivity ---------------------------------------------------------------------------
class _Positive(nn.Module):
    """Linear, positive weights, a culprit 3x3/s2 conv and a global mean: its gradient is a positive map."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, 2, 1, bias=False)
        self.b = nn.Conv2d(4, 5, 3, 1, 1, bias=False)
        with torch.no_grad():
            for conv in (self.a, self.b):
                conv.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(conv.in_channels))

    def forward(self, x):
        return self.b(self.a(x)).mean((2, 3))


def test_weighted_test_and_sensitivity_on_a_linear_model():
    report = dead_pixel_test(_Positive(), 24, weighted=True, n=2, sensitivity=True, sensitivity_block=6,
                             target_class=3)
    assert report.erf.detail["target"] == "class 3 at the unit" and report.erf.indices.period == 2
    # linear network: raising a pixel by eps changes the logit by eps * (sum over channels of the gradient)
    assert report.sensitivity.r2 == pytest.approx(1.0, abs=1e-6)
    assert report.sensitivity.change.shape == (6, 6)
    doc = report.to_dict()
    assert {"culprits", "structural", "erf", "sensitivity"} <= doc.keys()
    assert doc["culprits"] == [c.to_dict() for c in report.culprits] and doc["culprits"][0]["name"] == "a"


def test_errors_of_the_test():
    with pytest.raises(RflensError, match="weighted"):
        dead_pixel_test(_Positive(), 24, sensitivity=True)
    with pytest.raises(RflensError, match="unknown fix"):
        dead_pixel_test(_Positive(), 24, fix="magic")
    with pytest.raises(RflensError, match="no module 'nope' with a spatial output"):
        dead_pixel_test(_Positive(), 24, layer="nope")
    with pytest.raises(RflensError, match="out of range"):
        dead_pixel_test(_Positive(), 24, weighted=True, n=1, target_class=9)


def test_labelled_folder_gives_each_image_its_class(tmp_path):
    from PIL import Image

    from rflens.erf_inputs import Preprocess, folder

    for name in ("3", "n01443537"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(np.full((40, 40, 3), 60 * i, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    source = folder(tmp_path, None, 3, (32, 32), Preprocess())
    assert source.labels == [3, 3, 1, 1] and "labelled" in source.description
    (tmp_path / "cats").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "cats" / "x.png")
    with pytest.raises(RflensError, match="name class folders"):
        folder(tmp_path, None, 3, (32, 32), Preprocess())


def test_erf_differentiates_the_folder_labels(tmp_path):
    from PIL import Image

    from rflens.erf import erf

    for label in ("0", "4"):
        (tmp_path / label).mkdir()
        Image.fromarray(np.random.default_rng(int(label)).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            tmp_path / label / "a.png")
    model = _Positive().double()
    got = erf(model, inputs=str(tmp_path), protocol="kim", input_size=24, dtype=torch.float64, fold=False)
    assert got.target == "each image's true class (folder labels) at the unit"
    expected = []
    for label in (0, 4):
        one = erf(model, inputs=str(tmp_path / str(label)), protocol="kim", input_size=24, dtype=torch.float64,
                  fold=False, target_class=label)
        expected.append(one.map)
    assert np.allclose(got.map, np.mean(expected, axis=0), rtol=1e-12, atol=0)


# -- command line -----------------------------------------------------------------------------------------
def test_cli_deadpixel_json_and_fix(capsys, tmp_path):
    code = main(["deadpixel", "torchvision:resnet18", "--input-size", "64", "--fix", "kernel-pad", "--json",
                 "--plot", str(tmp_path / "maps.png")])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and (tmp_path / "maps.png").stat().st_size > 0
    assert [c["name"] for c in doc["culprits"]][:2] == ["conv1", "maxpool"]
    assert doc["culprits"][0]["coverage"] == "3 vs 4"
    assert {"l1", "l2", "period", "dead_share"} <= doc["structural"].keys() and doc["erf"] is None
    assert {"structural", "erf", "max_abs_output_change", "culprits", "changes"} <= doc["after_fix"].keys()
    after = doc["after_fix"]["structural"]  # at 64 px the border ramp weighs more in L1 than at 224
    assert after["period"] is None and doc["structural"]["period"] == 4 and after["l1"] * 5 < doc["structural"]["l1"]
    code = main(["fix", "kernel-pad", "torchvision:resnet18", "--input-size", "64", "--out", str(tmp_path / "fix")])
    out = capsys.readouterr().out
    assert code == 0 and "structural L1" in out
    recipe = json.loads((tmp_path / "fix" / "recipe.json").read_text())
    rebuilt = apply_recipe(torchvision.models.resnet18(), recipe, weights=tmp_path / "fix" / "model.safetensors")
    assert rebuilt.conv1.weight.shape[-2:] == (8, 8)


def test_cli_weighted_with_sensitivity_table(capsys):
    code = main(["deadpixel", "torchvision:resnet18", "--input-size", "48", "--weighted", "--n", "2",
                 "--sensitivity", "--block", "4"])
    out = capsys.readouterr().out
    assert code == 0 and "ERF (kim)" in out and "positional sensitivity" in out and "culprit layers" in out


def test_review_regressions(tmp_path, capsys):
    # a labelled folder does not replace the replknet target of an inner layer (labels are the kim logit's)
    from PIL import Image
    from torch.nn.utils import weight_norm

    from rflens.erf import erf

    (tmp_path / "1").mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, dtype=np.uint8)).save(tmp_path / "1" / "a.png")
    inner = erf(_Positive(), "a", inputs=str(tmp_path), protocol="replknet", input_size=24)
    assert inner.target.startswith("sum over channels")
    # hooks computing the weight and non-zero padding modes are refused by name, not crashed on or guessed
    with pytest.warns(FutureWarning):
        hooked = nn.Sequential(weight_norm(nn.Conv1d(1, 2, 3, 2, 1)), nn.Conv1d(2, 2, 3, 2, 1, padding_mode="reflect"))
    fixed = kernel_pad(hooked, 32, in_channels=1)
    reasons = dict(fixed.refused)
    assert "weight_norm" in reasons["0"] and "padding_mode 'reflect'" in reasons["1"] and not fixed.changes
    # float64 models are checked in float64; a forward that needs real data is traced on the run device

    class NeedsData(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, 2, 1)

        def forward(self, x):
            y = self.conv(x)
            return y * 2 if bool(y.sum() > 0) else y

    assert kernel_pad(NeedsData().double(), 20).exact
    assert main(["deadpixel", "torchvision:resnet18", "--input-size", "32", "--layer", "nope"]) == 2
    assert "no module 'nope'" in capsys.readouterr().err

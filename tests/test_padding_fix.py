"""The padding-mode fix and the `rflens padding` / `rflens fix padding-mode` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_cli import run

from rflens.capture import capture
from rflens.errors import RefineError
from rflens.padding import foveation, padding_report, with_padding_mode
from rflens.transforms import apply_recipe, load_recipe, padding_mode_edits, padding_mode_fix


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 1, 1), nn.MaxPool2d(3, 2, 1),
                         nn.Conv2d(4, 4, 1, 2), nn.ConvTranspose2d(4, 4, 2, 2), nn.AdaptiveAvgPool2d(1))


class _Functional(nn.Module):
    """A convolution in forward code: setting an attribute cannot change it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))

    def forward(self, x):
        return F.conv2d(x, self.weight, padding=1)


class _SamePad(nn.Conv2d):
    """Pads in its own forward (as timm's Conv2dSame does)."""

    def forward(self, x):
        return super()._conv_forward(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias)


def test_padded_convolutions_change_and_the_rest_is_listed_by_name():
    model = nn.Sequential(_Functional(), _SamePad(4, 4, 3, 2), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ConvTranspose2d(4, 4, 3, 2, 1), nn.Conv2d(4, 4, 1))
    graph = capture(model, 32, in_channels=3)
    edits, changes, skipped = padding_mode_edits(model, graph, "reflect")
    assert edits == [{"module": "2", "padding_mode": "reflect"}]
    assert changes[0]["mode"] == ["zeros", "reflect"] and changes[0]["padding"] == [[1, 1], [1, 1]]
    why = dict(skipped)
    assert set(why) == {"0", "1"}  # the transposed convolution pads nothing on its input; the 1x1 neither
    assert "forward code" in why["0"] and "_SamePad pads in its own forward" in why["1"]


def test_transposed_convolution_with_padding_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ConvTranspose2d(4, 4, 3, 1, 1))
    with pytest.raises(RefineError, match="transposed"):
        apply_recipe(model, {"edits": [{"module": "1", "padding_mode": "reflect"}]})


def test_reflection_larger_than_the_map_is_skipped():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 5, padding=4))
    _, _, skipped = padding_mode_edits(model, capture(model, 8), "reflect")
    assert skipped == [("1", "reflect padding of (4, 4) does not fit a map of 4 units (PyTorch refuses)")]
    edits, _, skipped = padding_mode_edits(model, capture(model, 8), "circular")
    assert not skipped and len(edits) == 2  # wrapping needs pads <= n only


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_fixed_model_reads_like_the_what_if_and_runs_like_padding_mode_set_by_hand(mode):
    model = _net().eval()
    fix = padding_mode_fix(model, mode, 32, audit_after=False)
    assert {c["module"] for c in fix.changes} == {"0", "2"}
    # the traced fixed model's foveation is the original's what-if in that mode (independent: a real trace)
    after = foveation(capture(fix.model, 32), ("model",))[0].paths
    what_if = foveation(with_padding_mode(capture(model, 32), mode), ("model",))[0].paths
    assert after.exact and np.array_equal(after.counts(), what_if.counts())
    # and the fixed model computes what a model built with that padding mode computes
    by_hand = _net().eval()
    by_hand[0].padding_mode = by_hand[2].padding_mode = mode
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fix.model(x), by_hand(x))
        assert not torch.equal(fix.model(x), model(x))
    assert model[0].padding_mode == "zeros"  # the user's model is untouched


def test_recipe_round_trip_and_the_audit_of_the_fixed_model(tmp_path):
    model = _net()
    fix = padding_mode_fix(model, "reflect", 32, modes=["model"], size_range=(16, 80))
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(fix.recipe))
    rebuilt = apply_recipe(_net(), load_recipe(str(path)))
    assert [m.padding_mode for m in rebuilt.modules() if isinstance(m, nn.Conv2d)] == ["reflect", "reflect", "zeros"]
    before = padding_report(model, 32, modes=["model"], size_range=(16, 80))
    assert fix.after.uneven == before.uneven == ["0", "3", "4"]  # a padding mode does not even out the windows
    assert fix.after.even[0].sizes == before.even[0].sizes
    zeros = foveation(capture(model, 32), ("model",))[0].stats.border_ratio
    assert fix.after.foveation[0].stats.border_ratio > zeros  # reflection reads the border more often


def test_unknown_mode_is_a_clear_error():
    from rflens.errors import RflensError

    with pytest.raises(RflensError, match="padding mode must be one of"):
        padding_mode_fix(_net(), "mirror", 32)


def test_cli_padding_json(capsys, tmp_path):
    code, out, _ = run(capsys, "padding", "torchvision:resnet18", "--input-size", "64", "--range", "48:80",
                       "--modes", "model,reflect", "--json", "--plot", str(tmp_path / "f.png"))
    assert code == 0
    doc = json.loads(out)
    assert doc["input_size"] == [64, 64] and doc["uneven"][:2] == ["conv1", "maxpool"]
    row = doc["layers"][0]
    assert {"name", "axis", "pads", "leftover", "effect", "unread"} <= set(row)
    assert row["name"] == "conv1" and row["pads"] == [3, 3] and row["leftover"] == 1
    assert doc["even_sizes"] == [65] and doc["suggested_input_size"] == [65, 65]
    assert set(doc["foveation"]["modes"]) == {"model", "reflect"}
    assert {"asymmetry", "border_ratio"} <= set(doc["foveation"])
    assert (tmp_path / "f.png").stat().st_size > 0


def test_cli_padding_table_and_spatial_bias(capsys, tmp_path):
    code, out, _ = run(capsys, "padding", "torchvision:resnet18", "--input-size", "64", "--range", "60:70",
                       "--modes", "model", "--spatial-bias", "layer1", "--n", "2", "--probe", "--stimulus", "16",
                       "--plot", str(tmp_path / "f.png"))
    assert code == 0
    assert "8 uneven layer(s)" in out and "layer2.0.downsample.0" in out and "never read" in out
    assert "spatial bias" in out and "random weights" in out
    assert (tmp_path / "f_spatialbias.png").stat().st_size > 0


def test_cli_fix_padding_mode(capsys, tmp_path):
    code, out, _ = run(capsys, "fix", "padding-mode", "circular", "torchvision:resnet18", "--input-size", "64",
                       "--out", str(tmp_path), "--json")
    assert code == 0
    doc = json.loads(out)
    assert len(doc["changes"]) == 17 and not doc["skipped"]
    assert doc["suggested_input_size"] == [65, 65] and doc["after"]["uneven"] == doc["before"]["uneven"]
    recipe = load_recipe(str(tmp_path / "recipe.json"))
    assert recipe["mode"] == "circular" and recipe["suggested_input_size"] == [65, 65]
    import torchvision
    from safetensors.torch import load_file

    rebuilt = apply_recipe(torchvision.models.resnet18(), recipe, weights=tmp_path / "model.safetensors")
    assert rebuilt.conv1.padding_mode == "circular"
    assert torch.equal(rebuilt.conv1.weight, load_file(str(tmp_path / "model.safetensors"))["conv1.weight"])


def test_cli_padding_errors(capsys):
    code, _, err = run(capsys, "padding", "torchvision:resnet18", "--modes", "mirror")
    assert code == 2 and "padding mode must be 'model' or one of" in err
    code, _, err = run(capsys, "padding", "torchvision:resnet18", "--layer", "nope", "--modes", "model")
    assert code == 2 and "nope" in err


def test_cli_padding_range_takes_no_step(capsys):
    code, _, err = run(capsys, "padding", "torchvision:resnet18", "--range", "32:64:2", "--modes", "model")
    assert code == 2 and "not a step" in err

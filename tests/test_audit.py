"""rflens audit: the union of the analyses, its verdicts, the fixes' costs, gradients on demand, errors, CLI."""

import json
import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from test_cli import run
from test_padding import REF
from torch import nn

import rflens
from rflens.audit import SCHEMA_VERSION, audit, module_of
from rflens.border import border_report
from rflens.capture import capture
from rflens.deadpixel import dead_pixel_test
from rflens.erf import structural
from rflens.padding import padding_report
from rflens.rf import receptive_field


def strided_net(c: int = 3) -> nn.Module:
    """A 7x7/2 stem, a 3x3/2 conv and a global pool: uneven padding at even sizes, culprits, a checkerboard."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(c, 8, 7, 2, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


@pytest.fixture(scope="module")
def resnet18_audit():
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    return model, audit(model, 64, model_name="resnet18")


def test_document_is_the_union_of_the_analyses(resnet18_audit):
    """Each part of the audit's JSON is exactly what the analysis's own function returns."""
    model, result = resnet18_audit
    doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))  # strict JSON: no NaN or inf

    def same(part: dict, own: dict) -> None:
        own = {k: v for k, v in own.items() if k not in ("model", "input_size")}
        assert part == json.loads(json.dumps(own))

    assert doc["schema_version"] == SCHEMA_VERSION == 1
    assert doc["model"] == "resnet18" and doc["input_size"] == [64, 64] and doc["last_layer"] == "layer4"
    rf_doc = dict(doc["rf"])
    assert rf_doc.pop("final") == receptive_field(model, 64).layer("layer4").to_dict()
    same(rf_doc, receptive_field(model, 64).to_dict())
    same(doc["border"], border_report(model, 64, top=3).to_dict())
    same(doc["padding"], padding_report(model, 64).to_dict())
    same(doc["dead_pixels"], dead_pixel_test(model, 64).to_dict())
    same(doc["erf"]["structural"], structural(model, "layer4", input_size=64).to_dict())
    assert doc["erf"]["gradient"] is None
    assert [v["area"] for v in doc["verdicts"]] == ["receptive field", "unproductive layers", "padding",
                                                    "dead pixels"]
    assert all(v["level"] in ("ok", "warning", "problem") for v in doc["verdicts"])


def test_verdicts_carry_the_deciding_numbers(resnet18_audit):
    _, result = resnet18_audit
    verdicts = {v.area: v for v in result.verdicts}
    # resnet18's layer4 sees 435 pixels (Araujo et al.), far more than 64
    assert verdicts["receptive field"].value == pytest.approx(435 / 64)
    assert verdicts["receptive field"].level == "ok" and "435" in verdicts["receptive field"].text
    assert verdicts["unproductive layers"].value == len(result.border.unproductive) > 0
    assert verdicts["unproductive layers"].level == "problem"
    assert verdicts["padding"].value == len(result.padding.uneven) > 0 and verdicts["padding"].level != "ok"
    assert verdicts["dead pixels"].level != "ok" and "culprit" in verdicts["dead pixels"].text


def test_resnet50_reference_padding_and_receptive_field():
    """The audit reproduces the reference values: ResNet-50 at 224 sees 427 pixels and pads 8 layers unevenly."""
    model = torchvision.models.resnet50()
    result = audit(model, 224)
    assert result.final.rf == (427, 427)
    assert sorted(result.padding.uneven) == sorted(REF["torchvision_resnet50_224"]["uneven_layers"])
    padding = next(v for v in result.verdicts if v.area == "padding")
    assert padding.value == 8 and "225" in padding.text


def test_fixes_cost_what_the_changed_models_cost():
    """The input-size fix costs the FLOPs of the model traced at that size; kernel padding costs the parameters
    of the padded kernels, counted by hand."""
    model = strided_net()
    result = audit(model, 64)
    fixes = {f.change.split()[0]: f for f in result.fixes}
    size_fix = fixes["feed"]
    new = result.padding.suggested_size()
    assert size_fix.flops_ratio == pytest.approx(capture(model, new).flops / capture(model, 64).flops)
    assert f"--input-size {new[0]}" in size_fix.command and new[0] == new[1]
    pad = fixes["pad"]
    params = sum(p.numel() for p in model.parameters())
    # 7x7 -> 8x8 (3 -> 8 channels) and 3x3 -> 4x4 (8 -> 8): the extra taps are weights too
    added = (64 - 49) * 3 * 8 + (16 - 9) * 8 * 8
    assert pad.params_ratio == pytest.approx((params + added) / params)
    assert result.kernel_padded is not None and not result.kernel_padded.structural.indices.checkerboard
    assert result.dead_pixels.structural.indices.checkerboard
    assert "rflens fix kernel-pad" in pad.command


def test_gradients_add_the_erf_and_the_weighted_test(tmp_path):
    model = strided_net()
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    result = audit(model, 32, gradients=True, images=str(folder))
    assert result.gradients and result.erf.n == 3 and result.erf.protocol == "replknet"
    assert result.dead_pixels.erf is not None and result.dead_pixels.erf.kind == "erf"
    erf = next(v for v in result.verdicts if v.area == "effective receptive field")
    sigma = result.erf.metrics["sigma"]
    assert erf.value == pytest.approx(math.sqrt(2 * sigma[0] / 32 * 2 * sigma[1] / 32))
    doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert doc["erf"]["gradient"]["n"] == 3 and doc["dead_pixels"]["erf"] is not None


def test_one_and_three_dimensional_models():
    for dim, size in ((1, 96), (3, 20)):
        conv = getattr(nn, f"Conv{dim}d")
        model = nn.Sequential(conv(2, 4, 3, 2, 1), nn.ReLU(), conv(4, 4, 3, 1, 1))
        result = audit(model, size)
        assert result.input_size == (size,) * dim and result.last_layer == "output"
        assert result.final.rf == (7,) * dim  # 3, then 3 more at stride 2
        rf = next(v for v in result.verdicts if v.area == "receptive field")
        assert rf.value == pytest.approx(7 / size) and rf.level == "problem"


def test_model_needing_real_data_is_traced_on_the_run_device():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, 2, 1)

        def forward(self, x):
            y = self.conv(x)
            return y * 2 if y.sum().item() > 1e9 else y  # data-dependent Python: meta cannot run it

    with pytest.raises(rflens.MetaDeviceError):
        capture(Gate(), 32)
    result = audit(Gate(), 32)
    assert result.final.rf == (3, 3) and result.padding.uneven == ["conv"]


def test_module_of_prefers_the_outermost_name(resnet18_audit):
    _, result = resnet18_audit
    graph = result.rf.graph
    assert module_of(graph, graph.module_outputs["layer4"]) == "layer4"  # not layer4.1 or layer4.1.relu
    assert module_of(graph, 10 ** 6) is None
    seq = capture(nn.Sequential(nn.Conv2d(3, 4, 3)), 16)
    assert module_of(seq, seq.module_outputs[""]) == "output"  # the model's own output (and its only conv's)


# -- the command line ------------------------------------------------------------------------------------------
def test_cli_terminal_json_and_html(capsys, tmp_path):
    code, out, _ = run(capsys, "audit", "torchvision:resnet18", "--input-size", "64", "--html",
                       str(tmp_path / "r.html"), "--out", str(tmp_path / "r.json"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("torchvision:resnet18 at 64x64 (weight-free analyses): 1 problem(s), 2 warning(s), 1 ok")
    verdicts = lines[1:5]
    assert [line.split()[0] for line in verdicts] == ["ok", "problem", "warning", "warning"]
    assert "435 of the last map (layer4) is 6.80x the 64x64 input" in verdicts[0]
    for heading in ("unproductive layers (Richter & Pal)", "padding (Alsallakh et al.)", "dead pixels (Kim et al.)",
                    "fixes"):
        assert heading in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["schema_version"] == 1 and [v["level"] for v in doc["verdicts"]] == ["ok", "problem", "warning",
                                                                                   "warning"]
    html = (tmp_path / "r.html").read_text()
    assert all(v["text"] in html for v in doc["verdicts"])
    code, out, _ = run(capsys, "audit", "torchvision:resnet18", "--input-size", "64", "--json")
    assert code == 0 and json.loads(out) == doc


def test_cli_weights_turn_the_gradients_on(capsys, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1))
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    factory = tmp_path / "nets.py"
    factory.write_text("from torch import nn\n\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3), "
                       "nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1))\n")
    code, out, err = run(capsys, "audit", f"{factory}:build", "--input-size", "32", "--weights", str(weights),
                         "--n", "2", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["erf"]["gradient"]["n"] == 2 and doc["verdicts"][-1]["area"] == "effective receptive field"


@pytest.mark.parametrize("argv, message", [
    (["torchvision:vgg16", "--input-size", "16"], "input too small"),
    (["torchvision:resnet18", "--input-size", "64", "--in-channels", "5"], "channel"),
    (["torchvision:no_such_net"], "no_such_net"),
])
def test_cli_bad_input_is_a_clear_error(capsys, argv, message):
    code, out, err = run(capsys, "audit", *argv)
    assert code == 2 and out == ""
    assert err.startswith("error:") and message in err.lower()


def test_cli_untrusted_weights_are_refused(capsys, tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": object()}, bad)  # needs pickle code to load
    code, _, err = run(capsys, "audit", "torchvision:resnet18", "--input-size", "64", "--weights", str(bad))
    assert code == 2 and "arbitrary python objects" in err.lower()
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    code, _, err = run(capsys, "audit", "torchvision:resnet18", "--input-size", "64", "--weights", str(corrupt))
    assert code == 2 and "error:" in err


def test_progress_reports_every_stage_start_and_end():
    calls = []
    audit(strided_net(), 32, gradients=True, n=2, progress=lambda stage, done, total: calls.append((stage, done,
                                                                                                     total)))
    stages = [stage for stage, done, total in calls if (done, total) == (0, 1)]
    assert stages == ["receptive fields", "unproductive layers", "padding", "dead pixels", "kernel padding",
                      "structural map", "gradient ERF", "weighted dead-pixel test"]
    for stage in stages:  # each one ends
        assert (stage, 1, 1) in calls
    assert any(stage == "padding" and total and total > 1 for stage, _, total in calls)  # the size search
    assert any(stage == "gradient ERF" and done == 2 for stage, done, _ in calls)  # the images


# -- review regressions ------------------------------------------------------------------------------------------
class AddHead(nn.Module):
    """The last map is a functional add: no module returns it."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(3, 8, 1, 2), nn.Linear(8, 10)

    def forward(self, x):
        return self.fc((self.a(x) + self.b(x)).mean((2, 3)))


def test_last_map_without_a_module_keeps_its_node():
    result = audit(AddHead(), 32, gradients=True, n=2)
    assert result.final.rf == (3, 3) and result.last_layer == "add in '(model)'"
    assert result.structural_erf.unit == (8, 8) and result.structural_erf.trf_box == ((15, 17), (15, 17))
    assert result.erf is None and any("no gradient ERF" in n for n in result.notes)
    assert result.gradients and result.dead_pixels.erf is not None


def test_a_pooling_over_the_whole_map_is_a_global_pooling():
    class Head(nn.Module):
        def __init__(self, pool):
            super().__init__()
            self.layer, self.pool, self.fc = nn.Conv2d(3, 8, 3, 2, 1), pool, nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.pool(self.layer(x)).flatten(1))

    adaptive, window = audit(Head(nn.AdaptiveAvgPool2d(1)), 16), audit(Head(nn.AvgPool2d(8)), 16)
    assert adaptive.last_layer == window.last_layer == "layer" and adaptive.final.rf == window.final.rf == (3, 3)


def test_even_size_search_covers_sizes_outside_the_default_range():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1))
    # 21 -> 11 -> 6: both windows even; 17 is even too but further; 19 leaves a row
    assert audit(model, 20).padding.suggested_size() == (21, 21)


def test_reflect_fix_only_where_the_command_can_make_it():
    class OwnPad(nn.Conv2d):  # pads in its own forward: padding_mode cannot change it
        def forward(self, x):
            return nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1)), self.weight, self.bias, 2)

    own = nn.Sequential(OwnPad(3, 4, 3), nn.ReLU(), OwnPad(4, 4, 3))
    assert not any("reflect" in f.change for f in audit(own, 32).fixes)
    plain = audit(strided_net(), 32)
    reflect = next(f for f in plain.fixes if "reflect" in f.change)
    assert reflect.change == "reflect padding in 3 padded convolutions"


def test_an_analysis_that_cannot_run_is_a_note():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Upsample(scale_factor=16))
    result = audit(model, 16)
    assert any("no model foveation map" in n for n in result.padding.notes)


def test_cli_commands_repeat_the_model_options(capsys, tmp_path):
    factory = tmp_path / "nets.py"
    factory.write_text("from torch import nn\n\n\ndef build(width=8, label='x'):\n    assert label == '2024'\n"
                       "    return nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, 4, 3, 2, 1))"
                       "\n")
    code, out, err = run(capsys, "audit", f"{factory}:build", "--input-size", "32", "--model-arg", "width=6",
                         "--model-arg", "label='2024'", "--json")
    assert code == 0, err
    command = next(f["command"] for f in json.loads(out)["fixes"] if f["command"].startswith("rflens fix kernel"))
    import shlex

    argv = shlex.split(command)[1:]
    assert argv[argv.index("--model-arg") + 1] == "width=6" and "label='2024'" in argv
    code, _, err = run(capsys, *[a for a in argv if a != "--out"][:-1], "--out", str(tmp_path / "fixed"))
    assert code == 0, err  # the printed command builds the same model and runs

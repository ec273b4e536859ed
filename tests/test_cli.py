"""The command line: `rflens rf` table and JSON, options, and clear errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from rflens.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_rf_json_document(capsys, tmp_path):
    code, out, _ = run(capsys, "rf", "torchvision:resnet18", "--input-size", "224", "--json", "--out",
                       str(tmp_path / "rf.json"))
    assert code == 0
    doc = json.loads(out)
    assert doc["model"] == "torchvision:resnet18" and doc["input_size"] == [224, 224]
    layer4 = next(layer for layer in doc["layers"] if layer["name"] == "layer4")
    assert set(layer4) == {"name", "op", "output_size", "rf", "rf_min", "stride", "padding", "global"}
    assert layer4["rf"] == [435, 435] and layer4["stride"] == [32, 32] and layer4["global"] is False
    assert json.loads((tmp_path / "rf.json").read_text()) == doc


def test_rf_table_and_layer_filter(capsys):
    code, out, _ = run(capsys, "rf", "torchvision:resnet18", "--layer", "layer3", "--layer", "layer4")
    assert code == 0
    assert "layer4" in out and "435" in out and "layer3" in out and "layer2" not in out


def test_rectangular_input_and_fractional_stride(capsys, tmp_path):
    factory = tmp_path / "net.py"
    factory.write_text(
        "import torch.nn as nn\n"
        "def make(width=2):\n"
        "    return nn.Sequential(nn.Conv2d(1, width, 3, stride=2), nn.Upsample(scale_factor=4))\n")
    code, out, _ = run(capsys, "rf", f"{factory}:make", "--model-arg", "width=3", "--input-size", "33x17",
                       "--json")
    assert code == 0
    last = json.loads(out)["layers"][-1]
    assert last["output_size"] == [64, 32] and last["stride"] == ["1/2", "1/2"]


def test_one_dimensional_model(capsys, tmp_path):
    factory = tmp_path / "audio.py"
    factory.write_text("import torch.nn as nn\n"
                       "def make():\n"
                       "    return nn.Sequential(nn.Conv1d(1, 4, 400, stride=160), nn.Conv1d(4, 4, 3, padding=1))\n")
    code, out, _ = run(capsys, "rf", f"{factory}:make", "--input-size", "16000", "--json")
    assert code == 0
    assert json.loads(out)["layers"][-1]["rf"] == [720]


@pytest.mark.parametrize("argv,needle", [
    (["rf", "timm:resnet5"], "did you mean"),
    (["rf", "torchvision:resnet18", "--layer", "layer5"], "layer4"),
    (["rf", "torchvision:vgg11", "--input-size", "16"], "too small"),
    (["rf", "torchvision:resnet18", "--in-channels", "1"], "channel"),
])
def test_errors_exit_2_with_a_message(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2 and needle in err


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_untrusted_weights_are_refused(capsys, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": Evil()}, path)
    code, out, err = run(capsys, "rf", "torchvision:resnet18", "--weights", str(path))
    assert code == 2 and "pwned" not in out and "untrusted" in err.lower()


def test_weights_file_is_loaded(capsys, tmp_path):
    from safetensors.torch import save_file

    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    factory = tmp_path / "small.py"
    factory.write_text("import torch.nn as nn\ndef make():\n    return nn.Sequential(nn.Conv2d(3, 4, 3))\n")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    code, out, _ = run(capsys, "rf", f"{factory}:make", "--weights", str(tmp_path / "w.safetensors"), "--json")
    assert code == 0 and json.loads(out)["layers"][0]["rf"] == [3, 3]


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "rflens", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("rflens ")


# -- rflens border ----------------------------------------------------------------------------------------------
SMALL_VGG = ("import torch.nn as nn\n"
             "def make(width=4):\n"
             "    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),\n"
             "                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),\n"
             "                         nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1),\n"
             "                         nn.MaxPool2d(2), nn.Conv2d(width, width, 3, padding=1))\n")


@pytest.fixture
def small_vgg(tmp_path):
    path = tmp_path / "vgg.py"
    path.write_text(SMALL_VGG)
    return f"{path}:make"


def test_border_table_suggestions_and_sweep(capsys, small_vgg, tmp_path):
    code, out, _ = run(capsys, "border", small_vgg, "--input-size", "24", "--sweep", "20:40:4", "--plot",
                       str(tmp_path / "b.png"))
    assert code == 0
    assert "2 unproductive" in out and "1 critical" in out and "unproductive (r_min)" in out
    assert "refinements" in out and "stride 1 in '5'" in out and "move '5' just before '8'" in out
    assert "resolution sweep" in out and (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_border_json_document(capsys, small_vgg):
    code, out, _ = run(capsys, "border", small_vgg, "--input-size", "24", "--json", "--sweep", "8:16:8")
    assert code == 0
    doc = json.loads(out)
    assert doc["input_size"] == [24, 24] and doc["unproductive"] == ["8", "9"] and doc["critical"] == ["7"]
    assert set(doc["resolution_range"]) == {"min", "max"} and doc["resolution_range"]["max"] == [46, 46]
    assert set(doc["waste"]) >= {"flops", "params", "flops_share"}
    assert {"change", "unproductive_after", "flops_ratio", "params_ratio"} <= set(doc["suggestions"][0])
    assert [s["input_size"] for s in doc["sweep"]] == [8, 16]


def test_border_apply_writes_a_recipe_that_refine_reads(capsys, small_vgg, tmp_path):
    recipe = tmp_path / "refined.json"
    code, out, _ = run(capsys, "border", small_vgg, "--input-size", "24", "--apply", "1", "--out", str(recipe))
    assert code == 0 and "checked on the changed model" in out
    doc = json.loads(recipe.read_text())
    assert doc["rflens_recipe"] == 1 and doc["edits"] and doc["unproductive_after"] == []
    from rflens.sources import load_model
    from rflens.transforms import load_recipe, refine

    refined = refine(load_model(small_vgg), load_recipe(str(recipe)))
    from rflens.border import border_report

    assert border_report(refined, 24, suggestions=False).unproductive == []


def test_border_apply_needs_out_and_a_valid_number(capsys, small_vgg):
    code, _, err = run(capsys, "border", small_vgg, "--input-size", "24", "--apply", "1")
    assert code == 2 and "--out" in err
    code, _, err = run(capsys, "border", small_vgg, "--input-size", "24", "--apply", "99", "--out", "x.json")
    assert code == 2 and "suggestions" in err


def test_border_bad_sweep_is_an_argument_error(capsys, small_vgg):
    with pytest.raises(SystemExit):
        main(["border", small_vgg, "--sweep", "40:20"])
    assert "sweep must look like" in capsys.readouterr().err


def test_border_apply_refuses_a_suggestion_that_needs_hand_work(capsys, tmp_path):
    path = tmp_path / "fp.py"
    path.write_text("import torch.nn as nn, torch.nn.functional as F\n"
                    "class Net(nn.Module):\n"
                    "    def __init__(self):\n"
                    "        super().__init__()\n"
                    "        self.a, self.b, self.c = (nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1),\n"
                    "                                  nn.Conv2d(4, 4, 3, padding=1))\n"
                    "    def forward(self, x):\n"
                    "        return self.c(self.b(F.max_pool2d(self.a(x), 3, 2, 1)))\n"
                    "def make():\n"
                    "    return Net()\n")
    code, out, _ = run(capsys, "border", f"{path}:make", "--input-size", "8", "--json", "--top", "20")
    doc = json.loads(out)
    n = next(i for i, s in enumerate(doc["suggestions"], 1) if s["applicable"])
    code, _, err = run(capsys, "border", f"{path}:make", "--input-size", "8", "--top", "20", "--apply", str(n),
                       "--out", str(tmp_path / "r.json"))
    assert code == 2 and "by hand" in err and "forward code" in err and not (tmp_path / "r.json").exists()


def test_erf_json_map_and_plot(capsys, tmp_path):
    out_json = tmp_path / "erf.json"
    code, out, _ = run(capsys, "erf", "torchvision:resnet18", "--layer", "layer2", "--input-size", "64", "--n", "2",
                       "--json", "--out", str(out_json), "--plot", str(tmp_path / "erf.png"), "--log")
    assert code == 0
    doc = json.loads(out)
    assert {"model", "layer", "protocol", "n", "input_size", "metrics", "map"} <= set(doc)
    assert doc["layer"] == "layer2" and doc["n"] == 2 and doc["protocol"] == "replknet"
    assert {"area_ratio", "sigma", "r2", "erf_trf_ratio"} <= set(doc["metrics"])
    erf_map = __import__("numpy").load(doc["map"])
    assert erf_map.shape == (64, 64) and doc["map"] == str(tmp_path / "erf.npy")
    assert json.loads(out_json.read_text()) == doc
    assert (tmp_path / "erf.png").read_bytes()[:4] == b"\x89PNG"


def test_erf_table_depth_plot_and_structural(capsys, tmp_path):
    code, out, _ = run(capsys, "erf", "torchvision:resnet18", "--layers", "layer1,layer2", "--input-size", "64",
                       "--n", "2", "--protocol", "luo", "--plot", str(tmp_path / "depth.png"))
    assert code == 0
    assert "layer1" in out and "layer2" in out and "protocol luo" in out and "cone crop" in out
    assert (tmp_path / "depth.png").read_bytes()[:4] == b"\x89PNG"
    code, out, _ = run(capsys, "erf", "torchvision:resnet18", "--layer", "layer3", "--input-size", "64",
                       "--protocol", "structural")
    assert code == 0 and "structural map" in out and "paths reach the input" in out


def test_erf_errors_exit_2(capsys):
    code, _, err = run(capsys, "erf", "torchvision:resnet18", "--layer", "layer9", "--input-size", "64", "--n", "1")
    assert code == 2 and "no module 'layer9'" in err
    code, _, err = run(capsys, "erf", "torchvision:resnet18", "--layer", "layer2", "--input-size", "64", "--n", "1",
                       "--unit", "99,0")
    assert code == 2 and "layer 'layer2': unit (99, 0) is outside" in err
    code, _, err = run(capsys, "erf", "torchvision:resnet18", "--inputs", "/nonexistent/folder", "--n", "1")
    assert code == 2 and "does not exist" in err

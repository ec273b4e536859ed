"""ONNX models from another framework (Keras 3 + tf2onnx, tests/data/make_keras_onnx.py), the command line on
ONNX files, and the clear refusals of what needs PyTorch. Parity with the PyTorch path: test_onnx_parity.py;
op by op against onnxruntime and the gradient oracle: test_onnx_ops.py."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

onnx = pytest.importorskip("onnx")

from test_cli import run  # noqa: E402

from rflens.capture_onnx import NeedsPyTorchError, read_onnx  # noqa: E402
from rflens.errors import ModelSourceError, UnsupportedOpError, WeightsError  # noqa: E402
from rflens.padding import padding_report  # noqa: E402
from rflens.rf import receptive_field  # noqa: E402
from rflens.sources import load_model  # noqa: E402

DATA = Path(__file__).parent / "data"
RESNET50 = DATA / "keras_resnet50.onnx"
MOBILENET = DATA / "keras_mobilenetv2.onnx"
SMALL = DATA / "keras_small.onnx"


def _final(model, size):
    result = receptive_field(model, size)
    return result, result.layers[-2]  # the last map (before the global average pooling)


def test_keras_resnet50_reads_nhwc_and_gives_the_caffe_style_geometry():
    """Keras' ResNet50 puts the stride in the first 1x1 convolution of a stage and pads the 3x3/2 max pool 1/1
    (ZeroPadding2D), so by hand: rf = 11 (7x7/2 conv, 3x3/2 pool) + 2*4*3 + 2*8*4 + 2*16*6 + 2*32*3 = 483,
    stride 32, padding = 3 + 2 + 1*4*3 + 1*8*4 + 1*16*6 + 1*32*3 = 241 (TF-Slim's own ResNet-50 pads its pool
    0/1, hence 239 there)."""
    model = load_model(str(RESNET50))
    assert model.channels_last and model.declared_input == (3, 224, 224)
    result, last = _final(model, 224)
    assert last.name == "resnet50_1/conv5_block3_out_1/Relu"  # ONNX node names
    assert (last.rf, last.stride, last.padding) == ((483, 483), (32, 32), (241, 241))
    assert result.layers[-1].is_global and result.layers[-1].op == "GlobalAveragePool"
    assert len(result.graph.size_reads) == 0


def test_keras_mobilenetv2_tf_same_padding():
    """TF "same" with stride 2 at even sizes pads 0 before / 1 after: tf2onnx writes it as asymmetric Conv pads
    (Conv1) or a Pad node in front of a VALID depthwise convolution (ZeroPadding2D in the four stride-2 blocks).
    By hand: rf 3 + 2*2*2 + 2*4*2 + 2*8*3 + 2*16*7 + 2*32*4 = 491, padding 1*2 + 1*4 + 1*8*2 + 1*16*6 + 1*32*3
    = 214 (no padding before any stride-2 layer), stride 32; five uneven layers."""
    model = load_model(str(MOBILENET))
    _, last = _final(model, 224)
    assert (last.rf, last.stride, last.padding) == ((491, 491), (32, 32), (214, 214))
    report = padding_report(model, 224)
    assert len(report.uneven) == 5
    assert report.uneven[0] == "Conv__2"
    assert all(f"block_{b}_depthwise_1/depthwise" in name for b, name in zip((1, 3, 6, 13), report.uneven[1:],
                                                                             strict=True))
    rows = [r for r in report.layers if r.name in report.uneven]
    assert {r.effective for r in rows} == {(0, 1)}


def test_keras_small_replay_equals_onnxruntime_and_hand_geometry():
    """Every op tf2onnx wrote for the small Keras model (NHWC input, asymmetric pads, dilation, residual add,
    concat, bilinear Resize, ConvTranspose, average pooling, MatMul) replays to onnxruntime's numbers."""
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(DATA / "keras_small_full.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x.permute(0, 2, 3, 1).numpy()})[0]
    with torch.no_grad():
        got = read_onnx(DATA / "keras_small_full.onnx", weights=True)(x)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)
    # by hand: 3x3/2 pads (0,1): r 3, S 2, P 0; 5x5 dilation 2 pads 4: r 19, P 8; 3x3/2 max pool pads (0,1): r 23,
    # S 4, P 8; two 3x3 convs: r 39, P 16, the 1x1 branch keeps rf_min 23
    layers = {layer.name: layer for layer in receptive_field(load_model(str(SMALL)), 64).layers}
    pool = layers["keras_small_1/maxpool_s2_1/MaxPool2d"]
    add = layers["keras_small_1/residual_add_1/Add"]
    assert (pool.rf, pool.stride, pool.padding) == ((23, 23), (4, 4), (8, 8))
    assert (add.rf, add.rf_min, add.padding) == ((39, 39), (23, 23), (16, 16))


# --- the command line ------------------------------------------------------------------------------------
def test_cli_rf_takes_the_static_size_from_the_file(capsys):
    code, out, _ = run(capsys, "rf", str(RESNET50), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["input_size"] == [224, 224]
    assert any(layer["name"] == "resnet50_1/conv5_block3_out_1/Relu" and layer["rf"] == [483, 483]
               for layer in doc["layers"])
    code, out, _ = run(capsys, "rf", str(RESNET50), "--input-size", "256", "--json")
    assert code == 0 and json.loads(out)["input_size"] == [256, 256]


def _dynamic_onnx(path: Path) -> Path:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter: the one with dynamic_axes
        torch.onnx.export(net.eval(), (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    return path


def test_cli_dynamic_spatial_dims_need_an_input_size(capsys, tmp_path):
    path = _dynamic_onnx(tmp_path / "dynamic.onnx")
    code, _, err = run(capsys, "rf", str(path))
    assert code == 2 and "not static" in err and "--input-size" in err
    code, out, _ = run(capsys, "rf", str(path), "--input-size", "40", "--json")
    assert code == 0
    last = json.loads(out)["layers"][-1]
    assert last["rf"] == [7, 7] and last["stride"] == [2, 2] and last["padding"] == [3, 3]


def test_cli_audit_and_check_on_onnx(capsys, tmp_path):
    code, out, _ = run(capsys, "audit", str(MOBILENET), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["input_size"] == [224, 224]
    assert doc["rf"]["layers"] and doc["padding"]["uneven"]
    assert any("kernel padding" in note and "source model" in note for note in doc["notes"])
    assert not any(fix["area"] == "dead pixels" for fix in doc["fixes"])  # kernel padding needs PyTorch
    code, out, _ = run(capsys, "check", str(MOBILENET), "--rule", "uneven-padding", "--rule", "rf-below-input")
    assert code == 1
    assert "FAIL uneven-padding: 5" in out and "PASS rf-below-input" in out


@pytest.mark.parametrize("argv, what", [
    (["erf"], "gradient ERF"),
    (["deadpixel", "--weighted"], "weighted dead-pixel test"),
    (["padding", "--spatial-bias", "output"], "mean activation maps"),
    (["fix", "kernel-pad", "--out", "OUT"], "kernel padding"),
    (["audit", "--erf"], "gradient analyses"),
])
def test_cli_refuses_what_needs_pytorch(capsys, tmp_path, argv, what):
    argv = [a.replace("OUT", str(tmp_path / "fixed")) for a in argv]
    command = argv[:2] if argv[0] == "fix" else argv[:1]
    code, _, err = run(capsys, *command, str(SMALL), *argv[len(command):])
    assert code == 2
    assert what in err and "needs the PyTorch model" in err and "ONNX graph" in err


def test_border_suggestions_are_marked_by_hand(capsys):
    code, out, _ = run(capsys, "border", str(SMALL), "--input-size", "24", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["suggestions"]
    changes = [s for s in doc["suggestions"] if not s["change"].startswith("input size")]
    assert changes and all("source model" in s["applicable"] for s in changes)


def test_weights_and_model_args_are_refused():
    with pytest.raises(WeightsError, match="ONNX file"):
        load_model(str(SMALL), weights="w.safetensors")
    with pytest.raises(ModelSourceError, match="built model"):
        load_model(str(SMALL), model_args={"width": 2})
    from rflens.sources import load_weights

    with pytest.raises(WeightsError, match="ONNX graph"):
        load_weights(load_model(str(SMALL)), "w.safetensors")


def test_meta_only_replay_refuses_real_inputs():
    with pytest.raises(NeedsPyTorchError, match="meta device only"):
        read_onnx(SMALL)(torch.zeros(1, 3, 64, 64))


def test_stripped_weights_are_never_read(tmp_path):
    """The fixtures reference a weights file that does not exist: reading the graph must not need it, and
    the settings rflens does need (pads, shapes, scales) are inline."""
    assert not (DATA / "weights.bin").exists()
    model = read_onnx(RESNET50)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) > 20_000_000


def test_unsupported_op_on_a_map_names_node_and_op(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])
    node = helper.make_node("Trilu", ["x"], ["y"], name="my_trilu")
    path = tmp_path / "trilu.onnx"
    onnx.save(helper.make_model(helper.make_graph([node], "g", [x], [y])), str(path))
    with pytest.raises(UnsupportedOpError, match="ONNX Trilu.*my_trilu.*spatial"):
        receptive_field(load_model(str(path)), 8)

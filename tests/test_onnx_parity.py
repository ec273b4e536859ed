"""ONNX parity: a torchvision/timm model exported with ``torch.onnx.export`` gives the same receptive fields,
padding audit and structural maps as the PyTorch model itself (an acceptance criterion of ONNX support).

Each model is built with random weights (nothing is downloaded), exported once per test session to pytest's
temporary directory (shared by the xdist workers under a file lock) and read back with
:func:`rflens.capture_onnx.read_onnx`. Layer names differ between the two paths (ONNX node names against
module names) and so do some node kinds (the legacy exporter folds BatchNorm into the convolutions and writes
``adaptive_avg_pool2d`` as GlobalAveragePool, dynamo writes ReduceMean), so the comparisons are on geometry:
the window layers (convolutions and poolings) in execution order, the global means, the padding rows, the maps.

Exporters: the legacy one (``dynamo=False``, opset 17) for every model, ``dynamo=True`` (opset 18, pads
folded into Conv, ReduceMean with axes as an input) for two. Models whose code computes sizes from the input
(timm's TF "same" padding, a segmentation head resizing to the input size) are exported with dynamic spatial
axes: with a static input shape the legacy exporter folds what the code computed from the *graph input's* size
into constants (the stem's TF "same" pads, the final Resize's target), so such a file describes the model at the
export size only; tf_efficientnet_b0 is exported that way too and compared there (see :data:`CASES`).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn

onnx = pytest.importorskip("onnx")
torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

from filelock import FileLock  # noqa: E402

from rflens.capture import capture  # noqa: E402
from rflens.capture_onnx import OnnxModel, read_onnx  # noqa: E402
from rflens.deadpixel import WINDOW_OPS, dead_pixel_test  # noqa: E402
from rflens.graph import Graph  # noqa: E402
from rflens.padding import last_map, padding_report  # noqa: E402
from rflens.pathcount import PathMap, path_counts, structural_map  # noqa: E402
from rflens.rf import receptive_field  # noqa: E402

SIZE = 64  # small enough for every model below to export and analyse in about a second
SIZE_RANGE = (48, 96)  # even-size search of the padding audit (the default 32..1024 costs seconds per model)
RETRACE_RANGE = (60, 68)  # the same for graphs traced again at every size (their Python or ONNX reads sizes)
RTOL = 1e-12


# -- the models -------------------------------------------------------------------------------------------
class SegmentationOut(nn.Module):
    """torchvision's segmentation models return a dict: export its ``out`` map."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def _vgg11_features() -> nn.Module:
    """VGG-11's convolutional trunk: the whole VGG-11 spends seconds initialising and writing its 500 MB
    classifier, and the legacy exporter cannot write its AdaptiveAvgPool2d(7) for the 2x2 map of a 64x64 input."""
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["A"])


@dataclass(frozen=True)
class Case:
    """One exported model. ``resizable``: whether the ONNX file describes the model at other input sizes too (so
    that the even-size search of the padding audit, which traces other sizes, must agree)."""

    build: Callable[[], nn.Module]
    dynamo: bool = False
    dynamic_hw: bool = False  # export the spatial axes as dynamic (legacy exporter)
    resizable: bool = True
    retraced: bool = False  # the graph reads sizes, so the audit traces every size of its search again


TV = torchvision.models
CASES: dict[str, Case] = {
    "resnet18": Case(lambda: TV.resnet18(weights=None)),
    "vgg11": Case(_vgg11_features),
    "mobilenet_v2": Case(lambda: TV.mobilenet_v2(weights=None)),
    "densenet121": Case(lambda: TV.densenet121(weights=None)),  # concat, 2x2 average pools
    "googlenet": Case(lambda: TV.googlenet(weights=None, aux_logits=False, init_weights=True)),  # ceil_mode pools
    "squeezenet1_0": Case(lambda: TV.squeezenet1_0(weights=None)),  # ceil_mode pools
    "efficientnet_b0": Case(lambda: TV.efficientnet_b0(weights=None)),  # SiLU, squeeze-and-excitation
    "regnet_x_400mf": Case(lambda: TV.regnet_x_400mf(weights=None)),  # grouped convolutions
    # bilinear Resize to the input size: dynamic axes keep that size an input of the Resize
    "lraspp_mobilenet_v3_large": Case(
        lambda: SegmentationOut(TV.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None)),
        dynamic_hw=True, retraced=True),
    # TF "same": the Pad amounts are a Shape/Gather/.../Pad computation read at every size
    "tf_efficientnet_b0": Case(lambda: timm.create_model("tf_efficientnet_b0", pretrained=False),
                               dynamic_hw=True, retraced=True),
    # the plain legacy export: its stem's pads are computed from the graph input's (static) size, so the file
    # holds them as constants for SIZE; later blocks still read Shape. At other sizes the file is another model
    "tf_efficientnet_b0-static": Case(lambda: timm.create_model("tf_efficientnet_b0", pretrained=False),
                                      resizable=False, retraced=True),
    "convnext_atto": Case(lambda: timm.create_model("convnext_atto", pretrained=False)),  # channels-last LN, GELU
    # bottlenecks, deep stem, and 2x2 ceil_mode average pools (count_include_pad=False) in the shortcuts
    "resnet26d": Case(lambda: timm.create_model("resnet26d", pretrained=False)),
    "resnet18-dynamo": Case(lambda: TV.resnet18(weights=None), dynamo=True),
    # dynamo folds the TF "same" pads into the Conv as constants for SIZE: only SIZE is comparable
    "tf_efficientnet_b0-dynamo": Case(lambda: timm.create_model("tf_efficientnet_b0", pretrained=False),
                                      dynamo=True, resizable=False),
}

# The ONNX opsets these exporters target have no SiLU or GELU op: x * sigmoid(x) and x * 0.5 * (1 + erf(x/sqrt 2))
# are written out (efficientnet_b0, tf_efficientnet_b0, convnext_atto); the capture takes an elementwise function
# of one map for one path, as PyTorch's single op, so the path counts (every map below) still agree.
MODELS = list(CASES)


# -- export once, read back ---------------------------------------------------------------------------------
def _export(model: nn.Module, path: Path, case: Case) -> None:
    """``torch.onnx.export`` of ``model`` at SIZE, quietly (both exporters warn and dynamo prints progress)."""
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    kwargs: dict = {"dynamo": True, "opset_version": 18} if case.dynamo else {"dynamo": False, "opset_version": 17}
    if case.dynamic_hw:
        kwargs.update(input_names=["x"], dynamic_axes={"x": {2: "h", 3: "w"}})
    tmp = path.with_suffix(".part")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64x64 forward needs no threads; two xdist workers fighting over them triple it
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(tmp), **kwargs)
    finally:
        torch.set_num_threads(threads)
    tmp.replace(path)


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every xdist worker of this run sees (the workers' base folders share a parent)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "onnx_parity"
    folder.mkdir(exist_ok=True)
    return folder


@dataclass(frozen=True)
class Pair:
    """A PyTorch model (eval mode, random weights) and its ONNX export read back."""

    name: str
    case: Case
    model: nn.Module
    exported: OnnxModel


@pytest.fixture(scope="module")
def pair(request: pytest.FixtureRequest, export_dir: Path) -> Pair:
    """The model of ``request.param`` and its export (module scope: pytest runs one model's tests together, and
    xdist hands them out in that order, so a worker rarely builds a model twice)."""
    name, case = request.param, CASES[request.param]
    torch.manual_seed(0)
    model = case.build().eval()
    path = export_dir / f"{name}.onnx"
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            _export(model, path, case)
    return Pair(name, case, model, read_onnx(path))


def _assert_maps_equal(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert a.shape == b.shape, what
    np.testing.assert_allclose(b, a, rtol=RTOL, atol=0, err_msg=what)


def _assert_same_numbers(expected: Any, got: Any, what: str) -> None:
    """``got`` equals ``expected`` (nested dicts, lists, tuples), floats to a relative 1e-12."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), what
        for key in expected:
            _assert_same_numbers(expected[key], got[key], f"{what}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected), what
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            _assert_same_numbers(e, g, f"{what}[{i}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=RTOL, abs=1e-300, nan_ok=True), what
    else:
        assert got == expected, what


# -- 1. receptive fields ------------------------------------------------------------------------------------
def _rf_kind(op: str) -> str | None:
    """The comparable kind of a node: the window ops and the global mean (adaptive average pooling, ONNX
    GlobalAveragePool and ReduceMean all capture as ``mean``); None for the rest, whose kinds legitimately
    differ (in-place ``add_`` against ``add``, BatchNorm folded away, activations written out as ``mul``)."""
    if op == "mean":
        return op
    return next((kind for kind in WINDOW_OPS if op.startswith(kind)), None)


def _window_fields(model: nn.Module) -> tuple[tuple, list[tuple]]:
    """The last spatial map's (output size, rf, rf_min, stride, padding), and (kind, output size, rf, rf_min,
    stride, padding, global) of every window or global-mean node in execution order."""
    result = receptive_field(model, SIZE)
    last = result.nodes[last_map(result.graph).id]
    final = (last.output_size, last.rf, last.rf_min, last.stride, last.padding)
    seq = [(_rf_kind(n.op), n.output_size, n.rf, n.rf_min, n.stride, n.padding, n.is_global)
           for n in result.nodes if _rf_kind(n.op)]
    return final, seq


@pytest.mark.parametrize("pair", MODELS, indirect=True)
def test_receptive_fields(pair):
    """The final map's receptive field and every window layer's geometry agree, layer by layer."""
    final_pt, seq_pt = _window_fields(pair.model)
    final_ox, seq_ox = _window_fields(pair.exported)
    assert final_ox == final_pt
    assert sum(k != "mean" for k, *_ in seq_pt) > 10, "too few window layers to be a real comparison"
    assert seq_ox == seq_pt


# -- 2. padding audits -------------------------------------------------------------------------------------
def _padding_rows(report) -> list[tuple]:
    """Every audited (layer, axis) row's geometry in execution order, names and provenance left out: the ``same``
    flag tells whether the model's *code* computed the pads, which an ONNX file holding them as constants
    cannot tell (the amounts, compared here, are what matters)."""
    return [(r.op, r.axis, r.size, r.kernel, r.stride, r.dilation, r.pads, r.mode, r.leftover, r.effective,
             r.unread, r.unread_input, r.effect) for r in report.layers]


def _report(model: nn.Module, case: Case):
    """The audit with the foveation map of the model's own padding; a file valid at SIZE only searches SIZE."""
    size_range = RETRACE_RANGE if case.retraced else SIZE_RANGE
    return padding_report(model, SIZE, modes=("model",), size_range=size_range if case.resizable else (SIZE, SIZE))


@pytest.mark.parametrize("pair", MODELS, indirect=True)
def test_padding_audit(pair):
    """Same uneven layers, same rows (pads, leftover, effective pads, unread units), same even sizes and the
    same suggested size (except where the ONNX file is valid at the export size only), and the same foveation
    map under the model's own padding (paths that keep the position into every unit of the last map) with the
    same statistics."""
    pt, ox = _report(pair.model, pair.case), _report(pair.exported, pair.case)
    assert len(ox.uneven) == len(pt.uneven)
    assert [row for row in _padding_rows(ox) if row[-1] != "even"] == \
        [row for row in _padding_rows(pt) if row[-1] != "even"]
    assert _padding_rows(ox) == _padding_rows(pt)
    if pair.case.resizable:
        assert ox.suggested_size() == pt.suggested_size()
        assert [e.sizes for e in ox.even] == [e.sizes for e in pt.even]
    fov_pt, fov_ox = pt.foveation_of("model"), ox.foveation_of("model")
    assert fov_pt is not None and fov_ox is not None
    _assert_maps_equal(fov_pt.map, fov_ox.map, "foveation map")
    assert fov_ox.paths.log2_scale == pytest.approx(fov_pt.paths.log2_scale, rel=RTOL)
    _assert_same_numbers(fov_pt.stats.to_dict(), fov_ox.stats.to_dict(), "foveation stats")


# -- 3. structural maps ------------------------------------------------------------------------------------
def _culprits(report) -> list[tuple]:
    """The culprit layers' geometry in execution order (their names differ)."""
    return [(c.op, c.kernel, c.stride, c.dilation, c.counts, c.transposed, len(c.nodes)) for c in report.culprits]


def _centre_paths(model: nn.Module) -> PathMap:
    """The path counts into the centre unit of the last spatial map."""
    graph: Graph = capture(model, SIZE)
    return path_counts(graph, last_map(graph).id)


@pytest.mark.parametrize("pair", MODELS, indirect=True)
def test_structural_maps(pair):
    """The structural dead-pixel test (no weights): the same culprit layers, the same map and indices (L1, L2,
    period, strength...); the same path counts into the centre unit of the last map and the same structural map
    of the output."""
    pt, ox = dead_pixel_test(pair.model, SIZE), dead_pixel_test(pair.exported, SIZE)
    assert _culprits(ox) == _culprits(pt)
    _assert_maps_equal(pt.structural.map, ox.structural.map, "structural dead-pixel map")
    _assert_same_numbers(pt.structural.indices.to_dict(), ox.structural.indices.to_dict(), "indices")
    centre_pt, centre_ox = _centre_paths(pair.model), _centre_paths(pair.exported)
    _assert_maps_equal(centre_pt.map, centre_ox.map, "centre unit's path counts")
    assert (centre_ox.exact, centre_ox.log2_scale) == (centre_pt.exact, pytest.approx(centre_pt.log2_scale))
    if centre_pt.exact:
        assert np.array_equal(centre_ox.counts(), centre_pt.counts())
    out_pt, out_ox = structural_map(pair.model, SIZE), structural_map(pair.exported, SIZE)
    _assert_maps_equal(out_pt.map, out_ox.map, "structural map of the output")

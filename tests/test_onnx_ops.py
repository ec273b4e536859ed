"""ONNX models read by rflens (rflens.capture_onnx): hand-built graphs (tests/onnx_graphs.py) checked against
hand-derived TensorFlow padding, onnxruntime's outputs, the gradient oracle (tests/oracle.py) and the PyTorch
rebuild of TF-Slim ResNet-50 (tests/tfslim.py); plus the errors for what rflens cannot read."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import torch  # noqa: E402
from hypothesis import HealthCheck, assume, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from onnx_graphs import GraphBuilder, tfslim_resnet50  # noqa: E402
from oracle import linearise, oracle_rf  # noqa: E402

from rflens.capture_onnx import read_onnx  # noqa: E402
from rflens.errors import ModelSourceError, UnsupportedOpError  # noqa: E402
from rflens.padding import padding_report  # noqa: E402
from rflens.rf import receptive_field  # noqa: E402

INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)


def _reference_rows() -> dict:
    path = Path(__file__).resolve().parents[2] / "shared" / "reference" / "receptive_fields.json"
    if not path.exists():  # a checkout may have shared/ inside
        path = Path(__file__).resolve().parents[1] / "shared" / "reference" / "receptive_fields.json"
    if not path.exists():
        return {}
    return {row["model"]: row for row in json.loads(path.read_text()).get("tf_slim_layouts_rebuilt_in_pytorch", [])}


# -- hand-derived geometry (independent of rflens) ----------------------------------------------------------
def tf_same(n: int, k: int, s: int, d: int, mode: str) -> tuple[int, int, int]:
    """TensorFlow 'SAME': (output size, pad before, pad after); SAME_UPPER puts the odd pixel at the end."""
    out = -(-n // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
    small, large = total // 2, total - total // 2
    return (out, small, large) if mode == "SAME_UPPER" else (out, large, small)


def window_out(n: int, e: int, s: int, before: int, after: int) -> int:
    return (n + before + after - e) // s + 1


def session_output(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def replay_output(path: Path, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return read_onnx(path, weights=True)(torch.from_numpy(x)).numpy()


def assert_replay_matches_runtime(path: Path, shape, seed: int = 0, runtime_path: Path | None = None) -> None:
    """read_onnx(path, weights=True) computes what onnxruntime computes on ``runtime_path`` (default: ``path``)."""
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    want = session_output(runtime_path or path, x)
    got = replay_output(path, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max())))


def final(path: Path, size):
    return receptive_field(read_onnx(path), size).layers[-1]


# ===========================================================================================================
# a. TensorFlow padding from auto_pad
# ===========================================================================================================
TF_GEOMETRIES = [  # (kernel, stride, dilation)
    (3, 1, 1), (4, 1, 1), (3, 2, 1), (4, 2, 1), (5, 3, 1), (2, 3, 1), (1, 3, 1), (3, 2, 2), (3, 1, 2),
]
TF_SIZES = [(12, 13), (17, 8), (9, 9)]


@pytest.mark.parametrize("sizes", TF_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("op,geometry", [  # AveragePool has no dilations before opset 19
    pytest.param(op, g, id="{}-k{}s{}d{}".format(op, *g)) for op in ("Conv", "MaxPool", "AveragePool")
    for g in TF_GEOMETRIES if op != "AveragePool" or g[2] == 1])
def test_auto_pad_is_tensorflow_same(op, geometry, mode, sizes, tmp_path):
    k, s, d = geometry
    g = GraphBuilder()
    g.input(2, "height", "width")
    kw = dict(strides=[s, s], dilations=[d, d] if d > 1 else None, auto_pad=mode)
    g.conv(3, (k, k), **kw) if op == "Conv" else g.pool(op, (k, k), **kw)
    path = g.save(tmp_path / "same.onnx")
    e = d * (k - 1) + 1

    rows = padding_report(read_onnx(path), sizes, modes=("model",), size_range=(sizes[0], sizes[0])).layers
    assert [r.axis for r in rows] == [0, 1]
    for row, n in zip(rows, sizes, strict=True):
        out, before, after = tf_same(n, k, s, d, mode)
        leftover = (n + before + after - e) % s  # trailing positions no window reaches
        assert (row.size, row.kernel, row.stride, row.dilation) == (n, k, s, d)
        assert row.pads == (before, after)
        assert row.effective == (before, after - leftover)

    layer = final(path, sizes)
    want = [tf_same(n, k, s, d, mode) for n in sizes]
    assert layer.output_size == tuple(w[0] for w in want)
    assert layer.padding == tuple(w[1] for w in want)
    assert layer.rf == (e, e) and layer.stride == (s, s)


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("k", [3, 4])
def test_even_sizes_of_auto_pad(mode, k, tmp_path):
    """The sizes without an uneven layer, found by carrying (SAME_UPPER) or re-tracing (SAME_LOWER) the graph."""
    g = GraphBuilder()
    g.input(1, "h", "w")
    g.conv(2, (k, k), strides=[2, 2], auto_pad=mode)
    path = g.save(tmp_path / "same.onnx")
    lo, hi = 10, 30
    want = []
    for n in range(lo, hi + 1):
        _, before, after = tf_same(n, k, 2, 1, mode)
        if before == after - (n + before + after - k) % 2:
            want.append(n)
    assert want and len(want) < hi - lo + 1
    report = padding_report(read_onnx(path), 16, modes=("model",), size_range=(lo, hi))
    assert report.even[0].sizes == tuple(want)


# ===========================================================================================================
# b. the replay computes what onnxruntime computes
# ===========================================================================================================
@dataclass
class Case:
    id: str
    build: Callable[[GraphBuilder], object]
    shape: tuple = (1, 3, 9, 10)
    opset: int = 17
    marks: tuple = ()
    twin: Callable[[GraphBuilder], object] | None = None  # what onnxruntime runs instead (same weights)


def _same_pads(kernel, strides, dilations, mode, sizes) -> list[int]:
    """Explicit pads (begins, ends) equal to auto_pad ``mode`` at ``sizes``, by :func:`tf_same`."""
    per_axis = [tf_same(n, k, s, d, mode)[1:] for n, k, s, d in zip(sizes, kernel, strides, dilations, strict=True)]
    return [b for b, _ in per_axis] + [a for _, a in per_axis]


def _dilated_same(op, kernel, strides, dilations, mode, sizes):
    """A dilated window with auto_pad ``mode``, and its twin with the hand-derived explicit pads: onnxruntime
    refuses dilated 'SAME' convolutions and sizes dilated 'SAME' max pools as if undilated (ONNX's shape
    inference and reference evaluator give ceil(n / stride), as the spec says)."""
    def build(pads=None, auto_pad=mode):
        kw = dict(strides=strides, dilations=dilations, pads=pads, auto_pad=None if pads else auto_pad)
        return (lambda g: g.conv(4, kernel, **kw)) if op == "Conv" else (lambda g: g.pool(op, kernel, **kw))

    return dict(build=build(), twin=build(_same_pads(kernel, strides, dilations, mode, sizes)), shape=(1, 3, *sizes))


def _pool(op, k=(3, 3), **kw):
    return lambda g: g.pool(op, k, **kw)


def _conv(out=4, k=(3, 3), **kw):
    return lambda g: g.conv(out, k, **kw)


def _tconv(out=4, k=(3, 3), **kw):
    return lambda g: g.conv_transpose(out, k, **kw)


def _head(g, fn):
    g.global_avg()
    g.flatten()
    return fn(g)


CASES = [
    # convolutions
    Case("conv-asymmetric-pads", _conv(pads=[0, 2, 1, 0])),
    Case("conv-asym-pads-stride2", _conv(k=(4, 3), strides=[2, 2], pads=[2, 0, 1, 1])),
    Case("conv-same-upper-s2", _conv(strides=[2, 2], auto_pad="SAME_UPPER")),
    Case("conv-same-lower-s2", _conv(strides=[2, 2], auto_pad="SAME_LOWER")),
    Case("conv-same-upper-k4-s1", _conv(k=(4, 4), auto_pad="SAME_UPPER")),
    Case("conv-same-lower-k5-s3-d2", **_dilated_same("Conv", (5, 4), [3, 3], [2, 2], "SAME_LOWER", (8, 10))),
    Case("conv-same-upper-d2", **_dilated_same("Conv", (3, 3), [2, 1], [2, 2], "SAME_UPPER", (9, 10))),
    Case("conv-valid", _conv(strides=[2, 3], auto_pad="VALID")),
    Case("conv-depthwise", _conv(out=6, group=3, pads=[1, 1, 1, 1], strides=[2, 2])),
    Case("conv1d-same-lower", lambda g: g.conv(2, (4,), strides=[2], auto_pad="SAME_LOWER"), (1, 3, 11)),
    # pooling
    Case("maxpool-asymmetric-pads", _pool("MaxPool", pads=[0, 1, 2, 0])),
    Case("maxpool-same-upper-s2", _pool("MaxPool", strides=[2, 2], auto_pad="SAME_UPPER")),
    Case("maxpool-same-lower-s2", _pool("MaxPool", strides=[2, 2], auto_pad="SAME_LOWER")),
    Case("maxpool-same-upper-dilated", **_dilated_same("MaxPool", (3, 3), [2, 2], [2, 2], "SAME_UPPER", (9, 10))),
    Case("maxpool-same-lower-dilated", **_dilated_same("MaxPool", (2, 3), [3, 2], [2, 2], "SAME_LOWER", (9, 10))),
    Case("maxpool-ceil-pads", _pool("MaxPool", strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1), (1, 2, 10, 9)),
    Case("maxpool-ceil-window-in-padding", _pool("MaxPool", (2, 2), strides=[3, 3], pads=[1, 1, 1, 1],
                                                 ceil_mode=1), (1, 2, 5, 8)),
    Case("maxpool-ceil-asym-window-in-padding", _pool("MaxPool", strides=[3, 3], pads=[0, 1, 2, 2], ceil_mode=1),
         (1, 2, 3, 6)),
    Case("avgpool-ceil-asym-window-in-padding", _pool("AveragePool", strides=[3, 3], pads=[0, 1, 2, 2], ceil_mode=1,
                                                      count_include_pad=1), (1, 2, 3, 6)),
    Case("maxpool-ceil-asym-pads", _pool("MaxPool", strides=[2, 2], pads=[0, 1, 1, 0], ceil_mode=1), (1, 2, 10, 9)),
    Case("avgpool-pads-include", _pool("AveragePool", pads=[1, 1, 1, 1], count_include_pad=1)),
    Case("avgpool-pads-exclude", _pool("AveragePool", pads=[1, 1, 1, 1])),
    Case("avgpool-asym-pads-include", _pool("AveragePool", pads=[0, 1, 2, 0], count_include_pad=1)),
    Case("avgpool-asym-pads-exclude", _pool("AveragePool", pads=[0, 1, 2, 0])),
    Case("avgpool-same-upper-include", _pool("AveragePool", strides=[2, 2], auto_pad="SAME_UPPER",
                                             count_include_pad=1)),
    Case("avgpool-same-lower-include", _pool("AveragePool", strides=[2, 2], auto_pad="SAME_LOWER",
                                             count_include_pad=1)),
    Case("avgpool-same-upper-exclude", _pool("AveragePool", strides=[2, 2], auto_pad="SAME_UPPER"), (1, 2, 8, 8)),
    Case("avgpool-ceil-include", _pool("AveragePool", strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
                                       count_include_pad=1), (1, 2, 10, 9)),
    Case("avgpool-ceil-exclude", _pool("AveragePool", strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
         (1, 2, 10, 9)),
    Case("avgpool-ceil-no-pads", _pool("AveragePool", strides=[2, 2], ceil_mode=1), (1, 2, 10, 9)),
    Case("global-avgpool", lambda g: g.global_avg()),
    # transposed convolutions
    Case("convT-symmetric", _tconv(strides=[2, 2], pads=[1, 1, 1, 1]), (1, 3, 5, 6)),
    Case("convT-asymmetric", _tconv(k=(4, 4), strides=[2, 2], pads=[0, 1, 2, 0]), (1, 3, 5, 6)),
    Case("convT-output-padding", _tconv(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 0]), (1, 3, 5, 6)),
    Case("convT-output-padding-asym", _tconv(strides=[2, 2], pads=[0, 1, 1, 1], output_padding=[1, 1]),
         (1, 3, 5, 6)),
    Case("convT-output-shape", _tconv(strides=[2, 2], output_shape=[10, 12]), (1, 3, 5, 6)),
    Case("convT-same-upper", _tconv(strides=[2, 2], auto_pad="SAME_UPPER"), (1, 3, 5, 6)),
    Case("convT-same-lower-k4", _tconv(k=(4, 4), strides=[2, 2], auto_pad="SAME_LOWER"), (1, 3, 5, 6)),
    Case("convT-dilated-group", _tconv(out=6, strides=[2, 1], dilations=[2, 1], pads=[1, 0, 1, 0], group=3),
         (1, 3, 5, 6)),
    # Pad
    Case("pad-constant", lambda g: g.pad([0, 0, 1, 2, 0, 0, 2, 1], value=1.5)),
    Case("pad-constant-negative", lambda g: g.pad([0, 0, -1, 2, 0, 0, 1, -2])),
    Case("pad-reflect", lambda g: g.pad([0, 0, 2, 1, 0, 0, 1, 3], mode="reflect")),
    Case("pad-reflect-negative-begin", lambda g: g.pad([0, 0, -1, 2, 0, 0, 2, 1], mode="reflect")),
    Case("pad-reflect-negative", lambda g: g.pad([0, 0, -1, 2, 0, 0, 2, -3], mode="reflect")),
    Case("pad-edge", lambda g: g.pad([0, 0, 3, 0, 0, 0, 1, 2], mode="edge")),
    Case("pad-edge-negative", lambda g: g.pad([0, 0, 2, -2, 0, 0, -1, 1], mode="edge")),
    Case("pad-wrap", lambda g: g.pad([0, 0, 2, 1, 0, 0, 1, 3], mode="wrap"), opset=19),
    Case("pad-wrap-negative", lambda g: g.pad([0, 0, -2, 1, 0, 0, 2, -1], mode="wrap"), opset=19),
    Case("pad-axes-input", lambda g: g.pad([1, -1, 2, 3], axes=[2, -1], value=-2.0), opset=18),
    Case("pad-opset2-attribute", lambda g: g.node("Pad", [g.last], pads=[0, 0, 1, 2, 0, 0, 2, 1], value=0.5),
         opset=10),
    # Resize / Upsample
    Case("resize-nearest-asymmetric-floor", lambda g: g.resize(scales=[1, 1, 2, 3], coords="asymmetric",
                                                              nearest_mode="floor"), opset=13),
    Case("resize-nearest-asymmetric-floor-sizes", lambda g: g.resize(sizes=[1, 3, 13, 7], coords="asymmetric",
                                                                    nearest_mode="floor"), opset=13),
    Case("resize-nearest-half-pixel-ceil", lambda g: g.resize(scales=[1, 1, 2, 2], nearest_mode="round_prefer_ceil"),
         opset=13),
    Case("resize-nearest-half-pixel-ceil-sizes", lambda g: g.resize(sizes=[1, 3, 15, 7],
                                                                   nearest_mode="round_prefer_ceil"), opset=13),
    Case("resize-nearest-half-pixel-floor-x2x3", lambda g: g.resize(scales=[1, 1, 2, 3],
                                                                    nearest_mode="round_prefer_floor"), opset=13),
    Case("resize-nearest-half-pixel-floor-sizes", lambda g: g.resize(sizes=[1, 3, 15, 4]), opset=13),  # no ties
    Case("resize-nearest-asymmetric-fractional", lambda g: g.resize(scales=[1, 1, 1.5, 0.75], coords="asymmetric",
                                                                    nearest_mode="floor"), opset=13),
    Case("resize-nearest-tf-half-pixel-sizes", lambda g: g.resize(sizes=[1, 3, 15, 4], coords="tf_half_pixel_for_nn",
                                                                  nearest_mode="floor"), opset=13),
    Case("resize-nearest-default-x2", lambda g: g.resize(scales=[1, 1, 2, 2]), opset=18),
    Case("resize-nearest-tf-half-pixel-floor", lambda g: g.resize(scales=[1, 1, 2, 3], coords="tf_half_pixel_for_nn",
                                                                  nearest_mode="floor"), opset=13),
    Case("resize-linear-half-pixel-x2", lambda g: g.resize(scales=[1, 1, 2, 2], mode="linear"), opset=13),
    Case("resize-linear-half-pixel-sizes", lambda g: g.resize(sizes=[1, 3, 5, 17], mode="linear"), opset=13),
    Case("resize-linear-pytorch-half-pixel", lambda g: g.resize(scales=[1, 1, 2, 1.5], mode="linear",
                                                                coords="pytorch_half_pixel"), opset=13),
    Case("resize-linear-align-corners", lambda g: g.resize(scales=[1, 1, 2, 2], mode="linear",
                                                           coords="align_corners"), opset=13),
    Case("resize-linear-align-corners-sizes", lambda g: g.resize(sizes=[1, 3, 17, 6], mode="linear",
                                                                 coords="align_corners"), opset=13),
    Case("resize-cubic-half-pixel", lambda g: g.resize(scales=[1, 1, 2, 2], mode="cubic"), opset=13),
    Case("resize-cubic-align-corners", lambda g: g.resize(sizes=[1, 3, 14, 19], mode="cubic",
                                                          coords="align_corners"), opset=13),
    Case("upsample-opset9-nearest", lambda g: g.upsample([1, 1, 2, 3]), opset=9),
    Case("upsample-opset7-attribute", lambda g: g.node("Upsample", [g.last], scales=[1.0, 1.0, 3.0, 2.0]), opset=7),
    # shapes and indexing
    Case("slice-flip", lambda g: g.slice([-1], [INT64_MIN], axes=[3], steps=[-1]), opset=13),
    Case("slice-negative-step3", lambda g: g.slice([8], [1], axes=[2], steps=[-3]), opset=13),
    Case("slice-negative-step-clamped", lambda g: g.slice([100], [-100], axes=[3], steps=[-2]), opset=13),
    Case("slice-two-axes", lambda g: g.slice([0, -2], [INT64_MAX, 0], axes=[2, 3], steps=[2, -1]), opset=13),
    Case("slice-positive-step", lambda g: g.slice([1, -7], [1000, -1], axes=[-1, 2], steps=[3, 2]), opset=13),
    Case("gather-list", lambda g: g.gather([0, 2, 3], axis=2)),
    Case("gather-contiguous", lambda g: g.gather([1, 2, 3], axis=3)),
    Case("gather-negative", lambda g: g.gather([-1, 0, -3], axis=3)),
    Case("gather-scalar", lambda g: g.gather(np.int64(1), axis=1)),
    Case("gather-2d-indices", lambda g: g.gather([[0, 1], [3, 2]], axis=3)),
    *[Case(f"flatten-axis{a}".replace("-", "-neg"), lambda g, a=a: g.flatten(axis=a), (2, 3, 4, 5))
      for a in (0, 1, 2, 4, -1, -2, -3, -4)],
    Case("reshape-transpose", lambda g: (g.reshape([0, 3, -1]), g.transpose([0, 2, 1]))),
    Case("softmax-opset11-default", lambda g: g.softmax(), opset=11),
    Case("softmax-opset11-axis2", lambda g: g.softmax(axis=2), opset=11),
    Case("softmax-opset11-axis-1", lambda g: g.softmax(axis=-1), opset=11),
    Case("softmax-opset13-default", lambda g: g.softmax(), opset=13),
    Case("softmax-opset13-axis1", lambda g: g.softmax(axis=1), opset=13),
    Case("depth-to-space-dcr", lambda g: g.depth_to_space(2, "DCR"), (1, 8, 3, 4)),
    Case("depth-to-space-crd", lambda g: g.depth_to_space(2, "CRD"), (1, 8, 3, 4)),
    Case("space-to-depth-2", lambda g: g.space_to_depth(2), (1, 3, 6, 4)),
    Case("space-to-depth-3", lambda g: g.space_to_depth(3), (1, 2, 6, 9)),
    Case("gemm-transB", lambda g: _head(g, lambda g: g.gemm(3, 5)), (2, 3, 9, 10)),
    Case("gemm-no-trans", lambda g: (g.flatten(), g.gemm(3 * 4 * 5, 7, trans_b=False)), (2, 3, 4, 5)),
    Case("reducemean-attr-keepdims", lambda g: g.reduce_mean([2, 3]), opset=13),
    Case("reducemean-attr-negative", lambda g: g.reduce_mean([-1], keepdims=0), opset=13),
    Case("reducemean-input-axes", lambda g: g.reduce_mean([2, 3], keepdims=0), opset=18),
    Case("reducemean-input-axis1", lambda g: g.reduce_mean([1]), opset=18),
    Case("concat-add-mul-relu", lambda g: (g.concat([g.conv(2, (3, 3), "x", pads=[1, 1, 1, 1]), "x"]),
                                           g.relu(), g.mul(g.last, g.add(g.last, g.last)))),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_replay_matches_onnxruntime(case: Case, tmp_path):
    paths = []
    for build in (case.build, case.twin or case.build):
        g = GraphBuilder(opset=case.opset, seed=1)
        g.input(case.shape[1], *case.shape[2:], batch=case.shape[0])
        build(g)
        paths.append(g.save(tmp_path / f"{case.id}-{len(paths)}.onnx"))
    assert_replay_matches_runtime(paths[0], case.shape, runtime_path=paths[1])


def test_count_exclude_pad_follows_the_spec(tmp_path):
    """What the AveragePool xfails above rest on: onnxruntime divides by the pixels inside the image (the ONNX
    spec for count_include_pad=0), computed here by hand."""
    g = GraphBuilder()
    g.input(1, 4, 4)
    g.pool("AveragePool", (3, 3), pads=[0, 1, 2, 0])
    path = g.save(tmp_path / "avg.onnx")
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    want = np.zeros((4, 3), np.float32)  # pads [0, 1, 2, 0]: (4 + 0 + 2 - 3) + 1 rows, (4 + 1 + 0 - 3) + 1 columns
    for i in range(4):
        for j in range(3):
            rows = range(i, min(i + 3, 4))  # 0 at the top, 2 at the bottom
            cols = range(max(j - 1, 0), min(j + 2, 4))  # 1 at the left, 0 at the right
            want[i, j] = np.mean([x[0, 0, r, c] for r in rows for c in cols])
    np.testing.assert_allclose(session_output(path, x)[0, 0], want, rtol=1e-6)


# ===========================================================================================================
# c. rflens against the gradient oracle
# ===========================================================================================================
def _oracle_vs_rflens(path: Path, shape) -> None:
    """The oracle probes the replay, so the replay is first checked against onnxruntime."""
    assert_replay_matches_runtime(path, shape)
    want = oracle_rf(linearise(read_onnx(path, weights=True)), shape)
    layer = final(path, tuple(shape[2:]))
    got = {"rf": list(layer.rf), "stride": list(layer.stride), "padding": list(layer.padding)}
    assert got == {k: want[k] for k in got}


def _g_asymmetric(g):
    g.conv(2, (3, 3), strides=[2, 2], pads=[1, 0, 0, 2])
    g.relu()
    g.conv(2, (3, 4), pads=[0, 1, 2, 0])


def _g_same_chain(g):
    g.conv(2, (3, 3), strides=[2, 2], auto_pad="SAME_UPPER")
    g.conv(2, (4, 4), strides=[2, 2], auto_pad="SAME_LOWER")
    g.conv(2, (3, 2), strides=[1, 1], auto_pad="SAME_LOWER")
    g.conv(2, (5, 4), strides=[3, 2], auto_pad="SAME_UPPER")


def _g_pools(g):
    g.relu(g.conv(2, (3, 3), auto_pad="SAME_UPPER"))
    g.pool("MaxPool", (3, 3), strides=[2, 2], auto_pad="SAME_LOWER")
    g.pool("MaxPool", (3, 2), strides=[2, 2], pads=[0, 1, 1, 0], ceil_mode=1)
    g.pool("AveragePool", (3, 3), strides=[2, 1], pads=[1, 0, 0, 1], count_include_pad=1)


def _g_residual(g):
    x = g.relu(g.conv(2, (3, 3), pads=[1, 1, 1, 1]))
    a = g.conv(2, (3, 3), x, strides=[2, 2], auto_pad="SAME_LOWER")
    b = g.conv(2, (1, 1), x, strides=[2, 2])
    c = g.pool("MaxPool", (2, 2), x, strides=[2, 2], auto_pad="SAME_UPPER")
    g.concat([g.add(a, b), c])
    g.conv(2, (3, 3), auto_pad="SAME_UPPER")


def _g_pad_ops(g):
    g.pad([0, 0, 2, -1, 0, 0, -2, 3])
    g.conv(2, (3, 3), strides=[2, 2])
    g.pad([0, 0, 1, 2, 0, 0, 2, 1], mode="reflect")
    g.conv(2, (3, 3))
    g.pad([0, 0, 1, 0, 0, 0, 0, 1], mode="edge")
    g.conv(2, (2, 2))


def _g_slice_steps(g):
    g.conv(2, (3, 3), pads=[1, 0, 0, 1])
    g.slice([1, 0], [INT64_MAX, INT64_MAX], axes=[2, 3], steps=[2, 3])
    g.conv(2, (2, 2), pads=[1, 1, 0, 0])


def _g_space_to_depth(g):
    g.conv(2, (3, 3), pads=[1, 0, 0, 1])
    g.space_to_depth(2)
    g.conv(2, (3, 3), auto_pad="SAME_LOWER")




def _g_transposed(g):
    g.conv_transpose(2, (3, 3), pads=[0, 2, 1, 0])
    g.conv(2, (3, 3), strides=[2, 2], auto_pad="SAME_UPPER")
    g.conv_transpose(2, (4, 2), auto_pad="SAME_LOWER")


ORACLE_GRAPHS = [
    pytest.param(_g_asymmetric, (1, 2, 23, 20), id="asymmetric-pads"),
    pytest.param(_g_same_chain, (1, 2, 96, 81), id="same-upper-lower-chain"),
    pytest.param(_g_same_chain, (1, 2, 95, 78), id="same-upper-lower-chain-odd"),
    pytest.param(_g_pools, (1, 2, 40, 37), id="pools"),
    pytest.param(_g_residual, (1, 2, 24, 25), id="residual-concat"),
    pytest.param(_g_pad_ops, (1, 2, 30, 31), id="pad-ops"),
    pytest.param(_g_slice_steps, (1, 2, 61, 63), id="slice-steps"),
    pytest.param(_g_space_to_depth, (1, 2, 61, 63), id="space-to-depth"),
    pytest.param(_g_transposed, (1, 2, 21, 20), id="transposed-stride1"),
]


@pytest.mark.parametrize("build,shape", ORACLE_GRAPHS)
def test_oracle_on_hand_built_graphs(build, shape, tmp_path):
    g = GraphBuilder(positive=True)
    g.input(shape[1], "h", "w")
    build(g)
    _oracle_vs_rflens(g.save(tmp_path / "g.onnx"), shape)


@pytest.mark.parametrize("op,want", [
    pytest.param("DepthToSpace-CRD", ((2, 2), (Fraction(1, 2),) * 2, (0, 0), (18, 22)), id="depth-to-space-crd"),
    pytest.param("DepthToSpace-DCR", ((2, 2), (Fraction(1, 2),) * 2, (0, 0), (18, 22)), id="depth-to-space-dcr"),
    pytest.param("SpaceToDepth", ((6, 6), (2, 2), (0, 0), (3, 4)), id="space-to-depth"),
])
def test_depth_space_ops_before_a_conv(op, want, tmp_path):
    """Block size 2, then a VALID 3x3 conv on a 10x12 map. DepthToSpace: unit u reads units u..u+2 of the
    20x24 map, i.e. inputs u//2..(u+2)//2 (2 of them, stride 1/2); SpaceToDepth: 2x2 blocks, 3 blocks wide."""
    g = GraphBuilder()
    g.input(8, "h", "w")
    g.space_to_depth(2) if op == "SpaceToDepth" else g.depth_to_space(2, op.split("-")[1])
    g.conv(2, (3, 3))
    layer = final(g.save(tmp_path / "g.onnx"), (10, 12))
    assert (layer.rf, layer.stride, layer.padding, layer.output_size) == want


def test_oracle_on_a_small_tfslim_resnet(tmp_path):
    path = tfslim_resnet50(units=(1, 1, 1, 1), size="n", positive=True).save(tmp_path / "resnet.onnx")
    _oracle_vs_rflens(path, (1, 3, 180, 180))


@st.composite
def window_chains(draw):
    """1-4 window ops (Conv or AveragePool) with per-axis kernel, stride, dilation and padding, and an input size
    per axis big enough for two clean central units (geometry derived by hand, axis by axis)."""
    layers = []
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["Conv", "Conv", "AveragePool"]))
        k = [draw(st.integers(1, 5)) for _ in range(2)]
        s = [draw(st.integers(1, 3)) for _ in range(2)]
        d = [draw(st.integers(1, 2)) for _ in range(2)] if op == "Conv" else [1, 1]
        pad = draw(st.sampled_from(["explicit", "SAME_UPPER", "SAME_LOWER", "VALID"]))
        e = [di * (ki - 1) + 1 for di, ki in zip(d, k, strict=True)]
        pads = [draw(st.integers(0, ei - 1)) for ei in e + e] if pad == "explicit" else None
        layers.append((op, k, s, d, pad, pads))

    def geometry(n_in: int, axis: int):
        """(rf, stride, padding) of the output along ``axis``, None if the oracle's central pair is not clean."""
        n, rf, stride, padding = n_in, 1, 1, 0
        for _, k, s, d, pad, pads in layers:
            e = d[axis] * (k[axis] - 1) + 1
            if pad in ("SAME_UPPER", "SAME_LOWER"):
                out, before, _ = tf_same(n, k[axis], s[axis], d[axis], pad)
            else:
                before, after = (pads[axis], pads[axis + 2]) if pads else (0, 0)
                if n + before + after < e:
                    return None
                out = window_out(n, e, s[axis], before, after)
            rf, padding, stride, n = rf + (e - 1) * stride, padding + before * stride, stride * s[axis], out
        c = (n - 2) // 2  # the oracle's first choice: the most central pair must lie inside the image
        ok = n >= 2 and c * stride - padding >= 0 and (c + 1) * stride - padding + rf - 1 <= n_in - 1
        return (rf, stride, padding) if ok else None

    sizes, expected = [], []
    for axis in range(2):
        smallest = next((n for n in range(2, 361) if geometry(n, axis) is not None), None)
        assume(smallest is not None)
        sizes.append(draw(st.integers(smallest, smallest + 12)))
        expected.append(geometry(sizes[-1], axis))
    assume(None not in expected)
    return layers, tuple(sizes), expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(window_chains())
def test_random_window_chains(chain):
    layers, sizes, expected = chain
    note(f"layers={layers} sizes={sizes} hand geometry={expected}")
    paths = []
    with tempfile.TemporaryDirectory() as tmp:
        for twin in (False, True):  # for onnxruntime, the twin spells with hand-derived pads the 'SAME' layers it
            # cannot run: dilated ones, and pools whose unclamped 'SAME' total is negative (it refuses those)
            g = GraphBuilder(seed=2)
            g.input(2, "h", "w")
            running = list(sizes)
            for op, k, s, d, pad, pads in layers:
                auto = None if pad == "explicit" else pad
                negative = pad.startswith("SAME") and any(
                    (-(-n // st) - 1) * st + di * (ki - 1) + 1 < n
                    for n, ki, st, di in zip(running, k, s, d, strict=True))
                if twin and pad.startswith("SAME") and (max(d) > 1 or op != "Conv" and negative):
                    pads, auto = _same_pads(k, s, d, pad, running), None
                if op == "Conv":
                    g.conv(2, k, strides=s, dilations=d, pads=pads, auto_pad=auto)
                else:  # count_include_pad=1 (0 is checked case by case above)
                    g.pool(op, k, strides=s, pads=pads, auto_pad=auto, count_include_pad=1)
                if pad.startswith("SAME"):
                    running = [-(-n // st) for n, st in zip(running, s, strict=True)]
                else:
                    pads = pads or [0, 0, 0, 0]
                    running = [window_out(n, di * (ki - 1) + 1, st, pads[a], pads[a + 2])
                               for a, (n, ki, st, di) in enumerate(zip(running, k, s, d, strict=True))]
            paths.append(g.save(Path(tmp) / f"chain{len(paths)}.onnx"))
        shape = (1, 2, *sizes)
        layer = final(paths[0], sizes)
        got = [(layer.rf[a], layer.stride[a], layer.padding[a]) for a in range(2)]
        assert got == [tuple(e) for e in expected]  # hand-derived
        want = oracle_rf(linearise(read_onnx(paths[0], weights=True)), shape)
        assert got == list(zip(want["rf"], want["stride"], want["padding"], strict=True))
        assert layer.output_size == tuple(running)
        assert_replay_matches_runtime(paths[0], shape, runtime_path=paths[1])


# ===========================================================================================================
# d. TF-Slim ResNet-50 v1 as exported to ONNX
# ===========================================================================================================
@pytest.fixture(scope="module")
def resnet50_onnx(tmp_path_factory):
    return tfslim_resnet50().save(tmp_path_factory.mktemp("resnet") / "resnet_v1_50.onnx")


def test_tfslim_resnet50_reference(resnet50_onnx):
    row = _reference_rows().get("resnet_v1_50 block4", {"rf": 483, "stride": 32, "padding": 239})
    layer = final(resnet50_onnx, 224)
    assert layer.output_size == (7, 7)
    assert layer.rf == (row["rf"],) * 2
    assert layer.stride == (row["stride"],) * 2
    assert layer.padding == (row["padding"],) * 2


def test_tfslim_resnet50_matches_pytorch_rebuild(resnet50_onnx):
    import tfslim

    def geometry(result):
        return [(n.op, n.output_size, n.rf, n.rf_min, n.stride, n.padding) for n in result.nodes
                if n.op in ("convolution", "max_pool2d_with_indices", "add")]

    onnx_nodes = geometry(receptive_field(read_onnx(resnet50_onnx), 224))
    torch_nodes = geometry(receptive_field(tfslim.resnet_v1(50), 224))
    assert len(onnx_nodes) == 53 + 4 + 16
    assert onnx_nodes == torch_nodes


def test_tfslim_resnet50_replay_matches_onnxruntime(tmp_path):
    path = tfslim_resnet50(units=(1, 1, 1, 1), size=64).save(tmp_path / "r.onnx")
    assert_replay_matches_runtime(path, (1, 3, 64, 64))


# ===========================================================================================================
# e. errors
# ===========================================================================================================
def _spatial(g):
    g.input(2, 12, 12)
    return g.conv(4, (3, 3), pads=[1, 1, 1, 1])


@pytest.mark.parametrize("op,domain", [("LpNormalization", ""), ("MaxUnpool", ""), ("Frobnicate", "com.example")])
def test_unknown_op_on_a_map_is_refused(op, domain, tmp_path):
    g = GraphBuilder()
    x = _spatial(g)
    if op == "MaxUnpool":
        pooled = g.node("MaxPool", [x], outputs=2, kernel_shape=[2, 2], strides=[2, 2])
        g.node(op, [pooled, f"{pooled}_out1"], kernel_shape=[2, 2], strides=[2, 2], name="unpool")
    else:
        g.node(op, [x], domain=domain, name="mystery")
    g.conv(2, (3, 3))
    path = g.save(tmp_path / "unknown.onnx")
    with pytest.raises(UnsupportedOpError) as info:
        receptive_field(read_onnx(path), 12)
    message = str(info.value)
    assert op in message
    assert ("unpool" if op == "MaxUnpool" else "mystery") in message


def test_unknown_op_on_logits_is_allowed(tmp_path):
    g = GraphBuilder()
    _spatial(g)
    g.conv(4, (3, 3), strides=[2, 2], pads=[1, 1, 1, 1])
    last_map = g.last
    g.global_avg()
    g.flatten()
    g.node("LpNormalization", [g.last], name="mystery", axis=1)
    path = g.save(tmp_path / "head.onnx")
    assert session_output(path, np.ones((1, 2, 12, 12), np.float32)).shape == (1, 4)  # a real op
    layer = next(x for x in receptive_field(read_onnx(path), 12).layers if x.name == last_map)
    assert (layer.rf, layer.stride, layer.padding) == ((5, 5), (2, 2), (2, 2))  # 3x3, then 3x3/2 pad 1


@pytest.mark.parametrize("build,words", [
    pytest.param(lambda g: g.resize(scales=[1, 1, 2, 2], mode="linear", coords="asymmetric"),
                 ["Resize", "asymmetric"], id="linear-asymmetric"),
    pytest.param(lambda g: g.resize(scales=[1, 1, 2, 2], mode="cubic", coords="tf_crop_and_resize"),
                 ["Resize", "tf_crop_and_resize"], id="cubic-crop-and-resize"),
    pytest.param(lambda g: g.resize(scales=[1, 1, 0.5, 0.5], nearest_mode="round_prefer_floor"),
                 ["Resize", "half_pixel"], id="nearest-half-pixel-floor-ties"),
    pytest.param(lambda g: g.resize(scales=[1, 1, 2, 2], coords="align_corners", nearest_mode="round_prefer_ceil"),
                 ["Resize", "align_corners"], id="nearest-align-corners"),
])
def test_resize_without_pytorch_equivalent(build, words, tmp_path):
    g = GraphBuilder(opset=13)
    g.input(2, 8, 8)
    build(g)
    path = g.save(tmp_path / "resize.onnx")
    with pytest.raises(UnsupportedOpError) as info:
        receptive_field(read_onnx(path), 8)
    assert all(w in str(info.value) for w in words)


def _two_inputs(path):
    g = GraphBuilder()
    a = g.input(2, 8, 8, name="a")
    b = g.input(2, 8, 8, name="b")
    g.add(a, b)
    return g.save(path)


def _random_bytes(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def _if_graph(path):
    def branch(name, scale):
        out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)
        k = helper.make_tensor(f"{name}_k", TensorProto.FLOAT, [], [scale])
        node = helper.make_node("Mul", ["x", f"{name}_k"], [f"{name}_y"])
        return helper.make_graph([node], name, [], [out], [k])

    g = GraphBuilder(opset=13)
    g.input(2, 8, 8)
    cond = g.const(True, np.bool_, "cond")
    g.node("If", [cond], name="branch", then_branch=branch("then", 2.0), else_branch=branch("else", 3.0))
    return g.save(path)


@pytest.mark.parametrize("make,words", [
    pytest.param(_two_inputs, ["one input", "a, b"], id="two-inputs"),
    pytest.param(_random_bytes, ["not an ONNX model"], id="random-bytes"),
    pytest.param(lambda p: p, ["not found"], id="missing-file"),
    pytest.param(_if_graph, ["If", "control flow"], id="if-node"),
])
def test_unreadable_models(make, words, tmp_path):
    path = make(tmp_path / "model.onnx")
    with pytest.raises(ModelSourceError) as info:
        read_onnx(path)
    assert all(w in str(info.value) for w in words), str(info.value)
    assert str(path) in str(info.value)


def test_if_graph_is_valid_onnx(tmp_path):
    """The If model refused above is a model onnxruntime runs (the refusal is rflens's, not a broken file)."""
    path = _if_graph(tmp_path / "if.onnx")
    x = np.ones((1, 2, 8, 8), np.float32)
    np.testing.assert_allclose(session_output(path, x), 2 * x)

"""Hand-built ONNX models for the ONNX tests, written with ``onnx.helper`` only (no torch, independent of rflens).

:class:`GraphBuilder` chains ops on a current tensor: every method takes its input(s) (default: the last output),
adds one node named after its op (``conv1``, ``maxpool2``...) and returns the name of its output, which becomes
the current tensor. Weights are seeded random float32 initializers, strictly positive when ``positive=True``
(for the gradient oracle). ``tfslim_resnet50`` mirrors TF-Slim ResNet-50 v1 as a TensorFlow exporter writes it
(the layout of tests/tfslim.py).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT


class GraphBuilder:
    def __init__(self, opset: int = 17, seed: int = 0, positive: bool = False) -> None:
        self.opset, self.positive = opset, positive
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.inputs: list = []
        self.channels: dict[str, int] = {}
        self.count: dict[str, int] = {}
        self.last = ""
        self.domains: set[str] = set()

    # -- plumbing ------------------------------------------------------------------------------------------
    def _name(self, op: str) -> str:
        self.count[op] = self.count.get(op, 0) + 1
        return f"{op.lower()}{self.count[op]}"

    def const(self, values, dtype=np.int64, name: str | None = None) -> str:
        name = name or self._name("const")
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def weight(self, shape) -> str:
        w = self.rng.uniform(0.5, 1.5, shape) if self.positive else self.rng.normal(0.0, 1.0, shape)
        return self.const(w / np.sqrt(np.prod(shape[1:])), np.float32, self._name("w"))

    def node(self, op: str, inputs, channels: int | None = None, outputs: int = 1, domain: str = "",
             name: str | None = None, **attrs) -> str:
        name = name or self._name(op)
        outs = [name] + [f"{name}_out{i}" for i in range(1, outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, domain=domain, **attrs))
        if domain:
            self.domains.add(domain)
        first = next((i for i in inputs if i), "")
        self.channels[name] = channels if channels is not None else self.channels.get(first, 0)
        self.last = name
        return name

    def _x(self, x: str | None) -> str:
        return x or self.last

    # -- inputs --------------------------------------------------------------------------------------------
    def input(self, channels: int, *spatial, name: str = "x", batch=1) -> str:
        # NCHW float input; a spatial dim given as a string (or None) is dynamic
        dims = [batch, channels, *spatial]
        self.inputs.append(helper.make_tensor_value_info(name, FLOAT, dims))
        self.channels[name] = channels
        self.last = name
        return name

    # -- window ops ----------------------------------------------------------------------------------------
    def conv(self, out: int, kernel, x=None, strides=None, dilations=None, group: int = 1, pads=None,
             auto_pad=None, bias: bool = True) -> str:
        x = self._x(x)
        kernel = list(kernel)
        w = self.weight([out, self.channels[x] // group, *kernel])
        ins = [x, w] + ([self.const(np.zeros(out) if self.positive else self.rng.normal(0, 0.1, out), np.float32)]
                        if bias else [])
        return self.node("Conv", ins, out, kernel_shape=kernel, strides=strides, dilations=dilations,
                         group=group if group != 1 else None, pads=pads, auto_pad=auto_pad)

    def conv_transpose(self, out: int, kernel, x=None, strides=None, dilations=None, pads=None,
                       output_padding=None, output_shape=None, auto_pad=None, group: int = 1) -> str:
        x = self._x(x)
        kernel = list(kernel)
        w = self.weight([self.channels[x], out // group, *kernel])
        b = self.const(self.rng.normal(0, 0.1, out), np.float32)
        return self.node("ConvTranspose", [x, w, b], out, kernel_shape=kernel, strides=strides, dilations=dilations,
                         pads=pads, output_padding=output_padding, output_shape=output_shape, auto_pad=auto_pad,
                         group=group if group != 1 else None)

    def pool(self, op: str, kernel, x=None, strides=None, pads=None, auto_pad=None, ceil_mode=None,
             count_include_pad=None, dilations=None) -> str:
        # op: MaxPool or AveragePool
        return self.node(op, [self._x(x)], kernel_shape=list(kernel), strides=strides, pads=pads,
                         auto_pad=auto_pad, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                         dilations=dilations)

    def global_avg(self, x=None) -> str:
        return self.node("GlobalAveragePool", [self._x(x)])

    # -- padding and resizing ------------------------------------------------------------------------------
    def pad(self, pads, x=None, mode: str = "constant", value: float | None = None, axes=None) -> str:
        # opset 11+: pads, constant value and axes (opset 18+) as inputs
        ins = [self._x(x), self.const(pads)]
        if value is not None or axes is not None:
            ins.append(self.const(value, np.float32) if value is not None else "")
        if axes is not None:
            ins.append(self.const(axes))
        return self.node("Pad", ins, mode=mode)

    def resize(self, x=None, scales=None, sizes=None, mode: str = "nearest", coords: str | None = None,
               nearest_mode: str | None = None, cubic_coeff_a: float | None = None) -> str:
        ins = [self._x(x), "", self.const(scales, np.float32) if scales is not None else ""]
        if sizes is not None:
            ins.append(self.const(sizes))
        return self.node("Resize", ins, mode=mode, coordinate_transformation_mode=coords, nearest_mode=nearest_mode,
                         cubic_coeff_a=cubic_coeff_a)

    def upsample(self, scales, x=None, mode: str = "nearest") -> str:
        # opset 9: scales as an input
        return self.node("Upsample", [self._x(x), self.const(scales, np.float32)], mode=mode)

    # -- elementwise and shape ops -------------------------------------------------------------------------
    def add(self, a: str, b: str) -> str:
        return self.node("Add", [a, b])

    def mul(self, a: str, b: str) -> str:
        return self.node("Mul", [a, b])

    def concat(self, xs, axis: int = 1) -> str:
        return self.node("Concat", list(xs), sum(self.channels[x] for x in xs) if axis == 1 else None, axis=axis)

    def relu(self, x=None) -> str:
        return self.node("Relu", [self._x(x)])

    def reshape(self, shape, x=None) -> str:
        return self.node("Reshape", [self._x(x), self.const(shape)])

    def flatten(self, x=None, axis: int | None = None) -> str:
        return self.node("Flatten", [self._x(x)], axis=axis)

    def transpose(self, perm, x=None) -> str:
        return self.node("Transpose", [self._x(x)], perm=list(perm))

    def slice(self, starts, ends, axes=None, steps=None, x=None) -> str:
        ins = [self._x(x), self.const(starts), self.const(ends)]
        if axes is not None or steps is not None:
            ins.append(self.const(axes) if axes is not None else "")
        if steps is not None:
            ins.append(self.const(steps))
        return self.node("Slice", ins)

    def gather(self, indices, axis: int = 0, x=None) -> str:
        return self.node("Gather", [self._x(x), self.const(indices)], axis=axis)

    def depth_to_space(self, blocksize: int, mode: str = "DCR", x=None) -> str:
        x = self._x(x)
        return self.node("DepthToSpace", [x], self.channels[x] // blocksize**2, blocksize=blocksize, mode=mode)

    def space_to_depth(self, blocksize: int, x=None) -> str:
        x = self._x(x)
        return self.node("SpaceToDepth", [x], self.channels[x] * blocksize**2, blocksize=blocksize)

    def softmax(self, axis: int | None = None, x=None) -> str:
        return self.node("Softmax", [self._x(x)], axis=axis)

    def gemm(self, features_in: int, features_out: int, x=None, trans_b: bool = True) -> str:
        shape = [features_out, features_in] if trans_b else [features_in, features_out]
        w = self.const(self.rng.normal(0, 1 / np.sqrt(features_in), shape), np.float32)
        b = self.const(self.rng.normal(0, 0.1, features_out), np.float32)
        return self.node("Gemm", [self._x(x), w, b], transB=1 if trans_b else None)

    def reduce_mean(self, axes, x=None, keepdims: int = 1) -> str:
        # axes: an attribute before opset 18, an input from 18 on
        if self.opset >= 18:
            return self.node("ReduceMean", [self._x(x), self.const(axes)], keepdims=keepdims)
        return self.node("ReduceMean", [self._x(x)], axes=list(axes), keepdims=keepdims)

    # -- the model -----------------------------------------------------------------------------------------
    def model(self, outputs=None) -> onnx.ModelProto:
        outputs = outputs or [self.last]
        graph = helper.make_graph(self.nodes, "g", self.inputs,
                                  [helper.make_tensor_value_info(o, FLOAT, None) for o in outputs], self.inits)
        opsets = [helper.make_opsetid("", self.opset)] + [helper.make_opsetid(d, 1) for d in sorted(self.domains)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="rflens-tests")
        model.ir_version = 8 if self.opset <= 17 else 9
        return model

    def save(self, path, outputs=None):
        onnx.save(self.model(outputs), str(path))
        return path


# -- TF-Slim ResNet-50 v1 as a TensorFlow exporter writes it ------------------------------------------------
def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _conv2d_same(g: GraphBuilder, out: int, k: int, stride: int) -> str:
    # resnet_utils.conv2d_same: stride 1 is 'SAME'; a stride > 1 pads (k-1)//2 before and the rest after, then runs
    # a VALID conv (the exporter folds that Pad into the conv's pads)
    if stride == 1:
        return g.conv(out, (k, k), auto_pad="SAME_UPPER")
    beg = (k - 1) // 2
    end = k - 1 - beg
    return g.conv(out, (k, k), strides=[stride, stride], pads=[beg, beg, end, end])


def _bottleneck(g: GraphBuilder, x: str, depth: int, bottleneck: int, stride: int) -> str:
    if g.channels[x] == depth:  # resnet_utils.subsample: a 1x1 max pool with the stride
        shortcut = x if stride == 1 else g.pool("MaxPool", (1, 1), x, strides=[stride, stride])
    else:
        shortcut = g.conv(depth, (1, 1), x, strides=[stride, stride], auto_pad="SAME_UPPER")
    g.relu(g.conv(bottleneck, (1, 1), x, auto_pad="SAME_UPPER"))
    g.relu(_conv2d_same(g, bottleneck, 3, stride))
    residual = g.conv(depth, (1, 1), auto_pad="SAME_UPPER")
    return g.relu(g.add(shortcut, residual))


def tfslim_resnet50(units=(3, 4, 6, 3), width: float = 1 / 16, size: int | str = 224, seed: int = 0,
                    positive: bool = False) -> GraphBuilder:
    # TF-Slim resnet_v1_50 up to block4 (the graph's output). Root: conv1 = explicit 3/3 pads + 7x7/2 conv, pool1 =
    # 3x3/2 MaxPool with auto_pad SAME_UPPER. Blocks of depth (64, 128, 256, 512) x 4 with the stride (2, 2, 2, 1)
    # in the LAST unit; shortcut: 1x1 max pool subsample (same depth) or 1x1 conv. Batch norm folded into the convs.
    g = GraphBuilder(opset=13, seed=seed, positive=positive)
    g.input(3, size, size)
    g.relu(g.conv(_ch(64, width), (7, 7), strides=[2, 2], pads=[3, 3, 3, 3]))
    x = g.pool("MaxPool", (3, 3), strides=[2, 2], auto_pad="SAME_UPPER")
    for base, n, stride in zip((64, 128, 256, 512), units, (2, 2, 2, 1), strict=True):
        for i in range(n):
            x = _bottleneck(g, x, _ch(base * 4, width), _ch(base, width), stride if i == n - 1 else 1)
    return g

"""Read an ONNX model as an ``nn.Module`` that replays its graph with torch ops, for :mod:`rflens.capture`.

Why a replay rather than a second graph builder: every ONNX op the analyses care about has a torch op of the
same geometry (Conv is ``torch.convolution``, Pad is ``F.pad``, Resize is ``F.interpolate``...), so the capture
traces the replay on meta tensors with the very rules it uses for PyTorch models: dims through
Reshape/Transpose/Flatten, broadcasting and the global flag, FLOPs. One set of rules serves both sources and
the two cannot drift apart. The file is read with the ``onnx`` package only (no runtime): initializers are
never loaded except the small constants that shape the graph (target shapes, pads, axes, scales); weights
become meta tensors of their declared shape.

ONNX semantics that torch lacks are written out with torch ops of the same geometry: asymmetric pads and
``auto_pad`` SAME_UPPER/SAME_LOWER (the TensorFlow rule, computed from the input size at every call as
TensorFlow does) become an explicit ``F.pad`` in front of the window; a ceil-mode pooling whose last window
would start in the padding is cut back to ONNX's output size. Each node is a module named after the ONNX node
(its first output's name when the node has none), of a class named after its op type, so layers are reported
under ONNX names. An op without a replay rule raises :class:`UnsupportedOpError` when it touches a spatial
axis (and is left out of the trace, as a constant, when it only sees pooled features or logits).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rflens.errors import CaptureError, ModelSourceError, RflensError, UnsupportedOpError

Tensor = torch.Tensor
Handler = Callable[["OnnxNode", list], Any]
HANDLERS: dict[str, Handler] = {}

# Inputs that hold settings rather than data (a target shape, pads, axes, scales): their values are read.
VALUE_INPUTS: dict[str, set[int]] = {
    "Reshape": {1}, "Pad": {1, 2, 3}, "Resize": {1, 2, 3}, "Upsample": {1}, "Slice": {1, 2, 3, 4},
    "Squeeze": {1}, "Unsqueeze": {1}, "Split": {1}, "Tile": {1}, "Expand": {1}, "ConstantOfShape": {0},
    "Range": {0, 1, 2}, "Clip": {1, 2}, "TopK": {1}, "OneHot": {1, 2},
    **{f"Reduce{r}": {1} for r in ("Mean", "Sum", "Max", "Min", "Prod", "L1", "L2", "LogSum", "LogSumExp",
                                   "SumSquare")},
}
SMALL_CONSTANT = 4096  # initializers up to this many elements are read as values (never weights)


class NeedsPyTorchError(RflensError):
    """An analysis that runs the network on real data (gradients, activations) was asked of an ONNX model, which
    rflens reads for its graph only."""


def is_onnx(model: Any) -> bool:
    return isinstance(model, OnnxModel)


def require_pytorch(model: Any, what: str) -> None:
    """Refuse ``what`` (an analysis that runs the network on data or changes its layers) for an ONNX model."""
    if is_onnx(model):
        raise NeedsPyTorchError(
            f"{what} needs the PyTorch model: {model.source} is an ONNX graph, which rflens reads for its geometry "
            "only (no weights are run or changed). The weight-free analyses work on it: rf, border, padding, "
            "culprits, structural maps (erf --protocol structural, deadpixel without --weighted), audit, check.")


# ---------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------
class OnnxNode(nn.Module):
    """One ONNX node: its op type, attributes and the names of its inputs and outputs. Initializers it reads
    as data are its parameters (meta tensors of their declared shape); small ones it reads as settings are
    plain CPU tensors in ``constants``."""

    def __init__(self, proto: Any, name: str, opset: int) -> None:
        super().__init__()
        from onnx import helper

        self.op_type = proto.op_type
        self.domain = proto.domain  # ops of other domains (com.microsoft...) have no replay rule
        self.rflens_name = name  # the layer name rflens reports (rflens.capture)
        self.opset = opset
        self.inputs = list(proto.input)
        self.outputs = list(proto.output)
        self.attrs = {a.name: _attribute(helper.get_attribute_value(a)) for a in proto.attribute}
        self.constants: dict[int, _LazyConstant] = {}
        self.output_shapes: Callable[[], list] | None = None  # inferred output shapes, for ops without a rule

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def fail(self, detail: str) -> UnsupportedOpError:
        op = f"{self.domain}.{self.op_type}" if self.domain not in ("", "ai.onnx") else self.op_type
        return UnsupportedOpError(f"ONNX {op}", self.rflens_name, detail)

    def values(self, t: Tensor | None, what: str) -> list | None:
        """The values of a settings input (a shape, pads, axes...), which must not depend on the data."""
        if t is None or t.numel() == 0 and what != "shape":
            return None
        if t.device.type == "meta":
            raise self.fail(f"its {what} is computed from the data, which a replay on meta tensors cannot read")
        return t.reshape(-1).tolist()

    def forward(self, *xs: Tensor | None) -> Any:
        xs = [x if x is not None else self.constants[i].get() if i in self.constants
              else getattr(self, f"input{i}", None) for i, x in enumerate(xs)]
        handler = HANDLERS.get(self.op_type) if self.domain in ("", "ai.onnx") else None
        if handler is None:
            return _unknown(self, xs)
        values = VALUE_INPUTS.get(self.op_type, set())
        data = [x for i, x in enumerate(xs) if isinstance(x, Tensor) and i not in values]
        device = next((x.device for x in data if x.device.type != "cpu"), None)
        if device is not None:  # constants join the data on its device
            xs = [x.to(device) if isinstance(x, Tensor) and i not in values and x.device != device else x
                  for i, x in enumerate(xs)]
        return handler(self, xs)


_NODE_TYPES: dict[str, type] = {}


def _node_type(op_type: str) -> type:
    """A subclass of :class:`OnnxNode` named after the op type, so that reports show ``Conv``, ``MaxPool``..."""
    if op_type not in _NODE_TYPES:
        name = op_type if op_type.isidentifier() else "OnnxOp"
        _NODE_TYPES[op_type] = type(name, (OnnxNode,), {"__module__": __name__})
    return _NODE_TYPES[op_type]


class OnnxModel(nn.Module):
    """An ONNX graph as a module whose forward replays it with torch ops, on meta tensors (see the module's
    docstring). ``forward`` takes the input in PyTorch's layout (batch, channels, *spatial) and transposes it when
    the ONNX input is channels-last. ``declared_input``: (channels, *spatial) as the file declares them, None
    where a dim is dynamic."""

    def __init__(self, proto: Any, source: str, base_dir: Path | None, weights: bool = False) -> None:
        super().__init__()
        import onnx

        self.source = source
        graph = proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        inits = {t.name: t for t in graph.initializer}
        data_inputs = [i for i in graph.input if i.name not in inits]
        if len(data_inputs) != 1:
            names = ", ".join(i.name for i in data_inputs) or "none"
            raise ModelSourceError(f"{source}: rflens analyses models with one input tensor; this one has "
                                   f"{len(data_inputs)} ({names})")
        self.input_name = data_inputs[0].name
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in data_inputs[0].type.tensor_type.shape.dim]
        if len(dims) < 3:
            raise ModelSourceError(f"{source}: the input {self.input_name!r} has shape {dims}; rflens needs "
                                   "(batch, channels, *spatial) or (batch, *spatial, channels)")
        self.channels_last = _channels_last(graph, self.input_name, len(dims))
        channels = dims[-1] if self.channels_last else dims[1]
        spatial = dims[1:-1] if self.channels_last else dims[2:]
        self.declared_input = (channels or _first_conv_channels(graph, inits), *spatial)
        self.output_names = [o.name for o in graph.output]
        self.has_weights = weights
        if any(n.op_type in ("If", "Loop", "Scan") for n in graph.node):
            op = next(n.op_type for n in graph.node if n.op_type in ("If", "Loop", "Scan"))
            raise ModelSourceError(f"{source}: control flow ({op}) cannot be analysed; export the model without it")

        inferred = _InferredShapes(proto)
        params: dict[str, nn.Parameter] = {}
        used: set[str] = set()
        self.steps: list[str] = []
        aliases = {n.output[0]: n.input[0] for n in graph.node  # exporters pass shared weights through Identity
                   if n.op_type == "Identity" and n.input and n.input[0] in inits}
        for k, proto_node in enumerate(graph.node):
            if proto_node.op_type == "Identity" and proto_node.output[0] in aliases:
                continue
            name = proto_node.name or (proto_node.output[0] if proto_node.output else f"{proto_node.op_type}_{k}")
            name = _unique(name, used)
            node = _node_type(proto_node.op_type)(proto_node, name, self.opset)
            node.inputs = [aliases.get(n, n) for n in node.inputs]
            node.output_shapes = (lambda outputs=list(proto_node.output): inferred.shapes(outputs))
            values = VALUE_INPUTS.get(node.op_type, set())
            for i, input_name in enumerate(node.inputs):
                tensor = inits.get(input_name)
                if tensor is None:
                    continue
                embedded = tensor.data_location != onnx.TensorProto.EXTERNAL
                small = embedded and math.prod(tensor.dims) <= SMALL_CONSTANT and not weights
                if i in values or small and (tensor.data_type not in _FLOAT_TYPES or _is_settings(node.op_type, i)):
                    node.constants[i] = _LazyConstant(tensor, base_dir, source)
                else:
                    if input_name not in params:
                        params[input_name] = nn.Parameter(_weight(tensor, base_dir, source, weights),
                                                          requires_grad=False)
                    node.register_parameter(f"input{i}", params[input_name])
            self.add_module(f"n{k}", node)
            self.steps.append(f"n{k}")

    def forward(self, x: Tensor) -> Any:
        if x.device.type != "meta" and not self.has_weights:
            raise NeedsPyTorchError(f"{self.source} is read without its weights: it replays on the meta device only "
                                    "(for its geometry); analyses that run the network need the PyTorch model")
        if self.channels_last:
            x = x.movedim(1, -1)
        env: dict[str, Any] = {self.input_name: x}
        for step in self.steps:
            node = getattr(self, step)
            args = [env.get(n) if n else None for n in node.inputs]
            for i, (n, a) in enumerate(zip(node.inputs, args, strict=True)):
                if n and a is None and i not in node.constants and not hasattr(node, f"input{i}"):
                    raise CaptureError(f"ONNX node {node.rflens_name!r} reads {n!r}, which nothing produces")
            out = node(*args)
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            for n, o in zip(node.outputs, outs, strict=False):
                if n:
                    env[n] = o
        results = [env[n] for n in self.output_names if n in env]
        return results[0] if len(results) == 1 else tuple(results)


class _InferredShapes:
    """Static output shapes from ONNX's shape inference, run once and only if an op without a rule needs them."""

    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.known: dict[str, tuple[list[int | None], int]] | None = None

    def shapes(self, names: Sequence[str]) -> list[tuple[list[int | None], int] | None]:
        if self.known is None:
            from onnx import shape_inference

            try:
                graph = shape_inference.infer_shapes(self.proto).graph
            except Exception:  # noqa: BLE001 - inference is a convenience: without it the op is refused
                graph = self.proto.graph
            self.known = {}
            for v in [*graph.value_info, *graph.output]:
                t = v.type.tensor_type
                self.known[v.name] = ([d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim],
                                      t.elem_type)
        return [self.known.get(n) for n in names]


class _LazyConstant:
    """An initializer read as a value on first use (never, for weights the analysis does not need)."""

    def __init__(self, proto: Any, base_dir: Path | None, source: str) -> None:
        self.proto, self.base_dir, self.source = proto, base_dir, source
        self.value: Tensor | None = None

    def get(self) -> Tensor:
        if self.value is None:
            self.value = torch.from_numpy(np.array(_array(self.proto, self.base_dir, self.source)))
        return self.value


def _unique(name: str, used: set[str]) -> str:
    out, k = name, 1
    while out in used or out == "":
        k += 1
        out = f"{name}#{k}"
    used.add(out)
    return out


def _is_settings(op_type: str, slot: int) -> bool:
    """Small float initializers that are not a node's weights (scales in a shape computation, a Mul by a
    constant): read as values so that settings computed from them stay readable."""
    return not (op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "PRelu",
                            "InstanceNormalization", "LayerNormalization", "GroupNormalization") and slot >= 1)


_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _torch_dtype(elem_type: int) -> torch.dtype:
    from onnx import helper

    try:
        return torch.from_numpy(np.zeros(1, dtype=helper.tensor_dtype_to_np_dtype(elem_type))).dtype
    except (KeyError, TypeError, ValueError):
        return torch.float32


def _array(proto: Any, base_dir: Path | None, source: str) -> np.ndarray:
    from onnx import numpy_helper

    try:
        return numpy_helper.to_array(proto, base_dir=str(base_dir) if base_dir is not None else "")
    except Exception as exc:  # noqa: BLE001 - a missing or corrupt external file
        raise ModelSourceError(f"{source}: cannot read initializer {proto.name!r}, which sets part of the "
                               f"geometry: {exc}") from exc


def _weight(proto: Any, base_dir: Path | None, source: str, weights: bool) -> Tensor:
    if weights:
        return torch.from_numpy(np.array(_array(proto, base_dir, source)))
    return torch.empty(tuple(proto.dims), dtype=_torch_dtype(proto.data_type), device="meta")


def _attribute(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    if hasattr(value, "dims") and hasattr(value, "data_type"):  # a TensorProto (Constant's value)
        from onnx import numpy_helper

        return torch.from_numpy(np.array(numpy_helper.to_array(value)))
    return value


def _channels_last(graph: Any, input_name: str, rank: int) -> bool:
    """Whether the input is (batch, *spatial, channels): its first consumer that is not elementwise is a
    Transpose that moves the last dim to position 1 (what TensorFlow exporters write in front of a Conv)."""
    to_first = [0, rank - 1, *range(1, rank - 1)]
    names = {input_name}
    for node in graph.node:
        if not names.intersection(node.input):
            continue
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            return perm == to_first
        if node.op_type in _ELEMENTWISE:
            names.update(node.output)
            continue
        return False
    return False


_ELEMENTWISE = {"Cast", "Identity", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sqrt", "Neg", "Abs"}


def _first_conv_channels(graph: Any, inits: dict[str, Any]) -> int | None:
    for node in graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
            dims = inits[node.input[1]].dims
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            return int(dims[1]) * group
    return None


def read_onnx(path: str | os.PathLike, *, weights: bool = False) -> OnnxModel:
    """The ONNX model at ``path`` as an :class:`OnnxModel`. ``weights=False`` (default) reads no weights at all:
    the model replays on meta tensors, which is all the weight-free analyses need. ``weights=True`` loads them,
    so the replay computes real outputs (used to check the replay against onnxruntime)."""
    try:
        import onnx
    except ImportError as exc:
        raise ModelSourceError('reading ONNX models needs the onnx package: pip install "rflens[onnx]"') from exc
    path = Path(path)
    if not path.is_file():
        raise ModelSourceError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ModelSourceError(f"cannot read {path}: not an ONNX model, or a corrupt one ({exc})") from exc
    if not proto.graph.node:
        raise ModelSourceError(f"cannot read {path}: the file holds no ONNX graph")
    return OnnxModel(proto, str(path), path.parent, weights).eval()


# ---------------------------------------------------------------------------------------------------------
# replay rules, one per op type
# ---------------------------------------------------------------------------------------------------------
def op(*names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for n in names:
            HANDLERS[n] = fn
        return fn
    return register


def _unknown(node: OnnxNode, xs: list) -> Any:
    """An op without a rule: refused where it touches a spatial axis; after the last map (logits, pooled
    features) its outputs are made to their inferred shapes, as constants the analyses do not follow."""
    from rflens.capture import holds_spatial_axes

    if any(isinstance(x, Tensor) and holds_spatial_axes(x) for x in xs):
        raise node.fail("rflens has no rule for this op and it touches spatial axes")
    shapes = node.output_shapes() if node.output_shapes is not None else [None]
    if any(s is None or None in s[0] for s in shapes):
        raise node.fail("rflens has no rule for this op and its output shape is not static")
    device = next((x.device for x in xs if isinstance(x, Tensor)), torch.device("cpu"))
    outs = [torch.zeros(dims, dtype=_torch_dtype(elem), device=device) for dims, elem in shapes]
    return outs[0] if len(outs) == 1 else tuple(outs)


def _size(x: Tensor) -> tuple[int, ...]:
    """The shape of ``x`` read for the replay's own bookkeeping, out of sight of the capture's size-read
    detection: shapes that ONNX copies (Reshape's 0, Flatten, Expand) follow the input, unlike computed ones."""
    with torch._C.DisableTorchFunction():
        return tuple(x.shape)


def _per_axis(node: OnnxNode, name: str, n: int, default: int) -> list[int]:
    v = node.attr(name)
    return list(v) if v else [default] * n


def _window(node: OnnxNode, kernel: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """Strides, dilations and extents (d*(k-1)+1) of a window op per spatial axis."""
    n = len(kernel)
    strides, dilations = _per_axis(node, "strides", n, 1), _per_axis(node, "dilations", n, 1)
    return strides, dilations, [d * (k - 1) + 1 for d, k in zip(dilations, kernel, strict=True)]


def _halves(total: int, upper: bool) -> tuple[int, int]:
    """(before, after) of ``total`` padding: the odd unit after (``upper``, SAME_UPPER) or before."""
    small, large = total // 2, total - total // 2
    return (small, large) if upper else (large, small)


def _window_pads(node: OnnxNode, x: Tensor, extent: Sequence[int], strides: Sequence[int]
                 ) -> tuple[list[int], list[int], bool]:
    """(before, after) padding of a window op per spatial axis, from ``pads`` or ``auto_pad``, and whether it
    was computed from the input size. SAME_UPPER and SAME_LOWER follow TensorFlow: output ceil(n / stride), the
    odd pixel after (UPPER) or before (LOWER). With a stride above 1 (and a window wider than one unit) that
    depends on the input size, which is read here as TensorFlow reads it, at every call."""
    n = len(extent)
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = _per_axis(node, "pads", 2 * n, 0)
        return pads[:n], pads[n:], False
    if auto == "VALID":
        return [0] * n, [0] * n, False
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise node.fail(f"unknown auto_pad {auto!r}")
    dynamic = any(s > 1 and e > 1 for s, e in zip(strides, extent, strict=True))
    sizes = x.shape[-n:] if dynamic else [None] * n  # a stride of 1 pads extent - 1 at any size
    totals = [e - 1 if s == 1 else max((-(-size // s) - 1) * s + e - size, 0) if e > 1 else 0
              for size, e, s in zip(sizes, extent, strides, strict=True)]
    before, after = zip(*(_halves(t, auto == "SAME_UPPER") for t in totals), strict=True)
    return list(before), list(after), dynamic


def _torch_pad(before: Sequence[int], after: Sequence[int]) -> list[int]:
    """F.pad's list (last axis first) for trailing axes."""
    out: list[int] = []
    for b, a in zip(reversed(before), reversed(after), strict=True):
        out += [b, a]
    return out


def _explicit(x: Tensor, before: list[int], after: list[int], value: float = 0.0) -> Tensor:
    return F.pad(x, _torch_pad(before, after), value=value) if any(before) or any(after) else x


@op("Conv")
def _conv(node, xs):
    x, w, b = (list(xs) + [None, None])[:3]
    n = w.dim() - 2
    strides, dilations, extent = _window(node, w.shape[2:])
    before, after, dynamic = _window_pads(node, x, extent, strides)
    padding = before
    if before != after or dynamic:  # an explicit pad, as timm's Conv2dSame (rflens.resize.mark_same_padding)
        x, padding = _explicit(x, before, after), [0] * n
    return torch.convolution(x, w, b, strides, padding, dilations, False, [0] * n, node.attr("group", 1))


@op("ConvTranspose")
def _conv_transpose(node, xs):
    x, w, b = (list(xs) + [None, None])[:3]
    n = w.dim() - 2
    strides, dilations, extent = _window(node, w.shape[2:])
    out_pad = _per_axis(node, "output_padding", n, 0)
    auto = node.attr("auto_pad", "NOTSET")
    target = node.attr("output_shape")
    if target or auto in ("SAME_UPPER", "SAME_LOWER"):
        sizes = x.shape[-n:]
        target = list(target)[-n:] if target else [s * st for s, st in zip(sizes, strides, strict=True)]
        totals = [s * (size - 1) + op_ + e - t for size, s, e, op_, t in zip(sizes, strides, extent, out_pad, target,
                                                                               strict=True)]
        before, after = (list(v) for v in zip(*(_halves(t, auto == "SAME_UPPER") for t in totals), strict=True))
    elif auto == "VALID":
        before, after = [0] * n, [0] * n
    else:
        pads = _per_axis(node, "pads", 2 * n, 0)
        before, after = pads[:n], pads[n:]
    groups = node.attr("group", 1)
    if any(p < 0 for p in before + after):
        raise node.fail(f"negative pads {before + after}")
    if before == after:
        return torch.convolution(x, w, b, strides, before, dilations, True, out_pad, groups)
    # asymmetric: the full output, extended by output_padding at the end (units no input reaches), then cropped
    y = _explicit(torch.convolution(x, w, None, strides, [0] * n, dilations, True, [0] * n, groups), [0] * n,
                  out_pad)
    full = _size(y)[-n:]
    y = y[(Ellipsis, *(slice(bf, m - af) for bf, af, m in zip(before, after, full, strict=True)))]
    return y if b is None else y + b.reshape(-1, *([1] * n))


def _pool_geometry(node, x):
    kernel = list(node.attr("kernel_shape"))
    strides, dilations, extent = _window(node, kernel)
    before, after, dynamic = _window_pads(node, x, extent, strides)
    return kernel, strides, dilations, extent, before, after, dynamic


def _onnx_pool_size(n: int, e: int, s: int, b: int, a: int, ceil: bool) -> int:
    """ONNX's output size of a pooling: in ceil mode, a last window that would start in the end padding is
    dropped (as PyTorch does, counting the end padding as padding)."""
    span = n + b + a - e
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= n + b:
        out -= 1
    return out


def _pool(node, x, pool: Callable, pad_value: float, exclude_pads: bool = False):
    """A pooling with ONNX's padding; padding PyTorch's pooling cannot do itself is explicit. ``exclude_pads``:
    an average over the real pixels only (``count_include_pad=0``), which an explicit padding would dilute: the
    average is divided by the share of real pixels in each window."""
    kernel, strides, dilations, extent, before, after, dynamic = _pool_geometry(node, x)
    ceil = bool(node.attr("ceil_mode", 0))
    n = len(kernel)
    if before == after and all(p <= k // 2 for p, k in zip(before, kernel, strict=True)) and not dynamic:
        return pool(x, kernel, strides, before, dilations, ceil)
    sizes = _size(x)[-n:]
    want = [_onnx_pool_size(m, e, s, b, a, ceil) for m, e, s, b, a in zip(sizes, extent, strides, before, after,
                                                                         strict=True)]
    cut = (Ellipsis, *(slice(0, w) for w in want))

    def padded_pool(t: Tensor) -> Any:
        y = pool(_explicit(t, before, after, pad_value), kernel, strides, [0] * n, dilations, ceil)
        first = y[0] if isinstance(y, tuple) else y
        if list(first.shape[-n:]) == want:
            return y
        return tuple(t[cut] for t in y) if isinstance(y, tuple) else y[cut]

    y = padded_pool(x)
    if exclude_pads and (any(before) or any(after)):
        y = y / padded_pool(torch.ones((1, 1, *sizes), dtype=x.dtype, device=x.device))
    return y


@op("MaxPool")
def _max_pool(node, xs):
    x = xs[0]
    n = len(node.attr("kernel_shape"))
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
    indices = len(node.outputs) > 1 and bool(node.outputs[1])

    def pool(t, k, s, p, d, ceil):
        return fn(t, k, s, p, d, ceil_mode=ceil, return_indices=indices)

    return _pool(node, x, pool, -math.inf)


@op("AveragePool")
def _avg_pool(node, xs):
    x = xs[0]
    n = len(node.attr("kernel_shape"))
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
    include = bool(node.attr("count_include_pad", 0))

    def pool(t, k, s, p, d, ceil):
        if any(v != 1 for v in d):
            raise node.fail("dilated average pooling has no PyTorch equivalent")
        return fn(t, k, s, p, ceil_mode=ceil, count_include_pad=include)

    return _pool(node, x, pool, 0.0, exclude_pads=not include)


@op("LpPool")
def _lp_pool(node, xs):
    p = float(node.attr("p", 2))
    n = len(node.attr("kernel_shape"))
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]

    def pool(t, k, s, pad, d, ceil):
        if any(v != 1 for v in d):
            raise node.fail("dilated Lp pooling has no PyTorch equivalent")
        return fn(t, k, s, pad, ceil_mode=ceil, count_include_pad=True) * math.prod(k)

    return _pool(node, xs[0].abs().pow(p), pool, 0.0).pow(1 / p)


def _spatial_dims(x: Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.dim()))


@op("GlobalAveragePool")
def _global_avg(node, xs):
    return xs[0].mean(_spatial_dims(xs[0]), keepdim=True)


@op("GlobalMaxPool")
def _global_max(node, xs):
    return xs[0].amax(_spatial_dims(xs[0]), keepdim=True)


@op("GlobalLpPool")
def _global_lp(node, xs):
    p = float(node.attr("p", 2))
    return xs[0].abs().pow(p).sum(_spatial_dims(xs[0]), keepdim=True).pow(1 / p)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@op("Pad")
def _pad(node, xs):
    x = xs[0]
    rank = x.dim()
    if node.opset < 11:
        pads, value, axes = list(node.attr("pads")), float(node.attr("value", 0.0)), None
    else:
        pads = node.values(xs[1] if len(xs) > 1 else None, "pads") or []
        constant = node.values(xs[2] if len(xs) > 2 else None, "constant value")
        value = float(constant[0]) if constant else 0.0
        axes = node.values(xs[3] if len(xs) > 3 else None, "axes")
    axes = [a % rank for a in axes] if axes else list(range(rank))
    k = len(axes)
    before, after = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        before[a], after[a] = int(pads[i]), int(pads[k + i])
    mode = node.attr("mode", "constant")
    if mode not in _PAD_MODES:
        raise node.fail(f"unknown padding mode {mode!r}")
    if mode != "constant":  # negative pads crop first; PyTorch pads only the trailing spatial dims in these modes
        index = tuple(slice(max(-b, 0), a if a < 0 else None) for b, a in zip(before, after, strict=True))
        x = x[index]
        before, after = [max(b, 0) for b in before], [max(a, 0) for a in after]
        if any(before[:2]) or any(after[:2]):
            raise node.fail(f"{mode} padding of the batch or channel dim")
        if rank - 2 > 3:
            raise node.fail(f"{mode} padding of more than 3 spatial dims")
    first = next((i for i in range(rank) if before[i] or after[i]), rank)
    if first == rank:
        return x
    return F.pad(x, _torch_pad(before[first:], after[first:]), mode=_PAD_MODES[mode],
                 value=value if mode == "constant" else None)


@op("Resize", "Upsample")
def _resize(node, xs):
    x = xs[0]
    rank = x.dim()
    if node.op_type == "Upsample":
        scales = list(node.attr("scales")) if node.attr("scales") else node.values(xs[1], "scales")
        sizes, coords, mode = None, "asymmetric", node.attr("mode", "nearest")
    else:
        if node.opset < 11:
            scales, sizes = node.values(xs[1] if len(xs) > 1 else None, "scales"), None
            coords = "asymmetric"
        else:
            scales = node.values(xs[2] if len(xs) > 2 else None, "scales")
            sizes = node.values(xs[3] if len(xs) > 3 else None, "sizes")
            coords = node.attr("coordinate_transformation_mode", "half_pixel")
        mode = node.attr("mode", "nearest")
        if node.attr("antialias", 0):
            raise node.fail("antialiased resizing")
        if node.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise node.fail(f"keep_aspect_ratio_policy {node.attr('keep_aspect_ratio_policy')!r}")
        if node.attr("exclude_outside", 0):
            raise node.fail("exclude_outside=1 (taps outside the image are dropped, unlike PyTorch)")
    axes = node.attr("axes")
    axes = [a % rank for a in axes] if axes else list(range(rank))
    full_scales, full_sizes = [1.0] * rank, None
    if sizes:
        full_sizes = list(_size(x))
        for a, s in zip(axes, sizes, strict=True):
            full_sizes[a] = int(s)
    elif scales:
        for a, s in zip(axes, scales, strict=True):
            full_scales[a] = float(s)
    else:
        raise node.fail("neither scales nor sizes are given")
    n_sp = rank - 2
    if (full_sizes is not None and full_sizes[:2] != list(_size(x)[:2])) or full_scales[:2] != [1.0, 1.0]:
        raise node.fail("resizing the batch or channel dim")
    kw: dict[str, Any] = {}
    if mode == "nearest":
        torch_mode = _nearest_mode(node, coords, x, full_sizes, full_scales)
    elif mode in ("linear", "bilinear", "cubic", "bicubic"):
        cubic = mode.endswith("cubic")
        if cubic and n_sp != 2:
            raise node.fail(f"cubic resizing in {n_sp}-D (PyTorch has it in 2-D only)")
        torch_mode = "bicubic" if cubic else ("linear", "bilinear", "trilinear")[n_sp - 1]
        if coords == "align_corners":
            kw["align_corners"] = True
        elif coords in ("half_pixel", "pytorch_half_pixel"):
            kw["align_corners"] = False
        else:
            raise node.fail(f"{mode} resizing with coordinate_transformation_mode {coords!r} (PyTorch has "
                            "align_corners and half_pixel only)")
    else:
        raise node.fail(f"unknown resize mode {mode!r}")
    if full_sizes is not None:
        return F.interpolate(x, size=full_sizes[2:], mode=torch_mode, **kw)
    return F.interpolate(x, scale_factor=full_scales[2:], mode=torch_mode, recompute_scale_factor=False, **kw)


def _nearest_mode(node, coords: str, x: Tensor, sizes: list[int] | None, scales: list[float]) -> str:
    """PyTorch's nearest mode that picks the same pixels as the ONNX settings: ``nearest`` is asymmetric
    coordinates with floor, ``nearest-exact`` half-pixel coordinates rounding halves up; half-pixel rounding
    halves down picks the same pixels wherever no output lands exactly between two inputs."""
    rounding = node.attr("nearest_mode", "round_prefer_floor")
    if node.op_type == "Upsample" or node.opset < 11:
        rounding = "floor"
    if coords == "asymmetric" and rounding == "floor":
        return "nearest"
    if coords == "tf_half_pixel_for_nn" and rounding == "floor":
        return "nearest-exact"
    if coords in ("half_pixel", "pytorch_half_pixel") and rounding == "round_prefer_ceil":
        return "nearest-exact"
    if coords in ("half_pixel", "pytorch_half_pixel") and rounding == "round_prefer_floor":
        n_in = _size(x)[2:]
        for axis, n in enumerate(n_in):
            step = Fraction(n, sizes[axis + 2]) if sizes else 1 / Fraction(scales[axis + 2]).limit_denominator(10**6)
            n_out = sizes[axis + 2] if sizes else math.floor(n * scales[axis + 2])
            if any(((u + Fraction(1, 2)) * step).denominator == 1 for u in range(n_out)):
                raise node.fail("nearest resizing with half_pixel coordinates where outputs fall exactly between "
                                "two inputs (ONNX rounds those down, PyTorch up)")
        return "nearest-exact"
    raise node.fail(f"nearest resizing with coordinate_transformation_mode {coords!r} and nearest_mode "
                    f"{rounding!r} (no PyTorch equivalent)")


@op("Concat")
def _concat(node, xs):
    return torch.cat(xs, dim=node.attr("axis"))


@op("Split")
def _split(node, xs):
    x, axis = xs[0], node.attr("axis", 0)
    parts = list(node.attr("split")) if node.attr("split") else node.values(xs[1] if len(xs) > 1 else None,
                                                                            "split")
    if not parts:
        count = node.attr("num_outputs", len(node.outputs))
        size = _size(x)[axis]
        chunk = -(-size // count)
        parts = [min(chunk, size - i * chunk) for i in range(count)]
    return torch.split(x, [int(p) for p in parts], dim=axis)


@op("Slice")
def _slice(node, xs):
    x = xs[0]
    if node.opset < 10:
        starts, ends, axes, steps = node.attr("starts"), node.attr("ends"), node.attr("axes"), None
    else:
        starts, ends = node.values(xs[1], "starts"), node.values(xs[2], "ends")
        axes = node.values(xs[3] if len(xs) > 3 else None, "axes")
        steps = node.values(xs[4] if len(xs) > 4 else None, "steps")
    axes = list(axes) if axes else list(range(len(starts)))
    steps = list(steps) if steps else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    flips = []
    for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
        a, s, e, st = a % x.dim(), int(s), int(e), int(st)
        if st < 0:  # the same elements, read from the flipped axis (ONNX's clamping for negative steps)
            n = _size(x)[a]
            s = min(max(s + n if s < 0 else s, 0), n - 1)
            e = min(max(e + n if e < 0 else e, -1), n - 1)
            s, e, st = n - 1 - s, n - 1 - e, -st
            flips.append(a)
        index[a] = slice(s, e, st)
    return (x.flip(flips) if flips else x)[tuple(index)]


@op("Gather")
def _gather(node, xs):
    x, idx = xs
    axis = node.attr("axis", 0) % x.dim()
    if idx.device.type == "meta":
        raise node.fail("indices computed from the data")
    idx = idx.to(torch.int64)
    n = _size(x)[axis]
    idx = torch.where(idx < 0, idx + n, idx)
    if idx.dim() == 0:
        return x.select(axis, int(idx))
    flat = idx.reshape(-1)
    values = flat.tolist()
    if values == list(range(values[0], values[0] + len(values))):  # a contiguous range: a slice
        out = x.narrow(axis, values[0], len(values))
    else:
        out = x.index_select(axis, flat.to(x.device))
    return out.reshape(*_size(out)[:axis], *idx.shape, *_size(out)[axis + 1:]) if idx.dim() != 1 else out


@op("Reshape")
def _reshape(node, xs):
    x = xs[0]
    shape = [int(s) for s in node.values(xs[1], "shape")] if len(xs) > 1 else list(node.attr("shape"))
    if not node.attr("allowzero", 0):
        have = _size(x)
        shape = [have[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@op("Flatten")
def _flatten(node, xs):
    x, axis = xs[0], node.attr("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    if axis == 0:
        return x.reshape(1, -1)
    out = x.flatten(axis) if axis < x.dim() else x.unsqueeze(-1)
    return out.flatten(0, axis - 1)


@op("Transpose")
def _transpose(node, xs):
    perm = node.attr("perm") or list(reversed(range(xs[0].dim())))
    return xs[0].permute(list(perm))


@op("Squeeze")
def _squeeze(node, xs):
    axes = node.attr("axes") if node.opset < 13 else node.values(xs[1] if len(xs) > 1 else None, "axes")
    if not axes:
        return xs[0].squeeze()
    return xs[0].squeeze(tuple(a % xs[0].dim() for a in axes))


@op("Unsqueeze")
def _unsqueeze(node, xs):
    axes = node.attr("axes") if node.opset < 13 else node.values(xs[1], "axes")
    x = xs[0]
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


@op("Expand")
def _expand(node, xs):
    x = xs[0]
    shape = [int(s) for s in node.values(xs[1], "shape")]
    target = torch.broadcast_shapes(_size(x), tuple(shape))
    return x.expand(target)


@op("Tile")
def _tile(node, xs):
    return xs[0].repeat([int(r) for r in node.values(xs[1], "repeats")])


@op("Identity", "Dropout")
def _identity(node, xs):
    return xs[0]


@op("Cast")
def _cast(node, xs):
    return xs[0].to(_torch_dtype(node.attr("to")))


@op("CastLike")
def _cast_like(node, xs):
    return xs[0].to(xs[1].dtype)


@op("Shape")
def _shape(node, xs):
    shape = list(xs[0].shape)  # seen by the capture: the graph computes something from a map's size
    start, end = node.attr("start", 0), node.attr("end")
    return torch.tensor(shape[start:end], dtype=torch.int64, device="cpu")


@op("Size")
def _size_op(node, xs):
    return torch.tensor(xs[0].numel(), dtype=torch.int64, device="cpu")


@op("Constant")
def _constant(node, xs):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            v = node.attrs[key]
            return v if isinstance(v, Tensor) else torch.tensor(v, device="cpu")
    raise node.fail(f"constant of kind {', '.join(node.attrs) or 'none'}")


@op("ConstantOfShape")
def _constant_of_shape(node, xs):
    value = node.attr("value")
    fill = value.reshape(-1)[0] if isinstance(value, Tensor) else torch.tensor(0.0)
    shape = [int(s) for s in node.values(xs[0], "shape")]
    return torch.full(shape, fill.item(), dtype=fill.dtype, device="cpu")


@op("Range")
def _range(node, xs):
    start, limit, delta = (node.values(t, "range")[0] for t in xs)
    return torch.arange(start, limit, delta, device="cpu")


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Handler:
    def run(node, xs):
        a, b = xs
        return fn(a, b)
    return run


def _divide(a: Tensor, b: Tensor) -> Tensor:
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


for _name, _fn in {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _divide, "Pow": torch.pow,
                   "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
                   "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
                   "Xor": torch.logical_xor, "BitwiseAnd": torch.bitwise_and, "BitwiseOr": torch.bitwise_or,
                   "PRelu": lambda x, s: x.clamp(min=0) + s * x.clamp(max=0)}.items():
    HANDLERS[_name] = _binary(_fn)


@op("Mod")
def _mod(node, xs):
    a, b = xs
    return torch.fmod(a, b) if node.attr("fmod", 0) else torch.remainder(a, b)


def _variadic(fn: Callable[[Tensor, Tensor], Tensor], mean: bool = False) -> Handler:
    def run(node, xs):
        xs = [x for x in xs if x is not None]
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out / len(xs) if mean else out
    return run


HANDLERS.update({"Sum": _variadic(torch.add), "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum),
                 "Mean": _variadic(torch.add, mean=True)})


@op("Where")
def _where(node, xs):
    c, a, b = xs
    return torch.where(c.to(torch.bool), a, b)


def _unary(fn: Callable[..., Tensor]) -> Handler:
    return lambda node, xs: fn(node, xs[0])


_UNARY: dict[str, Callable[..., Tensor]] = {
    "Relu": lambda n, x: torch.relu(x),
    "LeakyRelu": lambda n, x: F.leaky_relu(x, n.attr("alpha", 0.01)),
    "Elu": lambda n, x: F.elu(x, n.attr("alpha", 1.0)),
    "Celu": lambda n, x: F.celu(x, n.attr("alpha", 1.0)),
    "Selu": lambda n, x: n.attr("gamma", 1.0507009873554805) * F.elu(x, n.attr("alpha", 1.6732632423543772)),
    "ThresholdedRelu": lambda n, x: torch.where(x > n.attr("alpha", 1.0), x, torch.zeros_like(x)),
    "Sigmoid": lambda n, x: torch.sigmoid(x),
    "HardSigmoid": lambda n, x: (n.attr("alpha", 0.2) * x + n.attr("beta", 0.5)).clamp(0, 1),
    "HardSwish": lambda n, x: F.hardswish(x),
    "Tanh": lambda n, x: torch.tanh(x),
    "Softplus": lambda n, x: F.softplus(x),
    "Softsign": lambda n, x: F.softsign(x),
    "Mish": lambda n, x: F.mish(x),
    "Gelu": lambda n, x: F.gelu(x, approximate=n.attr("approximate", "none")),
    "Exp": lambda n, x: torch.exp(x), "Log": lambda n, x: torch.log(x), "Sqrt": lambda n, x: torch.sqrt(x),
    "Abs": lambda n, x: torch.abs(x), "Neg": lambda n, x: torch.neg(x), "Reciprocal": lambda n, x: 1 / x,
    "Erf": lambda n, x: torch.erf(x), "Floor": lambda n, x: torch.floor(x), "Ceil": lambda n, x: torch.ceil(x),
    "Round": lambda n, x: torch.round(x), "Sign": lambda n, x: torch.sign(x), "Sin": lambda n, x: torch.sin(x),
    "Cos": lambda n, x: torch.cos(x), "Not": lambda n, x: torch.logical_not(x), "IsNaN": lambda n, x: x.isnan(),
    "IsInf": lambda n, x: x.isinf(),
    "Softmax": lambda n, x: _softmax(n, x, torch.softmax),
    "LogSoftmax": lambda n, x: _softmax(n, x, torch.log_softmax),
}
HANDLERS.update({name: _unary(fn) for name, fn in _UNARY.items()})


def _softmax(node, x, fn):
    if node.opset >= 13:
        return fn(x, node.attr("axis", -1))
    axis = node.attr("axis", 1) % x.dim()  # before opset 13: over every dim from axis on, as one
    return fn(x.flatten(axis), -1).reshape(_size(x))


@op("Clip")
def _clip(node, xs):
    if node.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
    else:
        lo = node.values(xs[1], "min")[0] if len(xs) > 1 and xs[1] is not None else None
        hi = node.values(xs[2], "max")[0] if len(xs) > 2 and xs[2] is not None else None
    return xs[0].clamp(lo, hi)


@op("BatchNormalization")
def _batch_norm(node, xs):
    x, scale, bias, mean, var = xs[:5]
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, node.attr("epsilon", 1e-5))


@op("InstanceNormalization")
def _instance_norm(node, xs):
    x, scale, bias = xs
    return F.instance_norm(x, weight=scale, bias=bias, eps=node.attr("epsilon", 1e-5))


@op("LayerNormalization")
def _layer_norm(node, xs):
    xs = list(xs) + [None]
    x, scale, bias = xs[:3]
    axis = node.attr("axis", -1) % x.dim()
    return F.layer_norm(x, _size(x)[axis:], scale, bias, node.attr("epsilon", 1e-5))


@op("GroupNormalization")
def _group_norm(node, xs):
    x, scale, bias = xs
    groups = node.attr("num_groups")
    y = F.group_norm(x, groups, eps=node.attr("epsilon", 1e-5))
    per_channel = [t.repeat_interleave(_size(x)[1] // groups) if t.numel() == groups else t for t in (scale, bias)]
    shape = (-1, *([1] * (x.dim() - 2)))
    return y * per_channel[0].reshape(shape) + per_channel[1].reshape(shape)


@op("LRN")
def _lrn(node, xs):
    return F.local_response_norm(xs[0], node.attr("size"), node.attr("alpha", 1e-4), node.attr("beta", 0.75),
                                 node.attr("bias", 1.0))


@op("MatMul")
def _matmul(node, xs):
    a, b = xs
    return torch.matmul(a, b)


@op("Gemm")
def _gemm(node, xs):
    xs = list(xs) + [None]
    a, b, c = xs[:3]
    a = a.t() if node.attr("transA", 0) else a
    b = b.t() if node.attr("transB", 0) else b
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    y = torch.matmul(a, b)
    y = y if alpha == 1.0 else y * alpha
    return y if c is None else y + (c if beta == 1.0 else c * beta)


@op("Einsum")
def _einsum(node, xs):
    return torch.einsum(node.attr("equation"), *xs)


def _reduce(fn: Callable[[Tensor, tuple[int, ...], bool], Tensor]) -> Handler:
    def run(node, xs):
        x = xs[0]
        if node.op_type == "ReduceSum" and node.opset >= 13 or node.opset >= 18:
            axes = node.values(xs[1] if len(xs) > 1 else None, "axes")
        else:
            axes = node.attr("axes")
        keep = bool(node.attr("keepdims", 1))
        if not axes:
            if node.attr("noop_with_empty_axes", 0):
                return x
            axes = range(x.dim())
        return fn(x, tuple(sorted(a % x.dim() for a in axes)), keep)
    return run


def _prod(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    for d in sorted(dims, reverse=True):
        x = x.prod(d, keepdim=keep)
    return x


HANDLERS.update({
    "ReduceMean": _reduce(lambda x, d, k: x.mean(d, keepdim=k)),
    "ReduceSum": _reduce(lambda x, d, k: x.sum(d, keepdim=k)),
    "ReduceMax": _reduce(lambda x, d, k: x.amax(d, keepdim=k)),
    "ReduceMin": _reduce(lambda x, d, k: x.amin(d, keepdim=k)),
    "ReduceProd": _reduce(_prod),
    "ReduceL1": _reduce(lambda x, d, k: x.abs().sum(d, keepdim=k)),
    "ReduceL2": _reduce(lambda x, d, k: x.square().sum(d, keepdim=k).sqrt()),
    "ReduceSumSquare": _reduce(lambda x, d, k: x.square().sum(d, keepdim=k)),
    "ReduceLogSum": _reduce(lambda x, d, k: x.sum(d, keepdim=k).log()),
    "ReduceLogSumExp": _reduce(lambda x, d, k: x.logsumexp(d, keepdim=k)),
})


def _arg(fn: Callable[..., Tensor]) -> Handler:
    def run(node, xs):
        return fn(xs[0], node.attr("axis", 0), keepdim=bool(node.attr("keepdims", 1)))
    return run


HANDLERS.update({"ArgMax": _arg(torch.argmax), "ArgMin": _arg(torch.argmin)})


def _block_order(channels: int, b: int) -> Tensor:
    """Channel ``c*b*b + i*b + j`` (PyTorch's pixel (un)shuffle, ONNX's CRD) in ONNX's DCR order
    ``(i*b + j)*C + c``: the DCR channel each CRD channel is."""
    c = channels // (b * b)
    return torch.arange(channels, device="cpu").reshape(c, b * b).t().reshape(-1).argsort()


@op("DepthToSpace")
def _depth_to_space(node, xs):
    x, b = xs[0], node.attr("blocksize")
    if node.attr("mode", "DCR") == "DCR":  # the channels in CRD order, then PyTorch's pixel shuffle
        x = x.index_select(1, _block_order(_size(x)[1], b).to(x.device))
    return F.pixel_shuffle(x, b)


@op("SpaceToDepth")
def _space_to_depth(node, xs):
    x, b = xs[0], node.attr("blocksize")
    y = F.pixel_unshuffle(x, b)  # CRD order; ONNX writes DCR
    return y.index_select(1, _block_order(_size(y)[1], b).argsort().to(y.device))

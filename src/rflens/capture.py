"""Trace a model once on the meta device and build its :class:`~rflens.graph.Graph`.

The model runs under a ``TorchDispatchMode`` that sees every aten op with its arguments and output shapes
(the mechanism of ``torch.utils.flop_counter``), so functional ops (``F.pad``, ``x + y``, ``torch.cat``,
``x.mean((2, 3))``) are seen as well as modules. No FLOPs are spent: parameters and buffers are swapped for
meta copies with ``torch.func.functional_call``; the user's model is not changed. Each op is handled by a small
rule looked up in ``RULES`` by its overload packet; pointwise ops are recognised by their ``pointwise`` tag.
An op that touches a spatial dim and has no rule raises :class:`UnsupportedOpError`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode
from torch.utils.flop_counter import flop_registry
from torch.utils.weak import WeakIdKeyDictionary

from rflens import dims as D
from rflens.errors import (
    CaptureError,
    InputTooSmallError,
    MetaDeviceError,
    RflensError,
    UnsupportedOpError,
)
from rflens.graph import IDENTITY_READ, AxisRead, Graph, Work
from rflens.resize import mark_same_padding
from rflens.rules import RULES, State, _op_name, not_spatial, pad_rule, pointwise, write_through

aten = torch.ops.aten

_UNIFORM_KEEPING = {aten.view, aten._unsafe_view, aten.reshape, aten.permute, aten.transpose, aten.expand,
                    aten.slice, aten.select, aten.unsqueeze, aten.squeeze, aten.clone, aten.detach, aten.alias,
                    aten._to_copy, aten.copy_, aten.contiguous, aten.fill_, aten.zero_, aten.t, aten.flatten}


class _Recorder(TorchDispatchMode):
    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        self.states: WeakIdKeyDictionary = WeakIdKeyDictionary()
        # tensors made to the shape of a feature map with no dependence on its values (ones_like(x)...):
        # harmless while uniform, but an op that makes their values depend on the position (cumsum, a conv
        # with padding) builds a position map the graph cannot see: that counts as reading the map's size
        self.shaped: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.modules: list[str] = [""]
        self.paused = 0

    # -- bookkeeping used by the rules -------------------------------------------------------------------
    @property
    def module(self) -> str:
        return self.modules[-1]

    def state(self, t: Any) -> State | None:
        return self.states.get(t) if isinstance(t, torch.Tensor) else None

    def sizes(self, st: State) -> tuple[int, ...]:
        return self.graph.nodes[st.node].sizes

    def set(self, t: torch.Tensor, st: State) -> None:
        self.states[t] = st

    def carry(self, out: torch.Tensor, st: State, dims: D.Dims, hidden: frozenset[int] | None = None) -> None:
        """Same node, dims rearranged (views, permutes, channel-only ops)."""
        self.set(out, State(st.node, dims, st.hidden if hidden is None else hidden))

    def emit(self, func: Any, out: torch.Tensor, inputs: Sequence[State], reads: Sequence[Sequence[AxisRead]],
             dims: D.Dims, hidden: frozenset[int] = frozenset()) -> None:
        """A new node whose output is ``out`` with the given dims."""
        sizes = tuple(D.axis_size(dims, axis) for axis in range(self.graph.ndim))
        node = self.graph.add(_op_name(func), self.module, tuple(s.node for s in inputs),
                              tuple(tuple(r) for r in reads), sizes, tuple(out.shape))
        self.set(out, State(node.id, tuple(dims), hidden))

    def shaped_op(self, func: Any, out: Any) -> None:
        """An op on a map-shaped constant: pointwise ops, views and copies keep it uniform; any other op may
        make it depend on the position, which is recorded as a size read."""
        if torch.Tag.pointwise in func.tags or func.overloadpacket in _UNIFORM_KEEPING:
            for o in pytree.tree_leaves(out):
                if isinstance(o, torch.Tensor):
                    self.shaped[o] = True
        else:
            self.size_read(f"aten.{_op_name(func)} on a tensor shaped like a feature map in module '{self.module}' "
                           "(its values may depend on the position)")

    def size_read(self, where: str) -> None:
        """Record that the model's code read the size of a map at ``where`` (once per place)."""
        if where not in self.graph.size_reads:
            self.graph.size_read_modules.append(self.module)
            self.graph.size_reads.append(where)

    def unsupported(self, func: Any, detail: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"aten.{_op_name(func)}", self.module, detail)

    def identity_reads(self, st: State) -> list[AxisRead]:
        """Reads of an op that keeps every unit where it is. An axis ``st`` no longer holds (in a dim, or as a
        hidden size-1 axis) was reduced away: the tensor depends on it only globally."""
        held = set(st.hidden).union(*(D.axes_of(d) for d in st.dims))
        return [IDENTITY_READ if a in held else None for a in range(self.graph.ndim)]

    def count_work(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """FLOPs of the op by ``torch.utils.flop_counter``'s own formulas, tied to the node of its output."""
        name = _op_name(func)
        first = out[0] if isinstance(out, (tuple, list)) else out
        # a transposed convolution's FLOPs follow its input units, every other op's its output units
        st = self.state(args[0] if name == "convolution" and args[6] else first)
        if st is None:
            return
        flops = int(flop_registry[func.overloadpacket](*args, **kwargs, out_val=out))
        axes, whole = _work_axes(st.dims, self.sizes(st))
        kernel, weight = (), 0
        if name == "convolution":
            kernel, weight = tuple(args[1].shape[2:]), args[1].numel()
            scalable = whole
        elif name in ("mm", "addmm", "bmm", "baddbmm"):
            a = args[1] if name in ("addmm", "baddbmm") else args[0]
            sa = self.state(a)
            scalable = whole and (sa is None or not D.axes_of(sa.dims[-1]))  # contracts no spatial units
        else:
            scalable = False
        order = len(self.graph.nodes) - (name == "convolution")  # a convolution's own node was just recorded
        self.graph.work.append(Work(name, self.module, st.node, flops, axes, scalable, kernel, weight, order))

    # -- dispatch -----------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            fast = _META_SHORTCUTS.get(func) if args and _on_meta(args[0]) else None
            out = fast(*args) if fast is not None else None
            if out is None:
                out = func(*args, **kwargs)
        except RflensError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is re-raised with the module path
            raise _explain(exc, func, args, self.module) from exc
        if self.paused:
            return out
        leaves = pytree.tree_leaves((args, kwargs))
        if not any(isinstance(t, torch.Tensor) and t in self.states for t in leaves):
            if any(isinstance(t, torch.Tensor) and t in self.shaped for t in leaves):
                self.shaped_op(func, out)
            return out  # parameters, constants: no dependence on the input
        rule = RULES.get(func.overloadpacket)
        if rule is None and torch.Tag.pointwise in func.tags:
            rule = pointwise
        if rule is None:
            rule = not_spatial
        rule(self, func, args, kwargs, out)
        if func.overloadpacket in flop_registry:
            self.count_work(func, args, kwargs, out)
        if torch.Tag.inplace in func.tags and out is args[0] and args[0]._base is not None:
            write_through(self, func, args[0])
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(first, torch.Tensor) and first.numel() == 0 and first.dim() > 2:
            raise InputTooSmallError(
                f"input too small: aten.{_op_name(func)} in module '{self.module}' gives an empty output "
                f"{tuple(first.shape)} at input size {self.graph.input_size}")
        return out


def _work_axes(dims: D.Dims, sizes: tuple[int, ...]) -> tuple[tuple[int, ...], bool]:
    """Spatial axes held by each dim (an axis held by two dims, as in a token-by-token product, twice), and
    whether every dim holds its axes whole (not a Swin window's part of one)."""
    axes: list[int] = []
    whole = True
    for d in dims:
        for axis in D.axes_of(d):
            axes.append(axis)
            whole &= math.prod(a[2] for a in d if a[0] == "s" and a[1] == axis) == sizes[axis]
    return tuple(sorted(axes)), whole


def _on_meta(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "meta"


def _bn_eval_meta(x, *rest):
    if len(rest) == 7 and rest[4]:  # native_batch_norm in training mode: the real meta kernel runs
        return None
    return torch.empty_like(x), x.new_empty((x.shape[1],)), x.new_empty((x.shape[1],))


def _unary_meta(x, *rest):
    return torch.empty_like(x)


def _inplace_meta(x, *rest):
    return x


# Meta outputs of shape-preserving ops built directly: PyTorch computes them with Python decompositions that
# cost more than the rest of the trace (eval-mode batch norm above all). Shapes, strides and dtypes match.
_META_SHORTCUTS: dict[Any, Callable] = {
    aten._native_batch_norm_legit_no_training.default: _bn_eval_meta,
    aten.native_batch_norm.default: _bn_eval_meta,
    **{getattr(aten, n).default: _unary_meta for n in ("relu", "silu", "hardswish", "hardsigmoid", "sigmoid",
                                                         "gelu", "mish", "tanh")},
    **{getattr(aten, n).default: _inplace_meta for n in ("relu_", "silu_", "hardswish_", "hardsigmoid_",
                                                           "sigmoid_", "mish_")},
}


_SHAPE_GET = torch.Tensor.shape.__get__


def holds_spatial_axes(t: torch.Tensor) -> bool:
    """Whether ``t`` holds a spatial axis of the input in the capture running now (False outside a capture)."""
    mode = _get_current_dispatch_mode()
    st = mode.state(t) if isinstance(mode, _Recorder) else None
    return st is not None and st.has_spatial()


class _PythonLevel(TorchFunctionMode):
    """What only the Python level shows. ``F.pad(mode="circular")`` decomposes into writes into slices of a new
    tensor, which a dispatch mode cannot follow: record it as one padding op. And the model's own code reading
    the size of a map (``B, C, H, W = x.shape``): what it computes from it (a crop, a padding amount) looks
    like a constant in the graph, so the graph is marked as one that cannot be carried to other sizes. Reads
    inside torch functions are not seen here (the mode is off while a function it intercepted runs)."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == _SHAPE_GET or func is torch.Tensor.size or func is torch.Tensor.numel:
            self._size_read(func, args)
            return func(*args, **kwargs)
        if getattr(func, "__name__", "") != "pad" or kwargs.get("mode", args[2] if len(args) > 2 else None) \
                != "circular":
            return func(*args, **kwargs)
        rec = self.recorder
        rec.paused += 1
        try:
            out = func(*args, **kwargs)
        finally:
            rec.paused -= 1
        x, pad = args[0], kwargs.get("pad", args[1] if len(args) > 1 else None)
        if rec.state(x) is not None:
            pad_rule(rec, "pad_circular", x, list(pad), "circular", out)
        return out

    def _size_read(self, func: Any, args: tuple) -> None:
        rec = self.recorder
        st = rec.state(args[0]) if args else None
        if st is None:
            return
        dims = st.dims
        if func is torch.Tensor.size and len(args) > 1 and isinstance(args[1], int):
            dims = (dims[args[1]],) if -len(dims) <= args[1] < len(dims) else ()
        if any(D.axes_of(d) for d in dims):
            caller = sys._getframe(2)
            where = f"module '{rec.module}'" if rec.module else "the top-level forward"
            rec.size_read(f"{where} ({Path(caller.f_code.co_filename).name}:{caller.f_lineno})")


_TOO_SMALL = ("too small", "non-positive", "greater than actual input", "should be less than", "must be less than",
              "smaller than kernel")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _looks_meta(exc: Exception, msg: str) -> bool:
    """The failure of a forward that needs real data (``.item()``, ``nonzero``, tensors on another device)."""
    low = msg.lower()
    return isinstance(exc, NotImplementedError) or any(s in low for s in ("meta", "data-dependent", "item()"))


def _explain(exc: Exception, func: Any, args: tuple, module: str) -> RflensError:
    msg = _first_line(exc)
    where = f"aten.{_op_name(func)} in module '{module}'"
    low = msg.lower()
    if func.overloadpacket is aten.convolution and len(args) > 8:
        x, w, transposed, groups = args[0], args[1], args[6], args[8]
        expected = w.shape[0] if transposed else w.shape[1] * groups
        if x.dim() > 1 and x.shape[1] != expected:
            return CaptureError(f"wrong channel count: {where} expects {expected} input channels, got "
                                f"{x.shape[1]} (tensor shape {tuple(x.shape)})")
    if any(pattern in low for pattern in _TOO_SMALL):
        return InputTooSmallError(f"input too small: {where}: {msg}")
    if _looks_meta(exc, msg):
        return MetaDeviceError(
            f"{where} cannot run on the meta device ({msg}). The model's forward needs real data "
            "(e.g. .item(), nonzero, tensors created on another device); capture on a real input instead: "
            "device='cpu' in the API, --device cpu on the command line.")
    return CaptureError(f"{where} failed: {msg}")


# ---------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------
def configured_input(model: torch.nn.Module) -> tuple[int, ...] | None:
    """``(channels, *spatial)`` the model declares: an ONNX model's static input shape
    (:class:`rflens.capture_onnx.OnnxModel`), timm's ``pretrained_cfg``; None when it declares none."""
    declared = getattr(model, "declared_input", None)
    if declared is not None:
        return tuple(declared) if all(isinstance(n, int) for n in declared) else None
    cfg = getattr(model, "pretrained_cfg", None)
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if isinstance(size, (tuple, list)) and len(size) >= 2 and all(isinstance(n, int) for n in size):
        return tuple(size)
    return None


def input_layout(model: torch.nn.Module) -> tuple[int, int] | None:
    """(spatial dims, input channels) the model expects: from what it declares (an ONNX input, timm's
    ``pretrained_cfg``) when it does, else from the first convolution, else None."""
    declared = getattr(model, "declared_input", None)
    if declared is not None and isinstance(declared[0], int):
        return len(declared) - 1, declared[0]
    size = configured_input(model)
    if size is not None:
        return len(size) - 1, size[0]
    for m in model.modules():
        if isinstance(m, torch.nn.modules.conv._ConvNd) and m.in_channels:
            return len(m.kernel_size), m.in_channels
    return None


def capture(model: torch.nn.Module, input_size: int | Sequence[int], *, in_channels: int | None = None,
            device: str | torch.device = "meta") -> Graph:
    """Trace ``model`` on an input of ``input_size`` (spatial sizes) and return its graph.

    ``device="meta"`` (default) spends no FLOPs; ``"cpu"``/``"cuda"`` run the real model once, for models whose
    forward needs real data.
    """
    layout = input_layout(model)
    if isinstance(input_size, int):
        if layout is None:
            raise CaptureError("cannot tell the input layout (no convolution found): give input_size as a tuple "
                               "of spatial sizes and in_channels")
        input_size = (input_size,) * layout[0]
    input_size = tuple(int(s) for s in input_size)
    if not input_size or any(s < 1 for s in input_size):
        raise CaptureError(f"input size must be positive spatial sizes, got {input_size}")
    if in_channels is None:
        if layout is None:
            raise CaptureError("cannot infer the input channels (no convolution found): pass in_channels")
        in_channels = layout[1]
    if layout is not None and layout[0] != len(input_size):
        raise CaptureError(f"the model's first convolution is {layout[0]}-D but the input size {input_size} "
                           f"has {len(input_size)} spatial dims")
    device = torch.device(device)
    if device.type != "meta":
        if device.type == "cuda" and not torch.cuda.is_available():
            raise CaptureError("device 'cuda' was asked for but PyTorch sees no CUDA device")
        elsewhere = {str(p.device) for p in model.parameters() if p.device.type != device.type}
        if elsewhere:
            raise CaptureError(f"capture on {device} runs the model there, but its parameters are on "
                               f"{sorted(elsewhere)}: move the model first (model.to('{device}'))")
    shape = (1, in_channels, *input_size)
    graph = Graph(shape)
    graph.add("input", "", (), (), input_size, shape)

    names = {}
    seen: set[int] = set()  # tied parameters count once
    for name, m in model.named_modules():
        name = getattr(m, "rflens_name", name)  # a module may name its own layer (an ONNX node)
        names.setdefault(id(m), name)
        graph.module_types.setdefault(name, type(m).__name__)
        own = [p for p in m.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        graph.module_params[name] = sum(p.numel() for p in own)
    rec = _Recorder(graph)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())
    x = (torch.empty(shape, device=device, dtype=dtype) if device.type == "meta"
         else torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device))
    rec.set(x, State(0, ((), D.other(in_channels), *(D.spatial(a, n) for a, n in enumerate(input_size)))))

    def pre_hook(module, inputs):
        rec.modules.append(names.get(id(module), rec.module))

    def post_hook(module, inputs, output):
        name = rec.modules.pop()
        if id(module) not in names:
            return
        for t in pytree.tree_leaves(output):
            st = rec.state(t)
            if st is not None and st.is_map():
                graph.module_outputs.pop(name, None)
                graph.module_outputs[name] = st.node
                break

    training = [(m, m.training) for m in model.modules()]
    handles = [torch.nn.modules.module.register_module_forward_pre_hook(pre_hook),
               torch.nn.modules.module.register_module_forward_hook(post_hook)]
    try:
        model.eval()
        with torch.no_grad():
            if device.type == "meta":
                tensors = {n: torch.empty_like(p, device="meta")
                           for n, p in [*model.named_parameters(), *model.named_buffers()]}
                with torch.device("meta"), _PythonLevel(rec), rec:
                    torch.func.functional_call(model, tensors, (x,), strict=False)
            else:
                with _PythonLevel(rec), rec:
                    model(x)
    except RflensError:
        raise
    except Exception as exc:  # noqa: BLE001 - the model's own Python failed: say where
        msg = _first_line(exc)
        kind = MetaDeviceError if device.type == "meta" and _looks_meta(exc, msg) else CaptureError
        hint = (" (the forward needs real data: capture on a real input with device='cpu' / --device cpu)"
                if kind is MetaDeviceError else "")
        raise kind(f"model forward failed on input shape {shape} in module '{rec.module}': {msg}{hint}") from exc
    finally:
        for h in handles:
            h.remove()
        for m, flag in training:
            m.training = flag
    if len(graph.nodes) == 1 and not graph.module_outputs:
        raise CaptureError("the model's output does not depend on its input")
    mark_same_padding(graph)
    return graph

"""Changes to a model that return a new ``nn.Module``; the user's model is never modified.

A change is written as a recipe (plain JSON: ``{"rflens_recipe": 1, "edits": [...]}``) and :func:`apply_recipe`
rebuilds it on the original model. An edit sets a stride, kernel or padding attribute of a convolution or
pooling module, or moves a module inside its ``nn.Sequential`` (refinements, :mod:`rflens.refinement`); a
convolution whose kernel changes that way gets a new, freshly initialised weight (the refined model is to be
trained). A kernel-padding edit (``"kernel_offset"``, :func:`kernel_pad`) instead embeds the old weight in the
larger kernel with zeros around it, so the convolution computes the same function. Layouts that live in a
module's ``forward`` code (a stride hard-coded in a functional call) cannot be changed by attribute:
:class:`RefineError` says so and names the module.
"""

from __future__ import annotations

import copy
import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.utils import _reverse_repeat_tuple

from rflens.errors import RefineError, RflensError
from rflens.geometry import Pad, Window

_ATTRIBUTES = ("stride", "kernel_size", "padding")


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise RefineError(f"the model has no module named '{name}'") from None


def _check(model: nn.Module, edit: Mapping[str, Any]) -> None:
    name = edit["module"]
    module = _module(model, name)
    if "move_before" in edit:
        parent_name, _, child = name.rpartition(".")
        parent = _module(model, parent_name) if parent_name else model
        if not isinstance(parent, nn.Sequential):
            raise RefineError(f"cannot move '{name}': its parent ({type(parent).__name__}) is not an nn.Sequential, "
                              "so the order of its layers is fixed in forward code; move it by hand")
        before = edit["move_before"]
        if before is not None and (before.rpartition(".")[0] != parent_name or before == name
                                   or before.rpartition(".")[2] not in parent._modules):
            raise RefineError(f"cannot move '{name}' before '{before}': that is not another layer of the same "
                              "nn.Sequential")
        return
    for key in _ATTRIBUTES:
        if key in edit and not hasattr(module, key):
            raise RefineError(f"module '{name}' ({type(module).__name__}) has no '{key}' attribute: its geometry is "
                              "set in its forward code; change it by hand")
    if "stride" in edit and max(edit["stride"]) > 1 and getattr(module, "padding", None) == "same":
        raise RefineError(f"module '{name}' uses padding='same', which PyTorch allows only at stride 1: give it "
                          "explicit padding by hand first")
    if "padding_mode" in edit:
        why = padding_mode_refusal(module)
        if why is not None:
            raise RefineError(f"cannot change the padding mode of '{name}': {why}")
        if edit["padding_mode"] not in PADDING_MODES:
            raise RefineError(f"padding mode must be one of {', '.join(PADDING_MODES)}, got {edit['padding_mode']!r}")
        return
    if "kernel_offset" in edit:
        if type(module) not in _PADDABLE:
            raise RefineError(f"module '{name}' ({type(module).__name__}) is not a plain PyTorch convolution or "
                              "pooling: rflens pads the kernels of nn.ConvNd, nn.MaxPoolNd and nn.AvgPoolNd only")
        return
    if "kernel_size" in edit and not isinstance(module, nn.modules.conv._ConvNd):
        raise RefineError(f"module '{name}' ({type(module).__name__}) is not a convolution: rflens changes kernel "
                          "sizes of convolutions only")


def applicable(model: nn.Module, edits: Sequence[Mapping[str, Any]]) -> str | None:
    """Why ``edits`` cannot be applied to ``model``, or None if they can."""
    from rflens.capture_onnx import is_onnx

    if is_onnx(model):
        return "rflens reads an ONNX graph without changing it: make the change in the source model"
    try:
        for edit in edits:
            _check(model, edit)
    except RefineError as exc:
        return str(exc)
    return None


def apply_recipe(model: nn.Module, recipe: Mapping[str, Any], weights: str | os.PathLike | None = None
                 ) -> nn.Module:
    """A copy of ``model`` with the recipe's edits applied: a refinement (``rflens border --apply``,
    :meth:`rflens.refinement.Suggestion.recipe`) or a fix (``rflens fix kernel-pad``, :func:`kernel_pad`).
    ``weights``: a state-dict file of the changed model (the ``.safetensors`` written next to a fix) to load
    into it, strictly and without running code. A recipe that changes only the input size returns an
    unchanged copy: feed it ``recipe["input_size"]``."""
    from rflens.capture_onnx import require_pytorch

    require_pytorch(model, "changing layers (a recipe)")
    edits = recipe.get("edits")
    if edits is None:
        raise RefineError("not an rflens recipe: it has no 'edits'")
    out = copy.deepcopy(model)
    for edit in edits:
        _check(out, edit)
        if "move_before" in edit:
            _move(out, edit["module"], edit["move_before"])
        elif "padding_mode" in edit:
            _module(out, edit["module"]).padding_mode = edit["padding_mode"]
        elif "kernel_offset" in edit:
            _pad_kernel(out, edit)
        elif "kernel_size" in edit:
            _replace_conv(out, edit)
        else:
            module = _module(out, edit["module"])
            for key in _ATTRIBUTES:
                if key in edit:
                    setattr(module, key, _like(getattr(module, key), edit[key]))
    if weights is not None:
        from rflens.sources import load_weights

        load_weights(out, weights)
    return out


refine = apply_recipe  # the name issue 3 gave it: a refinement is one kind of recipe


def _like(old: Any, new: Sequence[int]) -> Any:
    """The new value in the form of the old one (an int stays an int when all axes agree)."""
    if isinstance(old, int) and len(set(new)) == 1:
        return int(new[0])
    return tuple(int(v) for v in new)


def _move(model: nn.Module, name: str, before: str | None) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = _module(model, parent_name) if parent_name else model
    items = [(k, m) for k, m in parent._modules.items() if k != child]
    at = len(items) if before is None else next(i for i, (k, _) in enumerate(items)
                                                if k == before.rpartition(".")[2])
    items.insert(at, (child, parent._modules[child]))
    parent._modules = OrderedDict(items)


def _replace_conv(model: nn.Module, edit: Mapping[str, Any]) -> None:
    """The convolution with a new kernel (and stride, padding): a copy of the module, so subclasses (timm's
    ``Conv2dSame``) keep their forward, with a freshly initialised weight of the new shape."""
    name = edit["module"]
    new = copy.deepcopy(_module(model, name))
    new.kernel_size = tuple(int(k) for k in edit["kernel_size"])
    for key in ("stride", "padding"):
        if key in edit:
            setattr(new, key, tuple(int(v) for v in edit[key]))
    if not isinstance(new.padding, str):
        new._reversed_padding_repeated_twice = _reverse_repeat_tuple(new.padding, 2)
    w = new.weight
    new.weight = nn.Parameter(torch.empty((*w.shape[:2], *new.kernel_size), device=w.device, dtype=w.dtype))
    with torch.no_grad():
        new.reset_parameters()
    parent_name, _, child = name.rpartition(".")
    parent = _module(model, parent_name) if parent_name else model
    setattr(parent, child, new)


def load_recipe(path: str) -> dict[str, Any]:
    """A recipe written by ``rflens border --apply N --out FILE`` (plain JSON, no code)."""
    import json

    try:
        with open(path) as f:
            recipe = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise RefineError(f"cannot read the recipe {path}: {exc}") from None
    if not isinstance(recipe, dict) or recipe.get("rflens_recipe") != 1:
        raise RefineError(f"{path} is not an rflens recipe (no \"rflens_recipe\": 1)")
    return recipe


# -- kernel padding (Kim et al., "Dead pixel test using effective receptive field", PRL 2023) ---------------
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_PADDABLE = _CONVS + _POOLS
KEPT_POOL = "a wider pooling window would change the function (pools='widen' widens it anyway)"


def _per_axis(value: Any, ndim: int) -> tuple[int, ...]:
    if isinstance(value, str):  # 'valid' (a culprit has stride > 1, so never 'same')
        return (0,) * ndim
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * ndim


def _pad_kernel(model: nn.Module, edit: Mapping[str, Any]) -> None:
    """Grow the kernel to ``kernel_size`` with the old taps starting at ``kernel_offset`` per axis and zeros
    elsewhere; ``padding`` grows with the offset, so every old tap still reads the same input position."""
    module = _module(model, edit["module"])
    kernel, offset = tuple(int(k) for k in edit["kernel_size"]), tuple(int(o) for o in edit["kernel_offset"])
    if isinstance(module, _CONVS):
        old = module.weight
        if any(o < 0 or o + k > new for o, k, new in zip(offset, old.shape[2:], kernel, strict=True)):
            raise RefineError(f"module '{edit['module']}': kernel {tuple(old.shape[2:])} does not fit in {kernel} "
                              f"at offset {offset}")
        weight = torch.zeros((*old.shape[:2], *kernel), dtype=old.dtype, device=old.device)
        with torch.no_grad():
            weight[(..., *(slice(o, o + k) for o, k in zip(offset, old.shape[2:], strict=True)))] = old
        module.weight = nn.Parameter(weight, requires_grad=old.requires_grad)
        module.kernel_size = kernel
        module.padding = tuple(int(p) for p in edit["padding"])
        module._reversed_padding_repeated_twice = _reverse_repeat_tuple(module.padding, 2)
    else:
        module.kernel_size = _like(module.kernel_size, kernel)
        module.padding = _like(module.padding, edit["padding"])


@dataclass
class KernelPadding:
    """The kernel-padded model, its recipe, what changed and what could not be changed.

    ``changes``: one entry per module: kernel and padding before/after, the zeros placed before the old taps
    (``kernel_offset``; 0 = Kim et al.'s bottom/right padding), and ``exact`` (a convolution with zero taps
    computes the same function **at the recipe's input size**; a widened pooling does not). At another input
    size an output size may differ (the zeros were placed for the leftover of this size): fix the model at
    the size it runs at. ``max_abs_output_change``: the largest change of
    the model's output on seeded random inputs at the input size (0 up to float rounding when every change is
    exact)."""

    model: nn.Module = field(repr=False)
    recipe: dict[str, Any]
    changes: list[dict[str, Any]]
    refused: list[tuple[str, str]]  # (module, why) of culprit layers left as they were
    max_abs_output_change: float
    output_scale: float  # the largest |output| of the original model on the same inputs

    @property
    def exact(self) -> bool:
        return all(c["exact"] for c in self.changes)

    def to_dict(self) -> dict[str, Any]:
        return {"changes": self.changes, "refused": [{"name": n, "why": w} for n, w in self.refused],
                "exact": self.exact, "max_abs_output_change": self.max_abs_output_change,
                "output_scale": self.output_scale}


def kernel_padding_edits(model: nn.Module, graph: Any, culprits: Sequence[Any], pools: str = "widen"
                         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[str, str]]]:
    """Recipe edits that pad every culprit's kernel (:func:`rflens.deadpixel.culprits`) to the next multiple of
    its stride, with zeros at the bottom/right where that keeps every output size at the graph's input size,
    else with zeros first and the padding grown to match (so the old taps read the same pixels). Returns
    (edits, change descriptions, refused (module, why)). ``pools="keep"`` leaves poolings alone."""
    if pools not in ("widen", "keep"):
        raise RflensError(f"pools must be 'widen' or 'keep', got {pools!r}")
    edits: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    refused: list[tuple[str, str]] = []
    for culprit in culprits:
        try:
            edit, change = _culprit_edit(model, graph, culprit, pools)
        except RefineError as exc:
            refused.append((culprit.name, str(exc)))
            continue
        edits.append(edit)
        changes.append(change)
    return edits, changes, refused


def _culprit_edit(model: nn.Module, graph: Any, culprit: Any, pools: str) -> tuple[dict[str, Any], dict[str, Any]]:
    name = culprit.name
    if culprit.transposed:
        raise RefineError("a transposed convolution: its checkerboard is in its output; padding its kernel would "
                          "change the output size (use resize-then-convolve, Odena et al. 2016)")
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if type(module) not in _PADDABLE:
        what = "the top level" if name == "" else f"{type(module).__name__}" if module is not None else "no module"
        raise RefineError(f"the strided window runs in the forward code of {what}, not in a plain nn.ConvNd / "
                          "nn.MaxPoolNd / nn.AvgPoolNd whose kernel rflens can grow: pad it by hand")
    if module._forward_pre_hooks or module._forward_hooks or hasattr(module, "parametrizations"):
        raise RefineError("it has forward hooks or parametrizations (weight_norm, spectral_norm...) that compute its "
                          "weight: remove them, pad, and put them back by hand")
    if getattr(module, "padding_mode", "zeros") != "zeros":
        raise RefineError(f"padding_mode {module.padding_mode!r}: rflens pads the kernels of zero-padded "
                          "convolutions only")
    is_pool = isinstance(module, _POOLS)
    if is_pool and pools == "keep":
        raise RefineError(KEPT_POOL)
    ndim = graph.ndim
    kernel, stride = _per_axis(module.kernel_size, ndim), _per_axis(module.stride or module.kernel_size, ndim)
    padding, dilation = _per_axis(module.padding, ndim), _per_axis(getattr(module, "dilation", 1), ndim)
    ceil = bool(getattr(module, "ceil_mode", False))
    for node_id in culprit.nodes:
        node = graph.nodes[node_id]
        declared = tuple(Window(k, s, p, p, d, ceil) for k, s, p, d in zip(kernel, stride, padding, dilation,
                                                                             strict=True))
        if tuple(node.reads[0]) != declared:
            raise RefineError("its forward does not use its kernel_size/stride/padding attributes as declared")
    uneven = tuple(len(set(c)) > 1 for c in culprit.counts)
    grow = tuple((-k) % s if u else 0 for u, k, s in zip(uneven, kernel, stride, strict=True))
    for d, s, u in zip(dilation, stride, uneven, strict=True):
        if u and math.gcd(d, s) > 1:
            raise RefineError(f"dilation {d} and stride {s} share a factor: some positions are never read whatever "
                              "the kernel size, so padding the kernel cannot even out the coverage")
    offsets = []
    for axis in range(ndim):
        sizes = [(graph.nodes[graph.nodes[i].inputs[0]].sizes[axis], graph.nodes[i].sizes[axis])
                 for i in culprit.nodes]
        k, s, p, d, g = kernel[axis], stride[axis], padding[axis], dilation[axis], grow[axis]
        fits = [o for o in range(g + 1)
                if all(Window(k + g, s, p + o * d, p + o * d, d, ceil).output_size(n) == out for n, out in sizes)
                and (not is_pool or p + o * d <= (k + g) // 2)]
        if not fits:
            raise RefineError(f"no placement of the {g} extra zero tap(s) keeps its output size on axis {axis} at "
                              f"input size(s) {[n for n, _ in sizes]}: pick another input size")
        offsets.append(fits[0])
    new_kernel = tuple(k + g for k, g in zip(kernel, grow, strict=True))
    new_padding = tuple(p + o * d for p, o, d in zip(padding, offsets, dilation, strict=True))
    edit = {"module": name, "kernel_size": list(new_kernel), "padding": list(new_padding),
            "kernel_offset": offsets}
    change = {"module": name, "type": type(module).__name__, "kernel": [list(kernel), list(new_kernel)],
              "padding": [list(padding), list(new_padding)], "kernel_offset": offsets, "exact": not is_pool,
              "note": ("zeros at the bottom/right" if not any(offsets) else "zeros first, padding grown to match")
              if not is_pool else "wider window: the function changes (fine-tune the model)"}
    return edit, change


def kernel_pad(model: nn.Module, input_size: int | Sequence[int], *, in_channels: int | None = None,
               pools: str = "auto", device: str = "cpu", layer: str = "output", model_name: str | None = None,
               check_images: int = 1) -> KernelPadding:
    """Kernel padding (Kim et al., PRL 2023): every convolution whose kernel is not a multiple of its stride
    gets zero taps up to the next multiple (7->8, 3->4, 1->2 at stride 2), which keeps its function. A pooling
    cannot do that: ``pools="widen"`` gives it the wider window (Kim et al.'s 4x4 max-pool, which changes the
    function), ``"keep"`` leaves it, and ``"auto"`` (default) keeps poolings unless the structural map still has a
    checkerboard without widening them (in ResNets the padded 8x8 stem already evens out the 3x3 max-pool).
    Only layers that feed ``layer`` are changed. Output sizes at ``input_size`` are kept (see
    :func:`kernel_padding_edits`).

    The change verifies itself: the padded model is traced again (same output shapes everywhere, no culprit
    left among the changed layers) and run next to the original on ``check_images`` seeded random inputs; when
    every change is exact (no widened pooling) the outputs must agree to float rounding, else it raises."""
    from rflens.capture_onnx import require_pytorch

    require_pytorch(model, "kernel padding")
    from rflens.capture import capture as trace
    from rflens.capture import input_layout
    from rflens.deadpixel import culprits as find_culprits
    from rflens.deadpixel import structural_test
    from rflens.erf import _tracer  # meta capture, or the run device for models whose forward needs real data

    if pools not in ("auto", "widen", "keep"):
        raise RflensError(f"pools must be 'auto', 'widen' or 'keep', got {pools!r}")
    channels = in_channels if in_channels is not None else (input_layout(model) or (None, None))[1]
    if channels is None:
        trace(model, input_size)  # raises its clear error: the input channels cannot be told

    def capture(net: nn.Module) -> Any:
        """``net`` at the input size (the fixed model has the original's input layout)."""
        return _tracer(net, channels, torch.device(device))(input_size)

    graph = capture(model)
    found = find_culprits(graph, layer)
    edits, changes, refused = kernel_padding_edits(model, graph, found, "widen" if pools == "widen" else "keep")
    if pools == "auto":  # the exact fix first; widen poolings only if a checkerboard survives it
        pools = "keep"
        if any(why == KEPT_POOL for _, why in refused):
            trial = capture(apply_recipe(model, {"edits": edits}))
            if structural_test(trial, layer).indices.checkerboard:
                pools = "widen"
                edits, changes, refused = kernel_padding_edits(model, graph, found, pools)
    recipe = {"rflens_recipe": 1, "fix": "kernel-pad", "model": model_name or type(model).__name__,
              "input_size": list(graph.input_size), "pools": pools, "edits": edits}
    fixed = apply_recipe(model, recipe)
    after = capture(fixed)
    before_shapes = {m: graph.nodes[i].shape for m, i in graph.module_outputs.items()}
    after_shapes = {m: after.nodes[i].shape for m, i in after.module_outputs.items()}
    if before_shapes != after_shapes:
        moved = [m for m in before_shapes if after_shapes.get(m) != before_shapes[m]]
        raise RflensError(f"kernel padding changed the output shape of {moved[:3]}: please report this as a bug")
    left = {c.name for c in find_culprits(after, layer)} & {e["module"] for e in edits}
    if left:
        raise RflensError(f"kernel padding left an uneven coverage in {sorted(left)}: please report this as a bug")
    change, scale = _output_change(model, fixed, graph.input_shape, device, check_images)
    result = KernelPadding(fixed, recipe, changes, refused, change, scale)
    if result.exact and change > 1e-9 * scale + 1e-12:
        raise RflensError(f"kernel padding changed the output by {change:.3g} (output scale {scale:.3g}) although "
                          "every change adds zero taps only: please report this as a bug")
    return result


def _output_change(model: nn.Module, fixed: nn.Module, input_shape: Sequence[int], device: str, images: int
                   ) -> tuple[float, float]:
    """max |fixed(x) - model(x)| and max |model(x)| over every floating-point output, on seeded inputs, in
    float64 on copies (zero taps change float32 sums by rounding only; float64 makes that 1e-15)."""
    from torch.utils import _pytree

    if any(p.is_meta for p in model.parameters()):
        raise RflensError("the model's parameters are on the meta device: build it with real weights to check the "
                          "kernel-padded model against it")
    x = torch.randn((images, *input_shape[1:]), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    outs = []
    with torch.no_grad():
        for net in (model, fixed):
            param = next(net.parameters(), None)
            dev = param.device if param is not None else torch.device(device)
            copy64 = copy.deepcopy(net).to(dev, torch.float64).eval()
            outs.append([t.detach().to("cpu", torch.float64) for t in _pytree.tree_leaves(copy64(x.to(dev)))
                         if isinstance(t, torch.Tensor) and t.is_floating_point()])
            del copy64
    diff = max((float((a - b).abs().max()) for a, b in zip(*outs, strict=True)), default=0.0)
    scale = max((float(a.abs().max()) for a in outs[0]), default=0.0)
    return diff, scale


# -- padding mode (Alsallakh et al., "Mind the Pad", ICLR 2021) ---------------------------------------------
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_STOCK_FORWARDS = {nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward}


def padding_mode_refusal(module: nn.Module) -> str | None:
    """Why setting ``module.padding_mode`` would not change how it pads, or None when it would."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "a transposed convolution: PyTorch supports zero padding only there"
    if not isinstance(module, _CONVS):
        return f"the convolution runs in the forward code of a {type(module).__name__}, not in an nn.ConvNd"
    if type(module).forward not in _STOCK_FORWARDS:
        return (f"{type(module).__name__} pads in its own forward code (e.g. TF-\"same\" zeros), so its "
                "padding_mode attribute is not used")
    return None


@dataclass
class PaddingModeFix:
    """Convolutions given another padding mode (``rflens fix padding-mode``): the new model, its recipe, what
    changed, what was left (module, why), and the padding audit of the fixed model (``after``)."""

    model: nn.Module
    recipe: dict[str, Any]
    changes: list[dict[str, Any]]
    skipped: list[tuple[str, str]]
    after: Any = None  # rflens.padding.PaddingReport of the fixed model

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "changes": self.changes,
                "skipped": [{"module": m, "why": why} for m, why in self.skipped]}


def padding_mode_edits(model: nn.Module, graph: Any, mode: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                                          list[tuple[str, str]]]:
    """Edits giving every padded convolution of ``graph`` (captured from ``model``) the padding ``mode``;
    also the changes in words and the layers that cannot take it, with the reason."""
    from rflens.capture_onnx import is_onnx
    from rflens.padding import audit

    if mode not in PADDING_MODES:
        raise RflensError(f"padding mode must be one of {', '.join(PADDING_MODES)}, got {mode!r}")
    edits, changes, skipped = [], [], []
    calls: dict[str, list[Any]] = {}  # module -> its convolutions' audit rows, every call
    for row in audit(graph, trace_back=False):
        if row.op == "convolution":
            calls.setdefault(row.name, []).append(row)
    read_only = is_onnx(model)
    for name, rows in calls.items():
        if not any(r.pads != (0, 0) for r in rows):
            continue
        if read_only:
            skipped.append((name, "an ONNX node: change its padding in the source model"))
            continue
        module = _module(model, name) if name else model
        why = padding_mode_refusal(module)
        pads_itself = module.padding == "same" or any(_per_axis(module.padding, len(module.kernel_size))) \
            if why is None else True
        if not pads_itself:
            why = "its padding is done by another module or in forward code (the convolution itself pads nothing)"
        if why is None:
            too_big = next((r for r in rows if not Pad(*r.pads, mode).fits(r.size)), None)
            if too_big is not None:
                why = f"{mode} padding of {too_big.pads} does not fit a map of {too_big.size} units (PyTorch refuses)"
        if why is not None:
            skipped.append((name, why))
            continue
        if module.padding_mode == mode:
            continue
        edits.append({"module": name, "padding_mode": mode})
        changes.append({"module": name, "type": type(module).__name__,
                        "padding": [list(r.pads) for r in rows[:graph.ndim]], "mode": [module.padding_mode, mode]})
    return edits, changes, skipped


def padding_mode_fix(model: nn.Module, mode: str, input_size: int | Sequence[int], *, in_channels: int | None = None,
                     device: str = "meta", model_name: str | None = None, audit_after: bool = True,
                     **report_options: Any) -> PaddingModeFix:
    """A copy of ``model`` whose padded convolutions pad in ``mode`` (reflect, replicate, circular or zeros),
    as Alsallakh et al. suggest against the foveation of zero padding. It changes the function (fine-tune the
    model). It checks itself: the fixed model is traced again, every changed convolution must read a padding of
    ``mode`` and every output shape must be the same; with ``audit_after`` the fixed model's padding report
    (``report_options`` go to :func:`rflens.padding.padding_report`) is attached as ``after``."""
    from rflens.capture_onnx import require_pytorch

    require_pytorch(model, "changing the padding mode")
    from rflens.capture import capture
    from rflens.padding import audit, padding_report

    graph = capture(model, input_size, in_channels=in_channels, device=device)
    edits, changes, skipped = padding_mode_edits(model, graph, mode)
    recipe = {"rflens_recipe": 1, "fix": "padding-mode", "mode": mode, "model": model_name or type(model).__name__,
              "input_size": list(graph.input_size), "edits": edits}
    fixed = apply_recipe(model, recipe)
    after = capture(fixed, graph.input_size, in_channels=graph.input_shape[1], device=device)
    shapes = ({m: graph.nodes[i].shape for m, i in graph.module_outputs.items()},
              {m: after.nodes[i].shape for m, i in after.module_outputs.items()})
    if shapes[0] != shapes[1]:
        raise RflensError("changing the padding mode changed an output shape: please report this as a bug")
    changed = {e["module"] for e in edits}
    wrong = sorted({r.name for r in audit(after, trace_back=False)
                    if r.name in changed and r.pads != (0, 0) and r.mode != mode})
    if wrong:
        raise RflensError(f"the padding mode of {wrong[:3]} did not change in the traced model: please report this "
                          "as a bug")
    result = PaddingModeFix(fixed, recipe, changes, skipped)
    if audit_after:
        result.after = padding_report(fixed, graph.input_size, in_channels=graph.input_shape[1], device=device,
                                      model_name=f"{recipe['model']} ({mode} padding)", **report_options)
    return result


__all__ = ["KernelPadding", "PaddingModeFix", "apply_recipe", "applicable", "kernel_pad", "kernel_padding_edits",
           "load_recipe", "padding_mode_edits", "padding_mode_fix", "refine"]

"""Fold eval-mode batch normalisation into the convolution before it, for the ERF engine.

In eval mode a BatchNorm is a per-channel affine map, ``y = a * x + b``, so ``bn(conv(x))`` is one convolution
with weights scaled by ``a`` and bias ``a * bias + b``: the same function, computed without a pass over every
feature map in the forward and another in the backward (about a fifth of a ResNet's input-gradient time on a
CPU). The result differs from the unfolded network only by floating-point rounding.

Pairs are found with ``torch.fx`` on an eval-mode copy of the model (so branches on ``self.training`` take their
eval path, and whatever the forward caches stays on the copy), and changed on that copy.
A pair is folded only when the convolution's output feeds nothing but the BatchNorm, both are sibling modules
called once, the BatchNorm uses running statistics, and the convolution is not the probed layer (its own
output would change). A model fx cannot trace is used as it is, and the reason is returned.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_batchnorm(model: nn.Module, keep: str | None = None,
                   dtype: torch.dtype | None = None) -> tuple[nn.Module, int, str]:
    """``(model or a folded copy, pairs folded, what was done)``; ``keep`` is a module whose output must not
    change (the probed layer); ``dtype``: that of the folded weights (default: the convolution's), so that a
    float64 run of a float32 model folds in float64."""
    # the copy shares the parameter tensors (folding assigns new ones, never writes into them): cheap
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    try:
        folded = copy.deepcopy(model, shared).eval()  # traced in eval mode: self.training branches as in eval
    except Exception as exc:  # noqa: BLE001 - a model that cannot be copied is simply not folded
        return model, 0, f"batch norm not folded: the model cannot be copied ({exc})"
    pairs = _pairs(folded, keep)  # fx runs the copy's forward: whatever it caches stays on the copy
    if isinstance(pairs, str):
        return model, 0, f"batch norm not folded: {pairs}"
    if not pairs:
        return model, 0, "no batch norm to fold"
    modules = dict(folded.named_modules())
    for conv_name, bn_name in pairs:
        _fold(modules[conv_name], modules[bn_name], dtype)
        parent, _, child = bn_name.rpartition(".")
        setattr(modules[parent], child, nn.Identity())
    return folded, len(pairs), f"batch norm folded into {len(pairs)} convolutions"


def _pairs(model: nn.Module, keep: str | None) -> list[tuple[str, str]] | str:
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - fx fails on data-dependent Python: then nothing is folded
        text = str(exc).strip().splitlines()
        return f"torch.fx cannot trace the model ({text[0] if text else type(exc).__name__})"
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, _NORMS) or bn.running_mean is None or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        conv = modules.get(src.target)
        if (not isinstance(conv, _CONVS) or src.target == keep or calls[src.target] != 1 or calls[node.target] != 1
                or src.target.rpartition(".")[0] != node.target.rpartition(".")[0]):
            continue
        pairs.append((src.target, node.target))
    return pairs


@torch.no_grad()
def _fold(conv: nn.Conv1d | nn.Conv2d | nn.Conv3d, bn: nn.modules.batchnorm._BatchNorm,
          dtype: torch.dtype | None) -> None:
    """``conv`` becomes ``bn(conv(.))`` in eval mode: per-channel scale and shift computed in float64, the
    weights scaled in ``dtype`` (one rounding per weight), stored as new parameters (the old ones untouched)."""
    scale = 1 / torch.sqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale + (bn.bias.double() if bn.bias is not None else 0)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    dtype = dtype if dtype is not None else conv.weight.dtype
    weight = conv.weight.to(dtype) * scale.to(dtype).view(-1, *[1] * (conv.weight.dim() - 1))
    conv.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter((bias * scale + shift).to(dtype), requires_grad=conv.weight.requires_grad)

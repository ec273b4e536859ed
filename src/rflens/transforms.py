"""Changes to a model that return a new ``nn.Module``; the user's model is never modified.

:func:`refine` applies a refinement recipe (:mod:`rflens.refinement`): a stride, kernel or padding attribute
of a convolution or pooling module, or the position of a module inside its ``nn.Sequential``. A convolution
whose kernel changes gets a new, freshly initialised weight (the refined model is to be trained). Layouts that
live in a module's ``forward`` code (a stride hard-coded in a functional call) cannot be changed by attribute:
:class:`RefineError` says so and names the module.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.utils import _reverse_repeat_tuple

from rflens.errors import RefineError

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
    if "kernel_size" in edit and not isinstance(module, nn.modules.conv._ConvNd):
        raise RefineError(f"module '{name}' ({type(module).__name__}) is not a convolution: rflens changes kernel "
                          "sizes of convolutions only")


def applicable(model: nn.Module, edits: Sequence[Mapping[str, Any]]) -> str | None:
    """Why ``edits`` cannot be applied to ``model``, or None if they can."""
    try:
        for edit in edits:
            _check(model, edit)
    except RefineError as exc:
        return str(exc)
    return None


def refine(model: nn.Module, recipe: Mapping[str, Any]) -> nn.Module:
    """A copy of ``model`` with the recipe's edits applied (a recipe from ``rflens border --apply`` or
    :meth:`rflens.refinement.Suggestion.recipe`). A recipe that changes only the input size returns an
    unchanged copy: feed it ``recipe["input_size"]``."""
    edits = recipe.get("edits")
    if edits is None:
        raise RefineError("not a refinement recipe: it has no 'edits'")
    out = copy.deepcopy(model)
    for edit in edits:
        _check(out, edit)
        if "move_before" in edit:
            _move(out, edit["module"], edit["move_before"])
        elif "kernel_size" in edit:
            _replace_conv(out, edit)
        else:
            module = _module(out, edit["module"])
            for key in _ATTRIBUTES:
                if key in edit:
                    setattr(module, key, _like(getattr(module, key), edit[key]))
    return out


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


__all__ = ["applicable", "load_recipe", "refine"]

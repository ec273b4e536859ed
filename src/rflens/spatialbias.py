"""Spatial bias of a CNN's activations (Alsallakh et al., "Mind the Pad: CNNs Can Develop Blind Spots", ICLR
2021): where in the input a network looks more, less, or not at all, measured on the running network.

* :func:`mean_activation`: the feature maps of chosen layers averaged over channels and images, one value per
  location of the layer's output. Zero padding, uneven padding (an even input under a stride-2 layer pads one
  side only) and the learnt filters leave their trace as a map that is not flat, or not mirror-symmetric.
* :func:`blind_spot_probe`: a small square stimulus on a constant background, swept over the input; each
  input pixel gets the mean response of the placements that cover it. Mind the Pad shows with it that small
  objects near some borders are missed.

Both return a :class:`SpatialMap` whose ``stats`` are :func:`rflens.mapstats.map_stats` (asymmetry per axis,
side ratio, border ratio, min/max ratio, worst region, never-read pixels).

Read the maps with the weights in mind: with randomly initialised weights they show the architecture's padding
and stride arithmetic plus noise from one random draw, not what a trained network learnt to ignore. The paper's
blind spots appear in trained weights; load them before drawing conclusions.

Conventions: a layer is a module name of ``model.named_modules()`` or ``"output"`` (the model's output); its
output is its first floating-point tensor (the first of a tuple or dict), read as ``(batch, channels,
*spatial)`` with as many spatial axes as the input. A channels-last tensor (inside torchvision's ConvNeXt
blocks, between their ``Permute`` modules) cannot be told from that layout by its shape alone: probe the block
or a convolution instead. The model runs in eval mode without gradients on detached copies of its parameters;
its training flags are restored and nothing of it changes.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rflens.errors import RflensError, unknown_layer
from rflens.mapstats import MapStats, json_float, map_stats

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class ProbeSettings:
    """How a blind-spot probe swept its stimulus (for reports)."""

    stimulus: int  # side of the square stimulus, in input pixels
    stride: int  # step between placements (the last placement of an axis always touches its far border)
    value: float
    background: float
    target: str | int  # "norm" or a channel / logit index
    placements: int

    def to_dict(self) -> dict[str, Any]:
        return {"stimulus": self.stimulus, "stride": self.stride, "value": float(self.value),
                "background": float(self.background), "target": self.target, "placements": self.placements}


@dataclass
class SpatialMap:
    """One spatial-bias map (numpy float64) and its evenness numbers.

    ``kind`` "mean_activation": the map has the layer's spatial shape, ``images`` says over how many images it
    was averaged. ``kind`` "probe": the map has the input's spatial shape, ``probe`` says how it was swept.
    The stats assume a non-negative map; a signed mean activation (``absolute=False``) can make the asymmetry
    and ratios hard to read."""

    map: np.ndarray = field(repr=False)
    layer: str
    kind: str  # "mean_activation" or "probe"
    input_size: tuple[int, ...]
    stats: MapStats
    images: int | None = None
    inputs: str = ""  # what the images were
    absolute: bool = False
    probe: ProbeSettings | None = None
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Summary numbers only (no arrays), JSON-safe: plain Python numbers, non-finite values as None."""
        m = self.map
        out = {"kind": self.kind, "model": self.model, "layer": self.layer, "input_size": list(self.input_size),
               "map_shape": list(m.shape), "images": self.images, "inputs": self.inputs,
               "absolute": self.absolute, "probe": self.probe.to_dict() if self.probe is not None else None,
               "mean": json_float(m.mean()), "min": json_float(m.min()), "max": json_float(m.max()),
               "stats": self.stats.to_dict()}
        return out

    def plot(self, path: str | os.PathLike | None = None) -> Any:
        """The map as a picture (heatmap for 2-D, curve for 1-D, middle slice for 3-D) with the worst region
        marked. Returns the matplotlib figure; saved to ``path`` when given."""
        from rflens.report.spatialbias import spatialbias_figure

        fig = spatialbias_figure([self])
        if path is not None:
            fig.savefig(path, dpi=120, bbox_inches="tight")
        return fig


# -- mean activation ---------------------------------------------------------------------------------------
def mean_activation(model: torch.nn.Module, layers: Sequence[str] | str = "output", *, inputs: Any = None,
                    n: int | None = 16, input_size: int | Sequence[int] | None = None,
                    in_channels: int | None = None, device: str = "cpu", batch_size: int | None = None,
                    seed: int = 0, absolute: bool = False, progress: Progress | None = None
                    ) -> dict[str, SpatialMap]:
    """Per layer, the activation at each spatial location of its output averaged over channels and images
    (Mind the Pad's picture of spatial bias); ``absolute``: average ``|activation|``, since signed activations
    of different channels can cancel.

    ``inputs``: None for ``n`` seeded Gaussian noise images, a folder of pictures, or a tensor / iterable of
    tensors (at most ``n`` images are used from any source, as in :func:`rflens.erf.erf`). ``progress(done,
    total)`` is called after every batch. Returns ``{layer: SpatialMap}`` in the order asked."""
    from rflens.capture_onnx import require_pytorch

    require_pytorch(model, "the mean activation maps (spatial bias)")
    from rflens.erf import _device, _source, default_batch_size

    names = _layer_names(layers)
    dev = _device(device)
    _check_weights(model)
    _modules(model, names)
    if batch_size is not None and batch_size < 1:
        raise RflensError(f"batch size must be at least 1, got {batch_size}")
    source = _source(model, inputs, n, input_size, in_channels, seed)
    ndim = len(source.input_size)
    batch = 1 if _coupled(model) else (batch_size or default_batch_size(source.input_size))
    sums: dict[str, torch.Tensor] = {}
    done = 0
    with torch.no_grad(), _recording(model, names, dev) as run:
        for x in source.batches(batch):
            features = run(x.to(device=dev, dtype=torch.float32))
            for name in names:
                f = _spatial(features[name], name, ndim, _module_or_none(model, name))
                f = f.abs() if absolute else f
                part = f.float().mean(1).to("cpu", torch.float64).sum(0)
                if name in sums and sums[name].shape != part.shape:
                    raise RflensError(f"layer {name!r} changed its spatial size between batches: "
                                      f"{tuple(sums[name].shape)} and {tuple(part.shape)}")
                sums[name] = part if name not in sums else sums[name] + part
            done += x.shape[0]
            if progress is not None:
                progress(done, source.count)
    if done == 0:
        raise RflensError("no input images")
    out = {}
    for name in names:
        m = (sums[name] / done).numpy()
        if not np.isfinite(m).all():
            raise RflensError(f"layer {name!r}: the mean activation has NaN or inf values (check the weights)")
        out[name] = SpatialMap(m, name, "mean_activation", source.input_size, map_stats(m), done,
                               source.description, absolute, None, type(model).__name__)
    return out


# -- blind-spot probe --------------------------------------------------------------------------------------
def blind_spot_probe(model: torch.nn.Module, *, input_size: int | Sequence[int], layer: str = "output",
                     stimulus: int = 8, stride: int | None = None, value: float = 1.0, background: float = 0.0,
                     target: str | int = "norm", in_channels: int | None = None, device: str = "cpu",
                     batch_size: int = 64, progress: Progress | None = None) -> SpatialMap:
    """Sweep a square (a segment in 1-D, a cube in 3-D) of side ``stimulus`` and value ``value`` (every input
    channel) over a ``background``-valued input, step ``stride`` (default ``stimulus // 2``, at least 1; the
    last placement of every axis touches its far border, so no pixel is left out), and map the response of
    ``layer``: ``target="norm"`` the L2 norm of ``output(stimulus) - output(background)``; an int ``k`` the
    change of channel ``k`` (a classifier's logit, or the spatial sum of channel ``k`` of a map). Every input
    pixel gets the mean response of the placements covering it, so the map is comparable with the input: a
    zero marks a region the layer does not see (Mind the Pad's blind spots)."""
    from rflens.capture_onnx import require_pytorch

    require_pytorch(model, "the blind-spot probe")
    from rflens.erf import _device, _source

    dev = _device(device)
    _check_weights(model)
    _modules(model, [layer])
    source = _source(model, None, 1, input_size, in_channels, 0)  # resolves the sizes and channels only
    size, channels, ndim = source.input_size, source.in_channels, len(source.input_size)
    if isinstance(stimulus, bool) or not isinstance(stimulus, int) or stimulus < 1:
        raise RflensError(f"stimulus must be a positive integer (its side in pixels), got {stimulus!r}")
    if stimulus > min(size):
        raise RflensError(f"stimulus {stimulus} is larger than the input {'x'.join(map(str, size))}")
    step = max(1, stimulus // 2) if stride is None else stride
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise RflensError(f"stride must be a positive integer, got {stride!r}")
    if batch_size < 1:
        raise RflensError(f"batch size must be at least 1, got {batch_size}")
    if not (target == "norm" or (isinstance(target, int) and not isinstance(target, bool) and target >= 0)):
        raise RflensError(f"target must be 'norm' or a non-negative channel index, got {target!r}")
    starts = [_starts(n, stimulus, step) for n in size]
    placements = list(itertools.product(*starts))
    batch = 1 if _coupled(model) else batch_size
    responses = np.zeros(len(placements))
    module = _module_or_none(model, layer)
    with torch.no_grad(), _recording(model, [layer], dev) as run:
        base = run(torch.full((1, channels, *size), float(background), device=dev))[layer]
        base = _first_tensor(base, layer)
        for first in range(0, len(placements), batch):
            chunk = placements[first:first + batch]
            x = torch.full((len(chunk), channels, *size), float(background))
            for j, p in enumerate(chunk):
                x[(j, slice(None), *_box(p, stimulus))] = float(value)
            out = _first_tensor(run(x.to(dev))[layer], layer)
            responses[first:first + len(chunk)] = _response(out, base, target, layer, ndim, module)
            if progress is not None:
                progress(first + len(chunk), len(placements))
    if not np.isfinite(responses).all():
        raise RflensError(f"layer {layer!r}: the probe's responses have NaN or inf values (check the weights)")
    total = np.zeros(size)
    count = np.zeros(size)
    for p, r in zip(placements, responses, strict=True):
        total[_box(p, stimulus)] += r
        count[_box(p, stimulus)] += 1
    m = total / count  # every pixel is covered: the last placement of each axis reaches its end
    settings = ProbeSettings(stimulus, step, float(value), float(background), target, len(placements))
    return SpatialMap(m, layer, "probe", size, map_stats(m), None, "", False, settings, type(model).__name__)


def _starts(n: int, stimulus: int, stride: int) -> list[int]:
    """Placements along one axis: every ``stride`` from 0, plus the one flush with the far border."""
    starts = list(range(0, n - stimulus + 1, stride))
    return starts if starts[-1] == n - stimulus else [*starts, n - stimulus]


def _box(start: Sequence[int], side: int) -> tuple[slice, ...]:
    return tuple(slice(s, s + side) for s in start)


def _response(out: torch.Tensor, base: torch.Tensor, target: str | int, layer: str, ndim: int,
              module: torch.nn.Module | None) -> np.ndarray:
    """One response per placement of the batch: the norm of the change, or the change of channel ``target``."""
    diff = out.to(torch.float64) - base.to(torch.float64)
    if target == "norm":
        return diff.flatten(1).norm(dim=1).cpu().numpy()
    if diff.dim() == 2:  # a classifier's logits
        picked = diff
    else:
        picked = _spatial(diff, layer, ndim, module).flatten(2).sum(2)
    if target >= picked.shape[1]:  # type: ignore[operator]
        raise RflensError(f"target {target} is out of range: layer {layer!r} has {picked.shape[1]} channels")
    return picked[:, target].cpu().numpy()


# -- shared ------------------------------------------------------------------------------------------------
def _layer_names(layers: Sequence[str] | str) -> list[str]:
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise RflensError("no layers asked for: give module names or 'output'")
    for name in names:
        if not isinstance(name, str):
            raise RflensError(f"a layer is a module name or 'output', got {name!r}")
    return list(dict.fromkeys(names))


def _modules(model: torch.nn.Module, names: Sequence[str]) -> dict[str, torch.nn.Module]:
    """The modules of ``names`` ("output" excluded); an unknown name is an error that lists valid ones."""
    modules = dict(model.named_modules())
    found = {}
    for name in names:
        if name == "output":
            continue
        if name not in modules:
            raise unknown_layer(name, list(modules))
        found[name] = modules[name]
    return found


def _module_or_none(model: torch.nn.Module, name: str) -> torch.nn.Module | None:
    return None if name == "output" else dict(model.named_modules())[name]


def _check_weights(model: torch.nn.Module) -> None:
    if any(p.is_meta for p in model.parameters()):
        raise RflensError("the model's parameters are on the meta device (they hold no values): build it with "
                          "real (random or trained) weights")


def _coupled(model: torch.nn.Module) -> bool:
    """A batch norm without running statistics normalises with the batch's even in eval mode: images would
    see each other, so they run one at a time."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is None
               for m in model.modules())


@contextmanager
def _recording(model: torch.nn.Module, names: Sequence[str], device: torch.device
               ) -> Iterator[Callable[[torch.Tensor], dict[str, Any]]]:
    """A forward (eval mode, detached float32 parameters on ``device``, via :func:`rflens.erf.truncated`)
    returning the output of every module of ``names`` (its last call in the forward) and ``"output"``."""
    from rflens.erf import truncated

    seen: dict[str, Any] = {}
    handles = []

    def keep(name: str) -> Callable[..., None]:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            seen[name] = output
        return hook

    with truncated(model, "output", 0, device, torch.float32) as forward:
        try:
            for name, module in _modules(model, names).items():
                handles.append(module.register_forward_hook(keep(name)))

            def run(x: torch.Tensor) -> dict[str, Any]:
                seen.clear()
                seen["output"] = forward(x)
                missing = [n for n in names if n not in seen]
                if missing:
                    raise RflensError(f"module {missing[0]!r} does not run in the model's forward")
                return dict(seen)

            yield run
        finally:
            for h in handles:
                h.remove()


def _first_tensor(output: Any, layer: str) -> torch.Tensor:
    from rflens.erf import _first_tensor as first

    return first(output, layer)


def _spatial(output: Any, layer: str, ndim: int, module: torch.nn.Module | None) -> torch.Tensor:
    """The layer's output as ``(batch, channels, *spatial)`` with ``ndim`` spatial axes, or a clear error."""
    t = _first_tensor(output, layer)
    shape = tuple(t.shape)
    if t.dim() < 2 + ndim:
        raise RflensError(f"layer {layer!r} outputs shape {shape}: no {ndim}-D spatial map (a classifier's logits "
                          f"or pooled features?); spatial bias needs (batch, channels, *spatial) with {ndim} "
                          "spatial axes: pick a convolutional layer")
    if t.dim() != 2 + ndim:
        raise RflensError(f"layer {layer!r} outputs shape {shape}, not (batch, channels, *spatial) with {ndim} "
                          "spatial axes like the input: pick a module whose output is a feature map")
    last = _channels_last_width(module)
    if last is not None and shape[-1] == last:
        raise RflensError(f"layer {layer!r} ({type(module).__name__}) acts on the last axis of its {shape} output: "
                          "it looks channels-last (batch, *spatial, channels), which this analysis does not read; "
                          "pick the block around it or a convolution")
    return t


def _channels_last_width(module: torch.nn.Module | None) -> int | None:
    """The channel width of a module that works on the last axis (a Linear or LayerNorm applied to a
    feature map, as inside ConvNeXt blocks), else None."""
    if isinstance(module, torch.nn.Linear):
        return module.out_features
    if isinstance(module, torch.nn.LayerNorm) and len(module.normalized_shape) == 1:
        return module.normalized_shape[0]
    return None

"""Gradient effective receptive field (Luo et al., "Understanding the Effective Receptive Field in Deep
Convolutional Neural Networks", NeurIPS 2016): the gradient of one feature unit with respect to the input,
averaged over images, under the published protocols (see :data:`PROTOCOLS`).

The engine computes what every lab's script computes, with less work: eval mode, gradients with respect to the
input only (parameters are passed detached, so no weight gradient is ever built), the forward stopped at the
target layer, images in batches (exact in eval mode: no sample sees another), batch norm folded into the
convolution before it (:mod:`rflens.fold`), channels-last on 2-D models, and, when the unit's theoretical
receptive field is smaller than the input, the network run on the crop that field needs (:mod:`rflens.cone`).
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rflens import distributed as dist
from rflens import erf_inputs
from rflens.cone import ConePlan, plan
from rflens.errors import RflensError, unknown_layer
from rflens.fold import fold_batchnorm
from rflens.geometry import centre_unit
from rflens.graph import Graph, Node, check_unit
from rflens.rf import propagate


@dataclass(frozen=True)
class Protocol:
    """One published way to turn input gradients into an ERF map. ``target``: features at the unit,
    ``(B, C)``, to one scalar per image; ``per_image``: the input gradient ``(B, C, *S)`` to one map per image
    ``(B, *S)``. Maps are averaged over images."""

    name: str
    paper: str
    target_text: str
    map_text: str
    target: Callable[[torch.Tensor], torch.Tensor]
    per_image: Callable[[torch.Tensor], torch.Tensor]


def _kim_target(f: torch.Tensor) -> torch.Tensor:
    return f.mean(1)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("replknet", "Ding et al., Scaling Up Your Kernels to 31x31, CVPR 2022",
             "sum over channels of ReLU(feature) at the unit", "ReLU(gradient), summed over input channels",
             lambda f: torch.relu(f).sum(1), lambda g: torch.relu(g).sum(1)),
    Protocol("kim", "Kim et al., Dead pixel test using effective receptive field, 2021/2023",
             "mean over channels of the feature at the unit (the predicted class's logit for a classifier's "
             "output)", "gradient averaged over input channels, then ReLU", _kim_target,
             lambda g: torch.relu(g.mean(1))),
    Protocol("luo", "Luo et al., Understanding the Effective Receptive Field, NeurIPS 2016",
             "sum over channels of the feature at the unit (a gradient of 1 on every channel of the unit)",
             "|gradient| summed over input channels", lambda f: f.sum(1), lambda g: g.abs().sum(1)),
)}


@dataclass
class ERF:
    """An ERF map (numpy, input-sized, float64: the mean of the finite per-image maps) and its metrics."""

    model: str
    layer: str
    protocol: str
    n: int  # images averaged
    nonfinite: int  # images whose gradient map had NaN or inf: counted, reported, left out of the mean
    input_size: tuple[int, ...]
    unit: tuple[int, ...]  # the probed unit of the layer's output ((): a non-spatial output)
    map: np.ndarray = field(repr=False)
    metrics: dict[str, Any]
    path: str  # how it was computed: cone crop or full input, and why
    crop: tuple[tuple[int, int], ...] | None
    trf_box: tuple[tuple[int, int], ...] | None  # the unit's theoretical field per axis, [lo, hi], unclipped
    inputs: str
    dtype: str
    device: str
    engine: str  # batch size, memory format, batch-norm folding
    target: str = ""  # what was differentiated (the protocol's target, or a class)

    def to_dict(self, map_file: str | None = None) -> dict[str, Any]:
        return {"model": self.model, "layer": self.layer, "protocol": self.protocol, "n": self.n, "target": self.target,
                "nonfinite": self.nonfinite, "input_size": list(self.input_size), "unit": list(self.unit),
                "inputs": self.inputs, "dtype": self.dtype, "device": self.device, "path": self.path,
                "engine": self.engine,
                "crop": [list(c) for c in self.crop] if self.crop else None,
                "trf_box": [list(b) for b in self.trf_box] if self.trf_box else None,
                "metrics": self.metrics, "map": map_file}

    def save_map(self, path: str | Path) -> None:
        np.save(path, self.map)

    def plot(self, path: str | Path, log: bool = False) -> None:
        from rflens.report.figures import erf_figure

        erf_figure(self, log=log).savefig(path, dpi=120, bbox_inches="tight")


class _Stop(BaseException):  # noqa: N818 - control flow: a model's own `except Exception` must not catch it
    def __init__(self, output: Any) -> None:
        self.output = output


def erf(model: torch.nn.Module, layer: str = "output", *, inputs: Any = None, protocol: str = "replknet",
        unit: Sequence[int] | None = None, n: int | None = None, batch_size: int | None = None,
        input_size: int | Sequence[int] | None = None, in_channels: int | None = None, device: str = "cpu",
        dtype: torch.dtype = torch.float32, seed: int = 0, crop: bool = True, fold: bool = True,
        channels_last: bool | None = None, progress: Callable[[int, int | None], None] | None = None,
        model_name: str | None = None, target_class: int | None = None, distributed: bool = False) -> ERF:
    """The gradient ERF of ``unit`` (default: the centre, ``n // 2`` per axis) of ``layer`` (a module name, or
    ``"output"`` for the model's output) under ``protocol`` ("replknet", "kim" or "luo").

    ``inputs``: None for ``n`` (default 50) seeded Gaussian noise images, a folder of pictures, or a tensor /
    iterable of tensors. ``crop=False`` always runs the full input; ``fold=False`` keeps batch norms as they are
    (:mod:`rflens.fold`); ``channels_last`` defaults to True for 2-D models; ``batch_size`` defaults to
    :func:`default_batch_size` of the input that runs. ``progress(done, total)`` is called after every batch.
    ``target_class``: differentiate that channel (a classifier's logit) at the unit instead of the protocol's
    target; with the kim protocol on a classifier's output, a labelled picture folder (one subfolder per class)
    gives each image its true class.
    ``distributed``: inside an initialised ``torch.distributed`` process group of several ranks (``torchrun``,
    :mod:`rflens.distributed`), every rank calls this with the same arguments, takes its share of the images and
    returns the ERF of all of them (``rflens erf`` under torchrun does this); by default this process computes
    its images alone, whatever group it is in.
    The user's model is left as it was (training flags restored, parameters untouched).
    """
    from rflens.capture_onnx import require_pytorch

    require_pytorch(model, "the gradient ERF")
    if protocol not in PROTOCOLS:
        raise RflensError(f"unknown ERF protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if batch_size is not None and batch_size < 1:
        raise RflensError(f"batch size must be at least 1, got {batch_size}")
    proto = PROTOCOLS[protocol]
    dev = _device(device)
    if any(p.is_meta for p in model.parameters()):
        raise RflensError("the model's parameters are on the meta device (they hold no values): build it with "
                          "real (random or trained) weights")
    rank, ranks = dist.ranks() if distributed else (0, 1)
    try:  # in a launch, a failure on one rank (a missing folder, CUDA out of memory) must reach every rank
        source = _source(model, inputs, n, input_size, in_channels, seed)
        trace = _tracer(model, source.in_channels, dev)
        graph, calls = _capture(model, layer, source, trace)
        node_id, unit, trf_box, fields = _probe(graph, layer, unit)
        if node_id is None:
            where = ConePlan(None, unit, (), "the output is not a spatial map (a global op, e.g. the classifier's "
                                             "pooling)")
        else:
            where = (plan(graph, node_id, unit, fields, capture_at=trace) if crop
                     else ConePlan(None, unit, graph.nodes[node_id].sizes, "cropping switched off"))
        runner, _, folding = fold_batchnorm(model, None if layer == "output" else layer, dtype) if fold else \
            (model, 0, "batch norm not folded (switched off)")
        run_size = tuple(b - a for a, b in where.crop) if where.crop else source.input_size
        coupled = [name for name, m in model.named_modules()
                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is None]
        if coupled:  # it normalises with the batch's statistics even in eval mode: images are not independent
            batch = 1
            folding += f"; batch size 1 because '{coupled[0]}' normalises with batch statistics"
        else:
            batch = batch_size if batch_size is not None else default_batch_size(run_size)
        layout = torch.channels_last if (graph.ndim == 2 if channels_last is None else channels_last) and \
            graph.ndim == 2 else torch.contiguous_format
        if source.count == 0:
            raise RflensError("no input images")
        mine = source.shard(rank, ranks) if ranks > 1 else source
        aim = Aim(proto, target_class, _labels(mine, proto, node_id is None))
        part = _run(runner, layer, calls, aim, mine, where, batch, dev, dtype, layout, progress)
        fingerprint = dist.parameter_fingerprint(model) if ranks > 1 else (0.0, 0.0)
    except Exception as exc:
        if ranks == 1:
            raise
        dist.agree(exc)  # raises on every rank
    if ranks > 1:
        part = dist.reduce_over_ranks(part, run_size, images=source.total, fingerprint=fingerprint)
    if part.count == 0:
        raise dist.on_every_rank(RflensError(f"all {part.bad} gradient maps had NaN or inf values; no ERF to "
                                             "report (try dtype float64, or check the model's weights)"))
    full = np.zeros(source.input_size, dtype=np.float64)
    full[tuple(slice(a, b) for a, b in where.crop) if where.crop else ...] = part.total / part.count
    if ranks > 1:
        folding += f"; images shared by {ranks} ranks ({dist.backend()})"
    metrics = _metrics(full, trf_box, _centred(graph, node_id, unit))
    return ERF(model_name if model_name is not None else type(model).__name__, layer, protocol, part.count, part.bad,
               source.input_size, unit, full, metrics, where.describe(), where.crop, trf_box, source.description,
               str(dtype).removeprefix("torch."), str(dev),
               f"batch size {batch}, {'channels-last' if layout is torch.channels_last else 'contiguous'}; {folding}",
               aim.describe(node_id is None))


def structural(model: torch.nn.Module, layer: str = "output", *, unit: Sequence[int] | None = None,
               input_size: int | Sequence[int] | None = None, in_channels: int | None = None,
               model_name: str | None = None) -> ERF:
    """The structural map (:mod:`rflens.pathcount`: how many paths join each input pixel to the unit, from the
    graph alone) as an ERF result with the same metrics and pictures: the uniform-weight ERF of Luo et al., the
    baseline a trained network's ERF is judged against. No weights, no images, no FLOPs."""
    from rflens.pathcount import output_node

    source = _source(model, None, 1, input_size, in_channels, 0)
    graph, _ = _capture(model, layer, source, _tracer(model, source.in_channels, torch.device("cpu")))
    node_id, unit, trf_box, _ = _probe(graph, layer, unit)
    if node_id is None:  # a classifier's output: count the paths into the node its logits come from
        node_id = output_node(graph).id
        unit = centre_unit(graph.nodes[node_id].sizes)
    return structural_at(graph, node_id, unit, trf_box, layer,
                         model_name if model_name is not None else type(model).__name__)


def structural_at(graph: Graph, node_id: int, unit: Sequence[int] | None = None,
                  trf_box: tuple[tuple[int, int], ...] | None = None, layer: str = "", model_name: str = ""
                  ) -> ERF:
    """:func:`structural` on a captured graph, for any node (also one no module names: ``layer`` labels it).
    ``unit`` defaults to the centre; ``trf_box`` to the unit's theoretical field."""
    from rflens.pathcount import path_counts

    unit = tuple(unit) if unit is not None else centre_unit(graph.nodes[node_id].sizes)
    if trf_box is None:
        fields = propagate(graph)[node_id]
        if not any(f.is_global or not f.parts for f in fields):
            trf_box = tuple((f.lo(u), f.hi(u)) for f, u in zip(fields, unit, strict=True))
    counts = path_counts(graph, node_id, unit)
    return ERF(model_name, layer, "structural", 0, 0, graph.input_size, unit, counts.map,
               _metrics(counts.map, trf_box, _centred(graph, node_id, unit)),
               f"path counts from the graph alone: 10^{counts.total_log10:.1f} paths reach the input", None,
               trf_box, "no images (geometry only)", "float64", "none", "scaled so the largest count is 1")


def _probe(graph: Graph, layer: str, unit: Sequence[int] | None
           ) -> tuple[int | None, tuple[int, ...], tuple[tuple[int, int], ...] | None, list]:
    """The layer's output node, the unit (checked; the centre by default), its theoretical field per axis
    (``[lo, hi]``, unclipped; None when global) and every node's field."""
    node_id = _target_node(graph, layer)
    fields = propagate(graph)
    node = graph.nodes[node_id] if node_id is not None else None
    unit = _check_unit(tuple(unit) if unit is not None else centre_unit(node.sizes if node else ()), node, layer)
    if node_id is None or any(f.is_global or not f.parts for f in fields[node_id]):
        return node_id, unit, None, fields
    return node_id, unit, tuple((f.lo(u), f.hi(u)) for f, u in zip(fields[node_id], unit, strict=True)), fields


def _centred(graph: Graph, node_id: int | None, unit: tuple[int, ...]) -> bool:
    return node_id is None or unit == centre_unit(graph.nodes[node_id].sizes)


def _metrics(erf_map: np.ndarray, trf_box: tuple[tuple[int, int], ...] | None, centred: bool) -> dict[str, Any]:
    """The map's metrics around the unit's field centre (the input's centre when the field is global). The
    area-ratio squares sit at the map's centre pixel for the centre unit, as RepLKNet defines them, else at the
    pixel of the unit's field centre (clipped into the image)."""
    from rflens.erf_metrics import summary

    if trf_box is None:
        return summary(erf_map, tuple((s - 1) / 2 for s in erf_map.shape), (None,) * erf_map.ndim)
    centre = tuple((lo + hi) / 2 for lo, hi in trf_box)
    square = None if centred else tuple(min(max(int(c), 0), n - 1) for c, n in zip(centre, erf_map.shape, strict=True))
    return summary(erf_map, centre, tuple(hi - lo + 1 for lo, hi in trf_box), square_centre=square)


# -- set-up ------------------------------------------------------------------------------------------------
def _source(model: torch.nn.Module, inputs: Any, n: int | None, input_size: int | Sequence[int] | None,
            in_channels: int | None, seed: int) -> erf_inputs.InputSource:
    from rflens.capture import input_layout

    if n is not None and n < 1:
        raise RflensError(f"n must be at least 1, got {n}")
    layout = input_layout(model)
    if isinstance(inputs, torch.Tensor) or (inputs is not None and not isinstance(inputs, (str, Path))
                                            and isinstance(inputs, Iterable)):
        if layout is None:
            raise RflensError("cannot tell the model's spatial dims (no convolution found)")
        src = erf_inputs.tensors(inputs, n, layout[0])
        if input_size is not None and tuple(_sizes(input_size, len(src.input_size))) != src.input_size:
            raise RflensError(f"input_size {input_size} differs from the given tensors' size {src.input_size}")
        if in_channels is not None and in_channels != src.in_channels:
            raise RflensError(f"in_channels {in_channels} differs from the given tensors' {src.in_channels} channels")
        return src
    ndim = layout[0] if layout else None
    size = _default_size(model) if input_size is None else input_size
    if ndim is None and isinstance(size, int):
        raise RflensError("cannot tell the model's spatial dims (no convolution found): give input_size as a tuple")
    sizes = _sizes(size, ndim or len(size))  # type: ignore[arg-type]
    channels = in_channels if in_channels is not None else (layout[1] if layout else None)
    if channels is None:
        raise RflensError("cannot infer the input channels (no convolution found): pass in_channels")
    if inputs is None or inputs == "noise":
        return erf_inputs.noise(n if n is not None else erf_inputs.DEFAULT_NOISE_IMAGES, channels, sizes, seed)
    if isinstance(inputs, (str, Path)):
        return erf_inputs.folder(inputs, n, channels, sizes, erf_inputs.Preprocess.for_model(model))
    raise RflensError(f"inputs must be None/'noise', a folder, a tensor or an iterable of tensors; got "
                      f"{type(inputs).__name__}")


def _sizes(size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    return (int(size),) * ndim if isinstance(size, int) else tuple(int(s) for s in size)


def _default_size(model: torch.nn.Module) -> int | tuple[int, ...]:
    """The model's configured size (timm), else 224."""
    from rflens.capture import configured_input

    size = configured_input(model)
    return size[1:] if size is not None else 224


def _tracer(model: torch.nn.Module, in_channels: int, device: torch.device) -> Callable[[tuple[int, ...]], Graph]:
    """Captures the model at a size on meta; a model whose forward needs real data (``MetaDeviceError``) is
    captured on the run device instead, from then on."""
    from rflens.capture import capture
    from rflens.errors import MetaDeviceError

    place = ["meta"]

    def trace(size: tuple[int, ...]) -> Graph:
        try:
            return capture(model, size, in_channels=in_channels, device=place[0])
        except MetaDeviceError:
            if place[0] != "meta":
                raise
            place[0] = str(device)
            return capture(model, size, in_channels=in_channels, device=place[0])

    return trace


def _capture(model: torch.nn.Module, layer: str, source: erf_inputs.InputSource,
             trace: Callable[[tuple[int, ...]], Graph]) -> tuple[Graph, int]:
    """The graph, and how often ``layer`` runs in one forward (the ERF stops at its last call, the call whose
    output the graph names)."""
    calls = [0]
    handle = None
    if layer != "output":
        modules = dict(model.named_modules())
        if layer not in modules:
            raise unknown_layer(layer, list(modules))

        def count(*_: Any) -> None:
            calls[0] += 1

        handle = modules[layer].register_forward_hook(count)
    try:
        graph = trace(source.input_size)
    finally:
        if handle is not None:
            handle.remove()
    if layer != "output" and calls[0] == 0:
        raise RflensError(f"module {layer!r} does not run in the model's forward")
    return graph, calls[0]


def _target_node(graph: Graph, layer: str) -> int | None:
    """The node of the layer's output; None when that output is not a spatial map."""
    name = "" if layer == "output" else layer
    return graph.module_outputs.get(name)


def _check_unit(unit: tuple, node: Node | None, layer: str) -> tuple[int, ...]:
    try:
        if node is None:
            if unit:
                raise IndexError(f"unit {unit} is outside an output without spatial axes")
            return ()
        return check_unit(node, unit)
    except (IndexError, TypeError, ValueError) as exc:
        raise RflensError(f"layer {layer!r}: {exc}") from None


def _device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RflensError(f"device {device!r} was asked for but PyTorch sees no CUDA device")
    if dev.type == "meta":
        raise RflensError("the ERF needs real numbers: use device 'cpu' or 'cuda'")
    return dev


# -- the engine --------------------------------------------------------------------------------------------
def default_batch_size(run_size: Sequence[int]) -> int:
    """Images per forward/backward: about six 224x224 images' worth of pixels (1 to 16 images). Measured on a
    2-core CPU with ResNet-50: larger batches of large inputs run slower (their activations leave the caches),
    and the activations of a batch stay within a few GiB."""
    return max(1, min(16, round(_PIXELS_PER_BATCH / math.prod(run_size))))


_PIXELS_PER_BATCH = 6 * 224 * 224


@dataclass(frozen=True)
class Aim:
    """What one image's scalar is: the protocol's target, or a class (one for all images, or each image's label)."""

    protocol: Protocol
    target_class: int | None = None
    labels: Sequence[int] | None = None

    def describe(self, classifier: bool) -> str:
        if self.target_class is not None:
            return f"class {self.target_class} at the unit"
        if self.labels is not None:
            return "each image's true class (folder labels) at the unit"
        if classifier and self.protocol.name == "kim":
            return "the predicted class's logit"
        return self.protocol.target_text

    def resolved(self, output: Any, where: ConePlan, layer: str, index: int) -> Aim:
        """The aim for image ``index`` of the source alone (its ``output``), with its class fixed."""
        if self.target_class is not None:
            return self
        if self.labels is not None:
            return Aim(self.protocol, int(self.labels[index]))
        if not where.unit and self.protocol.name == "kim":
            return Aim(self.protocol, int(_at_unit(output, where, layer).argmax(1)[0]))
        return self

    def scalar(self, output: Any, where: ConePlan, layer: str, first: int) -> torch.Tensor:
        """One scalar per image of a batch whose first image is image ``first`` of the source."""
        at = _at_unit(output, where, layer)
        classes = None
        if self.target_class is not None:
            classes = torch.full((at.shape[0],), self.target_class, dtype=torch.long)
        elif self.labels is not None:
            classes = torch.as_tensor(list(self.labels[first:first + at.shape[0]]), dtype=torch.long)
        elif not where.unit and self.protocol.name == "kim":  # a classifier's output: the predicted class's logit
            classes = at.detach().argmax(1)
        if classes is None:
            return self.protocol.target(at)
        bad = classes[(classes < 0) | (classes >= at.shape[1])]
        if bad.numel():
            raise RflensError(f"class {int(bad[0])} is out of range: layer {layer!r} has {at.shape[1]} channels")
        return at.gather(1, classes.to(at.device)[:, None]).squeeze(1)


def _labels(source: erf_inputs.InputSource, proto: Protocol, classifier: bool) -> Sequence[int] | None:
    """A labelled folder's classes, used where Kim et al. use the class: the kim protocol on a classifier's
    output. Elsewhere the protocol's own target stands (a class index is no channel of an inner layer)."""
    return source.labels if proto.name == "kim" and classifier else None


@contextmanager
def truncated(model: torch.nn.Module, layer: str, calls: int, device: torch.device, dtype: torch.dtype,
              layout: torch.memory_format = torch.contiguous_format) -> Iterator[Callable[[torch.Tensor], Any]]:
    """A forward of ``model`` in eval mode with detached parameters cast to ``dtype`` on ``device``, stopped at
    the ``calls``-th call of ``layer`` (returning its output); training flags are restored on exit."""
    tensors = {name: _cast(t, device, dtype, layout) for name, t in
               [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]}
    training = [(m, m.training) for m in model.modules()]
    handle = None
    seen = [0]  # calls of the target layer in the current forward

    def stop(_module: Any, _inputs: Any, output: Any) -> None:
        seen[0] += 1
        if seen[0] == calls:
            raise _Stop(output)

    def forward(x: torch.Tensor) -> Any:
        seen[0] = 0
        return _forward(model, tensors, x)

    if layer != "output":
        handle = dict(model.named_modules())[layer].register_forward_hook(stop)
    try:
        model.eval()
        yield forward
    finally:
        if handle is not None:
            handle.remove()
        for m, flag in training:
            m.training = flag


def _run(model: torch.nn.Module, layer: str, calls: int, aim: Aim, source: erf_inputs.InputSource,
         where: ConePlan, batch_size: int, device: torch.device, dtype: torch.dtype, layout: torch.memory_format,
         progress: Callable[[int, int | None], None] | None) -> dist.Partial:
    """Sum of the finite per-image maps (over the crop when there is one; None without one), their count, and
    the count of maps with NaN or inf."""
    window = (slice(None), slice(None), *(slice(a, b) for a, b in where.crop)) if where.crop else ...
    total: np.ndarray | None = None
    count = bad = done = 0
    with truncated(model, layer, calls, device, dtype, layout) as forward:
        for batch in source.batches(batch_size):
            x = batch[window].to(device=device, dtype=dtype).contiguous(memory_format=layout).requires_grad_(True)
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(aim.scalar(forward(x), where, layer, done).sum(), x)
            maps = aim.protocol.per_image(grad).detach().to("cpu", torch.float64)
            finite = torch.isfinite(maps).flatten(1).all(1)
            bad += int((~finite).sum())
            if bool(finite.any()):
                part = maps[finite].sum(0).numpy()
                total = part if total is None else total + part
                count += int(finite.sum())
            done += batch.shape[0]
            if progress is not None:
                progress(done, source.count)
    return dist.Partial(total, count, bad)


def perturbation_response(model: torch.nn.Module, layer: str, block: Sequence[tuple[int, int]], *,
                          inputs: Any = None, n: int = 4, input_size: int | Sequence[int] | None = None,
                          in_channels: int | None = None, target_class: int | None = None, eps: float = 0.5,
                          protocol: str = "kim", device: str = "cpu", seed: int = 0,
                          progress: Callable[[int, int | None], None] | None = None) -> tuple[np.ndarray, int]:
    """|target(x + eps at one pixel, every channel) - target(x)| / eps for each pixel of ``block`` ([lo, hi) per
    axis), averaged over ``n`` images (Kim et al. §5.2's positional sensitivity); the target is the one
    :func:`erf` differentiates (same protocol, class and unit). Returns the block-shaped array and the number
    of images."""
    from rflens.capture_onnx import require_pytorch

    require_pytorch(model, "the perturbation response")
    if eps <= 0:
        raise RflensError(f"eps must be positive, got {eps}")
    device = _device(device)
    source = _source(model, inputs, n, input_size, in_channels, seed)
    proto = PROTOCOLS[protocol]
    trace = _tracer(model, source.in_channels, device)
    graph, calls = _capture(model, layer, source, trace)
    node_id, unit, _, _ = _probe(graph, layer, None)
    where = ConePlan(None, unit, graph.nodes[node_id].sizes if node_id is not None else (), "perturbation")
    pixels = list(np.ndindex(*[hi - lo for lo, hi in block]))
    change = np.zeros(len(pixels))
    images = 0
    aim = Aim(proto, target_class, _labels(source, proto, node_id is None))
    with torch.no_grad(), truncated(model, layer, calls, device, torch.float32) as forward:
        for batch in source.batches(1):
            x = batch.to(device=device, dtype=torch.float32)
            output = forward(x)
            fixed = aim.resolved(output, where, layer, images)  # the class must not follow the perturbation
            base = fixed.scalar(output, where, layer, 0)
            for start in range(0, len(pixels), 16):
                chunk = pixels[start:start + 16]
                shifted = x.repeat(len(chunk), *([1] * (x.dim() - 1)))
                for j, p in enumerate(chunk):
                    shifted[(j, slice(None), *(lo + i for (lo, _), i in zip(block, p, strict=True)))] += eps
                out = fixed.scalar(forward(shifted), where, layer, 0)
                change[start:start + len(chunk)] += (out - base).abs().cpu().numpy() / eps
            images += 1
            if progress is not None:
                progress(images, source.count)
    if images == 0:
        raise RflensError("no input images")
    return (change / images).reshape([hi - lo for lo, hi in block]), images


def _cast(t: torch.Tensor, device: torch.device, dtype: torch.dtype, layout: torch.memory_format) -> torch.Tensor:
    t = t.detach()
    t = t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
    return t.contiguous(memory_format=layout) if t.dim() == 4 else t


def _forward(model: torch.nn.Module, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> Any:
    try:
        return torch.func.functional_call(model, tensors, (x,), strict=False)
    except _Stop as stop:
        return stop.output


def _at_unit(output: Any, where: ConePlan, layer: str) -> torch.Tensor:
    """The features ``(B, C)`` at the unit."""
    feature = _first_tensor(output, layer)
    if feature.dim() != 2 + len(where.unit) or (where.unit and tuple(feature.shape[2:]) != where.sizes):
        raise RflensError(f"layer {layer!r} gives a tensor of shape {tuple(feature.shape)}; an ERF needs "
                          f"(batch, channels, *spatial) with spatial size {where.sizes} (a channels-last output "
                          "is not supported: probe the module around it)")
    return feature[(slice(None), slice(None), *where.unit)]


def _first_tensor(output: Any, layer: str) -> torch.Tensor:
    from torch.utils import _pytree

    for leaf in _pytree.tree_leaves(output):
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
            return leaf
    raise RflensError(f"layer {layer!r} returns no floating-point tensor")




class _CallableModule(types.ModuleType):
    """``rflens.erf(model, ...)`` is the public call while ``rflens.erf`` is also this module (Python binds a
    package's attribute to its submodule on import, so a function of that name could not stay there): calling
    the module calls :func:`erf`."""

    def __call__(self, *args: Any, **kwargs: Any) -> ERF:
        return erf(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

"""One audit of a model at one input size: every analysis, the verdicts and the fixes with their costs.

The weight-free part is geometry on meta captures (receptive fields, unproductive layers, padding, culprit
layers and structural maps) plus the kernel-padding fix, checked on a real forward. The gradient part (the
effective receptive field of the last map's centre unit and Kim et al.'s weighted dead-pixel test) runs only when
asked (``gradients=True``): with random weights it describes the architecture, with trained ones the network.
Each analysis is its own public function (:func:`rflens.border_report`, :func:`rflens.padding_report`, ...); this
module calls them, collects their results and ranks the fixes. Verdicts and CI rules live in
:mod:`rflens.checks`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rflens.border import BorderReport, per_axis_text
from rflens.deadpixel import DeadPixelReport
from rflens.errors import MetaDeviceError, RflensError
from rflens.padding import PaddingReport
from rflens.rf import LayerRF, ReceptiveFields

SCHEMA_VERSION = 1
Progress = Callable[[str, int, "int | None"], None]


@dataclass(frozen=True)
class Fix:
    """A change that removes a finding, what it costs and the command that makes it."""

    area: str  # the verdict area it addresses
    change: str
    cost: str  # in words: FLOPs and parameters before -> after, or "changes the function: fine-tune"
    effect: str  # what it achieves, measured
    command: str
    flops_ratio: float | None = None
    params_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"area": self.area, "change": self.change, "cost": self.cost, "effect": self.effect,
                "command": self.command, "flops_ratio": self.flops_ratio, "params_ratio": self.params_ratio}


@dataclass
class Audit:
    """Every analysis of ``model`` at ``input_size``. ``last_layer``: the module whose output is the model's last
    spatial map (``"output"`` when that map has no module of its own); its centre unit is the one the ERF maps
    follow. ``erf``/``dead_pixels.erf`` exist only with gradients."""

    model: str
    input_size: tuple[int, ...]
    rf: ReceptiveFields
    border: BorderReport
    padding: PaddingReport
    dead_pixels: DeadPixelReport
    last_layer: str
    structural_erf: Any  # rflens.erf.ERF: path counts into the last map's centre unit
    erf: Any = None  # rflens.erf.ERF under the replknet protocol, with gradients
    kernel_padded: DeadPixelReport | None = None  # the structural test after the kernel-padding fix
    fixes: list[Fix] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verdicts: list[Any] = field(default_factory=list)  # rflens.checks.Verdict, default thresholds
    gradients: bool = False  # the gradient analyses ran (``erf`` stays None when the last map has no module)

    @property
    def final(self) -> LayerRF:
        """The receptive field of the last spatial map, under its module's name (the op's when it has none)."""
        from rflens.padding import last_map

        node = last_map(self.rf.graph).id
        name = "" if self.last_layer == "output" else self.last_layer
        return next((x for x in self.rf.layers if x.name == name and x.node == node), self.rf.nodes[node])

    def to_dict(self) -> dict[str, Any]:
        """The union of the analyses' documents (each as its own command writes it) under one schema version."""
        def without_model(doc: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in doc.items() if k not in ("model", "input_size")}

        return {
            "schema_version": SCHEMA_VERSION, "model": self.model, "input_size": list(self.input_size),
            "verdicts": [v.to_dict() for v in self.verdicts], "last_layer": self.last_layer,
            "rf": without_model(self.rf.to_dict()) | {"final": self.final.to_dict()},
            "border": without_model(self.border.to_dict()),
            "padding": without_model(self.padding.to_dict()),
            "dead_pixels": without_model(self.dead_pixels.to_dict()),
            "kernel_padded": None if self.kernel_padded is None else self.kernel_padded.structural.to_dict(),
            "erf": {"structural": without_model(self.structural_erf.to_dict()),
                    "gradient": None if self.erf is None else without_model(self.erf.to_dict())},
            "fixes": [f.to_dict() for f in self.fixes], "notes": list(self.notes),
        }


def module_of(graph: Any, node_id: int) -> str | None:
    """The outermost module whose output is node ``node_id`` (``"output"`` for the model itself), None when no
    module returns it (a functional op in a ``forward``)."""
    names = [name for name, i in graph.module_outputs.items() if i == node_id]
    if not names:
        return None
    return min(names, key=lambda n: (n.count("."), len(n))) or "output"


def audit(model: Any, input_size: int | Sequence[int], *, in_channels: int | None = None, gradients: bool = False,
          images: Any = None, n: int | None = None, device: str = "cpu", seed: int = 0, model_name: str | None = None,
          model_spec: str | None = None, top: int = 3, progress: Progress | None = None) -> Audit:
    """Audit ``model`` (an ``nn.Module``) at ``input_size``.

    Weight-free: receptive fields, unproductive layers with their refinements, the padding audit with foveation
    maps, culprit layers and the structural dead-pixel test, the structural map of the last map's centre unit,
    and the kernel-padding fix (made and checked on ``device``). ``gradients``: the replknet-protocol ERF of that
    unit and the weighted (kim) dead-pixel test on ``images`` (a folder; default ``n`` seeded noise images), run
    on ``device``. ``model_spec``: the model as the suggested commands name it (``timm:resnet50``, with the options
that build it: ``--model-arg``, ``--weights``...; default: ``model_name``); ``top``: how many
    refinements are listed. ``progress(stage, done, total)`` is told about each stage."""
    from rflens.border import border_report
    from rflens.capture import capture
    from rflens.capture_onnx import require_pytorch
    from rflens.checks import verdicts
    from rflens.deadpixel import dead_pixel_test
    from rflens.erf import erf, structural_at
    from rflens.padding import last_map, padding_report
    from rflens.rf import analyse

    if gradients:
        require_pytorch(model, "the audit's gradient analyses (--erf, --images, --weights)")
    name = model_name if model_name is not None else type(model).__name__
    running: list[str] = []

    def stage(label: str | None) -> None:
        """Marks the running stage done and ``label`` started (one progress task per stage)."""
        if progress is None:
            return
        if running:
            progress(running.pop(), 1, 1)
        if label is not None:
            running.append(label)
            progress(label, 0, 1)

    stage("receptive fields")
    trace_on = "meta"
    try:
        graph = capture(model, input_size, in_channels=in_channels, device=trace_on)
    except MetaDeviceError:  # the forward needs real data: trace every analysis on the run device
        trace_on = device
        graph = capture(model, input_size, in_channels=in_channels, device=trace_on)
    size, channels = graph.input_size, graph.input_shape[1]
    rf = analyse(graph, name)
    last = last_map(graph)
    last_module = module_of(graph, last.id)
    last_layer = last_module or last.label
    stage("unproductive layers")
    border = border_report(model, size, in_channels=channels, device=trace_on, model_name=name, top=top)
    stage("padding")
    padding = padding_report(model, size, in_channels=channels, device=trace_on, model_name=name,
                             progress=None if progress is None else lambda d, t: progress("padding", d, t))
    stage("dead pixels")
    dead = dead_pixel_test(model, size, in_channels=channels, device=device, model_name=name)
    notes: list[str] = []
    stage("kernel padding")
    padded = _kernel_padded(model, size, channels, device, name, dead, notes)
    stage("structural map")
    structural_erf = structural_at(graph, last.id, layer=last_layer, model_name=name)
    result = Audit(name, size, rf, border, padding, dead, last_layer, structural_erf, notes=notes,
                   gradients=gradients)
    if padded is not None:
        result.kernel_padded = padded[1]
    if gradients:
        inputs = None if images in (None, "noise") else images
        stage("gradient ERF")
        if last_module is None:
            notes.append(f"no gradient ERF of the last map: it is the output of {last_layer}, not of a module of "
                         "its own (rflens erf --layer NAME takes a module)")
        else:
            result.erf = erf(model, last_module, inputs=inputs, protocol="replknet", n=n, input_size=size,
                             in_channels=channels, device=device, seed=seed, model_name=name,
                             progress=None if progress is None else lambda d, t: progress("gradient ERF", d, t))
        stage("weighted dead-pixel test")
        result.dead_pixels = dead_pixel_test(
            model, size, in_channels=channels, weighted=True, inputs=inputs, n=n, device=device, seed=seed,
            model_name=name, progress=None if progress is None else lambda s, d, t: progress(
                "weighted dead-pixel test", d, t))
    result.fixes = fixes(result, model, padded[0] if padded is not None else None, model_spec or name, trace_on)
    result.verdicts = verdicts(result)
    stage(None)
    return result


def _kernel_padded(model: Any, size: tuple[int, ...], channels: int, device: str, name: str,
                   dead: DeadPixelReport, notes: list[str]) -> tuple[Any, DeadPixelReport] | None:
    """The kernel-padding fix of the culprit layers (checked by :func:`rflens.transforms.kernel_pad`) and the
    structural test of the padded model; None without culprits or when no culprit can be padded."""
    from rflens.capture_onnx import is_onnx
    from rflens.deadpixel import dead_pixel_test
    from rflens.transforms import kernel_pad

    if not dead.culprits:
        return None
    if is_onnx(model):
        notes.append("kernel padding changes PyTorch modules: for an ONNX graph, pad the culprits' kernels in the "
                     "source model")
        return None
    try:
        fix = kernel_pad(model, size, in_channels=channels, device=device, model_name=name)
    except RflensError as exc:
        notes.append(f"kernel padding could not be checked: {exc}")
        return None
    if not fix.changes:
        return None
    return fix, dead_pixel_test(fix.model, size, in_channels=channels, device=device,
                                model_name=f"{name} (kernel-padded)")


def _ratios(before: tuple[int, int], after: tuple[int, int]) -> tuple[float | None, float | None]:
    return tuple(a / b if b else None for a, b in zip(after, before, strict=True))  # type: ignore[return-value]


def _cost(flops_ratio: float | None, params_ratio: float | None) -> str:
    def pct(x: float | None) -> str:
        return "?" if x is None else f"{x - 1:+.1%}"

    return f"FLOPs {pct(flops_ratio)}, parameters {pct(params_ratio)}"


def fixes(result: Audit, model: Any, kernel_fix: Any, spec: str, trace_on: str = "meta") -> list[Fix]:
    """The changes that address the audit's findings of ``model``: refinements that remove unproductive layers,
    the nearest input size without uneven padding, reflect padding where it evens out the foveation, and kernel
    padding against the checkerboard. ``spec``: the model as the commands should name it."""
    from rflens.capture import capture
    from rflens.transforms import padding_mode_edits

    size = per_axis_text(result.input_size)
    base = f"{spec} --input-size {size}"
    out: list[Fix] = []
    border = result.border
    for i, s in enumerate(border.suggestions, 1):
        out.append(Fix("unproductive layers", s.change, _cost(s.flops_ratio, s.params_ratio),
                       f"{len(s.unproductive_after)} unproductive layers left (from {len(border.unproductive)})",
                       f"rflens border {base} --apply {i} --out recipe.json" if s.applicable is None
                       else f"by hand: {s.applicable}", s.flops_ratio, s.params_ratio))
    suggested = result.padding.suggested_size()
    if result.padding.uneven and suggested is not None and border.resolutions is not None:
        try:
            flops = border.resolutions.graph_at(suggested).flops
        except RflensError:
            flops = None
        ratio = flops / border.total_flops if flops and border.total_flops else None
        new = per_axis_text(suggested)
        out.append(Fix("padding", f"feed {new} instead of {size}", _cost(ratio, 1.0),
                       f"no uneven layer (from {len(result.padding.uneven)})",
                       f"rflens audit {spec} --input-size {new}", ratio, 1.0))
    model_map, reflect_map = result.padding.foveation_of("model"), result.padding.foveation_of("reflect")
    if model_map is not None and reflect_map is not None and result.padding.layers:
        before, after = model_map.stats, reflect_map.stats
        edits, _, skipped = padding_mode_edits(model, result.rf.graph, "reflect")
        if edits and before.border_ratio < after.border_ratio:
            caveat = (f" (what-if with every convolution reflected; {len(skipped)} cannot be changed and stay "
                      "as they are)") if skipped else ""
            out.append(Fix("padding", f"reflect padding in {len(edits)} padded convolutions",
                           "FLOPs +0.0%, parameters +0.0%; changes the function: fine-tune",
                           f"foveation border/centre {before.border_ratio:.2f} -> {after.border_ratio:.2f}, "
                           f"asymmetry {max(before.asymmetry):.2f} -> {max(after.asymmetry):.2f}{caveat}",
                           f"rflens fix padding-mode reflect {base} --out fixed/", 1.0, 1.0))
    if kernel_fix is not None and result.kernel_padded is not None:
        graph = capture(kernel_fix.model, result.input_size, in_channels=result.rf.graph.input_shape[1],
                        device=trace_on)
        ratios = _ratios((border.total_flops, border.total_params), (graph.flops, graph.params))
        before, after = result.dead_pixels.structural.indices, result.kernel_padded.structural.indices
        same = "same function" if kernel_fix.exact else "changes the function (widened poolings): fine-tune"
        out.append(Fix("dead pixels", f"pad the kernels of {len(kernel_fix.changes)} culprit layers to a multiple "
                       "of the stride", f"{_cost(*ratios)}; {same}",
                       f"structural L1 {before.l1:.3g} -> {after.l1:.3g}, checkerboard "
                       f"{before.period or 'none'} -> {after.period or 'none'}",
                       f"rflens fix kernel-pad {base} --out fixed/", *ratios))
    return out

"""Time rflens's ERF engine against the published per-image protocol and against the bare floor.

Same model (random init, no download), same noise images on every side, RepLKNet's protocol (target: sum over
channels of ReLU(feature) at the centre unit; map: ReLU(input gradient) summed over channels, mean over images):

- **per-image** (what the published scripts do): batch 1, parameters requiring gradients as loaded, forward to
  the layer (stopped there), ``torch.autograd.grad`` of the target with respect to the image.
- **rflens**: ``rflens.erf(model, layer, inputs=images, batch_size=B)``: everything included (capture on meta,
  cone plan, batching, per-image NaN check, placing the map back, metrics).
- **floor**: the least work that gives the same map: one batched forward of the input rflens runs (the cone crop
  when there is one), parameters frozen, stopped at the layer, and one input-gradient backward; no bookkeeping.

The maps of the three sides are asserted equal (float32: relative 1e-4 of the map's max) after the timings are
printed. Each side runs ``--repeat`` times after a warm-up; the best run is reported.
The structural map (path counts) of ``--structural-model`` at ``--structural-size`` is timed too.

    python bench/bench_erf.py                     # resnet50 layer4, 16 noise images, at 224 and 1024
    python bench/bench_erf.py --sizes 224 --device cuda
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import build, machine

from rflens.capture import capture
from rflens.cone import plan
from rflens.erf import erf
from rflens.erf_inputs import noise
from rflens.geometry import centre_unit


class _Stop(Exception):  # noqa: N818
    def __init__(self, output):
        self.output = output


def forward_to(model: torch.nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    def stop(_m, _i, out):
        raise _Stop(out)

    handle = dict(model.named_modules())[layer].register_forward_hook(stop)
    try:
        model(x)
    except _Stop as s:
        return s.output
    finally:
        handle.remove()
    raise RuntimeError(f"layer {layer} did not run")


def per_image(model: torch.nn.Module, layer: str, images: torch.Tensor) -> np.ndarray:
    """The published protocol, one image at a time."""
    total = None
    for img in images:
        x = img[None].clone().requires_grad_(True)
        out = forward_to(model, layer, x)
        h, w = out.shape[2] // 2, out.shape[3] // 2
        target = torch.relu(out[:, :, h, w]).sum()
        (g,) = torch.autograd.grad(target, x)
        m = torch.relu(g).sum((0, 1))
        total = m if total is None else total + m
    return (total / len(images)).double().cpu().numpy()


def floor(model: torch.nn.Module, layer: str, images: torch.Tensor, crop, unit) -> np.ndarray:
    """One batched forward of the input rflens runs and its input-gradient backward, parameters frozen."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        x = images[(slice(None), slice(None), *(slice(a, b) for a, b in crop))] if crop else images
        x = x.clone().requires_grad_(True)
        out = forward_to(model, layer, x)
        target = torch.relu(out[(slice(None), slice(None), *unit)]).sum()
        (g,) = torch.autograd.grad(target, x)
        m = torch.relu(g).sum(1).mean(0)
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
    full = np.zeros(images.shape[2:])
    full[tuple(slice(a, b) for a, b in crop) if crop else ...] = m.double().cpu().numpy()
    return full


def best(repeat: int, sync, fn, *args, **kwargs) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        sync()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="torchvision:resnet50")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 1024])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--structural-model", default="torchvision:resnet152")
    parser.add_argument("--structural-size", type=int, default=1024)
    parser.add_argument("--structural-layer", default="layer4")
    args = parser.parse_args()
    print(machine())
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = build(args.model).to(device).eval()
    rows, checks = [], []
    for size in args.sizes:
        images = torch.cat(list(noise(args.images, 3, (size, size), seed=0).batches(args.images))).to(device)
        graph = capture(model, size)
        node = graph.module_outputs[args.layer]
        where = plan(graph, node, centre_unit(graph.nodes[node].sizes))
        print(f"\n## {args.model} {args.layer} at {size}x{size}, {args.images} noise images: {where.describe()}")
        # warm-up of every side at this size (allocator, oneDNN kernels)
        erf(model, args.layer, inputs=images[:2], batch_size=2, device=args.device)
        t_rf, ours = best(args.repeat, sync, erf, model, args.layer, inputs=images, batch_size=args.batch_size,
                          device=args.device)
        print(f"rflens: {t_rf:.2f} s ({ours.path})")
        t_floor, bare = best(args.repeat, sync, floor, model, args.layer, images, where.crop, where.unit)
        print(f"floor: {t_floor:.2f} s")
        t_pub, ref = best(1, sync, per_image, model, args.layer, images)
        print(f"per-image (published protocol): {t_pub:.2f} s")
        rows.append((size, where.cropped, t_pub, t_rf, t_floor))
        scale = ref.max()
        checks.append((size, np.abs(ours.map - ref).max() / scale, np.abs(bare - ref).max() / scale))
    print("\n| size | cone crop | per-image s | rflens s | floor s | rflens vs per-image | rflens / floor |")
    print("|---|---|---|---|---|---|---|")
    for size, cropped, t_pub, t_rf, t_floor in rows:
        print(f"| {size} | {'yes' if cropped else 'no'} | {t_pub:.2f} | {t_rf:.2f} | {t_floor:.2f} | "
              f"{t_pub / t_rf:.2f}x faster | {t_rf / t_floor:.3f} |")

    from rflens.pathcount import path_counts

    big = build(args.structural_model)
    start = time.perf_counter()
    graph = capture(big, args.structural_size)
    t_capture = time.perf_counter() - start
    node = graph.module_outputs[args.structural_layer]
    timings = []
    for _ in range(3):  # the first call is cold (its per-read matrices are built), the others reuse them
        start = time.perf_counter()
        counts = path_counts(graph, node)
        timings.append(time.perf_counter() - start)
    print(f"\nstructural map of {args.structural_model} at {args.structural_size}, centre unit of "
          f"'{args.structural_layer}': {timings[0]:.3f} s cold, {min(timings[1:]):.3f} s warm (capture on meta "
          f"{t_capture:.3f} s); log10 of the number of paths {counts.total_log10:.1f}, finite: "
          f"{bool(np.isfinite(counts.map).all())}")
    for size, d_rf, d_floor in checks:
        print(f"max |map - per-image| / max at {size}: rflens {d_rf:.2e}, floor {d_floor:.2e}")
        assert d_rf < 1e-4 and d_floor < 1e-4, "maps differ"


if __name__ == "__main__":
    main()

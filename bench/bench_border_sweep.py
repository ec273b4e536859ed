"""Time the border analysis over a sweep of input resolutions: rflens's Resolutions against tracing again.

For one model (random init, no downloads) and every square size in --min..--max (every --step-th):
- **rflens**: capture once at --base on the meta device, build ``Resolutions(graph, retrace=...)`` (which checks
  the resize once against real captures at two other sizes; both reported separately as the one-off cost), then
  ``res.sweep(sizes)``, which carries the captured graph to every size without tracing the model again.
- **retrace**: the obvious alternative, ``capture(model, n)`` then ``classify`` (and ``waste``) at every size.
  When that is estimated to take longer than --budget seconds, it runs on every --retrace-step-th size only
  (default 8) and its total is extrapolated to all sizes; the output says so.

Every size that both ran is compared: the unproductive-layer lists must be identical (asserted, after the
timings are printed); the full per-layer results and the waste are compared as well and reported. A size where
one side gives a result and the other an error is a disagreement and fails the assertion too.

    python bench/bench_border_sweep.py                                  # resnet50, 32..1024, base 224
    python bench/bench_border_sweep.py --model torchvision:vgg19
    python bench/bench_border_sweep.py --model torchvision:convnext_tiny --step 4 --retrace-step 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import build, machine

from rflens.border import Resolutions, SizeReport, classify, waste
from rflens.capture import capture
from rflens.errors import CaptureError


def retrace_one(model: torch.nn.Module, n: int) -> tuple[SizeReport | CaptureError, float]:
    """The alternative at one size: trace the model again and classify its layers. Returns (result, seconds)."""
    start = time.perf_counter()
    try:
        graph = capture(model, n)
        layers = classify(graph)
        result: SizeReport | CaptureError = SizeReport(graph.input_size, graph, layers, waste(layers, graph))
    except CaptureError as exc:
        result = exc
    return result, time.perf_counter() - start


def describe(result: SizeReport | CaptureError) -> str:
    if isinstance(result, CaptureError):
        return f"{type(result).__name__}: {str(result).splitlines()[0][:160]}"
    return f"{len(result.unproductive)} unproductive"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="torchvision:resnet50",
                        help="model spec as rflens.sources.load_model takes it (torchvision:NAME, timm:NAME, ...)")
    parser.add_argument("--base", type=int, default=224, help="the size rflens captures at")
    parser.add_argument("--min", type=int, default=32)
    parser.add_argument("--max", type=int, default=1024)
    parser.add_argument("--step", type=int, default=1, help="sweep every step-th size (both methods)")
    parser.add_argument("--retrace-step", type=int, default=None,
                        help="retrace only every n-th size of the sweep and extrapolate (default: 1 when the "
                             "estimate fits in --budget, else 8)")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds the full retrace sweep may take before it is subsampled (default 120)")
    args = parser.parse_args()
    print(machine())
    sizes = list(range(args.min, args.max + 1, args.step))
    print(f"# model {args.model}, {len(sizes)} square sizes {sizes[0]}..{sizes[-1]} (step {args.step}), "
          f"rflens base size {args.base}")

    start = time.perf_counter()
    model = build(args.model)
    print(f"build (random init, CPU, excluded): {time.perf_counter() - start:.2f} s")
    capture(model, args.base)  # warm-up (imports, caches)
    classify(capture(model, args.base))

    # (a) rflens: one capture, one check, then the sweep without tracing
    start = time.perf_counter()
    graph = capture(model, args.base)
    t_capture = time.perf_counter() - start
    start = time.perf_counter()
    res = Resolutions(graph, retrace=lambda s: capture(model, s))
    t_check = time.perf_counter() - start
    start = time.perf_counter()
    mine = res.sweep(sizes)
    t_sweep = time.perf_counter() - start
    trusted = res.retrace_reason is None
    print(f"rflens one-off: capture at {args.base} {1000 * t_capture:.0f} ms, Resolutions (propagate + check "
          f"against 2 real captures) {1000 * t_check:.0f} ms; resize trusted: {trusted}"
          + ("" if trusted else f" (it traces again at every size: {res.retrace_reason})"))
    print(f"rflens sweep: {1000 * t_sweep:.0f} ms for {len(sizes)} sizes, {1000 * t_sweep / len(sizes):.2f} ms "
          "per size")

    # (b) retrace at every size (or a subsample)
    step = args.retrace_step
    if step is None:
        probe = [retrace_one(model, n)[1] for n in (sizes[0], args.base, sizes[-1])]
        estimate = statistics.median(probe) * len(sizes)
        step = 1 if estimate <= args.budget else 8
        print(f"retrace estimate for all {len(sizes)} sizes: {estimate:.0f} s (budget {args.budget:.0f} s) -> "
              f"retrace step {step}")
    index = list(range(0, len(sizes), step))
    theirs: dict[int, SizeReport | CaptureError] = {}
    times = []
    for i in index:
        theirs[i], seconds = retrace_one(model, sizes[i])
        times.append(seconds)
    t_retrace = sum(times)
    per_size = t_retrace / len(times)
    total = per_size * len(sizes)
    label = "measured" if step == 1 else f"extrapolated from {len(times)} sizes (every {step}th)"
    print(f"retrace: {1000 * per_size:.1f} ms per size (median {1000 * statistics.median(times):.1f}, "
          f"min {1000 * min(times):.1f}, max {1000 * max(times):.1f}); measured {t_retrace:.1f} s for "
          f"{len(times)} sizes; total for all {len(sizes)} sizes {total:.1f} s ({label})")

    # compare
    both = only_mine = only_theirs = neither = 0
    bad_unproductive, bad_layers, disagree = [], [], []
    for i in index:
        a, b = mine[i], theirs[i]
        if isinstance(a, SizeReport) and isinstance(b, SizeReport):
            both += 1
            if a.unproductive != b.unproductive:
                bad_unproductive.append((sizes[i], a.unproductive, b.unproductive))
            if a.layers != b.layers or a.waste != b.waste:
                bad_layers.append(sizes[i])
        elif isinstance(a, SizeReport) or isinstance(b, SizeReport):
            only_mine += isinstance(a, SizeReport)
            only_theirs += isinstance(b, SizeReport)
            disagree.append((sizes[i], describe(a), describe(b)))
        else:
            neither += 1
    print(f"compared {len(index)} sizes: {both} with results from both (unproductive lists identical at "
          f"{both - len(bad_unproductive)}, all layer results and waste identical at {both - len(bad_layers)}), "
          f"{neither} where neither runs, {only_mine} with a result from rflens only, {only_theirs} from the "
          f"retrace only")
    counts = sorted({len(r.unproductive) for r in mine if isinstance(r, SizeReport)})
    if counts:
        print(f"unproductive layers over the sweep: {counts[0]}..{counts[-1]}")

    print()
    print("| method | one-off ms | total s | per size ms | sizes timed |")
    print("|---|---|---|---|---|")
    print(f"| rflens Resolutions.sweep | {1000 * (t_capture + t_check):.0f} | {t_sweep:.2f} | "
          f"{1000 * t_sweep / len(sizes):.2f} | {len(sizes)} |")
    print(f"| retrace at every size | - | {total:.1f}{'' if step == 1 else ' (extrapolated)'} | {1000 * per_size:.1f} "
          f"| {len(times)} |")
    print(f"speed-up of the sweep: {total / t_sweep:.0f}x; including rflens's one-off capture and check: "
          f"{total / (t_sweep + t_capture + t_check):.0f}x")

    for size, x, y in disagree:
        print(f"DISAGREE at {size}: rflens {x}; retrace {y}")
    for size, x, y in bad_unproductive:
        print(f"UNPRODUCTIVE DIFFERS at {size}: rflens {x}; retrace {y}")
    if bad_layers:
        print(f"layer results or waste differ at {len(bad_layers)} sizes: {bad_layers[:20]}")
    assert not bad_unproductive and not disagree, \
        f"{len(bad_unproductive)} sizes with different unproductive lists, {len(disagree)} where only one side ran"


if __name__ == "__main__":
    main()

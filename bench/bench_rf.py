"""Time rflens's receptive-field analysis against the gradient-support oracle, in one run.

For each model: construction (random init on the CPU, reported separately), rflens (capture on meta +
analysis, median of --repeat runs) at two input sizes, and the obvious alternative: the gradient of one
output unit with respect to the input (one forward and one backward pass of the real float32 model on the
CPU, which is what a gradient-support measurement costs at the least). Prints a table and the ratios.

    python bench/bench_rf.py                      # 20 models, 224 and 2048
    python bench/bench_rf.py --models resnet50 --sizes 224 512 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import build, machine

import rflens

DEFAULT_MODELS = [
    "torchvision:resnet18", "torchvision:resnet50", "torchvision:resnet101", "torchvision:resnext50_32x4d",
    "torchvision:wide_resnet50_2", "torchvision:vgg16", "torchvision:densenet121", "torchvision:mobilenet_v2",
    "torchvision:mobilenet_v3_large", "torchvision:efficientnet_b0", "torchvision:regnet_y_400mf",
    "torchvision:convnext_tiny", "torchvision:googlenet", "torchvision:shufflenet_v2_x1_0",
    "timm:tf_efficientnet_b0", "timm:cspdarknet53", "timm:dla34", "timm:hrnet_w18_small", "timm:xception41",
    "timm:ghostnet_100",
]


def time_rflens(model: torch.nn.Module, size: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        rflens.receptive_field(model, size)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_gradient(model: torch.nn.Module, size: int) -> float:
    """One input gradient of the centre unit of the last spatial map (the cheapest gradient-support probe)."""
    x = torch.randn(1, 3, size, size, requires_grad=True)
    start = time.perf_counter()
    out = model(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    out.reshape(-1)[0].backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--sizes", nargs="*", type=int, default=[224, 2048])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--gradient-max-size", type=int, default=512,
                        help="largest size at which the gradient probe is timed (it is slow)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(machine())
    header = ["model", "build s"] + [f"rflens {s} ms" for s in args.sizes]
    grad_sizes = [s for s in args.sizes if s <= args.gradient_max_size]
    header += [f"gradient {s} ms" for s in grad_sizes] + [f"ratio {s}" for s in grad_sizes]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    per_size: dict[int, list[float]] = {s: [] for s in args.sizes}
    ratios: dict[int, list[float]] = {s: [] for s in grad_sizes}
    for spec in args.models:
        start = time.perf_counter()
        model = build(spec)
        built = time.perf_counter() - start
        rflens.receptive_field(model, args.sizes[0])  # warm-up (imports, caches)
        row = [spec, f"{built:.2f}"]
        mine = {}
        for size in args.sizes:
            mine[size] = time_rflens(model, size, args.repeat)
            per_size[size].append(mine[size])
            row.append(f"{1000 * mine[size]:.0f}")
        grads = {}
        for size in grad_sizes:
            grads[size] = time_gradient(model, size)
            row.append(f"{1000 * grads[size]:.0f}")
        for size in grad_sizes:
            ratios[size].append(grads[size] / mine[size])
            row.append(f"{grads[size] / mine[size]:.1f}x")
        print("| " + " | ".join(row) + " |", flush=True)
    print()
    for size in args.sizes:
        print(f"rflens at {size}: median {1000 * statistics.median(per_size[size]):.0f} ms per model, "
              f"max {1000 * max(per_size[size]):.0f} ms")
    for size in grad_sizes:
        print(f"gradient probe / rflens at {size}: median {statistics.median(ratios[size]):.1f}x")
    if len(args.sizes) > 1:
        growth = [b / a for a, b in zip(per_size[args.sizes[0]], per_size[args.sizes[-1]], strict=True)]
        print(f"rflens time at {args.sizes[-1]} / at {args.sizes[0]}: median {statistics.median(growth):.2f}")


if __name__ == "__main__":
    main()

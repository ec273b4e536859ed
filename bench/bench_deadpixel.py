"""Time the weight-free dead-pixel test against the obvious alternative, the weighted one, on the same model.

- **structural test** (``rflens.dead_pixel_test(model, size)``): capture on meta, culprit layers, the path-count
  map of every output unit, indices (L1/L2, period, strength, dead pixels). No weights, no images.
- **kernel padding** (``rflens.kernel_pad(model, size)``): the fix with its self-check (two traces and one
  forward of each model on two random images).
- **weighted test** (``dead_pixel_test(..., weighted=True, n=N)``): the same plus the gradient ERF of the
  predicted class under the ``kim`` protocol over N noise images, what one would run to see the checkerboard
  without rflens's structural map.

Each side runs ``--repeat`` times after a warm-up; medians. Random init, no download.

    python bench/bench_deadpixel.py                         # resnet50 and resnet152 at 224 and 1024
    python bench/bench_deadpixel.py --models torchvision:resnet50 --sizes 224 --n 16 --device cuda
"""

from __future__ import annotations

import argparse
from functools import partial

from common import build, machine, median_time

from rflens.deadpixel import dead_pixel_test
from rflens.transforms import kernel_pad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["torchvision:resnet50", "torchvision:resnet152"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 1024])
    parser.add_argument("--n", type=int, default=8, help="noise images of the weighted test (default 8)")
    parser.add_argument("--weighted-sizes", nargs="+", type=int, default=[224],
                        help="sizes at which the weighted test is timed too (default 224)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(machine())
    print("| model | size | structural test | kernel padding (+check) | weighted test (n images) | weighted / "
          "structural |")
    print("|---|---|---|---|---|---|")
    for spec in args.models:
        model = build(spec).to(args.device)
        for size in args.sizes:
            structural = median_time(partial(dead_pixel_test, model, size), args.repeat)
            padding = median_time(partial(kernel_pad, model, size, device=args.device), args.repeat)
            weighted = ratio = "-"
            if size in args.weighted_sizes:
                seconds = median_time(partial(dead_pixel_test, model, size, weighted=True, n=args.n,
                                              device=args.device), 1)
                weighted, ratio = f"{seconds:.2f} s ({args.n})", f"{seconds / structural:.0f}x"
            print(f"| {spec} | {size} | {structural:.2f} s | {padding:.2f} s | {weighted} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()

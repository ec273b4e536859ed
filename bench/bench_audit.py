"""Time ``rflens audit`` against the obvious alternative: the five single-analysis commands it replaces, each a
process of its own (rf, border, padding, deadpixel --fix kernel-pad, erf --protocol structural).

Both are timed end to end as a user runs them (process start, imports, model build included), in the same run.
The HTML report is timed separately. Usage: ``python bench_audit.py [--models timm:resnet50,...] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import machine


def wall(argv: list[str], repeat: int) -> float:
    """Median wall time of ``repeat`` runs of a command (it must succeed)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="timm:resnet50,timm:efficientnet_b0,torchvision:vgg16")
    parser.add_argument("--size", default="224")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rflens = shutil.which("rflens") or "rflens"
    print(machine())
    print(f"# median of {args.repeat} runs, input {args.size}, wall seconds including process start")
    print("| model | `rflens audit` | five separate commands | ratio | audit + `--html` |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models.split(","):
            size = ["--input-size", args.size]
            audit = wall([rflens, "audit", spec, *size], args.repeat)
            separate = sum(wall(cmd, args.repeat) for cmd in (
                [rflens, "rf", spec, *size], [rflens, "border", spec, *size], [rflens, "padding", spec, *size],
                [rflens, "deadpixel", spec, *size, "--fix", "kernel-pad"],
                [rflens, "erf", spec, *size, "--protocol", "structural"]))
            html = wall([rflens, "audit", spec, *size, "--html", str(Path(tmp) / "r.html")], args.repeat)
            print(f"| {spec} | {audit:.1f} s | {separate:.1f} s | {separate / audit:.1f}x | {html:.1f} s |",
                  flush=True)


if __name__ == "__main__":
    main()

"""Time one ERF run as one process and as N ranks under torchrun, on the same images, and check they agree.

Both sides are whole commands (``rflens erf ... --out``), so both pay Python's start, the imports and the model
build; torchrun's ranks pay them in parallel plus the rendezvous. On CPU each rank gets ``cores / N`` threads
(the single process gets them all), so the ratio says what sharding adds on top of PyTorch's own
intra-op threads. On GPUs (``--device cuda``) each rank takes the GPU of its local rank (NCCL).

    python bench/bench_erf_distributed.py                                   # resnet50 layer4, 32 images, 2 ranks
    python bench/bench_erf_distributed.py --device cuda --ranks 8 --images 512 --size 1024 \
        --model timm:convnext_xlarge --layer stages.3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="timm:resnet50")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--size", default="224")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        common = ["erf", args.model, "--layer", args.layer, "--input-size", args.size, "--num-images",
                  str(args.images), "--device", args.device]
        one = [sys.executable, "-m", "rflens", *common, "--out", f"{tmp}/one.json"]
        many = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.ranks),
                "-m", "rflens", *common, "--out", f"{tmp}/many.json"]
        env = dict(os.environ)
        ranks_env = env | {"OMP_NUM_THREADS": str(max(1, cores // args.ranks))}
        times: dict[str, list[float]] = {"one": [], "many": []}
        for _ in range(args.repeat):
            times["one"].append(timed(one, env))
            times["many"].append(timed(many, ranks_env))
        a = json.loads(Path(f"{tmp}/one.json").read_text())
        b = json.loads(Path(f"{tmp}/many.json").read_text())
        assert (a["n"], a["nonfinite"]) == (b["n"], b["nonfinite"])
        diff = np.abs(np.load(a["map"]) - np.load(b["map"])).max() / np.abs(np.load(a["map"])).max()
    t1, tn = min(times["one"]), min(times["many"])
    print(f"{args.model} {args.layer} at {args.size}, {args.images} noise images, {args.device}, best of "
          f"{args.repeat}")
    print(f"one process: {t1:.1f} s | torchrun {args.ranks} ranks: {tn:.1f} s | one / ranks: {t1 / tn:.2f}x | "
          f"max map difference {diff:.1e} of the map's max")


if __name__ == "__main__":
    main()

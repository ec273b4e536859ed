"""What every benchmark script needs: the model built quietly (random init, no download) and one line that
says on what machine and software the numbers were taken."""

from __future__ import annotations

import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch

import rflens


def build(spec: str) -> torch.nn.Module:
    from rflens.sources import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(spec)


def machine() -> str:
    try:
        import torchvision

        tv = f", torchvision {torchvision.__version__}"
    except ImportError:
        tv = ""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB{gpu}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}{tv}, rflens {rflens.__version__}")


def median_time(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)

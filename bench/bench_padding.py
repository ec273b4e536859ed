"""Time the padding audit, and the search for input sizes without uneven layers against the obvious alternative:
tracing the model again at every size.

- **audit** (``rflens.padding.audit``): the uneven layers of a captured graph at its size.
- **even sizes, from the graph** (``padding.even_sizes`` over ``Resolutions.graph_at``): every size in
  32..1024 (993 sizes), the graph carried to each size by its size rules (no trace).
- **even sizes, traced**: capture the model on the meta device at a size and audit it: timed on ``--sample``
  sizes spread over the range (the results must agree with the graph's), per size and projected to 993 sizes.
- **report** (``rflens.padding.padding_report``): capture, the size-rule check (two more captures), the audit,
  the 993-size search and six foveation maps (model, zeros, reflect, replicate, circular, partial).

Medians of ``--repeat`` runs after a warm-up. Random init, no download.

    python bench/bench_padding.py
    python bench/bench_padding.py --models torchvision:resnet50 --sizes 224 --sample 8
"""

from __future__ import annotations

import argparse
import time
from functools import partial

from common import build, machine, median_time

from rflens.border import Resolutions
from rflens.capture import capture
from rflens.padding import DEFAULT_RANGE, audit, even_sizes, padding_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["torchvision:resnet50", "torchvision:resnet152", "timm:tf_efficientnet_b0"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224])
    parser.add_argument("--sample", type=int, default=16, help="sizes traced for the alternative (default 16)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    lo, hi = DEFAULT_RANGE
    total = hi - lo + 1
    print(machine())
    print(f"| model | size | audit | even sizes from the graph ({total} sizes) | traced, per size | traced, "
          f"{total} sizes (projected) | traced / graph | full report |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in args.models:
        model = build(spec)
        for size in args.sizes:
            def trace(s, m=model):
                return capture(m, s)

            graph = trace(size)
            res = Resolutions(graph, trace)
            assert res.resizable, res.retrace_reason
            t_audit = median_time(partial(audit, graph), args.repeat)
            t_graph = median_time(partial(even_sizes, res.graph_at, graph.input_size, lo, hi), args.repeat)
            found = set(even_sizes(res.graph_at, graph.input_size, lo, hi).sizes)
            sample = [lo + round(i * (hi - lo) / (args.sample - 1)) for i in range(args.sample)]
            start = time.perf_counter()
            for n in sample:
                uneven = any(r.uneven for r in audit(trace(n), trace_back=False))
                assert (n in found) == (not uneven), f"{spec}: size {n} disagrees"
            per_size = (time.perf_counter() - start) / len(sample)
            t_report = median_time(partial(padding_report, model, size), 1)
            print(f"| {spec} | {size} | {t_audit * 1e3:.1f} ms | {t_graph:.2f} s ({t_graph / total * 1e3:.2f} ms "
                  f"per size) | {per_size:.3f} s | {per_size * total:.0f} s | {per_size * total / t_graph:.0f}x | "
                  f"{t_report:.2f} s |", flush=True)


if __name__ == "__main__":
    main()

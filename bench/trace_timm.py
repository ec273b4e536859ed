"""Trace every timm model (random init on the meta device, its default input size) and list the failures.

    python bench/trace_timm.py [--filter 'resnet*'] [--out failures.tsv]

Prints one line per failing model (name, error) and a summary; exit status 0. A per-model time limit keeps a
pathological model from stalling the sweep.
"""

from __future__ import annotations

import argparse
import collections
import signal
import time
import warnings

import torch

import rflens


class _TimeLimit(Exception):
    pass


def _alarm(*_):
    raise _TimeLimit


def main() -> None:
    import timm

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filter", default="*")
    parser.add_argument("--out", default=None, help="write name<TAB>error lines here")
    parser.add_argument("--limit-s", type=int, default=120)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    signal.signal(signal.SIGALRM, _alarm)
    names = timm.list_models(args.filter)
    failures: dict[str, str] = {}
    start = time.perf_counter()
    for i, name in enumerate(names, 1):
        signal.alarm(args.limit_s)
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
            rflens.receptive_field(model, model.pretrained_cfg.get("input_size", (3, 224, 224))[1:])
        except _TimeLimit:
            failures[name] = f"took more than {args.limit_s} s"
        except Exception as exc:  # noqa: BLE001 - a sweep reports every failure and goes on
            failures[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        finally:
            signal.alarm(0)
        if i % 100 == 0:
            print(f"# {i}/{len(names)} models, {len(failures)} failed, {time.perf_counter() - start:.0f} s", flush=True)
    for name, error in failures.items():
        print(f"{name}\t{error}")
    kinds = collections.Counter(error.split(":")[0] for error in failures.values())
    print(f"# {len(names)} models in {time.perf_counter() - start:.0f} s: {len(names) - len(failures)} traced, "
          f"{len(failures)} failed ({dict(kinds)})")
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(f"{n}\t{e}\n" for n, e in failures.items())


if __name__ == "__main__":
    main()

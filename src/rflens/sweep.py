"""An architecture survey across a model zoo: one row of weight-free numbers per model, written to a CSV.

:func:`expand` turns ``timm:PATTERN`` / ``torchvision:PATTERN`` (fnmatch, case-insensitive) into model specs;
:func:`survey` builds one model and calls the analyses through their public functions (the receptive field of
the last spatial map as :attr:`rflens.audit.Audit.final` reads it, :func:`rflens.border_report`,
:func:`rflens.padding_report`, :func:`rflens.dead_pixel_test`), so a row says what the single commands say;
:func:`sweep` runs it over many models, in this process or in worker processes, appending each row to the CSV as
it comes (resumable). Models are built on the meta device (no weights are needed, none are initialised); a model
whose constructor or forward needs real values is built again on the CPU with the seeded init.

A model is *convolutional* here (:func:`token_mixer` returns ``""``) when every op that feeds its last spatial
map mixes positions only through windows (convolutions, poolings, interpolation, padding, a Linear over a patch,
cyclic shifts) or through reductions over positions whose result is broadcast back (global pooling, the
statistics of a normalisation, squeeze-excitation gates). See docs/sweep.md for the columns and the rules.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from rflens.errors import MetaDeviceError, RflensError
from rflens.graph import Graph

COLUMNS = ("model", "family", "status", "reason", "input_size", "params", "flops", "final_layer", "final_rf",
           "final_stride", "global", "unproductive_layers", "unproductive_flops_share", "uneven_layers",
           "nearest_even_size", "culprit_layers", "structural_l1", "token_mixer", "seconds")
OK, FAILED, SKIPPED = "ok", "failed", "skipped"
DEFAULT_TIMEOUT = 600.0
WORKER_DIED = "worker process died"
WATCHDOG_GRACE = 60.0  # seconds past the timeout before a worker stuck in one call is ended
REASON_LENGTH = 200  # characters of an error's first line kept in the reason column

# aten ops that multiply two operands and sum over a dim: attention's products (sdpa's fused kernels are
# matched by name) and Linear layers
PRODUCT_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "mv", "addmv", "dot", "einsum"})
SOFTMAX_OPS = frozenset({"_softmax", "softmax", "_log_softmax", "log_softmax", "_safe_softmax"})
Progress = Callable[["Row | None", int, int], None]


class SweepTimeout(BaseException):  # noqa: N818 - not an Exception: a model's `except Exception` must not eat it
    """Raised by the per-model timer inside a worker (a BaseException, like KeyboardInterrupt)."""


# -- one row ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One model of a sweep; the fields are the CSV's columns (``is_global`` is the column ``global``).
    Numbers are None (an empty cell) where the analysis did not run (failed, skipped) or has no value."""

    model: str
    family: str
    status: str  # ok | failed | skipped
    reason: str = ""  # failed: the error's class and first line; skipped: the token mixer
    input_size: str = ""  # per axis: one number when the axes agree, else HxW
    params: int | None = None
    flops: int | None = None
    final_layer: str = ""  # the module whose output is the last spatial map, or "op in 'module'"
    final_rf: str = ""  # receptive field of the last map per axis; empty: no local path
    final_stride: str = ""  # effective stride per axis (a fraction after upsampling; "-": paths of several)
    is_global: bool | None = None
    unproductive_layers: int | None = None
    unproductive_flops_share: float | None = None
    uneven_layers: int | None = None
    nearest_even_size: str = ""  # nearest input size without uneven layers; empty: none in the searched range
    culprit_layers: int | None = None
    structural_l1: float | None = None
    token_mixer: str = ""  # "op in 'module'" of the first token-mixing op; empty: convolutional
    seconds: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        """What a CSV row is looked up by when a sweep is resumed."""
        return self.model, self.input_size

    def to_csv(self) -> dict[str, str]:
        out = {}
        for f, column in zip(fields(self), COLUMNS, strict=True):
            value = getattr(self, f.name)
            out[column] = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        return out

    @classmethod
    def from_csv(cls, record: dict[str, str]) -> Row:
        values: dict[str, Any] = {}
        for f, column in zip(fields(cls), COLUMNS, strict=True):
            text = record.get(column) or ""
            kind = str(f.type)
            if "bool" in kind:
                values[f.name] = None if text == "" else text == "true"
            elif "int" in kind:
                values[f.name] = None if text == "" else int(text)
            elif "float" in kind:
                values[f.name] = (None if text == "" else float(text)) if "None" in kind else float(text or 0)
            else:
                values[f.name] = text
        return cls(**values)


def _axes_text(values: Sequence[Any], missing: str = "") -> str:
    """One value when every axis agrees, else the values joined by x; None is ``missing`` when every axis has
    none, else '-'."""
    texts = ["-" if v is None else str(v) for v in values]
    if len(set(texts)) == 1:
        return missing if values[0] is None else texts[0]
    return "x".join(texts)


def size_text(input_size: int | Sequence[int]) -> str:
    """An input size as the sweep writes it: ``224`` (every axis), ``224x320``."""
    return str(input_size) if isinstance(input_size, int) else _axes_text(list(input_size))


def reason_of(exc: BaseException) -> str:
    """The error's class and the first line of its message, short."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= REASON_LENGTH else text[:REASON_LENGTH - 3] + "..."


# -- what a model is ----------------------------------------------------------------------------------------------
def _spans_positions(read: Any, n: int) -> bool:
    """Whether one read combines several positions of an input of ``n`` units in a way that is not a window: the
    whole axis (``None``), or a block of positions mixed together (``Resample``: Swin's attention inside a
    window). A broadcast of a reduced value (n = 1, an SE gate) mixes nothing here: the reduction did."""
    from rflens.geometry import Resample

    if n <= 1:
        return False
    return read is None or (isinstance(read, Resample) and not read.broadcast)


def token_mixer(graph: Graph) -> str:
    """``"op in 'module'"`` of the first op that mixes positions with a product of maps or a dense layer across
    positions, or ``""`` when the model is convolutional by rflens's definition.

    A matrix product of two image-dependent operands (attention's ``q @ k^T``, ``attn @ v``) is a token mixer
    wherever it runs, also where the graph no longer follows positions (a token sequence after a concat it
    reads as global). Otherwise only ops that feed the last spatial map (:func:`rflens.padding.last_map`)
    count: a readout after it (a classifier on a flattened map, as in VGG) is not a token mixer. Among those, a
    token mixer is

    - a matrix product (``mm``, ``addmm``, ``bmm``, ``matmul``, ``einsum``, scaled dot-product attention...) that
      reads some input across positions: a whole axis (ViT's ``q @ k^T`` and ``attn @ v``, MLP-Mixer's and
      ResMLP's Linear over tokens, gMLP's spatial gating) or a block of positions mixed together (Swin's
      attention within a window). A Linear over a non-overlapping patch reads a window (Swin's patch merging):
      it is a convolution and does not count;
    - a softmax across positions (attention weights: GCNet's global context, lambda layers).

    Everything else is a window or a reduction: convolutions, poolings, padding, interpolation, cyclic shifts,
    global pooling, normalisation statistics (GroupNorm), squeeze-excitation gates (a mean, then a product with
    the broadcast gate: elementwise, not a matrix product), elementwise products of maps (gating).
    """
    from rflens.graph import ancestors
    from rflens.padding import last_map

    feeding = ancestors(graph, last_map(graph).id)
    for node in graph.nodes[1:]:
        product = node.op in PRODUCT_OPS or "scaled_dot_product" in node.op
        if product and len(node.inputs) > 1:  # two image-dependent operands: attention, wherever it runs
            return node.label
        if node.id not in feeding or (not product and node.op not in SOFTMAX_OPS):
            continue
        for k, src in enumerate(node.inputs):
            sizes = graph.nodes[src].sizes
            if any(_spans_positions(read, sizes[a]) for a, read in enumerate(node.reads[k])):
                return node.label
    return ""


def family_of(spec: Any) -> str:
    """timm: the timm module the model is registered in (``resnet``, ``vision_transformer``); torchvision: the
    builder's module's last part (``resnet``, ``faster_rcnn``); a file: its name; '' when unknown."""
    if not isinstance(spec, str):
        return type(spec).__name__
    prefix, sep, name = spec.partition(":")
    try:
        if sep and prefix == "timm":
            import timm

            return timm.model_entrypoint(name).__module__.rpartition(".")[2]
        if sep and prefix == "torchvision":
            import torchvision.models

            return torchvision.models.get_model_builder(name.lower()).__module__.rpartition(".")[2]
    except (ImportError, KeyError, ValueError, RuntimeError):
        return ""
    path = spec.rpartition(":")[0] if spec.rpartition(":")[0].endswith(".py") else spec
    return Path(path).name


# -- one model ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`SweepTimeout` in this thread after ``seconds`` (SIGALRM; only in the main thread of a
    process that has it, else no limit)."""
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    armed = [True]

    def alarm(signum: int, frame: Any) -> None:
        if armed[0]:
            raise SweepTimeout

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)  # again every second, should the model swallow it
    try:
        yield
    finally:
        try:
            armed[0] = False
        finally:  # restored even when the alarm fires just now
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def _build_and_capture(model: Any, input_size: int | Sequence[int], in_channels: int | None,
                       seed: int) -> tuple[Any, Graph, str]:
    """The model, its graph and where the analyses trace it. A spec is built on meta (no init); if that fails,
    or the forward needs real data, it is built on the CPU with the seeded init and traced there. A built model
    is traced on meta, else where its parameters are."""
    from rflens.capture import capture
    from rflens.sources import load_model

    spec = model if isinstance(model, str) else None
    on_meta = False
    if spec is not None:
        try:
            model, on_meta = load_model(spec, seed=seed, device="meta"), True
        except Exception:  # noqa: BLE001 - a constructor that needs real values: the seeded CPU build
            model = load_model(spec, seed=seed)
    try:
        return model, capture(model, input_size, in_channels=in_channels, device="meta"), "meta"
    except MetaDeviceError:
        if on_meta:
            model = load_model(spec, seed=seed)
        device = str(next((p.device for p in model.parameters()), "cpu"))
        return model, capture(model, input_size, in_channels=in_channels, device=device), device


def survey(model: Any, input_size: int | Sequence[int], *, model_name: str | None = None, family: str | None = None,
           in_channels: int | None = None, seed: int = 0, cnn_only: bool = False,
           timeout: float | None = None) -> Row:
    """The sweep's row of one model (a spec string or an ``nn.Module``) at ``input_size``; never raises for the
    model's sake: an error becomes a ``failed`` row with its reason, and so does running past ``timeout``
    seconds (checked in the main thread only). ``cnn_only``: a model with a token mixer is ``skipped`` after its
    capture (its size, cost and final field are still filled in)."""
    from rflens.sources import describe

    start = time.perf_counter()
    name = model_name if model_name is not None else describe(model)
    base = Row(name, family if family is not None else family_of(model), FAILED, input_size=size_text(input_size))
    try:
        with _time_limit(timeout):
            row = _survey(model, input_size, base, in_channels, seed, cnn_only)
    except SweepTimeout:
        row = replace(base, reason=f"timed out after {timeout:g} s")
    except Exception as exc:  # noqa: BLE001 - one model's failure is a row, never the end of the sweep
        row = replace(base, reason=reason_of(exc))
    return replace(row, seconds=round(time.perf_counter() - start, 2))


def _survey(model: Any, input_size: int | Sequence[int], base: Row, in_channels: int | None, seed: int,
            cnn_only: bool) -> Row:
    from rflens.audit import module_of
    from rflens.border import border_report
    from rflens.deadpixel import dead_pixel_test
    from rflens.padding import last_map, padding_report
    from rflens.rf import analyse

    model, graph, device = _build_and_capture(model, input_size, in_channels, seed)
    size, channels = graph.input_size, graph.input_shape[1]
    last = last_map(graph)
    final = analyse(graph, base.model).nodes[last.id]  # the field of the last map (Audit.final's numbers)
    mixer = token_mixer(graph)
    row = replace(base, input_size=size_text(size), params=graph.params, flops=graph.flops,
                  final_layer=module_of(graph, last.id) or last.label,
                  final_rf=_axes_text(final.rf), final_stride=_axes_text(final.stride, "-"), is_global=final.is_global,
                  token_mixer=mixer)
    if cnn_only and mixer:
        return replace(row, status=SKIPPED, reason=f"token mixer: {mixer}")
    border = border_report(model, size, in_channels=channels, device=device, model_name=base.model,
                           suggestions=False)
    padding = padding_report(model, size, in_channels=channels, device=device, model_name=base.model, modes=())
    dead = dead_pixel_test(model, size, in_channels=channels, device="cpu" if device == "meta" else device,
                           model_name=base.model)
    nearest = padding.suggested_size()
    return replace(row, status=OK, unproductive_layers=len(border.unproductive),
                   unproductive_flops_share=border.waste.flops_share, uneven_layers=len(padding.uneven),
                   nearest_even_size="" if nearest is None else size_text(nearest),
                   culprit_layers=len(dead.culprits), structural_l1=dead.structural.indices.l1)


# -- many models ------------------------------------------------------------------------------------------------
def _zoo_names(zoo: str) -> list[str]:
    try:
        if zoo == "timm":
            import timm

            return timm.list_models()
        import torchvision.models

        return torchvision.models.list_models()
    except ImportError as exc:
        raise RflensError(f"{zoo} is not installed: pip install \"rflens[zoo]\"") from exc


def expand(patterns: Iterable[str]) -> list[str]:
    """Model specs from ``timm:PATTERN`` and ``torchvision:PATTERN`` (fnmatch wildcards, case-insensitive,
    against ``timm.list_models()`` / ``torchvision.models.list_models()``; a timm name with a pretrained tag is
    taken as is); anything else is one spec. Sorted within a pattern, duplicates dropped, order kept."""
    out: dict[str, None] = {}
    for pattern in patterns:
        prefix, sep, name = pattern.partition(":")
        if sep and prefix in ("timm", "torchvision"):
            wanted = name.lower()
            found = sorted(n for n in _zoo_names(prefix) if fnmatch.fnmatchcase(n.lower(), wanted))
            if not found and prefix == "timm" and not any(c in name for c in "*?["):
                import timm

                found = [name] if timm.is_model(name) else []
            if not found:
                raise RflensError(f"{pattern!r} matches no {prefix} model (patterns are fnmatch wildcards: "
                                  f"{prefix}:resnet*)")
            out.update((f"{prefix}:{n}", None) for n in found)
        else:
            out[pattern] = None
    return list(out)


class _Table:
    """The CSV: read at the start (for resuming), then appended to row by row and flushed."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = None if path is None else Path(path)
        self.rows: list[Row] = []
        self._file: Any = None
        if self.path is None or not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with self.path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return
            if tuple(header) != COLUMNS:
                raise RflensError(f"{self.path} has the columns {', '.join(header)}; a sweep writes "
                                  f"{', '.join(COLUMNS)}: give another --csv file (or move that one away)")
            records = [(i, values) for i, values in enumerate(reader, 2) if values]
        truncated = not self.path.read_bytes().endswith(b"\n")  # a sweep killed while writing its last row
        for i, values in records:
            try:
                if len(values) != len(COLUMNS):
                    raise ValueError(f"{len(values)} cells, the header has {len(COLUMNS)}")
                self.rows.append(Row.from_csv(dict(zip(COLUMNS, values, strict=True))))
            except ValueError as exc:
                if truncated and i == records[-1][0]:
                    break  # the cut row is dropped: its model is surveyed again
                raise RflensError(f"{self.path}, line {i}: {exc}") from None
        if truncated:  # rewritten whole, so that the next row starts on a line of its own
            self._write(self.rows)

    def drop(self, keys: set[tuple[str, str]]) -> None:
        """Rewrite the file without the rows of ``keys``."""
        self.rows = [r for r in self.rows if r.key not in keys]
        if self.path is not None:
            self._write(self.rows)

    def _write(self, rows: Sequence[Row]) -> None:
        """The whole file, written beside it and moved into place: a crash leaves the old file or the new one."""
        assert self.path is not None
        part = self.path.with_name(self.path.name + ".part")
        with part.open("w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows(r.to_csv() for r in rows)
        os.replace(part, self.path)

    def append(self, row: Row) -> None:
        self.rows.append(row)
        if self.path is None:
            return
        if self._file is None:
            fresh = not self.path.is_file() or self.path.stat().st_size == 0
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", newline="")
            if fresh:
                csv.DictWriter(self._file, COLUMNS).writeheader()
        csv.DictWriter(self._file, COLUMNS).writerow(row.to_csv())
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class SweepResult:
    """A sweep: ``models`` (expanded, in order), this run's ``rows`` (in the order they finished), the rows of
    these models already in the CSV that were not redone (``earlier``), and this run's wall time."""

    models: list[str]
    input_size: str
    rows: list[Row]
    earlier: list[Row]
    seconds: float
    csv_path: Path | None = None
    jobs: int = 1

    @property
    def all_rows(self) -> list[Row]:
        """Every row of the sweep's models, earlier runs' included, in the models' order."""
        order = {m: i for i, m in enumerate(self.models)}
        return sorted(self.earlier + self.rows, key=lambda r: order.get(r.model, len(order)))

    @property
    def exit_code(self) -> int:
        """1 when this run surveyed models and every one failed, else 0."""
        return 1 if self.rows and all(r.status == FAILED for r in self.rows) else 0


def counts(rows: Iterable[Row]) -> dict[str, int]:
    out = {OK: 0, SKIPPED: 0, FAILED: 0}
    for r in rows:
        out[r.status] = out.get(r.status, 0) + 1
    return out


def failures(rows: Iterable[Row]) -> dict[str, list[str]]:
    """The failed models grouped by reason, the largest group first."""
    groups: dict[str, list[str]] = {}
    for r in rows:
        if r.status == FAILED:
            groups.setdefault(r.reason, []).append(r.model)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def sweep(specs: Iterable[str], input_size: int | Sequence[int] = 224, *, jobs: int = 1,
          csv_path: str | os.PathLike | None = None, in_channels: int | None = None, seed: int = 0,
          cnn_only: bool = False, timeout: float | None = DEFAULT_TIMEOUT, retry_failed: bool = False,
          progress: Progress | None = None, announce: Callable[[str], None] | None = None) -> SweepResult:
    """Survey every model of ``specs`` (patterns are expanded by :func:`expand`) at ``input_size``.

    Rows go to ``csv_path`` one by one (flushed), in the order the models finish. Models already there at this
    input size are not surveyed again, except failed ones with ``retry_failed`` and skipped ones when this sweep
    is not ``cnn_only`` (their rows are removed first); with ``cnn_only``, an earlier row of a model with a token
    mixer counts as skipped. ``jobs`` > 1 runs models in that many worker processes (forkserver, else spawn), each with
    ``cpu_count // jobs`` torch threads; a worker that dies fails the model it ran (``worker process died``)
    and the pool is made again. ``progress(row, done, total)`` is told about each finished model (``row`` None
    at the start); ``announce(text)`` about what is resumed before the first model starts."""
    if jobs < 1:
        raise RflensError(f"jobs must be at least 1, got {jobs}")
    if timeout is not None and timeout <= 0:
        raise RflensError(f"the timeout must be positive, got {timeout}")
    start = time.perf_counter()
    models = expand(specs)
    size = size_text(input_size)
    table = _Table(csv_path)
    wanted = {(m, size) for m in models}
    # run again: failed rows when asked; rows skipped by an earlier --cnn-only when this sweep is not one
    again = [r for r in table.rows if r.key in wanted and
             ((retry_failed and r.status == FAILED) or (not cnn_only and r.status == SKIPPED))]
    retry = {r.key for r in again}
    if retry:
        table.drop(retry)
    redone = " and ".join(f"{n} {status}" for status in (FAILED, SKIPPED)
                          if (n := sum(r.status == status for r in again)))
    present = {r.key for r in table.rows}
    earlier = [r for r in table.rows if r.key in wanted]
    if cnn_only:  # an earlier full sweep's row of a model with a token mixer counts as skipped here
        earlier = [replace(r, status=SKIPPED, reason=f"token mixer: {r.token_mixer}")
                   if r.status == OK and r.token_mixer else r for r in earlier]
    todo = [m for m in models if (m, size) not in present]
    if announce is not None and (earlier or retry):
        announce(f"{len(earlier)} of {len(models)} already in {csv_path} at {size}"
                 + (f"; {redone} rows removed to run again" if retry else "")
                 + f"; surveying {len(todo)}")
    families = {m: family_of(m) for m in todo}
    options = {"in_channels": in_channels, "seed": seed, "cnn_only": cnn_only, "timeout": timeout}
    rows: list[Row] = []

    def finished(row: Row) -> None:
        table.append(row)
        rows.append(row)
        if progress is not None:
            progress(row, len(rows), len(todo))

    if progress is not None:
        progress(None, 0, len(todo))
    try:
        if jobs == 1:
            for m in todo:
                finished(survey(m, input_size, model_name=m, family=families[m], **options))
        elif todo:
            _in_workers(todo, jobs, input_size, families, options, finished)
    finally:
        table.close()
    return SweepResult(models, size, rows, earlier, time.perf_counter() - start,
                       None if csv_path is None else Path(csv_path), jobs)


# -- worker processes ---------------------------------------------------------------------------------------------
_PRELOAD = ["rflens.sweep", "rflens.audit", "rflens.border", "rflens.padding", "rflens.deadpixel", "rflens.erf",
            "rflens.sources", "timm", "torchvision"]


def _context() -> Any:
    """forkserver where there is one (workers fork from a server that imported torch once), else spawn: never
    fork a parent that may hold torch threads."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)  # modules that fail to import are skipped by the server
        return ctx
    return multiprocessing.get_context("spawn")


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _task(spec: str, input_size: int | Sequence[int], family: str, options: dict[str, Any], grace: float) -> Row:
    """One model in a worker. The timer of :func:`survey` interrupts Python code only. A model stuck in one long
    C call past ``timeout + grace`` ends its worker, which the parent records as timed out: a call that holds
    the GIL and computes hits the CPU-time limit (the kernel's SIGXCPU, which needs no Python), one that waits
    with the GIL released meets the watchdog thread."""
    timeout = options.get("timeout")
    if not timeout:
        return survey(spec, input_size, model_name=spec, family=family, **options)
    import resource

    import torch

    watchdog = threading.Timer(timeout + grace, os._exit, (1,))
    watchdog.daemon = True
    limits = resource.getrlimit(resource.RLIMIT_CPU)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime + (timeout + grace) * torch.get_num_threads()
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))  # no core file
    resource.setrlimit(resource.RLIMIT_CPU, (int(cpu) + 1 if limits[1] == resource.RLIM_INFINITY
                                             else min(int(cpu) + 1, limits[1]), limits[1]))
    watchdog.start()
    try:
        return survey(spec, input_size, model_name=spec, family=family, **options)
    finally:
        watchdog.cancel()
        resource.setrlimit(resource.RLIMIT_CPU, limits)


def _in_workers(todo: Sequence[str], jobs: int, input_size: int | Sequence[int], families: dict[str, str],
                options: dict[str, Any], finished: Callable[[Row], None], grace: float = WATCHDOG_GRACE) -> None:
    """Run ``todo`` in a pool of ``jobs`` processes. When a worker dies the pool breaks and every model running
    then is lost: a model that ran past the timeout failed by it (its watchdog ended the worker); the others
    are run again alone, and a model whose worker dies while it runs alone fails."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    queue: deque[tuple[str, bool]] = deque((m, False) for m in todo)  # (model, must run alone)
    running: dict[Future, tuple[str, bool, float]] = {}  # model, alone, when it was submitted
    pool: ProcessPoolExecutor | None = None
    clean = False
    timeout = options.get("timeout")

    def died(model: str, since: float) -> Row:
        seconds = round(time.perf_counter() - since, 2)
        if timeout and seconds >= timeout:
            return Row(model, families[model], FAILED, f"timed out after {timeout:g} s (in one uninterruptible "
                       "call: its worker was stopped)", size_text(input_size), seconds=seconds)
        return Row(model, families[model], FAILED, WORKER_DIED, size_text(input_size), seconds=seconds)

    try:
        while queue or running:
            if pool is None:
                pool = ProcessPoolExecutor(max_workers=jobs, mp_context=_context(), initializer=_init_worker,
                                           initargs=(threads,))
            while queue and len(running) < jobs and not (queue[0][1] and running):
                model, alone = queue.popleft()
                future = pool.submit(_task, model, input_size, families[model], options, grace)
                running[future] = (model, alone, time.perf_counter())
                if alone:
                    break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            lost: list[tuple[str, bool, float]] = []
            for future in done:
                model, alone, since = running.pop(future)
                try:
                    row = future.result()
                except BrokenProcessPool:
                    lost.append((model, alone, since))
                    continue
                except Exception as exc:  # noqa: BLE001 - e.g. a row that could not be sent back
                    row = replace(died(model, since), reason=reason_of(exc))
                finished(row)  # outside the try: a failure to write the row is not the model's
            if not lost:
                continue
            pool.shutdown(wait=True, cancel_futures=True)  # broken: the other running models are lost too
            pool = None
            for future, (model, alone, since) in list(running.items()):
                if future.done() and not future.cancelled() and future.exception() is None:
                    finished(future.result())
                else:
                    lost.append((model, alone, since))
            running.clear()
            overdue = [x for x in lost if timeout and time.perf_counter() - x[2] >= timeout]
            if overdue:  # its watchdog ended the worker: the others were innocent
                blamed, again = overdue, [x for x in lost if x not in overdue]
            elif len(lost) == 1:
                blamed, again = lost, []
            else:  # which one ended the worker is not known: each runs again alone
                blamed, again = [], lost
            for model, _, since in blamed:
                finished(died(model, since))
            queue.extendleft(reversed([(model, True) for model, _, _ in again]))
        clean = True
    finally:
        if pool is not None:  # interrupted: do not wait for the models still running
            pool.shutdown(wait=clean, cancel_futures=True)

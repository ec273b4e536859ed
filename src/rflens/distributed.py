"""One ERF computed by several processes: the ranks of a ``torchrun`` launch (one node or many) or of a SLURM
``srun`` step. PyTorch's own engine does the work: :mod:`torch.distributed` (NCCL between GPUs, gloo between
CPUs) connects the ranks; rflens starts no process itself.

Each rank takes a contiguous shard of the images (:meth:`rflens.erf_inputs.InputSource.shard`), sums its finite
per-image maps and counts its images, and the sums and counts (NaN/inf maps too) are added over the ranks. The
sum of per-image maps does not depend on who computed which image, so the result is the single-process one up
to the order of float64 additions. Before the sums travel, the ranks compare what would make the average
meaningless if it differed (the image set, the model's parameters) and whether any rank failed; a failure on
one rank is raised on every rank, so none waits for a partner that will never come.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from rflens.errors import RflensError


class RankFailure(RflensError):
    """Another rank failed; its error is in the message (and printed by that rank and by rank 0)."""


def on_every_rank(error: BaseException, same: bool = True) -> BaseException:
    """Marks an error that every rank raises at the same point (after the ranks compared notes), so that they
    can leave the process group together. ``same``: every rank raises this very error (it follows from the
    added-up result): rank 0 prints it, the others only exit with its status."""
    error.rflens_agreed = True  # type: ignore[attr-defined]
    error.rflens_same = same  # type: ignore[attr-defined]
    return error


def printed_here(error: BaseException, launch: Launch | None) -> bool:
    """Whether this process prints ``error``: always outside a launch and on rank 0; on another rank unless every
    rank raised it (another rank's failure, a conclusion of the added-up result)."""
    return launch is None or launch.rank == 0 or not getattr(error, "rflens_same", False)


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a launch: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int
    world_size: int
    local_rank: int
    launcher: str  # "torchrun" or "slurm"


def launch_from_env(env: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process belongs to: torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``),
    else a SLURM step's (``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``, set by ``srun``; a batch
    script alone is one process whatever its ``--ntasks``). None for a single process."""
    env = os.environ if env is None else env
    try:
        if "RANK" in env and "WORLD_SIZE" in env:
            launch = Launch(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")), "torchrun")
        elif "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
            launch = Launch(int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]),
                            int(env.get("SLURM_LOCALID", "0")), "slurm")
        else:
            return None
    except ValueError as exc:
        raise RflensError(f"malformed launch variable: {exc}") from None
    return launch if launch.world_size > 1 else None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``node[03-05,9],gpu1`` -> ``node03``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if match is None:
        raise RflensError(f"cannot read the SLURM node list {nodelist!r}: set MASTER_ADDR")
    prefix, ranges = match.groups()
    return prefix + (ranges.split(",")[0].split("-")[0] if ranges else "")


def rendezvous(launch: Launch, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables ``torch.distributed``'s ``env://`` rendezvous reads. torchrun sets them; for a SLURM step
    they come from SLURM: the address of the step's first node and a port derived from the job id (the same
    on every rank), unless ``MASTER_ADDR``/``MASTER_PORT`` are set."""
    env = os.environ if env is None else env
    out = {"RANK": str(launch.rank), "WORLD_SIZE": str(launch.world_size), "LOCAL_RANK": str(launch.local_rank)}
    if launch.launcher == "torchrun":
        return out
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    address = env.get("MASTER_ADDR") or (first_host(nodes) if nodes else None)
    if address is None:
        raise RflensError("a SLURM step without a node list: set MASTER_ADDR (and MASTER_PORT)")
    port = env.get("MASTER_PORT") or str(20000 + int(env.get("SLURM_JOB_ID", "0") or 0) % 20000)
    return out | {"MASTER_ADDR": address, "MASTER_PORT": port}


def rank_device(device: str, launch: Launch) -> str:
    """The device of this rank: ``cuda`` becomes the GPU of its local rank; CPU stays CPU."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return device
    if dev.index is not None:
        raise RflensError(f"--device {device}: in a launch of {launch.world_size} ranks give --device cuda; each "
                          "rank takes the GPU of its local rank")
    if not torch.cuda.is_available():
        raise RflensError("--device cuda was asked for but PyTorch sees no CUDA device")
    if launch.local_rank >= torch.cuda.device_count():
        raise RflensError(f"rank {launch.rank} has local rank {launch.local_rank} but this node has "
                          f"{torch.cuda.device_count()} GPU(s): launch at most that many processes per node")
    return f"cuda:{launch.local_rank}"


@contextlib.contextmanager
def process_group(launch: Launch | None, device: str, timeout_s: float = 1800) -> Iterator[str]:
    """Joins the launch's process group for the block (NCCL for CUDA, gloo otherwise) and yields this rank's
    device; a single process (``launch`` None) yields ``device`` and joins nothing."""
    import torch.distributed as dist

    if launch is None:
        yield device
        return
    if not dist.is_available():
        raise RflensError("this PyTorch build has no torch.distributed: run one process")
    device = rank_device(device, launch)
    os.environ.update(rendezvous(launch))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=torch.device(device) if backend == "nccl" else None)
    try:
        yield device
    except BaseException as exc:
        if getattr(exc, "rflens_agreed", False):  # every rank is here: leave together
            dist.barrier()
        dist.destroy_process_group()
        raise
    dist.barrier()  # a rank that left early would cut the connections of one still talking
    dist.destroy_process_group()


def ranks() -> tuple[int, int]:
    """(this rank, number of ranks) of the initialised default process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def backend() -> str:
    """The default process group's backend ("gloo", "nccl")."""
    import torch.distributed as dist

    return str(dist.get_backend())


def parameter_fingerprint(model: torch.nn.Module) -> str:
    """A float64 sum over the model's parameters and buffers (as hex, so that NaN equals NaN): ranks that built
    or loaded different weights would average different networks."""
    with torch.no_grad():
        return float(sum(t.detach().double().sum().item() for t in
                         [*model.parameters(), *model.buffers()] if t.is_floating_point())).hex()


@dataclass(frozen=True)
class Partial:
    """One rank's part of an ERF: the sum of its finite maps (None when it had none) and its counts."""

    total: np.ndarray | None
    count: int
    bad: int


def reduce_over_ranks(part: Partial | BaseException, shape: tuple[int, ...], *, images: int, fingerprint: str,
                      device: torch.device) -> Partial:
    """The parts of every rank added up, on every rank. ``images`` (the whole image set's size) and
    ``fingerprint`` must agree over the ranks. Raises on every rank when one failed (``part`` an exception:
    that rank re-raises its own error, the others a :class:`RankFailure` quoting it)."""
    import torch.distributed as dist

    failure = None if isinstance(part, Partial) else str(part) if isinstance(part, RflensError) else \
        f"{type(part).__name__}: {part}"
    facts = (failure, images, fingerprint)
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, facts)
    failed = [(r, f[0]) for r, f in enumerate(everyone) if f[0] is not None]
    if failed:
        if isinstance(part, BaseException):
            raise on_every_rank(part, same=False)
        rank, text = failed[0]
        raise on_every_rank(RankFailure(f"rank {rank} failed: {text}"))
    if len({f[1] for f in everyone}) > 1:
        raise on_every_rank(RflensError(f"the ranks see different image sets "
                                        f"({', '.join(str(f[1]) for f in everyone)} images): every rank must be "
                                        "given the same images"))
    if len({f[2] for f in everyone}) > 1:
        raise on_every_rank(RflensError("the ranks hold different weights: build every rank's model with the same "
                                        "seed or load the same weights"))
    assert isinstance(part, Partial)
    total = torch.zeros(shape, dtype=torch.float64) if part.total is None else torch.from_numpy(part.total)
    counts = torch.tensor([part.count, part.bad, part.total is not None], dtype=torch.float64)
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    total, counts = total.to(on), counts.to(on)
    dist.all_reduce(total)
    dist.all_reduce(counts)
    count, bad, any_total = (int(c) for c in counts.cpu().tolist())
    return Partial(total.cpu().numpy() if any_total else None, count, bad)

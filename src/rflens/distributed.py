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
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
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
    """Whether this process prints ``error``: not when it was printed as it happened (:func:`agree`); always
    outside a launch and on rank 0; on another rank unless every rank raised it (another rank's failure, a
    conclusion of the added-up result)."""
    if getattr(error, "rflens_printed", False):
        return False
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
    """The first host of a SLURM node list: ``node[03-05,9],gpu1`` -> ``node03``, ``rack[1-2]-n[01-04]-ib`` ->
    ``rack1-n01-ib`` (every bracket takes its first value)."""
    match = re.match(r"(?:[^,\[]|\[[^\]]*\])+", nodelist.strip())
    if match is None or match.group(0).count("[") != match.group(0).count("]"):
        raise RflensError(f"cannot read the SLURM node list {nodelist!r}: set MASTER_ADDR")
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], match.group(0))


def rendezvous(launch: Launch, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables ``torch.distributed``'s ``env://`` rendezvous reads. torchrun sets them; for a SLURM step
    they come from SLURM: the address of the step's first node and a port derived from the job and step ids
    (the same on every rank of the step), unless ``MASTER_ADDR``/``MASTER_PORT`` are set."""
    env = os.environ if env is None else env
    out = {"RANK": str(launch.rank), "WORLD_SIZE": str(launch.world_size), "LOCAL_RANK": str(launch.local_rank)}
    if launch.launcher == "torchrun":
        return out
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    address = env.get("MASTER_ADDR") or (first_host(nodes) if nodes else None)
    if address is None:
        raise RflensError("a SLURM step without a node list: set MASTER_ADDR (and MASTER_PORT)")
    step = int(env.get("SLURM_JOB_ID", "0") or 0) * 1009 + int(env.get("SLURM_STEP_ID", "0") or 0)
    port = env.get("MASTER_PORT") or str(20000 + step % 20000)  # two steps of one job get two ports
    return out | {"MASTER_ADDR": address, "MASTER_PORT": port}


def rank_device(device: str, launch: Launch) -> str:
    """The device of this rank: ``cuda`` becomes the GPU of its local rank, or the only GPU it sees; CPU stays
    CPU."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return device
    if dev.index is not None:
        raise RflensError(f"--device {device}: in a launch of {launch.world_size} ranks give --device cuda; each "
                          "rank takes the GPU of its local rank")
    if not torch.cuda.is_available():
        raise RflensError("--device cuda was asked for but PyTorch sees no CUDA device")
    visible = torch.cuda.device_count()
    if visible == 1:  # one GPU per task (srun --gpus-per-task 1 binds each task to its own)
        return "cuda:0"
    if launch.local_rank >= visible:
        raise RflensError(f"rank {launch.rank} has local rank {launch.local_rank} but sees {visible} GPUs: launch "
                          "at most that many processes per node, or bind one GPU to each")
    return f"cuda:{launch.local_rank}"


@contextlib.contextmanager
def process_group(launch: Launch | None, device: str, timeout_s: float = 24 * 3600) -> Iterator[str]:
    """Joins the launch's process group for the block (NCCL for CUDA, gloo otherwise) and yields this rank's
    device; a single process (``launch`` None) yields ``device`` and joins nothing. ``timeout_s`` bounds how
    long a rank waits for the others at a collective: a rank whose share failed waits there until the others
    have finished theirs, so it is long."""
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


def parameter_fingerprint(model: torch.nn.Module) -> tuple[float, float]:
    """The float64 sum and sum of squares over the model's parameters and buffers: ranks that built or loaded
    different weights would average different networks. Compared with a relative tolerance
    (:func:`same_weights`): the rounding of a sum depends on the thread count and the device."""
    total = squares = 0.0
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():  # one float64 copy at a time: a large model's copy would not fit beside it
                wide = t.detach().double()
                total += wide.sum().item()
                squares += wide.square().sum().item()
    return total, squares


def same_weights(a: Sequence[float], b: Sequence[float], rel: float = 1e-9) -> bool:
    return all(math.isclose(x, y, rel_tol=rel, abs_tol=1e-12) or (math.isnan(x) and math.isnan(y))
               for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class Partial:
    """One rank's part of an ERF: the sum of its finite maps (None when it had none) and its counts."""

    total: np.ndarray | None
    count: int
    bad: int


def agree(failure: BaseException | None) -> None:
    """Every rank tells whether it failed; when one did, every rank raises: the failing rank its own error
    (printed on stderr at once, since it waits here for the others to finish their share), the others a
    :class:`RankFailure` quoting it. A collective: every rank of the group must call it."""
    import torch.distributed as dist

    text = None
    if failure is not None:
        text = str(failure) if isinstance(failure, RflensError) else f"{type(failure).__name__}: {failure}"
        print(f"error: rank {dist.get_rank()}: {text} (waiting for the other ranks to stop)", file=sys.stderr,
              flush=True)
        failure.rflens_printed = True  # type: ignore[attr-defined]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, text)
    failed = [(r, t) for r, t in enumerate(everyone) if t is not None]
    if not failed:
        return
    if failure is not None:
        raise on_every_rank(failure, same=False)
    rank, text = failed[0]
    raise on_every_rank(RankFailure(f"rank {rank} failed: {text}"))


def reduce_over_ranks(part: Partial, shape: tuple[int, ...], *, images: int, fingerprint: tuple[float, float]
                      ) -> Partial:
    """The parts of every rank added up, on every rank (after :func:`agree` found no failure). ``images`` (the
    whole image set's size) and ``fingerprint`` must agree over the ranks."""
    import torch.distributed as dist

    agree(None)
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (images, fingerprint))
    if len({f[0] for f in everyone}) > 1:
        raise on_every_rank(RflensError(f"the ranks see different image sets "
                                        f"({', '.join(str(f[0]) for f in everyone)} images): every rank must be "
                                        "given the same images"))
    if not all(same_weights(f[1], everyone[0][1]) for f in everyone):
        raise on_every_rank(RflensError("the ranks hold different weights: build every rank's model with the same "
                                        "seed or load the same weights"))
    total = torch.zeros(shape, dtype=torch.float64) if part.total is None else torch.from_numpy(part.total)
    counts = torch.tensor([part.count, part.bad, part.total is not None], dtype=torch.float64)
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    total, counts = total.to(on), counts.to(on)
    dist.all_reduce(total)
    dist.all_reduce(counts)
    count, bad, any_total = (int(c) for c in counts.cpu().tolist())
    return Partial(total.cpu().numpy() if any_total else None, count, bad)

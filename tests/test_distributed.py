"""Distributed ERF: ranks launched by torchrun (or as a SLURM step) on CPU with gloo give the single-process
result on the same images, with uneven shards, NaN maps, per-image labels and failures on one rank."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_cli import run

from rflens.distributed import (
    Launch,
    RankFailure,
    first_host,
    launch_from_env,
    on_every_rank,
    printed_here,
    rank_device,
    rendezvous,
    same_weights,
)
from rflens.erf_inputs import noise
from rflens.errors import RflensError

NET = '''
import os

import torch
from torch import nn


class Net(nn.Module):
    """conv-bn-relu, a strided conv, a conv, then a classifier; ``nan_when_bright``: an image whose mean is
    above 1.5 (a white picture after ImageNet normalisation) gets NaN values, and so a NaN gradient map."""

    def __init__(self, nan_when_bright):
        super().__init__()
        self.nan_when_bright = nan_when_bright
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        if self.nan_when_bright:
            x = x * torch.where(x.mean(dim=(1, 2, 3), keepdim=True) > 1.5, float("nan"), 1.0)
        x = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        x = self.conv3(torch.relu(x))
        return self.fc(x.mean(dim=(2, 3)))


def with_nan():
    return Net(True)


def plain():
    return Net(False)


def fails_on_rank_1():
    if os.environ.get("RANK") == "1":
        raise RuntimeError("no such checkpoint on this node")
    return Net(False)
'''


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """net.py and a labelled folder of 5 pictures (class folders 0 and 1). In name order the images are
    0/img0, 0/img2, 0/img4, 1/img1, 1/img3: two ranks take 3 and 2 of them, and the white img3 (a NaN map) and
    the class-1 labels are rank 1's."""
    from PIL import Image

    (tmp_path / "net.py").write_text(NET)
    rng = np.random.default_rng(0)
    for i in range(5):
        folder = tmp_path / "images" / str(i % 2)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.full((40, 40, 3), 255, np.uint8) if i == 3 else rng.integers(0, 256, (40, 40, 3), np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return tmp_path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                   "MASTER_"))}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "rflens", *argv], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


def _layers(doc: dict) -> list[dict]:
    return doc["layers"] if "layers" in doc else [doc]


def assert_same_erf(one: dict, many: dict) -> None:
    """The documents of one process and of several ranks agree: counts exactly, maps and metrics up to the
    order of float64 additions."""
    for a, b in zip(_layers(one), _layers(many), strict=True):
        for key in ("layer", "n", "nonfinite", "input_size", "unit", "inputs", "target", "path", "crop", "trf_box"):
            assert a[key] == b[key], key
        np.testing.assert_allclose(np.load(b["map"]), np.load(a["map"]), rtol=1e-12, atol=1e-300)
        assert a["metrics"].keys() == b["metrics"].keys()
        for key, value in a["metrics"].items():
            assert b["metrics"][key] == (pytest.approx(value, rel=1e-9) if isinstance(value, float) else value), key
        assert "2 ranks (gloo)" in b["engine"] and "ranks" not in a["engine"]


def test_torchrun_two_ranks_equal_one_process(workdir, capsys, monkeypatch):
    """5 pictures on 2 ranks (3 + 2), a NaN map on rank 1, each image's folder label as the class (kim protocol
    on a classifier's output), and an inner layer, in float64."""
    args = ["erf", "net.py:with_nan", "--input-size", "32", "--inputs", "images", "--layers", "conv2,output",
            "--protocol", "kim", "--dtype", "float64"]
    monkeypatch.chdir(workdir)
    code, _, err = run(capsys, *args, "--out", "one.json")
    assert code == 0, err
    done = torchrun(workdir, *args, "--out", "many.json")
    assert done.returncode == 0, done.stderr
    one, many = json.loads((workdir / "one.json").read_text()), json.loads((workdir / "many.json").read_text())
    assert [d["n"] for d in _layers(one)] == [4, 4] and [d["nonfinite"] for d in _layers(one)] == [1, 1]
    assert _layers(one)[1]["target"] == "each image's true class (folder labels) at the unit"
    assert_same_erf(one, many)
    assert done.stdout.count("wrote many.json") == 1  # rank 0 reports, rank 1 is silent


def test_slurm_step_with_an_empty_rank_equals_one_process(workdir, capsys, monkeypatch):
    """Two processes started as srun would start them (SLURM_* variables, no torchrun): one noise image, so rank
    1 has none; the unit's cone crop is run."""
    args = ["erf", "net.py:plain", "--input-size", "48", "--layer", "conv3", "--n", "1", "--dtype", "float64"]
    monkeypatch.chdir(workdir)
    code, _, err = run(capsys, *args, "--out", "one.json")
    assert code == 0, err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    slurm = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "localhost", "SLURM_JOB_ID": "7",
             "MASTER_PORT": str(port)}
    procs = [subprocess.Popen([sys.executable, "-m", "rflens", *args, "--out", "many.json"], cwd=workdir,
                              env=_env() | slurm | {"SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[1] == ("", "")  # rank 1 says nothing
    one, many = json.loads((workdir / "one.json").read_text()), json.loads((workdir / "many.json").read_text())
    assert one["n"] == 1 and one["crop"] is not None
    assert_same_erf(one, many)


def test_a_failure_on_one_rank_ends_every_rank(workdir):
    """A corrupt picture in rank 1's share: rank 1 names it, rank 0 says rank 1 failed and why; nobody hangs."""
    (workdir / "images" / "1" / "zz.png").write_text("not a picture")
    done = torchrun(workdir, "erf", "net.py:plain", "--input-size", "32", "--inputs", "images", "--layer", "conv2")
    assert done.returncode != 0
    assert "rank 1: cannot read image 'images/1/zz.png'" in done.stderr
    assert "rank 0: rank 1 failed: cannot read image 'images/1/zz.png'" in done.stderr


def test_a_model_that_fails_to_build_on_one_rank_ends_every_rank(workdir):
    done = torchrun(workdir, "erf", "net.py:fails_on_rank_1", "--input-size", "32", "--num-images", "2",
                    "--layer", "conv2")
    assert done.returncode != 0
    assert done.stderr.count("no such checkpoint on this node") == 2  # rank 1 says it, rank 0 quotes it
    assert "rank 0: rank 1 failed: factory 'fails_on_rank_1' in net.py raised RuntimeError" in done.stderr


API_SCRIPT = '''
import json

import numpy as np
import torch
import torch.distributed as dist

import rflens
from rflens.sources import load_model
from rflens.errors import RflensError

dist.init_process_group("gloo")
rank = dist.get_rank()
model = load_model("net.py:with_nan")
images = torch.randn(7, 3, 24, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
images[5] += 10  # bright: a NaN map, on rank 1 (ranks take images 0-3 and 4-6)
out = {}
result = rflens.erf(model, "conv3", inputs=images, dtype=torch.float64, distributed=True)
np.save(f"api_map{rank}.npy", result.map)
out["shared"] = [result.n, result.nonfinite, result.metrics]
alone = rflens.erf(model, "conv3", inputs=images[:2 + rank], dtype=torch.float64)  # the default: this rank alone
out["alone"] = alone.n


def error(**kwargs):
    try:
        rflens.erf(kwargs.pop("model", model), "conv3", dtype=torch.float64, distributed=True, **kwargs)
    except RflensError as exc:
        return str(exc)


out["different images"] = error(inputs=images[:2 + rank])
out["different weights"] = error(model=load_model("net.py:with_nan", seed=rank), inputs=images)
out["missing folder"] = error(inputs="no-such-folder" if rank == 1 else images)  # before any image is read
again = rflens.erf(model, "conv3", inputs=images, dtype=torch.float64, distributed=True)  # the group still works
out["again"] = bool(np.array_equal(again.map, result.map))
json.dump(out, open(f"api{rank}.json", "w"))
dist.destroy_process_group()
'''


def test_python_api_in_the_users_process_group(workdir):
    """rflens.erf(distributed=True) inside a process group the user made: tensors shared 4 + 3 with a NaN map on
    rank 1, the same map on both ranks and as one process; by default a rank computes alone; ranks given
    different images or weights are refused on every rank, a folder missing on rank 1 fails rank 0 too, and
    the group stays usable."""
    import torch

    import rflens
    from rflens.sources import load_model

    (workdir / "api.py").write_text(API_SCRIPT)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "api.py"], cwd=workdir, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ranks = [json.loads((workdir / f"api{r}.json").read_text()) for r in range(2)]
    images = torch.randn(7, 3, 24, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    images[5] += 10
    one = rflens.erf(load_model(str(workdir / "net.py:with_nan")), "conv3", inputs=images, dtype=torch.float64)
    assert one.n == 6 and one.nonfinite == 1
    for r, doc in enumerate(ranks):
        assert doc["shared"][:2] == [6, 1]
        np.testing.assert_allclose(np.load(workdir / f"api_map{r}.npy"), one.map, rtol=1e-12, atol=1e-300)
        assert doc["shared"][2].keys() == one.metrics.keys()
        assert doc["alone"] == 2 + r
        assert doc["different images"] == "the ranks see different image sets (2, 3 images): every rank must be " \
                                         "given the same images"
        assert doc["different weights"] == "the ranks hold different weights: build every rank's model with " \
                                          "the same seed or load the same weights"
        missing = "image folder 'no-such-folder' does not exist or is not a folder"
        assert doc["missing folder"] == (f"rank 1 failed: {missing}" if r == 0 else missing)
        assert doc["again"] is True


# -- the pieces, without processes ---------------------------------------------------------------------------
@given(st.integers(0, 40), st.integers(1, 9), st.booleans())
def test_shards_cover_the_images_once_in_order(count, ranks, labelled):
    source = noise(count, 1, (4,)) if count else noise(1, 1, (4,))
    if not count:
        source = source.shard(1, 2)  # an empty source
    if labelled:
        source.labels = [i * 7 % 3 for i in range(source.count)]
    shards = [source.shard(r, ranks) for r in range(ranks)]
    assert [i for s in shards for i in s.indices] == list(source.indices)
    assert max(s.count for s in shards) - min(s.count for s in shards) <= 1
    assert [s.count for s in shards] == sorted((s.count for s in shards), reverse=True)
    if labelled:
        assert [x for s in shards for x in s.labels] == source.labels
    for s in shards:
        assert s.total == source.total and s.description == source.description
    if source.count:  # the shards' images, in rank order, are the whole source's images (batch sizes 1 and 3)
        whole = np.concatenate([b.numpy() for b in source.batches(3)])
        sharded = np.concatenate([b.numpy() for s in shards for b in s.batches(1)])
        assert np.array_equal(whole, sharded)


def test_launch_from_env():
    assert launch_from_env({}) is None
    assert launch_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Launch(1, 4, 1, "torchrun")
    assert launch_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None  # one process
    step = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8"}
    assert launch_from_env(step) == Launch(5, 8, 1, "slurm")
    # a batch script runs once whatever --ntasks says: no step, no launch
    assert launch_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) is None
    # torchrun inside a SLURM step: torchrun's ranks count
    assert launch_from_env(step | {"RANK": "3", "WORLD_SIZE": "16", "LOCAL_RANK": "3"}) == Launch(3, 16, 3, "torchrun")
    with pytest.raises(RflensError, match="malformed launch variable"):
        launch_from_env({"RANK": "one", "WORLD_SIZE": "2"})


def test_slurm_rendezvous():
    launch = Launch(2, 4, 0, "slurm")
    env = {"SLURM_STEP_NODELIST": "gpu[07-08,11],cpu1", "SLURM_JOB_ID": "123456"}
    assert rendezvous(launch, env) == {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "gpu07",
                                       "MASTER_PORT": str(20000 + 123456 * 1009 % 20000)}
    given = rendezvous(launch, env | {"MASTER_ADDR": "head", "MASTER_PORT": "4000"})
    assert (given["MASTER_ADDR"], given["MASTER_PORT"]) == ("head", "4000")
    with pytest.raises(RflensError, match="set MASTER_ADDR"):
        rendezvous(launch, {})
    assert rendezvous(Launch(1, 2, 1, "torchrun"), {}) == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    assert [first_host(x) for x in ("node7", "node[3-5]", "a[09,12-14]", "x-1,y-2", "node[001-004,007]",
                                    "a-b[1-3]", "node[1-3]-ib", "rack[1-2]-n[01-04],z")] == \
        ["node7", "node3", "a09", "x-1", "node001", "a-b1", "node1-ib", "rack1-n01"]
    ports = {rendezvous(launch, env | {"SLURM_STEP_ID": str(step)})["MASTER_PORT"] for step in range(4)}
    assert len(ports) == 4 and all(20000 <= int(p) < 40000 for p in ports)  # one per step of a job


def test_rank_device(monkeypatch):
    import torch

    launch = Launch(1, 2, 1, "torchrun")
    assert rank_device("cpu", launch) == "cpu"
    with pytest.raises(RflensError, match="give --device cuda"):
        rank_device("cuda:1", launch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for visible, local, expected in [(8, 5, "cuda:5"), (1, 5, "cuda:0"), (2, 1, "cuda:1"), (2, 2, None)]:
        monkeypatch.setattr(torch.cuda, "device_count", lambda visible=visible: visible)
        if expected is None:
            with pytest.raises(RflensError, match="sees 2 GPUs"):
                rank_device("cuda", Launch(local, 4, local, "torchrun"))
        else:
            assert rank_device("cuda", Launch(local, 8, local, "slurm")) == expected


def test_who_prints_an_error():
    launch0, launch1 = Launch(0, 2, 0, "torchrun"), Launch(1, 2, 1, "torchrun")
    own = on_every_rank(RflensError("bad file"), same=False)
    shared = on_every_rank(RankFailure("rank 1 failed: bad file"))
    assert printed_here(own, launch1) and printed_here(shared, launch0) and not printed_here(shared, launch1)
    assert printed_here(RflensError("x"), None) and printed_here(RflensError("x"), launch1)
    early = RflensError("bad file")
    early.rflens_printed = True  # printed by the failing rank while it waited for the others
    assert not printed_here(early, launch0) and not printed_here(early, None)


def test_same_weights_tolerates_rounding():
    assert same_weights((1.0, 2.0), (1.0 + 1e-13, 2.0)) and not same_weights((1.0, 2.0), (1.001, 2.0))
    assert same_weights((float("nan"), 1.0), (float("nan"), 1.0))

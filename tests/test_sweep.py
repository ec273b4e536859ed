"""`rflens sweep`: pattern expansion, rows equal to the separate analyses, failures and timeouts as rows, resuming,
worker processes, the plot and summary, and the token-mixer rule on zoo models."""

from __future__ import annotations

import csv
import signal
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from test_cli import run

from rflens.audit import module_of
from rflens.border import border_report
from rflens.capture import capture
from rflens.deadpixel import dead_pixel_test
from rflens.errors import RflensError
from rflens.padding import last_map, padding_report
from rflens.rf import receptive_field
from rflens.sources import load_model
from rflens.sweep import COLUMNS, Row, expand, survey, token_mixer

PNG = b"\x89PNG\r\n\x1a\n"
MODELS_SOURCE = textwrap.dedent(
    """
    import os
    import time

    import torch
    import torch.nn as nn


    def factory():
        raise ValueError("no such network\\nsecond line")


    def dies():
        os._exit(3)  # the worker process ends without a word


    class Slow(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            time.sleep(30)
            return self.conv(x)


    def slow():
        return Slow()


    class NeedsValues(nn.Module):
        def __init__(self):
            super().__init__()
            width = int(torch.tensor([4.0]).item())  # no value on meta: built on the CPU instead
            self.conv = nn.Conv2d(3, width, 3, stride=2)

        def forward(self, x):
            return self.conv(x)


    def needs_values():
        return NeedsValues()


    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 5)

        def forward(self, x):
            if x.sum() > 1e30:  # the forward needs real data: traced on the CPU
                x = x * 2
            return self.conv(x)


    def data_dependent():
        return DataDependent()


    class Stuck(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            sum(range(10**13))  # one C call that no signal interrupts
            return self.conv(x)


    def stuck():
        return Stuck()


    def anisotropic():
        # different kernels, strides and paddings per axis, so that a swapped axis shows
        return nn.Sequential(nn.Conv2d(3, 4, (3, 5), stride=(2, 1), padding=(1, 0)), nn.ReLU(),
                             nn.Conv2d(4, 4, (1, 3), stride=(2, 2)), nn.ReLU(),
                             nn.Conv2d(4, 4, (3, 1), padding=(1, 0)))
    """)


@pytest.fixture(scope="module")
def models_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "bad.py"
    path.write_text(MODELS_SOURCE)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def without_seconds(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {r["model"]: {k: v for k, v in r.items() if k != "seconds"} for r in rows}


# -- pattern expansion -----------------------------------------------------------------------------------------
def test_patterns_expand_case_insensitively_sorted_without_duplicates() -> None:
    import timm
    import torchvision.models

    got = expand(["timm:RESNET1?T", "timm:resnet10t", "torchvision:SqueezeNet*", "net.py:make", "net.py:make"])
    resnets = [f"timm:{n}" for n in sorted(timm.list_models("resnet1?t"))]
    squeezenets = [f"torchvision:{n}" for n in sorted(torchvision.models.list_models()) if n.startswith("squeezenet")]
    assert len(resnets) >= 2 and len(squeezenets) == 2
    assert got == [*resnets, *squeezenets, "net.py:make"]
    with pytest.raises(RflensError, match="'timm:no_such_net\\*' matches no timm model"):
        expand(["timm:resnet10t", "timm:no_such_net*"])


# -- one row ---------------------------------------------------------------------------------------------------
def per_axis(values) -> str:
    texts = [str(v) for v in values]
    return texts[0] if len(set(texts)) == 1 else "x".join(texts)


@pytest.mark.parametrize("spec,size", [("torchvision:squeezenet1_0", 64), ("timm:resnet10t", 96),
                                       ("MODELS:anisotropic", (33, 40))])
def test_row_equals_the_separate_analyses(spec: str, size, models_file: Path) -> None:
    spec = spec.replace("MODELS", str(models_file))
    row = survey(spec, size, model_name=spec)
    model = load_model(spec)  # built on the CPU with its seeded init: the row's model was built on meta
    rf = receptive_field(model, size)
    last = module_of(rf.graph, last_map(rf.graph).id)
    final = rf.layer("" if last == "output" else last)  # "output": the model itself returns the last map
    border = border_report(model, size, suggestions=False)
    padding = padding_report(model, size, modes=("model",))
    dead = dead_pixel_test(model, size)
    nearest = padding.suggested_size()
    assert row.status == "ok" and row.reason == "" and row.input_size == per_axis(rf.graph.input_size)
    assert (row.params, row.flops) == (border.total_params, border.total_flops) == (rf.graph.params, rf.graph.flops)
    assert (row.final_layer, row.final_rf, row.final_stride, row.is_global) == (
        last, per_axis(final.rf), per_axis(final.stride), final.is_global)
    assert row.unproductive_layers == len(border.unproductive)
    assert row.unproductive_flops_share == border.waste.flops_share
    assert row.uneven_layers == len(padding.uneven)
    assert row.nearest_even_size == ("" if nearest is None else per_axis(nearest))
    assert row.culprit_layers == len(dead.culprits)
    assert row.structural_l1 == dead.structural.indices.l1
    assert row.token_mixer == "" and row.seconds > 0
    zoo, name = spec.rsplit(":", 1)
    if zoo.endswith(".py"):  # both axes differ in every column that has axes
        assert (row.input_size, row.final_rf, row.final_stride) == ("33x40", "11x7", "4x2")
    elif zoo == "timm":  # the module timm registered it in
        import timm

        assert name in timm.list_models(module=row.family)
    else:  # the module that defines the builder
        import torchvision.models

        assert callable(getattr(getattr(torchvision.models, row.family), name))
    # written and read back unchanged
    assert Row.from_csv(row.to_csv()) == row and tuple(row.to_csv()) == COLUMNS
    if spec.startswith("torchvision"):  # the numbers this model was picked for are not all zero or empty
        assert row.unproductive_layers and row.uneven_layers and row.nearest_even_size and row.culprit_layers


def test_failures_and_timeouts_are_rows(models_file: Path) -> None:
    row = survey(f"{models_file}:factory", 64)
    assert row.status == "failed" and row.family == "bad.py"
    assert row.reason.startswith("ModelSourceError: ") and row.reason.endswith("no such network")
    handler = signal.getsignal(signal.SIGALRM)
    slow = survey(f"{models_file}:slow", 64, timeout=1)
    assert slow.status == "failed" and slow.reason == "timed out after 1 s" and 1 <= slow.seconds < 5
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.parametrize("factory", ["needs_values", "data_dependent"])
def test_models_that_need_real_values_are_built_on_the_cpu(models_file: Path, factory: str) -> None:
    row = survey(f"{models_file}:{factory}", 32)
    expected = receptive_field(load_model(f"{models_file}:{factory}"), 32, device="cpu")
    assert row.status == "ok", row.reason
    assert (row.params, row.final_rf) == (expected.graph.params, per_axis(expected.layers[-1].rf))


# -- token mixers --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,mixer", [
    ("timm:resnet50", ""),
    ("timm:seresnet50", ""),  # squeeze-excitation: a mean and an elementwise gate
    ("timm:efficientnet_b0", ""),
    ("timm:convnext_atto", ""),
    ("timm:resnet50_gn", ""),  # GroupNorm statistics over positions
    ("torchvision:vgg11", ""),  # a classifier on the flattened map reads it after the last map
    ("timm:vit_tiny_patch16_224", "bmm in 'blocks.0.attn'"),
    ("timm:swin_tiny_patch4_window7_224", "bmm in 'layers.0.blocks.0.attn'"),  # attention within windows
    ("timm:mixer_b16_224", "mm in 'blocks.0.mlp_tokens.fc1'"),  # a Linear over tokens
    # at 224 its token sequence starts with a concat read as global: the last map is the patch embedding, and
    # its attention (a product of two image-dependent operands) runs after it
    ("timm:vitamin_xlarge_256", "bmm in 'blocks.0.attn'"),
])
def test_token_mixer(spec: str, mixer: str) -> None:
    model = load_model(spec, device="meta")
    graph = capture(model, 224)
    assert token_mixer(graph) == mixer
    if mixer:  # the named module exists and runs that op
        module = mixer.split("'")[1]
        assert module in dict(model.named_modules())
        assert any(n.module == module and n.op == mixer.split()[0] for n in graph.nodes)


# -- the command -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def first_run(tmp_path_factory, models_file: Path):
    folder = tmp_path_factory.mktemp("sweep")
    out, plot, summary = folder / "out.csv", folder / "out.png", folder / "summary.md"
    argv = ["sweep", "timm:resnet10t", "torchvision:squeezenet1_0", f"{models_file}:factory", "--input-size", "64",
            "--csv", str(out), "--plot", str(plot), "--summary", str(summary)]
    from rflens.cli import main

    code = main(argv)
    return code, argv, out, plot, summary


def test_sweep_writes_one_row_per_model_a_plot_and_a_summary(first_run, models_file: Path) -> None:
    code, argv, out, plot, summary = first_run
    assert code == 0  # one model failed, the others worked
    rows = read_csv(out)
    assert [r["model"] for r in rows] == ["timm:resnet10t", "torchvision:squeezenet1_0", f"{models_file}:factory"]
    assert list(rows[0]) == list(COLUMNS)
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    expected = survey("torchvision:squeezenet1_0", 64).to_csv()
    assert without_seconds(rows)["torchvision:squeezenet1_0"] == without_seconds([expected])[expected["model"]]
    assert plot.read_bytes().startswith(PNG)
    text = summary.read_text()
    assert f"--input-size 64 --csv {out}" in text and "torch " in text and "CPUs" in text
    assert "2 ok, 0 skipped, 1 failed" in text and f"`{models_file}:factory`" in text
    assert "`torchvision:squeezenet1_0` | squeezenet | 1 |" in text  # its one unproductive layer, top of the table


def test_a_second_run_resumes(first_run, capsys) -> None:
    _, argv, out, _, _ = first_run
    before = read_csv(out)
    code, stdout, stderr = run(capsys, *argv[:-4])  # without --plot/--summary
    assert code == 0 and "surveyed 0 of 3 models" in stdout and "3 of 3 already in" in stderr
    assert read_csv(out) == before
    # a row deleted by hand is the only one surveyed again
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(r for r in before if r["model"] != "timm:resnet10t")
    code, stdout, stderr = run(capsys, *argv[:-4])
    after = read_csv(out)
    assert code == 0 and "surveyed 1 of 3 models" in stdout and "2 of 3 already in" in stderr
    assert [r["model"] for r in after] == [r["model"] for r in before[1:]] + ["timm:resnet10t"]
    assert without_seconds(after) == without_seconds(before)


def test_retry_failed_runs_failed_rows_again(first_run, capsys, models_file: Path) -> None:
    _, argv, out, _, _ = first_run
    before = read_csv(out)
    code, stdout, stderr = run(capsys, *argv[:-4], "--retry-failed")
    after = read_csv(out)
    assert code == 1  # every model this run surveyed failed
    assert "surveyed 1 of 3 models" in stdout and "1 failed rows removed" in stderr and "no such network" in stdout
    assert len(after) == 3 and after[-1]["model"] == f"{models_file}:factory"
    assert without_seconds(after) == without_seconds(before)


def test_a_csv_with_other_columns_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "other.csv"
    out.write_text("model,status\ntimm:resnet10t,ok\n")
    code, _, stderr = run(capsys, "sweep", "timm:resnet10t", "--csv", str(out))
    assert code == 2 and "has the columns model, status" in stderr
    assert out.read_text() == "model,status\ntimm:resnet10t,ok\n"


def test_two_jobs_give_the_same_rows_and_survive_a_dying_worker(first_run, tmp_path: Path, capsys,
                                                               models_file: Path) -> None:
    _, argv, one_job, _, _ = first_run
    out = tmp_path / "two.csv"
    code, stdout, _ = run(capsys, "sweep", "timm:resnet10t", f"{models_file}:dies", "torchvision:squeezenet1_0",
                          f"{models_file}:factory", "--input-size", "64", "--jobs", "2", "--csv", str(out))
    rows = without_seconds(read_csv(out))
    assert code == 0 and "surveyed 4 of 4 models" in stdout
    assert rows.pop(f"{models_file}:dies")["reason"] == "worker process died"
    assert rows == without_seconds(read_csv(one_job))


def test_a_model_stuck_in_one_call_is_stopped_by_its_watchdog(models_file: Path) -> None:
    """SIGALRM cannot interrupt a C call: the worker's watchdog ends it (timeout + grace) and the parent records
    the model as timed out; the model beside it is surveyed again alone."""
    from rflens.sweep import _in_workers

    rows: list[Row] = []
    models = [f"{models_file}:stuck", f"{models_file}:factory"]
    _in_workers(models, 2, 32, dict.fromkeys(models, "bad.py"), {"timeout": 1.0, "cnn_only": False},
                rows.append, grace=1.0)
    by_model = {r.model: r for r in rows}
    assert len(rows) == 2 and by_model[models[0]].reason.startswith("timed out after 1 s (in one uninterruptible")
    assert by_model[models[0]].seconds >= 1 and "no such network" in by_model[models[1]].reason


def test_cnn_only_skips_a_vit_naming_its_token_mixer(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cnn.csv"
    code, stdout, _ = run(capsys, "sweep", "timm:vit_tiny_patch16_224", "--cnn-only", "--csv", str(out))
    (row,) = read_csv(out)
    assert code == 0 and "0 ok, 1 skipped, 0 failed" in stdout
    assert row["status"] == "skipped" and row["reason"] == "token mixer: bmm in 'blocks.0.attn'"
    assert row["token_mixer"] == "bmm in 'blocks.0.attn'" and row["family"] == "vision_transformer"
    assert row["unproductive_layers"] == "" and int(row["params"]) == sum(
        p.numel() for p in load_model("timm:vit_tiny_patch16_224", device="meta").parameters())


def test_a_row_cut_by_a_killed_sweep_is_surveyed_again(first_run, tmp_path: Path, capsys) -> None:
    _, argv, out, _, _ = first_run
    cut = tmp_path / "cut.csv"
    rows = sorted(read_csv(out), key=lambda r: r["status"] == "failed")  # the failed model's row last
    with cut.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    cut.write_text(cut.read_text()[:-20])  # that row, cut short
    code, stdout, _ = run(capsys, *argv[:4], "--input-size", "64", "--csv", str(cut))
    assert code == 1 and "surveyed 1 of 3 models" in stdout
    assert without_seconds(read_csv(cut)) == without_seconds(read_csv(out))


def test_a_last_row_without_its_newline_is_kept_and_the_next_starts_a_line(first_run, tmp_path: Path,
                                                                           capsys) -> None:
    _, argv, out, _, _ = first_run
    done = tmp_path / "no_newline.csv"
    with done.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(r for r in read_csv(out) if r["status"] != "failed")
    done.write_text(done.read_text().rstrip("\r\n"))  # a whole row, but no line end
    code, stdout, _ = run(capsys, *argv[:4], "--input-size", "64", "--csv", str(done))
    assert code == 1 and "surveyed 1 of 3 models" in stdout  # only the failing model was left
    assert without_seconds(read_csv(done)) == without_seconds(read_csv(out))


def test_resuming_across_cnn_only(tmp_path: Path, capsys) -> None:
    """A row a --cnn-only sweep skipped has no analyses: a full sweep surveys that model again. A --cnn-only
    sweep counts a full sweep's row of a model with a token mixer as skipped."""
    spec = "timm:resnet10t"
    csv_path = tmp_path / "mixed.csv"
    skipped = Row(spec, "resnet", "skipped", "token mixer: bmm in 'x'", "64", token_mixer="bmm in 'x'")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerow(skipped.to_csv())
    code, stdout, _ = run(capsys, "sweep", spec, "--input-size", "64", "--csv", str(csv_path), "--cnn-only")
    assert code == 0 and "surveyed 0 of 1" in stdout and "all 1 rows: 0 ok, 1 skipped" in stdout  # kept
    assert [r["status"] for r in read_csv(csv_path)] == ["skipped"]
    code, stdout, _ = run(capsys, "sweep", spec, "--input-size", "64", "--csv", str(csv_path))
    assert code == 0 and [r["status"] for r in read_csv(csv_path)] == ["ok"]
    row = Row.from_csv(read_csv(csv_path)[0])
    with csv_path.open("w", newline="") as f:  # the same ok row, as if the model had a token mixer
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerow(replace(row, token_mixer="bmm in 'x'").to_csv())
    code, stdout, _ = run(capsys, "sweep", spec, "--input-size", "64", "--csv", str(csv_path), "--cnn-only")
    assert code == 0 and "0 ok, 1 skipped, 0 failed" in stdout
    assert [r["status"] for r in read_csv(csv_path)] == ["ok"]  # the file keeps what was measured

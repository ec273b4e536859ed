"""Unproductive layers, feasible input range and refinements (Richter & Pal) against the published reference
values (../shared/reference/border.json), brute force, and the changed models themselves."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from archgen import TwoBranch, architectures
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from oracle import linearise, oracle_rf
from torch.utils.flop_counter import FlopCounterMode

import rflens
from rflens.border import Resolutions, border_report, classify
from rflens.capture import capture
from rflens.errors import RefineError, RflensError
from rflens.transforms import applicable, load_recipe, refine

REFERENCE = json.loads((Path(__file__).parents[2] / "shared" / "reference" / "border.json").read_text())
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def reference(prefix: str) -> dict:
    return next(v for v in REFERENCE["values"] if v["model"].startswith(prefix))


def names(layers, status):
    return [x.name for x in layers if x.status == status]


@pytest.fixture(scope="module")
def vgg19():
    torch.manual_seed(0)
    return torchvision.models.vgg19()


@pytest.fixture(scope="module")
def convnext_tiny():
    torch.manual_seed(0)
    return torchvision.models.convnext_tiny()


# -- reference values ---------------------------------------------------------------------------------------
def test_vgg16_r_min_sequence():
    layers = border_report(torchvision.models.vgg16(), 224, suggestions=False).layers
    features = [x for x in layers if x.name.startswith("features.")]
    assert [x.rf_min[0] for x in features] == reference("torchvision vgg16")["r_min_sequence"]
    assert all(x.op.startswith(("convolution", "max_pool")) for x in features)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_largest_receptive_field_is_the_largest_useful_input(name):
    report = border_report(getattr(torchvision.models, name)(), 224, suggestions=False)
    expected = reference(f"torchvision {name}")["r_max_final"]
    assert report.resolution_range.max == (expected, expected)
    assert max(x.rf_max[0] for x in report.layers) == expected
    assert report.unproductive == []  # residual paths keep r_min small


def test_vgg19_at_224_and_its_refinement(vgg19):
    report = border_report(vgg19, 224)
    # the layer after the last conv: the last max-pool (r_min 268 > 224, reading r_min 252 >= 224); the last
    # conv itself reads r_min 220 < 224: the border layer. The adaptive average pool is an identity at 224.
    assert report.unproductive == ["features.36"]
    assert "avgpool" not in {x.name for x in report.layers}
    assert report.critical == ["features.34"]
    last = {x.name: x for x in report.layers}
    assert last["features.34"].rf_min == (252, 252) and last["features.36"].rf_min == (268, 268)
    assert last["features.34"].input_rf_min == (220, 220)
    # moving a max-pool later by one stage (Richter's E2): last conv r_min 220, nothing unproductive
    full = border_report(vgg19, 224, top=50)
    move = next(s for s in full.suggestions if s.edits == ({"module": "features.18", "move_before": "features.27"},))
    assert move.kind == "move" and move.unproductive_after == () and move.applicable is None
    refined = refine(vgg19, move.recipe("vgg19"))
    after = border_report(refined, 224, suggestions=False)
    assert after.unproductive == []
    assert {x.name: x for x in after.layers}["features.34"].rf_min == (220, 220)
    assert [n for n, _ in refined.features.named_children()][18:28] == \
        ["19", "20", "21", "22", "23", "24", "25", "26", "18", "27"]
    assert after.total_flops == move.flops and after.total_params == move.params


def test_convnext_tiny_at_224_and_its_refinement(convnext_tiny):
    report = border_report(convnext_tiny, 224, top=50)
    expected = [f"features.7.{i}.block.0" for i in range(3)]  # the stage-4 7x7 depthwise convs on a 7x7 map
    assert report.unproductive == expected
    assert all(x.reason == "kernel" and x.input_size == (7, 7) and x.kernel == (7, 7)
               for x in report.layers if x.name in expected)
    stem = next(s for s in report.suggestions if s.kind == "stem")
    assert stem.edits == ({"module": "features.0.0", "kernel_size": [2, 2], "stride": [2, 2]},)
    assert stem.unproductive_after == ()
    refined = refine(convnext_tiny, stem.recipe())
    conv = refined.features[0][0]
    assert conv.kernel_size == (2, 2) and conv.stride == (2, 2) and conv.weight.shape[-2:] == (2, 2)
    assert convnext_tiny.features[0][0].kernel_size == (4, 4)  # the user's model is untouched
    after = border_report(refined, 224, suggestions=False)
    assert after.unproductive == [] and after.total_flops == stem.flops and after.total_params == stem.params


# -- the cases the old toolbox gets wrong ---------------------------------------------------------------------
def test_dilation_counts():
    """3x3 convs with dilation 4 grow r_min by 8 each: 9, 17, 25, 33 (a tool that ignores dilation says 3..9)."""
    model = nn.Sequential(*[nn.Conv2d(2, 2, 3, padding=4, dilation=4) for _ in range(4)])
    layers = border_report(model, 20, suggestions=False).layers
    assert [x.rf_min for x in layers] == [(9, 9), (17, 17), (25, 25), (33, 33)]
    assert [x.status for x in layers] == ["productive", "productive", "critical", "unproductive"]
    truth = oracle_rf(linearise(model), (1, 2, 64, 64), layer="2")
    assert truth["rf"] == [25, 25]


class FunctionalPool(nn.Module):
    """Pooling done in forward with F.max_pool2d: no module holds its stride."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x), 3, 2, 1)
        return self.conv3(self.conv2(x))


def test_functional_pooling_is_seen_and_its_refinement_is_refused_by_name():
    model = FunctionalPool()
    report = border_report(model, 8, top=20)
    by_name = {x.name: x for x in report.layers}
    assert by_name[""].op == "max_pool2d_with_indices" and by_name[""].rf_min == (5, 5)
    assert by_name["conv2"].rf_min == (9, 9) and by_name["conv2"].status == "critical"
    assert by_name["conv3"].rf_min == (13, 13) and by_name["conv3"].status == "unproductive"
    pool = next(s for s in report.suggestions if s.edits == ({"module": "", "stride": [1, 1]},))
    assert pool.applicable is not None and "forward code" in pool.applicable
    with pytest.raises(RefineError, match="forward code"):
        refine(model, pool.recipe())


# -- brute force: r_min is the smallest receptive field over the paths ----------------------------------------
@settings(max_examples=40, **SETTINGS)
@given(architectures(dims=(1, 2), allow_upsampling=False, max_blocks=4))
def test_rf_min_is_the_smallest_single_path_receptive_field(arch):
    """Zero all but one branch of every two-branch block and measure that path with the gradient oracle."""
    name = arch.integer_checkpoints[-1] if arch.integer_checkpoints else None
    assume(name is not None)
    model = arch.build()
    result = rflens.receptive_field(model, arch.input_shape[2:], in_channels=arch.input_shape[1])
    upto = int(name.split(".")[1])
    blocks = [i for i in range(upto + 1) if isinstance(model.blocks[i], TwoBranch)]
    assume(len(blocks) <= 3)
    rfs = []
    for choice in itertools.product("ab", repeat=len(blocks)):
        lin = linearise(model)
        for i, keep in zip(blocks, choice, strict=True):
            dropped = getattr(lin.blocks[i], "b" if keep == "a" else "a")
            dropped.register_forward_hook(lambda m, inp, out: out * 0)
        try:
            rfs.append(oracle_rf(lin, arch.input_shape, layer=name)["rf"])
        except ValueError:
            assume(False)
    expected = tuple(min(r[a] for r in rfs) for a in range(arch.ndim))
    note(f"{arch.describe()}\npaths: {rfs}")
    assert result.layer(name).rf_min == expected


# -- resizing the graph instead of tracing again ------------------------------------------------------------------
@pytest.mark.parametrize("build", [torchvision.models.resnet18, torchvision.models.mobilenet_v3_small,
                                   torchvision.models.efficientnet_b0])
def test_resized_graph_equals_a_new_capture(build):
    from rflens.resize import mismatch, resized

    model = build()
    graph = capture(model, 224)
    for n in (97, 160, 225, 321):
        assert mismatch(resized(graph, (n, n)), capture(model, n)) is None


def test_tf_same_padding_follows_the_input_size_without_tracing_again():
    from rflens.resize import mismatch, resized

    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnet_b0")
    graph = capture(model, 224)
    assert "conv_stem" in graph.same_padding and graph.same_padding == graph.size_read_modules
    res = Resolutions(graph, lambda s: capture(model, s))
    assert res.resizable, res.retrace_reason
    for n in (97, 200, 225, 231, 257):
        assert mismatch(resized(graph, (n, n)), capture(model, n)) is None
    assert res.at((225, 225)).unproductive == names(classify(capture(model, 225)), "unproductive")


class _PadsOneRow(nn.Module):
    """Reads the size, then pads (0, 1) whatever it is: TF-"same" at 224 for k3 s2, not at 225."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2)

    def forward(self, x):
        if x.shape[-1] > 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


def test_size_reads_that_only_look_like_same_padding_are_traced_again():
    model = nn.Sequential(_PadsOneRow(), nn.Conv2d(4, 4, 3, padding=1))
    res = Resolutions(capture(model, 224), lambda s: capture(model, s))
    assert not res.resizable and "constant_pad_nd" in res.retrace_reason
    assert [x.input_size for x in res.at((225, 225)).layers] == \
        [x.input_size for x in classify(capture(model, 225))]


@settings(max_examples=40, **SETTINGS)
@given(architectures(dims=(1, 2), allow_upsampling=True, max_blocks=5), st.integers(-6, 12))
def test_the_analysis_at_another_size_matches_a_new_trace(arch, delta):
    model = arch.build()
    size = arch.input_shape[2:]

    def trace(s):
        return capture(model, s, in_channels=arch.input_shape[1])

    res = Resolutions(trace(size), trace)
    other = tuple(max(n + delta, 1) for n in size)
    try:
        truth = classify(trace(other))
    except RflensError:
        with pytest.raises(RflensError):
            res.at(other)
        return
    note(f"{arch.describe()}\nresizable: {res.retrace_reason}")
    got = res.at(other)
    assert [(x.name, x.status, x.rf_min, x.input_size, x.flops) for x in got.layers] == \
        [(x.name, x.status, x.rf_min, x.input_size, x.flops) for x in truth]


def test_flops_are_flop_counter_mode_s():
    model = torchvision.models.resnet18()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 97, 97))
    report = border_report(model, 224, suggestions=False)
    assert report.resolutions.at((97, 97)).graph.flops == counter.get_total_flops()
    assert report.total_params == sum(p.numel() for p in model.parameters())


# -- feasible input range ---------------------------------------------------------------------------------------
def small_vgg():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1),
                         nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1))


def test_feasible_range_by_brute_force():
    model = small_vgg()
    report = border_report(model, 32, suggestions=False)
    free = []
    for n in range(1, 120):
        try:
            layers = classify(capture(model, n))
        except RflensError:
            continue
        if not names(layers, "unproductive"):
            free.append(n)
    assert report.resolution_range.min == (free[0], free[0])
    assert all(n in free for n in range(free[0], 120) if n >= 8)  # monotone where the model runs
    assert report.resolution_range.max == (max(x.rf_max[0] for x in report.layers),) * 2


def test_waste_and_json_document():
    report = border_report(small_vgg(), 24)
    doc = json.loads(json.dumps(report.to_dict()))
    assert set(doc) >= {"input_size", "unproductive", "critical", "resolution_range", "waste", "suggestions"}
    assert set(doc["resolution_range"]) == {"min", "max"}
    assert set(doc["waste"]) >= {"flops", "params", "flops_share"}
    assert all(set(s) >= {"change", "unproductive_after", "flops_ratio", "params_ratio"}
               for s in doc["suggestions"])
    bad = [x for x in report.layers if x.status == "unproductive"]
    assert bad and doc["waste"]["flops"] == sum(x.flops for x in bad)
    assert doc["waste"]["flops_share"] == pytest.approx(sum(x.flops for x in bad) / report.total_flops)


# -- every suggestion, applied to the model, does what the geometry said -------------------------------------------
@settings(max_examples=25, **SETTINGS)
@given(architectures(dims=(1, 2), allow_upsampling=False, max_blocks=6))
def test_refined_models_confirm_the_prediction(arch):
    model = arch.build()
    size = arch.input_shape[2:]
    report = border_report(model, size, in_channels=arch.input_shape[1], top=50)
    assume(report.suggestions)
    for s in report.suggestions:
        if s.applicable is not None:
            assert applicable(model, s.edits) is not None
            continue
        refined = refine(model, s.recipe())
        graph = capture(refined, s.input_size, in_channels=arch.input_shape[1])
        note(f"{arch.describe()}\n{s.change}")
        assert tuple(names(classify(graph), "unproductive")) == s.unproductive_after
        assert (graph.flops, graph.params) == (s.flops, s.params)


def test_resnet_downsamplings_change_together():
    from rflens.refinement import downsamplings

    graph = capture(torchvision.models.resnet18(), 64)
    groups = [[graph.nodes[i].module for i in g] for g in downsamplings(graph)]
    assert ["layer2.0.conv1", "layer2.0.downsample.0"] in groups
    assert ["conv1"] in groups and ["maxpool"] in groups


# -- recipes -------------------------------------------------------------------------------------------------------
def test_recipe_errors(tmp_path):
    with pytest.raises(RefineError, match="no 'edits'"):
        refine(small_vgg(), {"change": "x"})
    with pytest.raises(RefineError, match="no module named 'nope'"):
        refine(small_vgg(), {"edits": [{"module": "nope", "stride": [1, 1]}]})
    bad = tmp_path / "r.json"
    bad.write_text("{not json")
    with pytest.raises(RefineError, match="cannot read"):
        load_recipe(str(bad))
    bad.write_text('{"edits": []}')
    with pytest.raises(RefineError, match="not an rflens recipe"):
        load_recipe(str(bad))


# -- the reviewer's cases: each suggestion, applied, does what the geometry said -----------------------------------
def confirm_all(model, size, in_channels=3):
    report = border_report(model, size, in_channels=in_channels, top=100)
    for s in report.suggestions:
        if s.applicable is None:
            graph = capture(refine(model, s.recipe()), s.input_size, in_channels=in_channels)
            layers = classify(graph)
            assert (tuple(names(layers, "unproductive")), tuple(names(layers, "critical")), graph.flops,
                    graph.params) == (s.unproductive_after, s.critical_after, s.flops, s.params), s.change
    return report


class TwoStages(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Sequential(*[nn.Conv2d(8, 8, 3, padding=1) for _ in range(3)])

    def forward(self, x):
        return self.head(self.features(x))


def test_a_move_stays_inside_its_sequential():
    report = confirm_all(TwoStages(), 16)
    move = next(s for s in report.suggestions if s.kind == "move")
    assert move.edits == ({"module": "features.1", "move_before": None},)
    assert move.change == "move 'features.1' to the end of 'features'" and move.unproductive_after == ()


def test_a_shared_module_changes_at_every_call():
    pool = nn.MaxPool2d(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), pool, nn.Conv2d(8, 8, 3, padding=1),
                          nn.Conv2d(8, 8, 3, padding=1), pool, *[nn.Conv2d(8, 8, 3, padding=1) for _ in range(3)])
    report = confirm_all(model, 16)
    shared = [s for s in report.suggestions if "'1'" in s.change]
    assert shared and all(s.change.endswith("(every call)") and s.kind == "stride" for s in shared)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    twice = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), conv, *[nn.Conv2d(8, 8, 3, padding=1) for _ in range(3)],
                          conv)
    res = border_report(twice, 16, suggestions=False).resolutions
    free = [n for n in range(1, 20) if all(x.status != "unproductive" for x in res.at(n).layers)]
    assert res.feasible_range().min == (free[0], free[0])


def test_transposed_convolutions_are_layers_with_their_own_numbers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    layers = {x.name: x for x in border_report(model, 15, suggestions=False).layers}
    assert layers["3"].op == "convolution" and layers["3"].calls == 1
    assert layers["3"].input_rf_min == (15, 15) and layers["3"].rf_min == (19, 19)
    assert layers["3"].status == "unproductive"
    confirm_all(model, 15)


def test_layers_are_listed_in_execution_order():
    timm = pytest.importorskip("timm")
    layers = border_report(timm.create_model("convnext_atto"), 64, suggestions=False).layers
    block = [x.name for x in layers if x.name.startswith("stages.1.blocks.0.")]
    assert block == ["stages.1.blocks.0.conv_dw", "stages.1.blocks.0.mlp.fc1", "stages.1.blocks.0.mlp.fc2"]


def test_resolutions_needs_a_way_to_check_and_moves_are_validated():
    with pytest.raises(ValueError, match="retrace"):
        Resolutions(capture(small_vgg(), 32))
    assert Resolutions(capture(small_vgg(), 32), check=False).at(40).input_size == (40, 40)
    for before in ("99", "2"):
        with pytest.raises(RefineError, match="same nn.Sequential"):
            refine(small_vgg(), {"edits": [{"module": "2", "move_before": before}]})


class Crop(nn.Module):
    def __init__(self, fixed: bool):
        super().__init__()
        self.fixed = fixed

    def forward(self, x):
        return x[..., :7, :] if self.fixed else x[..., 1:-1, 2::3]


@pytest.mark.parametrize("fixed", [False, True])
def test_slices_resize_when_their_end_follows_the_size(fixed):
    from rflens.resize import mismatch, resized

    model = nn.Sequential(nn.Conv2d(3, 3, 3), Crop(fixed))
    graph = capture(model, 20)
    found = {mismatch(resized(graph, (n, n)), capture(model, n)) is None for n in (21, 22, 23, 40)}
    assert found == ({False} if fixed else {True})
    assert Resolutions(graph, lambda s: capture(model, s)).resizable is not fixed

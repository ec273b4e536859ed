"""`rflens check`: the CI rules over an audit, their limits, the verdicts, [tool.rflens] and the command line.

Every expected number below is derived by hand from the geometry of a small purpose-built model (receptive field
``r + (k - 1) * jump`` per layer, Richter & Pal's unproductive-layer criterion, which pads a strided window
leaves unused), never copied from what rflens prints.
"""

from __future__ import annotations

import functools
import json
import math
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_cli import run

from rflens import checks
from rflens.audit import audit
from rflens.checks import Config, load_config
from rflens.errors import RflensError

# -- models -----------------------------------------------------------------------------------------------------
SAME = (3, 1, 1)  # 3x3, stride 1, pad 1: each adds 2 to the receptive field, never uneven, no checkerboard
DOWN3 = (3, 2, 1)  # odd kernel, stride 2: a checkerboard; on an even map the far pad is never read (uneven)
DOWN2 = (2, 2, 0)  # kernel a multiple of the stride: no checkerboard, nothing padded
DOWN4 = (4, 2, 1)


def convs(*layers: tuple[int, int, int], channels: int = 3) -> nn.Sequential:
    """A plain stack of equal convolutions, one per (kernel, stride, padding): every layer has the same FLOPs
    per output pixel."""
    return nn.Sequential(*(nn.Conv2d(channels, channels, k, s, p) for k, s, p in layers))


class Gated(nn.Module):
    """Squeeze-and-excitation style: the output map is scaled by its own global mean, so it sees everything."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y * torch.sigmoid(y.mean((2, 3), keepdim=True))


class Broadcast(nn.Module):
    """The global mean spread over the map again: every unit sees everything, through the global op only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return F.interpolate(self.conv(x).mean((2, 3), keepdim=True), size=x.shape[-2:])


def box() -> nn.Sequential:
    """One 5x5 convolution with equal weights: the gradient of a unit is 1 on each of its 25 pixels."""
    conv = nn.Conv2d(1, 1, 5, padding=2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    return nn.Sequential(conv)


MODELS = {
    "two-same": lambda: convs(SAME, SAME),
    "four-same": lambda: convs(*[SAME] * 4),
    "six-same": lambda: convs(*[SAME] * 6),
    "down3": lambda: convs(DOWN3, DOWN3),
    "down2": lambda: convs(DOWN2, DOWN2),
    "down4": lambda: convs(DOWN4, DOWN4),
    "gated": Gated,
    "broadcast": Broadcast,
    "pooled": lambda: nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                    nn.Linear(3, 2)),
    "box": box,
    # LeNet-5's C5: a 5x5 convolution on the 5x5 map of S4 gives a 1x1 map that sees the whole 32x32 input
    "lenet": lambda: nn.Sequential(nn.Conv2d(1, 2, 5), nn.MaxPool2d(2), nn.Conv2d(2, 2, 5), nn.MaxPool2d(2),
                                   nn.Conv2d(2, 4, 5)),
    "whole": lambda: nn.Sequential(nn.Conv2d(3, 3, 8)),  # one 8x8 convolution on an 8x8 input
}


@functools.cache
def audited(name: str, size: int, gradients: bool = False):
    """The audit of MODELS[name] (built once per name, size and gradients; check() only reads it)."""
    torch.manual_seed(0)
    return audit(MODELS[name](), size, device="cpu", gradients=gradients, n=2 if gradients else None)


def outcome(name: str, size: int, rule: str, limit: float | None = None, gradients: bool = False) -> checks.Outcome:
    limits = {} if limit is None else {rule: limit}
    (result,) = checks.check(audited(name, size, gradients), [rule], limits)
    assert result.rule == rule and result.limit == (checks.RULES[rule].limit if limit is None else limit)
    return result


# -- 1. each rule passes on a model built to pass and fails on one built to fail -----------------------------------
@pytest.mark.parametrize("rule,name,size,value,passes", [
    # receptive field of the last map / input side: two 3x3 convs see 3 + 2 = 5 px
    ("rf-below-input", "two-same", 32, 5 / 32, False),
    ("rf-below-input", "down3", 32, 7 / 32, False),  # 3 + 2 * 2 (the second conv reads with a jump of 2)
    ("rf-below-input", "down2", 32, 4 / 32, False),  # 2 + 1 * 2
    ("rf-below-input", "two-same", 5, 1.0, True),  # exactly the input: at least 1, passes
    ("rf-below-input", "four-same", 8, 9 / 8, True),
    # a global mean multiplies the map: context from everywhere, but the local field (3) decides
    ("rf-below-input", "gated", 32, 3 / 32, False),
    ("rf-below-input", "broadcast", 32, math.inf, True),  # no local path left: global
    ("rf-below-input", "pooled", 8, 3 / 8, False),  # a global pooling head: the map it pools is the last map
    # rfs 3, 5, ..., 13 at 8 px: layer 4 (9 > 8, reads 7 < 8) is critical, layers 5 and 6 read maps that see >= 8
    ("unproductive-layers", "six-same", 8, 2, False),
    ("unproductive-layers", "six-same", 6, 3, False),  # layers 4 (reads 7 >= 6), 5 and 6
    ("unproductive-layers", "two-same", 3, 2, False),  # 3x3 kernels on 3x3 maps act as fully connected layers
    ("unproductive-layers", "four-same", 8, 0, True),  # layer 4 is only critical
    ("unproductive-layers", "six-same", 16, 0, True),  # 13 < 16 everywhere
    # six identical layers: the share is the count over six
    ("wasted-flops", "six-same", 8, 2 / 6, False),
    ("wasted-flops", "six-same", 6, 3 / 6, False),
    ("wasted-flops", "six-same", 16, 0.0, True),
    # 3x3 stride 2 pad 1: windows start at -1, 1, ..., n - 3 on an even map and never reach the pad at n
    ("uneven-padding", "down3", 32, 2, False),  # 32 -> 16 -> 8: both maps even
    ("uneven-padding", "down3", 34, 1, False),  # 34 -> 17: only the first map is even
    ("uneven-padding", "down3", 33, 0, True),  # 33 -> 17 -> 9
    ("uneven-padding", "down2", 32, 0, True),
    ("uneven-padding", "two-same", 32, 0, True),
    # no checkerboard: kernels a multiple of the stride, or no stride at all
    ("dead-pixels", "down2", 32, 0.0, True),
    ("dead-pixels", "down4", 32, 0.0, True),
    ("dead-pixels", "two-same", 32, 0.0, True),
])
def test_rule_value_and_outcome(rule, name, size, value, passes):
    result = outcome(name, size, rule)
    assert result.value == pytest.approx(value)
    assert result.passed is passes
    assert result.line().startswith(f"{'PASS' if passes else 'FAIL'} {rule}: ")


def test_odd_kernel_with_stride_two_fails_dead_pixels():
    result = outcome("down3", 32, "dead-pixels")
    assert not result.passed and result.value > 0
    assert "checkerboard with period" in result.text


def test_default_rules_are_checked_in_order():
    outcomes = checks.check(audited("down3", 32))
    assert [o.rule for o in outcomes] == list(checks.DEFAULT_RULES) == [
        "unproductive-layers", "uneven-padding", "dead-pixels", "rf-below-input"]
    assert [o.passed for o in outcomes] == [True, False, False, False]


def test_global_value_is_written_as_inf():
    result = outcome("broadcast", 32, "rf-below-input")
    assert result.line().startswith("PASS rf-below-input: inf (limit: at least 1)")
    assert json.loads(json.dumps(result.to_dict()))["value"] == "inf"


def test_unknown_rule_is_an_error():
    with pytest.raises(RflensError, match="unknown rule 'no-such-rule'"):
        checks.check(audited("two-same", 32), ["no-such-rule"])


# -- 2. limits: both sides of the boundary ------------------------------------------------------------------------
@pytest.mark.parametrize("rule,name,size,gradients", [
    ("unproductive-layers", "six-same", 8, False),
    ("wasted-flops", "six-same", 8, False),
    ("uneven-padding", "down3", 32, False),
    ("dead-pixels", "down3", 32, False),
    ("rf-below-input", "two-same", 32, False),
    ("rf-below-input", "two-same", 5, False),  # value 1.0: on the default limit
    ("erf-coverage", "two-same", 32, True),
])
def test_limit_boundary(rule, name, size, gradients):
    value = outcome(name, size, rule, gradients=gradients).value
    minimum = checks.RULES[rule].minimum
    just_past = math.nextafter(value, math.inf if minimum else -math.inf)
    loose = 0.0 if minimum else value + 1
    assert outcome(name, size, rule, limit=value, gradients=gradients).passed  # value == limit passes
    assert not outcome(name, size, rule, limit=just_past, gradients=gradients).passed
    assert outcome(name, size, rule, limit=loose, gradients=gradients).passed


def test_limits_apply_to_their_own_rule_only():
    outcomes = checks.check(audited("down3", 32), ["uneven-padding", "dead-pixels"], {"uneven-padding": 2})
    assert [(o.rule, o.passed, o.limit) for o in outcomes] == [("uneven-padding", True, 2.0),
                                                               ("dead-pixels", False, 0.0)]


# -- 3. erf-coverage needs gradients ------------------------------------------------------------------------------
def test_erf_coverage_without_gradients_is_an_error():
    with pytest.raises(RflensError, match="--weights or --erf"):
        checks.check(audited("two-same", 32), ["erf-coverage"])


def test_erf_coverage_of_a_small_field_fails():
    # whatever the weights, the ERF lies in the 5x5 field: sigma <= 2 per axis, so 2 sigma / 32 <= 1/8
    result = outcome("two-same", 32, "erf-coverage", gradients=True)
    assert 0 < result.value <= 1 / 8 and not result.passed


def test_erf_coverage_of_a_uniform_field_passes():
    # a uniform ERF over 5 pixels per axis: sigma^2 = (5^2 - 1) / 12 = 2, so 2 sigma / 8 = sqrt(2) / 4 ~ 0.354
    result = outcome("box", 8, "erf-coverage", gradients=True)
    assert result.value == pytest.approx(math.sqrt(2) / 4) and result.passed


# -- 4. verdicts agree with the outcomes --------------------------------------------------------------------------
AREA_RULE = {"receptive field": "rf-below-input", "unproductive layers": "unproductive-layers",
             "padding": "uneven-padding", "dead pixels": "dead-pixels", "effective receptive field": "erf-coverage"}


@pytest.mark.parametrize("name,size,area,level", [
    ("two-same", 32, "padding", "ok"),
    ("down3", 32, "padding", "warning"),  # uneven, but every input pixel is still read
    ("two-same", 32, "unproductive layers", "ok"),
    ("six-same", 8, "unproductive layers", "problem"),
    ("two-same", 5, "receptive field", "ok"),  # 5 / 5 = 1: the whole input
    ("four-same", 8, "receptive field", "ok"),
    ("two-same", 8, "receptive field", "warning"),  # 5 / 8 lies in [0.5, 1)
    ("two-same", 32, "receptive field", "problem"),  # 5 / 32 < 0.5
    ("down2", 32, "dead pixels", "ok"),
    ("down3", 32, "dead pixels", None),  # a checkerboard: not ok (how bad depends on the dead pixels)
])
def test_verdict_agrees_with_the_rule(name, size, area, level):
    result = audited(name, size)
    verdict = {v.area: v for v in checks.verdicts(result)}[area]
    (rule,) = checks.check(result, [AREA_RULE[area]])
    assert verdict.value == rule.value and verdict.text == rule.text
    assert (verdict.level == "ok") is rule.passed
    if level is not None:
        assert verdict.level == level


def test_a_critical_layer_warns_but_does_not_fail():
    result = audited("four-same", 8)
    verdict = {v.area: v for v in checks.verdicts(result)}["unproductive layers"]
    assert verdict.level == "warning" and "1 critical" in verdict.text
    assert outcome("four-same", 8, "unproductive-layers").passed


def test_verdicts_cover_the_erf_only_with_gradients():
    without = audited("two-same", 32)
    assert [v.area for v in checks.verdicts(without)] == [a for a in checks.AREAS if a != "effective receptive field"]
    assert [v.to_dict() for v in without.verdicts] == [v.to_dict() for v in checks.verdicts(without)]
    with_gradients = audited("box", 8, gradients=True)
    erf = {v.area: v for v in checks.verdicts(with_gradients)}["effective receptive field"]
    assert erf.level == "ok" and erf.value == outcome("box", 8, "erf-coverage", gradients=True).value


# -- 5. [tool.rflens] in pyproject.toml ---------------------------------------------------------------------------
MODELS_PY = '''\
import torch
import torch.nn as nn


def build(kind="clean"):
    """clean: two 3x3 stride-1 convs (every default rule passes at 5 px); strided: two 3x3 stride-2 convs."""
    stride = {"clean": 1, "strided": 2}[kind]
    return nn.Sequential(nn.Conv2d(3, 3, 3, stride, 1), nn.Conv2d(3, 3, 3, stride, 1))


def box():
    conv = nn.Conv2d(1, 1, 5, padding=2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    return nn.Sequential(conv)


def labelled(label="net"):
    if not isinstance(label, str):
        raise TypeError(f"label must be a string, got {label!r}")
    return build()
'''


@pytest.fixture
def project(tmp_path):
    """A folder with models.py and nothing else."""
    (tmp_path / "models.py").write_text(MODELS_PY)
    return tmp_path


def write_config(folder, body: str, table: str = "tool.rflens"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pyproject.toml"
    path.write_text(f"[{table}]\n" + textwrap.dedent(body))
    return path


def test_load_config_resolves_paths_against_the_file(tmp_path):
    path = write_config(tmp_path / "proj", '''\
        model = "models.py:build"
        input-size = [32, 48]
        in-channels = 3
        model-args = {kind = "strided"}
        weights = "w.safetensors"
        rules = ["uneven-padding", "dead-pixels"]

        [tool.rflens.thresholds]
        uneven-padding = 2
        dead-pixels = 0.5
        ''')
    config = load_config(path)
    assert config == Config(model=f"{tmp_path / 'proj' / 'models.py'}:build", input_size=[32, 48], in_channels=3,
                            model_args={"kind": "strided"}, weights=str(tmp_path / "proj" / "w.safetensors"),
                            rules=["uneven-padding", "dead-pixels"],
                            limits={"uneven-padding": 2.0, "dead-pixels": 0.5})
    assert isinstance(config.limits["uneven-padding"], float)
    assert config.gradients  # weights given


@pytest.mark.parametrize("model", ["torchvision:resnet18", "timm:resnet50", "/abs/models.py:build"])
def test_load_config_keeps_zoo_names_and_absolute_paths(tmp_path, model):
    assert load_config(write_config(tmp_path, f'model = "{model}"\n')).model == model


def test_config_needs_gradients_only_for_gradient_rules():
    assert not Config().gradients
    assert Config(rules=["dead-pixels", "erf-coverage"]).gradients


@pytest.mark.parametrize("body,needles", [
    ('colour = "red"\n', ["unknown key", "colour"]),
    ('rules = ["uneven-padding", "no-such-rule"]\n', ["unknown rule 'no-such-rule'"]),
    ("[tool.rflens.thresholds]\nno-such-rule = 1\n", ["unknown rule 'no-such-rule'"]),
    ('thresholds = {dead-pixels = "0.5"}\n', ["dead-pixels", "must be a number", "'0.5'"]),
    ("thresholds = {dead-pixels = true}\n", ["dead-pixels", "must be a number"]),
    ("model = \n", ["cannot read"]),
])
def test_load_config_errors(tmp_path, body, needles):
    with pytest.raises(RflensError) as info:
        load_config(write_config(tmp_path, body))
    assert all(n in str(info.value) for n in needles)


def test_file_without_the_table_gives_the_default_config(tmp_path):
    config = load_config(write_config(tmp_path, "line-length = 100\n", table="tool.black"))
    assert config == Config() and config.rules == list(checks.DEFAULT_RULES) and config.limits == {}


def test_load_config_refuses_a_nan_threshold(tmp_path):
    with pytest.raises(RflensError, match="uneven-padding"):
        load_config(write_config(tmp_path, "thresholds = {uneven-padding = nan}\n"))


# -- 6. the command line ------------------------------------------------------------------------------------------
def check_cli(capsys, *argv):
    """`rflens check ARGV`: exit code, {rule: outcome line} of the rule lines, the whole stdout and stderr."""
    code, out, err = run(capsys, "check", *argv)
    lines = {line.split(":")[0].split()[1]: line for line in out.splitlines() if line.startswith(("PASS ", "FAIL "))}
    return code, lines, out, err


def test_cli_exits_0_when_every_rule_passes(capsys, project, monkeypatch):
    monkeypatch.chdir(project)
    code, lines, out, _ = check_cli(capsys, "models.py:build", "--input-size", "5")
    assert code == 0
    assert set(lines) == set(checks.DEFAULT_RULES) and all(line.startswith("PASS") for line in lines.values())
    assert "all 4 rules passed" in out


def test_cli_exits_1_with_a_line_per_failing_rule(capsys, project, monkeypatch):
    monkeypatch.chdir(project)
    code, lines, out, _ = check_cli(capsys, "models.py:build", "--model-arg", "kind=strided", "--input-size", "32")
    assert code == 1
    failing = sorted(line.split(":")[0] for line in out.splitlines() if line.startswith("FAIL"))
    assert failing == ["FAIL dead-pixels", "FAIL rf-below-input", "FAIL uneven-padding"]
    assert lines["uneven-padding"].startswith("FAIL uneven-padding: 2 (limit: at most 0)")
    assert lines["unproductive-layers"].startswith("PASS unproductive-layers: 0")
    assert "3 of 4 rules failed" in out


@pytest.mark.parametrize("argv,needle", [
    (["models.py:build", "--rule", "no-such-rule"], "unknown rule 'no-such-rule'"),
    (["models.py:build", "--threshold", "no-such-rule=1"], "unknown rule 'no-such-rule'"),
    ([], "no model"),
    (["missing.py:build"], "model file not found"),
    (["models.py:nothing"], "no callable 'nothing'"),
    (["models.py:build", "--config", "missing.toml"], "--config missing.toml: no such file"),
])
def test_cli_errors_exit_2(capsys, project, monkeypatch, argv, needle):
    monkeypatch.chdir(project)
    code, lines, _, err = check_cli(capsys, *argv)
    assert code == 2 and needle in err and not lines


def test_cli_malformed_threshold_is_an_argument_error(capsys, project, monkeypatch):
    monkeypatch.chdir(project)
    with pytest.raises(SystemExit) as info:
        run(capsys, "check", "models.py:build", "--threshold", "dead-pixels")
    assert info.value.code == 2 and "threshold must look like dead-pixels=0.3" in capsys.readouterr().err


STRIDED_CONFIG = '''\
    model = "models.py:build"
    model-args = {kind = "strided"}
    input-size = 32
    rules = ["uneven-padding"]
    thresholds = {uneven-padding = 2}
    '''


def test_cli_reads_pyproject_in_the_current_folder(capsys, project, monkeypatch):
    write_config(project, STRIDED_CONFIG)
    monkeypatch.chdir(project)
    code, lines, _, _ = check_cli(capsys)
    assert code == 0 and list(lines) == ["uneven-padding"]  # 2 uneven layers, at most 2
    assert lines["uneven-padding"].startswith("PASS uneven-padding: 2 (limit: at most 2)")


@pytest.mark.parametrize("argv,code,line", [
    (["--threshold", "uneven-padding=1"], 1, "FAIL uneven-padding: 2 (limit: at most 1)"),
    (["--input-size", "33"], 0, "PASS uneven-padding: 0 (limit: at most 2)"),  # 33 -> 17 -> 9: nothing uneven
    (["--rule", "dead-pixels"], 1, "FAIL dead-pixels"),  # replaces the configured rules
    (["--rule", "dead-pixels", "--threshold", "dead-pixels=1e9"], 0, "PASS dead-pixels"),
    (["--model-arg", "kind=clean"], 0, "PASS uneven-padding: 0 (limit: at most 2)"),
])
def test_cli_options_override_the_file(capsys, project, monkeypatch, argv, code, line):
    write_config(project, STRIDED_CONFIG)
    monkeypatch.chdir(project)
    got, lines, _, _ = check_cli(capsys, *argv)
    assert got == code and len(lines) == 1 and next(iter(lines.values())).startswith(line)


def test_cli_config_option_wins_over_the_current_folder(capsys, project, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    write_config(elsewhere, 'model = "nowhere.py:build"\nrules = ["dead-pixels"]\n')
    write_config(project, STRIDED_CONFIG)
    monkeypatch.chdir(elsewhere)
    # the model path in the config is taken from the config's folder, not from the current one
    code, lines, _, _ = check_cli(capsys, "--config", "../pyproject.toml")
    assert code == 0 and list(lines) == ["uneven-padding"]


def test_cli_json(capsys, project, monkeypatch):
    monkeypatch.chdir(project)
    code, _, out, _ = check_cli(capsys, "models.py:build", "--model-arg", "kind=strided", "--input-size", "32",
                                "--json", "--threshold", "dead-pixels=100")
    assert code == 1
    doc = json.loads(out)
    assert doc["passed"] is False and doc["input_size"] == [32, 32]
    outcomes = {o["rule"]: o for o in doc["outcomes"]}
    assert list(outcomes) == list(checks.DEFAULT_RULES)
    assert outcomes["uneven-padding"] == outcomes["uneven-padding"] | {"passed": False, "value": 2, "limit": 0.0}
    assert outcomes["rf-below-input"]["value"] == pytest.approx(7 / 32) and not outcomes["rf-below-input"]["passed"]
    assert outcomes["dead-pixels"]["passed"] and outcomes["dead-pixels"]["limit"] == 100.0
    assert outcomes["unproductive-layers"]["passed"] and outcomes["unproductive-layers"]["value"] == 0


def test_cli_gradient_rule_turns_the_gradients_on(capsys, project, monkeypatch):
    monkeypatch.chdir(project)
    code, _, out, _ = check_cli(capsys, "models.py:box", "--input-size", "8", "--rule", "erf-coverage", "--json")
    (result,) = json.loads(out)["outcomes"]
    assert code == 0 and result["rule"] == "erf-coverage" and result["value"] == pytest.approx(math.sqrt(2) / 4)


# -- bugs ---------------------------------------------------------------------------------------------------------
def test_cli_refuses_a_nan_threshold(capsys, project, monkeypatch):
    monkeypatch.chdir(project)
    code, _, _, _ = check_cli(capsys, "models.py:build", "--model-arg", "kind=strided", "--input-size", "32",
                              "--rule", "uneven-padding", "--threshold", "uneven-padding=nan")
    assert code == 2


def test_cli_malformed_input_size_in_the_config_exits_2(capsys, project, monkeypatch):
    write_config(project, 'model = "models.py:build"\ninput-size = "32by32"\n')
    monkeypatch.chdir(project)
    code, _, _, err = check_cli(capsys)
    assert code == 2 and "input size" in err


def test_cli_keeps_string_model_args_from_the_config(capsys, project, monkeypatch):
    write_config(project, 'model = "models.py:labelled"\ninput-size = 5\nmodel-args = {label = "2024"}\n')
    monkeypatch.chdir(project)
    code, _, _, err = check_cli(capsys)
    assert code == 0, err


@pytest.mark.parametrize("name,size", [("lenet", 32), ("whole", 8)])
def test_rf_of_a_final_convolution_that_sees_the_whole_input(name, size):
    result = outcome(name, size, "rf-below-input")
    assert result.value == 1.0 and result.passed


@pytest.mark.parametrize("rules", ['"dead-pixels"', "[]", "[1]"])
def test_load_config_wants_a_list_of_rule_names(tmp_path, rules):
    with pytest.raises(RflensError, match="rules"):
        load_config(write_config(tmp_path, f"rules = {rules}\n"))


def test_cli_model_ignores_the_configured_models_build_options(capsys, project, monkeypatch):
    write_config(project, 'model = "models.py:build"\nmodel-args = {kind = "strided"}\nweights = "missing.pt"\n'
                          'rules = ["uneven-padding"]\n')
    monkeypatch.chdir(project)
    code, lines, _, err = check_cli(capsys, "torchvision:resnet18", "--input-size", "64")
    assert code == 1 and set(lines) == {"uneven-padding"}, err  # resnet18 built plainly, the configured rules


@pytest.mark.parametrize("body", ['model = 5\n', 'thresholds = 5\n', 'model-args = 5\n', 'in-channels = "3"\n'])
def test_cli_config_of_the_wrong_type_exits_2(capsys, project, monkeypatch, body):
    write_config(project, body)
    monkeypatch.chdir(project)
    code, _, out, err = check_cli(capsys, "models.py:build")
    assert code == 2 and "wrong type" in err and out == ""

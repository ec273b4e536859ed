"""Verdicts and CI rules over an :class:`~rflens.audit.Audit`.

Every rule measures one number on the audit and compares it with a limit (a maximum, or a minimum for
``rf-below-input`` and ``erf-coverage``). The same measurement gives the audit's verdict for its area
(ok / warning / problem, with fixed severity bounds documented in docs/audit.md), so the terminal, the HTML
report and ``rflens check`` always agree on the number. Configuration comes from the command line or from
``[tool.rflens]`` in a project's ``pyproject.toml``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rflens.border import per_axis_text
from rflens.errors import RflensError

OK, WARNING, PROBLEM = "ok", "warning", "problem"


@dataclass(frozen=True)
class Measure:
    value: float
    text: str  # the number in words, with what decided it
    level: str  # the verdict under the fixed severity bounds


@dataclass(frozen=True)
class Rule:
    name: str
    area: str
    what: str  # what ``value`` is, for help texts and docs
    limit: float  # default limit
    minimum: bool  # True: the rule fails below the limit; False: above it
    measure: Callable[[Any], Measure | None]  # None: the audit lacks what the rule needs (no gradients)
    needs_gradients: bool = False

    def fails(self, value: float, limit: float) -> bool:
        return value < limit if self.minimum else value > limit


def _size(sizes: Sequence[int]) -> str:
    return "x".join(map(str, sizes))


def _rf_cover(audit: Any) -> Measure:
    """The local receptive field of the last map over the input (smallest axis). Global ops (GroupNorm statistics,
    squeeze-excitation, attention) add context from the whole input but no spatial detail: they are mentioned,
    and decide only when no local path is left."""
    final = audit.final
    where = f"the last map ({audit.last_layer})"
    if any(r is None for r in final.rf):
        if final.is_global:
            return Measure(math.inf, f"{where} depends on the whole input through a global op only", OK)
        return Measure(0.0, f"{where} has no path to the input", PROBLEM)
    ratio = min(r / n for r, n in zip(final.rf, audit.input_size, strict=True))
    level = OK if ratio >= 1 else WARNING if ratio >= 0.5 else PROBLEM
    text = f"receptive field {per_axis_text(final.rf)} of {where} is {ratio:.2f}x the {_size(audit.input_size)} input"
    if final.is_global:
        text += " (global ops add context from the whole input)"
    return Measure(ratio, text, level)


def _unproductive(audit: Any) -> Measure:
    b = audit.border
    n, crit = len(b.unproductive), len(b.critical)
    text = (f"{n} unproductive, {crit} critical of {len(b.layers)} layers "
            f"({b.waste.flops_share:.1%} of FLOPs wasted)")
    return Measure(n, text, PROBLEM if n else WARNING if crit else OK)


def _wasted(audit: Any) -> Measure:
    m = _unproductive(audit)
    return Measure(audit.border.waste.flops_share, m.text, m.level)


def _uneven(audit: Any) -> Measure:
    p = audit.padding
    n = len(p.uneven)
    suggested = p.suggested_size()
    text = f"{n} uneven layers at {_size(p.input_size)}"
    if n:
        text += f"; nearest size without: {_size(suggested)}" if suggested else "; no size without in the range"
    return Measure(n, text, WARNING if n else OK)


def _never_read(audit: Any) -> int:
    """Input pixels no path reaches (the foveation map under the model's padding)."""
    model_map = audit.padding.foveation_of("model")
    return model_map.stats.never_read if model_map is not None else 0


def _dead(audit: Any) -> Measure:
    """The strongest checkerboard of the dead-pixel test's maps: the structural one (the architecture) and, with
    gradients, the kim-protocol ERF (Kim et al. test the trained network's); 0 without a checkerboard. Problem:
    input pixels no path reads, or 1% dead pixels in the structural map (a gradient map of a few images is too
    noisy to call pixels dead on its own)."""
    d = audit.dead_pixels
    tests = [d.structural] + ([d.erf] if d.erf is not None else [])
    parts, strengths = [], []
    for test in tests:
        idx = test.indices
        strength = (idx.strength or 0.0) if idx.checkerboard else 0.0
        strengths.append(strength)
        parts.append(f"{test.kind} map: " + (f"checkerboard with period {idx.period} px, strength {strength:.2f}"
                                             if idx.checkerboard else "no checkerboard")
                     + f", {idx.dead_share:.2%} dead pixels, L1 {idx.l1:.3g}")
    never = _never_read(audit)
    if never:
        parts.append(f"{never} input pixels never read")
    level = PROBLEM if never or d.structural.indices.dead_share >= 0.01 else WARNING if max(strengths) else OK
    return Measure(max(strengths), f"{len(d.culprits)} culprit layers; " + "; ".join(parts), level)


def _erf_cover(audit: Any) -> Measure | None:
    if audit.erf is None:
        return None
    sigma = audit.erf.metrics.get("sigma")
    nonfinite = audit.erf.nonfinite
    if not sigma or any(s is None for s in sigma):
        return Measure(0.0, "the gradient ERF is empty", PROBLEM)
    cover = math.prod(2 * s / n for s, n in zip(sigma, audit.input_size, strict=True)) ** (1 / len(sigma))
    text = f"ERF (2 sigma) of {audit.last_layer}'s centre unit spans {cover:.0%} of the input side"
    if nonfinite:
        text += f"; {nonfinite} images gave NaN/inf gradients"
    level = PROBLEM if nonfinite or cover < 0.1 else WARNING if cover < 0.25 else OK
    return Measure(cover, text, level)


RULES: dict[str, Rule] = {r.name: r for r in [
    Rule("rf-below-input", "receptive field", "receptive field of the last map over the input size (smallest axis)",
         1.0, True, _rf_cover),
    Rule("unproductive-layers", "unproductive layers", "number of unproductive layers", 0, False, _unproductive),
    Rule("wasted-flops", "unproductive layers", "share of FLOPs in unproductive layers", 0.0, False, _wasted),
    Rule("uneven-padding", "padding", "number of layers with uneven effective padding", 0, False, _uneven),
    Rule("dead-pixels", "dead pixels", "checkerboard strength of the dead-pixel test (0: no checkerboard)", 0.0,
         False, _dead),
    Rule("erf-coverage", "effective receptive field", "gradient ERF width (2 sigma) over the input side", 0.25,
         True, _erf_cover, needs_gradients=True),
]}
DEFAULT_RULES = ("unproductive-layers", "uneven-padding", "dead-pixels", "rf-below-input")
AREAS = ("receptive field", "unproductive layers", "padding", "dead pixels", "effective receptive field")
_AREA_RULE = {"receptive field": "rf-below-input", "unproductive layers": "unproductive-layers",
              "padding": "uneven-padding", "dead pixels": "dead-pixels", "effective receptive field": "erf-coverage"}


@dataclass(frozen=True)
class Verdict:
    area: str
    level: str
    text: str
    value: float

    def to_dict(self) -> dict[str, Any]:
        return {"area": self.area, "level": self.level, "text": self.text, "value": _json(self.value)}


def _json(x: float) -> float | str | None:
    """Strict JSON: infinities as strings, NaN as null."""
    if math.isnan(x):
        return None
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def verdicts(audit: Any) -> list[Verdict]:
    """One verdict per area the audit covers (the ERF area only with gradients)."""
    out = []
    for area in AREAS:
        m = RULES[_AREA_RULE[area]].measure(audit)
        if m is not None:
            out.append(Verdict(area, m.level, m.text, m.value))
    return out


@dataclass(frozen=True)
class Outcome:
    rule: str
    passed: bool
    value: float
    limit: float
    text: str

    def line(self) -> str:
        rule = RULES[self.rule]
        bound = "at least" if rule.minimum else "at most"
        value = "inf" if math.isinf(self.value) else f"{self.value:.4g}"
        return (f"{'PASS' if self.passed else 'FAIL'} {self.rule}: {value} (limit: {bound} {self.limit:g}): "
                f"{self.text}")

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "passed": self.passed, "value": _json(self.value), "limit": _json(self.limit),
                "text": self.text}


def check(audit: Any, rules: Iterable[str] = DEFAULT_RULES, limits: Mapping[str, float] | None = None
          ) -> list[Outcome]:
    """Each rule's outcome on ``audit``; ``limits`` overrides the default limits."""
    limits = dict(limits or {})
    out = []
    for name in rules:
        rule = rule_named(name)
        m = rule.measure(audit)
        if m is None:
            raise RflensError(f"rule {name!r} needs the gradient analyses: give --weights or --erf")
        bound = limit(name, limits.get(name, rule.limit))
        out.append(Outcome(name, not rule.fails(m.value, bound), m.value, bound, m.text))
    return out


def limit(name: str, value: float) -> float:
    """A rule's limit, checked: NaN compares false with everything, so it would pass every value."""
    rule_named(name)
    if math.isnan(value):
        raise RflensError(f"the limit of {name} must be a number, got NaN")
    return float(value)


def rule_named(name: str) -> Rule:
    if name not in RULES:
        raise RflensError(f"unknown rule {name!r}; rules: {', '.join(RULES)}")
    return RULES[name]


@dataclass
class Config:
    """What ``rflens check`` runs: the model and its size, the rules and their limits."""

    model: str | None = None
    input_size: Any = None
    in_channels: int | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    rules: list[str] = field(default_factory=lambda: list(DEFAULT_RULES))
    limits: dict[str, float] = field(default_factory=dict)

    @property
    def gradients(self) -> bool:
        """Whether the audit needs its gradient analyses: weights to test, or a rule that measures them."""
        return self.weights is not None or any(rule_named(r).needs_gradients for r in self.rules)


_KEYS: dict[str, type | tuple[type, ...]] = {  # key -> the TOML types it takes
    "model": str, "input-size": (int, str, list), "in-channels": int, "model-args": dict, "weights": str,
    "rules": list, "thresholds": dict}


def load_config(path: str | Path) -> Config:
    """``[tool.rflens]`` of a ``pyproject.toml``; an empty config when the file has no such table. Relative
    ``model`` file paths and ``weights`` are taken from the file's folder."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    path = Path(path)
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f).get("tool", {}).get("rflens", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RflensError(f"cannot read the rflens configuration in {path}: {exc}") from None
    unknown = set(table) - set(_KEYS)
    if unknown:
        raise RflensError(f"{path}: unknown key(s) in [tool.rflens]: {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted(_KEYS))}")
    for key, types in _KEYS.items():
        if key in table and (not isinstance(table[key], types) or isinstance(table[key], bool)):
            raise RflensError(f"{path}: {key} in [tool.rflens] has the wrong type ({type(table[key]).__name__}: "
                              f"{table[key]!r})")
    config = Config(model=_relative(table.get("model"), path.parent), input_size=table.get("input-size"),
                    in_channels=table.get("in-channels"), model_args=dict(table.get("model-args", {})),
                    weights=_relative_file(table.get("weights"), path.parent))
    if "rules" in table:
        rules = table["rules"]
        if not isinstance(rules, list) or not rules or not all(isinstance(r, str) for r in rules):
            raise RflensError(f"{path}: rules must be a non-empty list of rule names, got {rules!r}")
        config.rules = rules
    thresholds = table.get("thresholds", {})
    for name, value in thresholds.items():
        rule_named(name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise RflensError(f"{path}: threshold {name} must be a number, got {value!r}")
        config.limits[name] = limit(name, value)
    for name in config.rules:
        rule_named(name)
    return config


def _relative(model: str | None, root: Path) -> str | None:
    """``models.py:build`` relative to the config's folder; zoo names as they are."""
    if model is None or model.startswith(("torchvision:", "timm:")) or ":" not in model:
        return model
    file, factory = model.rsplit(":", 1)
    return model if Path(file).is_absolute() else f"{root / file}:{factory}"


def _relative_file(file: str | None, root: Path) -> str | None:
    return file if file is None or Path(file).is_absolute() else str(root / file)

"""Terminal presentation of an audit (rich): one verdict line per area, then each area's details and the fixes.
The details are the tables each analysis's own command prints."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from rflens.audit import Audit, Fix
from rflens.checks import Outcome, Verdict

LEVEL_STYLE = {"ok": "green", "warning": "yellow", "problem": "bold red"}
LEVEL_MARK = {"ok": "ok     ", "warning": "warning", "problem": "problem"}


def verdict_lines(verdicts: Sequence[Verdict]) -> str:
    width = max(len(v.area) for v in verdicts)
    return "\n".join(f"[{LEVEL_STYLE[v.level]}]{LEVEL_MARK[v.level]}[/]  {v.area:<{width}}  {v.text}"
                     for v in verdicts)


def headline(audit: Audit) -> str:
    counts = {level: sum(v.level == level for v in audit.verdicts) for level in LEVEL_STYLE}
    size = "x".join(map(str, audit.input_size))
    what = "weight-free and gradient analyses" if audit.gradients else "weight-free analyses"
    return (f"[bold]{audit.model}[/] at {size} ({what}): {counts['problem']} problem(s), {counts['warning']} "
            f"warning(s), {counts['ok']} ok")


def stage_layers(audit: Audit) -> list[Any]:
    """The receptive fields of the top-level modules with a spatial output (a network's stages), in order."""
    return [x for x in audit.rf.layers if x.name and "." not in x.name]


def fix_lines(fixes: Sequence[Fix]) -> str:
    """Numbered fixes: area, change, cost and effect on one line, the command under it."""
    lines = ["[bold]fixes[/] (cost; effect)"]
    for i, f in enumerate(fixes, 1):
        lines.append(f"{i}. {f.area}: {f.change}; {f.cost}; {f.effect}")
        lines.append(f"   [dim]$[/] {f.command}")
    return "\n".join(lines)


def details(audit: Audit) -> Iterator[Any]:
    """The sections after the verdicts: headings (markup strings) and rich tables, in reading order."""
    from rflens.report import border, deadpixel, erf, padding
    from rflens.report.table import rf_table

    yield "\n[bold underline]receptive field[/]"
    yield rf_table(stage_layers(audit) or audit.rf.layers[-1:], title=f"top-level modules (last map: "
                                                                     f"{audit.last_layer})")
    yield "\n[bold underline]unproductive layers[/] (Richter & Pal)"
    yield border.summary(audit.border)
    shown = [x for x in audit.border.layers if x.status != "productive"]
    if shown:
        yield border.layer_table(shown)
    yield "\n[bold underline]padding[/] (Alsallakh et al.)"
    yield padding.summary(audit.padding)
    if audit.padding.uneven:
        yield padding.uneven_table(audit.padding.layers)
    yield padding.foveation_table(audit.padding.foveation)
    yield "\n[bold underline]dead pixels[/] (Kim et al.)"
    yield deadpixel.summary(audit.dead_pixels)
    if audit.dead_pixels.culprits:
        yield deadpixel.culprit_table(audit.dead_pixels.culprits)
    yield deadpixel.indices_table(audit.dead_pixels)
    yield f"\n[bold underline]structural and effective receptive field[/] of {audit.last_layer}'s centre unit"
    yield erf.erf_table([audit.structural_erf] + ([audit.erf] if audit.erf is not None else []))
    if audit.fixes:
        yield ""
        yield fix_lines(audit.fixes)
    yield from (f"note: {n}" for n in audit.notes)


def outcome_lines(outcomes: Sequence[Outcome]) -> str:
    return "\n".join(o.line() for o in outcomes)

"""Terminal table of receptive fields (rich)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction

from rich.table import Table

from rflens.rf import LayerRF


def per_axis(values: Sequence[int | Fraction | None]) -> str:
    """One number when every axis agrees (``427``), else ``7x5``; ``-`` where there is none."""
    shown = ["-" if v is None else str(v) for v in values]
    return shown[0] if len(set(shown)) == 1 else "x".join(shown)


def rf_table(layers: Iterable[LayerRF], title: str = "") -> Table:
    table = Table(title=title or None, title_justify="left", header_style="bold")
    for column in ("layer", "op", "output", "rf", "rf_min", "stride", "padding", "global"):
        table.add_column(column, justify="left" if column in ("layer", "op") else "right")
    for layer in layers:
        table.add_row(
            layer.name or "(model)", layer.op, "x".join(map(str, layer.output_size)), per_axis(layer.rf),
            per_axis(layer.rf_min), per_axis(layer.stride), per_axis(layer.padding),
            "yes" if layer.is_global else "",
        )
    return table

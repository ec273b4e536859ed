"""The border figure (Richter & Pal): it is written as a PNG, and what it draws is the report's numbers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from rflens.border import BorderReport, border_report
from rflens.report.figures import border_figure

PNG = b"\x89PNG\r\n\x1a\n"


def small_net() -> nn.Sequential:
    """Receptive fields 3, 4, 8, 10, 18, 22, 38, 54: at 32 px the conv at 38 is critical, the last one
    (its input already sees 38 > 32) is unproductive."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1),
    )


@pytest.fixture(scope="module")
def report() -> BorderReport:
    return border_report(small_net(), 32, model_name="small", suggestions=False)


def line(ax, label: str):
    return next(x for x in ax.get_lines() if x.get_label() == label)


def test_plot_writes_a_png_of_the_report(report, tmp_path):
    assert report.unproductive and report.critical  # the figure has something to show
    path = tmp_path / "b.png"
    fig = report.plot(path)
    assert isinstance(fig, Figure)
    assert path.read_bytes()[:8] == PNG
    [ax] = fig.axes
    assert fig.get_suptitle() == "small at 32x32"
    depth = list(range(1, len(report.layers) + 1))
    r_min = line(ax, "r_min")
    assert list(r_min.get_xdata()) == depth
    assert list(r_min.get_ydata()) == [x.rf_min[0] for x in report.layers]
    r_max = next(x for x in ax.get_lines() if x.get_label().startswith("r_max"))
    assert list(r_max.get_ydata()) == [x.rf_max[0] for x in report.layers]
    assert list(line(ax, "input 32").get_ydata()) == [32, 32]


def test_markers_are_coloured_by_status(report):
    from matplotlib.colors import to_rgba

    from rflens.report.figures import STATUS_COLORS

    [ax] = border_figure(report).axes
    [markers] = ax.collections[-1:]
    assert [tuple(c) for c in markers.get_facecolors()] == [to_rgba(STATUS_COLORS[x.status])
                                                            for x in report.layers]


def test_missing_values_are_skipped(report):
    layers = list(report.layers)
    layers[0] = dataclasses.replace(layers[0], rf_min=(None, None), rf_max=(None, None))
    [ax] = border_figure(dataclasses.replace(report, layers=layers)).axes
    assert list(line(ax, "r_min").get_xdata()) == list(range(2, len(layers) + 1))
    assert list(line(ax, "r_min").get_ydata()) == [x.rf_min[0] for x in layers[1:]]


def test_non_square_input_draws_one_panel_per_axis(tmp_path):
    report = border_report(small_net(), (32, 48), model_name="small", suggestions=False)
    fig = report.plot(tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes()[:8] == PNG
    assert fig.get_suptitle() == "small at 32x48"
    assert len(fig.axes) == 2
    for a, (ax, name) in enumerate(zip(fig.axes, ("height", "width"), strict=True)):
        assert ax.get_title(loc="left").startswith(name)
        assert list(line(ax, f"input {report.input_size[a]}").get_ydata()) == [report.input_size[a]] * 2
        assert list(line(ax, "r_min").get_ydata()) == [x.rf_min[a] for x in report.layers]

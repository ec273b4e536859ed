"""The border figure (Richter & Pal) and the ERF figures: they are written as PNGs, and what they draw is the
result objects' numbers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from rflens.border import BorderReport, border_report
from rflens.erf import ERF
from rflens.erf_metrics import summary
from rflens.report.figures import border_figure, erf_depth_figure, erf_figure, square_sides

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


# -- ERF figures: ERF objects built directly (synthetic maps, metrics from erf_metrics.summary), no model run ---
PATH = "cone crop [4, 37) x [4, 37): the unit's field fits inside the input"


def gauss(shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """A separable Gaussian centred on ``n // 2`` per axis (where the area ratio centres its squares)."""
    out = np.ones(shape)
    for a, n in enumerate(shape):
        view = [1] * len(shape)
        view[a] = n
        out = out * np.exp(-0.5 * ((np.arange(n) - n // 2) / sigma) ** 2).reshape(view)
    return out


def make_erf(m: np.ndarray, trf_box, layer: str = "layer3") -> ERF:
    centre = [(lo + hi) / 2 for lo, hi in trf_box] if trf_box else [(s - 1) / 2 for s in m.shape]
    trf = [hi - lo + 1 for lo, hi in trf_box] if trf_box else [None] * m.ndim
    return ERF(model="toynet", layer=layer, protocol="replknet", n=8, nonfinite=0, input_size=m.shape,
               unit=tuple(s // 2 for s in m.shape), map=m, metrics=summary(m, centre, trf), path=PATH,
               crop=None, trf_box=trf_box, inputs="noise", dtype="float32", device="cpu", engine="batch size 8")


def write_png(fig: Figure, tmp_path, name: str = "erf.png") -> None:
    path = tmp_path / name
    fig.savefig(path, dpi=60)
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG


def patch(ax, prefix: str) -> Rectangle:
    [found] = [p for p in ax.patches if p.get_label().startswith(prefix)]
    return found


def squares(ax) -> list[Rectangle]:
    return [p for p in ax.patches if "% of the" in p.get_label()]


def legend_texts(fig: Figure) -> list[str]:
    [legend] = fig.legends
    return [t.get_text() for t in legend.get_texts()]


def edges(rect: Rectangle) -> tuple[float, float, float, float]:
    """(left, right, top, bottom) in pixel-edge coordinates."""
    x, y = rect.get_xy()
    return x, x + rect.get_width(), y, y + rect.get_height()


@pytest.fixture(scope="module")
def erf2d() -> ERF:
    return make_erf(gauss((41, 41), 3.0) * 1e-3, ((5, 35), (5, 35)))


@pytest.mark.filterwarnings("error")
def test_erf_figure_draws_the_map_the_theoretical_box_the_squares_and_the_centre(erf2d, tmp_path):
    fig = erf_figure(erf2d)
    write_png(fig, tmp_path)
    ax = fig.axes[0]
    [im] = ax.images
    assert np.array_equal(np.asarray(im.get_array()), erf2d.map)
    assert "linear" in im.colorbar.ax.get_ylabel()
    assert ax.get_ylim() == (40.5, -0.5)  # row 0 at the top
    assert ax.get_xlim() == (-0.5, 40.5)
    assert "input px" in ax.get_xlabel() and "input px" in ax.get_ylabel()

    box = patch(ax, "theoretical RF")
    assert box.get_label() == "theoretical RF 31 x 31"
    assert box.get_linestyle() == "--"
    assert edges(box) == (4.5, 35.5, 4.5, 35.5)

    ratios = {float(t): r for t, r in erf2d.metrics["area_ratio"].items()}
    drawn = squares(ax)
    assert len(drawn) == len(set(ratios.values()))  # equal ratios share one square
    for rect in drawn:
        left, right, top, bottom = edges(rect)
        assert (left + right) / 2 == 20 and (top + bottom) / 2 == 20  # centred at (H // 2, W // 2)
        assert rect.get_width() == rect.get_height()
    assert len({r.get_edgecolor() for r in drawn}) == len(drawn)  # one colour each
    areas = sorted(r.get_width() * r.get_height() for r in drawn)
    assert areas == pytest.approx(sorted(r * 41 * 41 for r in set(ratios.values())))

    texts = legend_texts(fig)
    assert "theoretical RF 31 x 31" in texts
    for t, r in ratios.items():
        assert any(f"{100 * t:g} %" in x and f": {100 * r:.1f} % of the image" in x for x in texts), (t, texts)
    centre = line(ax, "unit's RF centre")
    assert (list(centre.get_xdata()), list(centre.get_ydata())) == ([20.0], [20.0])
    com = line(ax, "ERF centre of mass")
    assert list(com.get_ydata()) == pytest.approx([20.0])

    title = fig.get_suptitle()
    assert all(w in title for w in ("toynet", "layer3", "replknet", "8 images"))
    assert PATH.split(":")[0] in ax.get_title(loc="left")


@pytest.mark.filterwarnings("error")
def test_erf_figure_log_scale(erf2d, tmp_path):
    fig = erf_figure(erf2d, log=True)
    write_png(fig, tmp_path)
    ax = fig.axes[0]
    [im] = ax.images
    assert isinstance(im.norm, LogNorm)
    assert im.norm.vmax == erf2d.map.max() and im.norm.vmin == pytest.approx(erf2d.map.max() * 1e-4)
    assert "log" in im.colorbar.ax.get_ylabel()
    assert patch(ax, "theoretical RF").get_label() == "theoretical RF 31 x 31"
    assert squares(ax)


def test_erf_plot_writes_a_png(erf2d, tmp_path):
    erf2d.plot(tmp_path / "e.png", log=True)
    assert (tmp_path / "e.png").read_bytes()[:8] == PNG


def test_square_sides_read_back_from_the_ratio():
    assert square_sides(9 / 41**2, (41, 41)) == (3, 3)
    assert square_sides(25 / (40 * 30), (40, 30)) == (5, 5)
    assert square_sides(21 * 31 / (21 * 61), (21, 61)) == (21, 31)  # clipped to the rows: a wide rectangle
    assert square_sides(1.0, (21, 61)) == (21, 61)
    assert square_sides(7 / 101, (101,)) == (7,)
    assert square_sides(27 / (9 * 31 * 31), (9, 31, 31)) == (3, 3, 3)
    assert square_sides(9 * 11 * 11 / (9 * 31 * 31), (9, 31, 31)) == (9, 11, 11)


@pytest.mark.filterwarnings("error")
def test_erf_figure_clips_the_box_and_the_squares_to_the_image(tmp_path):
    m = gauss((21, 61), 12.0)
    fig = erf_figure(make_erf(m, ((-20, 40), (0, 60))))
    write_png(fig, tmp_path)
    ax = fig.axes[0]
    box = patch(ax, "theoretical RF")
    assert box.get_label() == "theoretical RF 61 x 61 (clipped to the image)"
    assert edges(box) == (-0.5, 60.5, -0.5, 20.5)
    ratios = set(make_erf(m, None).metrics["area_ratio"].values())
    drawn = squares(ax)
    assert len(drawn) == len(ratios)
    for rect in drawn:
        left, right, top, bottom = edges(rect)
        assert -0.5 <= left < right <= 60.5 and -0.5 <= top < bottom <= 20.5
    assert any(edges(r)[2:] == (-0.5, 20.5) and r.get_width() < 61 for r in drawn)  # a square the rows clip
    areas = sorted(r.get_width() * r.get_height() for r in drawn)
    for area, ratio in zip(areas, sorted(ratios), strict=True):
        assert abs(area - ratio * 21 * 61) <= 21 + 61  # exact up to one row or column of rounding


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("log", [False, True])
def test_erf_figure_of_a_1d_map(log, tmp_path):
    m = gauss((101,), 6.0)
    fig = erf_figure(make_erf(m, ((30, 70),)), log=log)
    write_png(fig, tmp_path)
    ax = fig.axes[0]
    assert ax.get_yscale() == ("log" if log else "linear")
    curve = line(ax, "ERF")
    assert list(curve.get_xdata()) == list(range(101))
    span = patch(ax, "theoretical RF")
    assert span.get_label() == "theoretical RF 41"
    segments = [x for x in ax.get_lines() if "% of the input" in x.get_label()]
    assert segments and all(-0.5 <= min(s.get_xdata()) < max(s.get_xdata()) <= 100.5 for s in segments)
    assert list(line(ax, "unit's RF centre").get_xdata()) == [50.0, 50.0]
    assert any("% of the input" in t for t in legend_texts(fig))


@pytest.mark.filterwarnings("error")
def test_erf_figure_of_a_3d_map_shows_the_central_slice(tmp_path):
    m = gauss((9, 31, 31), 3.0)
    fig = erf_figure(make_erf(m, ((1, 7), (5, 25), (5, 25))))
    write_png(fig, tmp_path)
    ax = fig.axes[0]
    assert "central slice 4 of 9 along axis 0" in fig.get_suptitle()
    assert np.array_equal(np.asarray(ax.images[0].get_array()), m[4])
    box = patch(ax, "theoretical RF")
    assert box.get_label() == "theoretical RF 7 x 21 x 21"
    assert edges(box) == (4.5, 25.5, 4.5, 25.5)
    assert squares(ax) and all("% of the volume" in r.get_label() for r in squares(ax))


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape", [(32, 32), (40,), (5, 16, 16)])
def test_erf_figure_of_an_all_zero_map(shape, log, tmp_path):
    e = make_erf(np.zeros(shape), tuple((2, n - 3) for n in shape))
    assert all(v is None for v in e.metrics["area_ratio"].values())
    fig = erf_figure(e, log=log)
    write_png(fig, tmp_path)
    ax = fig.axes[0]
    assert not squares(ax) and not [x for x in ax.get_lines() if "% of the" in x.get_label()]
    assert not any("%:" in t for t in legend_texts(fig))
    assert all("ERF centre of mass" != t for t in legend_texts(fig))  # no mass, no centre of mass
    assert patch(ax, "theoretical RF")


@pytest.mark.filterwarnings("error")
def test_erf_figure_of_a_global_field(tmp_path):
    m = gauss((32, 32), 5.0)
    fig = erf_figure(make_erf(m, None))
    write_png(fig, tmp_path)
    ax = fig.axes[0]
    assert not [p for p in ax.patches if p.get_label().startswith("theoretical RF")]
    assert "theoretical RF: global (the whole input)" in legend_texts(fig)
    centre = line(ax, "input centre (global field)")
    assert (list(centre.get_xdata()), list(centre.get_ydata())) == ([15.5], [15.5])
    assert squares(ax)


@pytest.fixture(scope="module")
def depth_results() -> list[ERF]:
    return [make_erf(gauss((64, 64), 1.5), ((29, 35), (29, 35)), layer="stage1.conv"),
            make_erf(gauss((64, 64), 4.0), ((22, 42), (20, 44)), layer="stage2.conv"),
            make_erf(gauss((64, 64), 9.0), None, layer="head.pool")]


@pytest.mark.filterwarnings("error")
def test_erf_depth_figure(depth_results, tmp_path):
    fig = erf_depth_figure(depth_results)
    write_png(fig, tmp_path)
    [ax] = fig.axes
    assert ax.get_yscale() == "log"
    assert fig.get_suptitle() == "ERF vs theoretical RF: toynet (replknet, 8 images)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["stage1.conv", "stage2.conv", "head.pool"]

    trf = next(x for x in ax.get_lines() if x.get_label().startswith("theoretical RF"))
    assert list(trf.get_xdata()) == [0, 1]  # the global field has no size: not on this line
    assert list(trf.get_ydata()) == pytest.approx([7.0, math.sqrt(21 * 25)])
    glob = next(x for x in ax.get_lines() if x.get_label().startswith("global field"))
    assert (list(glob.get_xdata()), list(glob.get_ydata())) == ([2], [64.0])
    assert any(t.get_text() == "global" for t in ax.texts)
    assert list(line(ax, "input 64x64").get_ydata()) == [64, 64]

    sigma = next(x for x in ax.get_lines() if x.get_label().startswith("ERF 2"))
    assert list(sigma.get_xdata()) == [0, 1, 2]
    assert list(sigma.get_ydata()) == pytest.approx([2 * math.sqrt(math.prod(r.metrics["sigma"]))
                                                     for r in depth_results])
    assert sigma.get_ydata()[0] < sigma.get_ydata()[1] < sigma.get_ydata()[2]
    side = line(ax, "side of the 50 % area-ratio square")
    assert list(side.get_ydata()) == pytest.approx([math.sqrt(r.metrics["area_ratio"]["0.5"] * 64 * 64)
                                                    for r in depth_results])
    texts = legend_texts(fig)
    assert "input 64x64" in texts and "global field (drawn at the input size)" in texts


def test_erf_depth_figure_without_layers(tmp_path):
    fig = erf_depth_figure([])
    write_png(fig, tmp_path)
    assert fig.get_suptitle() == "ERF vs theoretical RF"

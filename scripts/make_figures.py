"""Regenerate the figures of the documentation (docs/img/). Run from anywhere: ``python scripts/make_figures.py``.

Models are randomly initialised (``weights=None``, no download): the border analysis is pure geometry, and the
ERF figures show what an untrained ResNet-50 sees (Luo et al.'s setting), seeded, so they are reproducible.
"""

from __future__ import annotations

from pathlib import Path

import torchvision

from rflens.border import border_report
from rflens.deadpixel import dead_pixel_test
from rflens.erf import erf
from rflens.padding import padding_report
from rflens.report.figures import erf_depth_figure
from rflens.sources import load_model

IMG = Path(__file__).resolve().parents[1] / "docs" / "img"


def main(only: str | None = None) -> None:
    """Every figure, or only the one named (``deadpixel``, ``padding``: seconds each)."""
    IMG.mkdir(parents=True, exist_ok=True)
    alone = {"deadpixel": deadpixel_figure, "padding": padding_figure}
    if only is not None:
        alone[only]()
        return
    report = border_report(torchvision.models.vgg19(weights=None), 224, model_name="torchvision:vgg19")
    path = IMG / "border_vgg19.png"
    report.plot(path)
    print(f"wrote {path}")

    name = "torchvision:resnet50"
    resnet = load_model(name)  # random init with seed 0
    result = erf(resnet, "layer3", n=16, input_size=448, model_name=name)  # its 267 px field inside the image
    path = IMG / "erf_resnet50_layer3.png"
    result.plot(path, log=True)
    print(f"wrote {path}")
    layers = ["layer1", "layer2", "layer3", "layer4"]
    path = IMG / "erf_depth_resnet50.png"
    erf_depth_figure([erf(resnet, layer, n=16, input_size=224, model_name=name) for layer in layers]).savefig(
        path, dpi=120, bbox_inches="tight")
    print(f"wrote {path}")
    deadpixel_figure()
    padding_figure()


def padding_figure() -> None:
    name = "torchvision:resnet50"
    path = IMG / "padding_resnet50.png"
    fig = padding_report(load_model(name), 224, model_name=name).plot()
    fig.savefig(path, dpi=80, bbox_inches="tight")  # six 224x224 checkerboards: keep the file small
    print(f"wrote {path}")


def deadpixel_figure() -> None:
    name = "torchvision:resnet50"
    path = IMG / "deadpixel_resnet50.png"
    dead_pixel_test(load_model(name), 224, fix="kernel-pad", model_name=name).plot(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1] if len(sys.argv) > 1 else None)

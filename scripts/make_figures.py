"""Regenerate the figures of the documentation (docs/img/). Run from anywhere: ``python scripts/make_figures.py``.

The model is randomly initialised (``weights=None``): the border analysis is pure geometry, so weights would
change nothing and need a download.
"""

from __future__ import annotations

from pathlib import Path

import torchvision

from rflens.border import border_report

IMG = Path(__file__).resolve().parents[1] / "docs" / "img"


def main() -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    report = border_report(torchvision.models.vgg19(weights=None), 224, model_name="torchvision:vgg19")
    path = IMG / "border_vgg19.png"
    report.plot(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

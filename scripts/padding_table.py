"""Write the model table of docs/padding.md: uneven layers at one input size, the input sizes without any (the
rule and the nearest), and the foveation numbers, for the torchvision and timm ImageNet CNN families.

Every model is built with random weights (no downloads); the audit needs none. A model that fails gets its
error in its row; the others still run.

    python scripts/padding_table.py                  # prints the markdown table
    python scripts/padding_table.py --size 224 --out /tmp/padding_table.md
"""

from __future__ import annotations

from collections import Counter

from model_table import write_table

from rflens.padding import padding_report
from rflens.sources import load_model

MODELS = [
    "torchvision:alexnet", "torchvision:vgg11", "torchvision:vgg16", "torchvision:resnet18", "torchvision:resnet50",
    "torchvision:resnet152", "torchvision:resnext50_32x4d", "torchvision:wide_resnet50_2", "torchvision:densenet121",
    "torchvision:googlenet", "torchvision:inception_v3", "torchvision:squeezenet1_0", "torchvision:shufflenet_v2_x1_0",
    "torchvision:mobilenet_v2", "torchvision:mobilenet_v3_large", "torchvision:mnasnet1_0",
    "torchvision:efficientnet_b0", "torchvision:efficientnet_v2_s", "torchvision:regnet_x_400mf",
    "torchvision:regnet_y_400mf", "torchvision:convnext_tiny",
    "timm:resnet50d", "timm:resnet26t", "timm:res2net50_26w_4s", "timm:resnest14d", "timm:cspresnet50",
    "timm:darknet53", "timm:dla34", "timm:dpn68", "timm:regnety_016", "timm:rexnet_100", "timm:ghostnet_100",
    "timm:efficientnet_b0", "timm:tf_efficientnet_b0", "timm:tf_efficientnetv2_s", "timm:mixnet_s",
    "timm:tf_mixnet_s", "timm:mobilenetv3_large_100", "timm:tf_mobilenetv3_large_100", "timm:hrnet_w18_small",
    "timm:ese_vovnet19b_dw", "timm:selecsls42b", "timm:convnext_nano", "timm:inception_v3", "timm:xception41",
]


def _effects(report) -> str:
    counts = Counter(r.effect for r in report.layers if r.uneven and r.axis == 0)
    return ", ".join(f"{n} {effect}" for effect, n in counts.most_common())


def row(spec: str, size: int) -> str:
    try:
        model = load_model(spec).eval()
        report = padding_report(model, size, model_name=spec, modes=["model"])
    except Exception as exc:  # noqa: BLE001 - one failing model must not hide the others
        return f"| {spec} | error: {type(exc).__name__}: {str(exc)[:80]} | | | | |"
    uneven = report.uneven
    names = ", ".join(uneven[:3]) + (f" (+{len(uneven) - 3})" if len(uneven) > 3 else "")
    even = report.even[0]
    nearest = "none found" if even.nearest is None else str(even.nearest)
    if even.nearest == size:
        nearest = f"{size} (this size)"
    stats = report.foveation[0].stats
    traced = " (traced per size)" if report.notes else ""
    return (f"| {spec} | {len(uneven)}{': ' + names if uneven else ''} | {_effects(report) or '-'} | {nearest} | "
            f"{even.rule_text() or 'no rule'}{traced} | {stats.border_ratio:.3f} / {max(stats.asymmetry):.3f} |")


def main() -> None:
    write_table(__doc__, "padding_table.py", ["model", "uneven layers", "effects (first axis)", "nearest even size",
                                              "even sizes in 32..1024", "foveation border/centre / asymmetry"],
                MODELS, row)


if __name__ == "__main__":
    main()

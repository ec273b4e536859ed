"""Write the model table of docs/deadpixel.md: culprit layers, the structural dead-pixel indices before and after
kernel padding, and whether the fix keeps the function, for common ImageNet CNNs at one input size.

Every model is built with random weights (no downloads); the structural test needs none. A model that fails gets
its error in its row; the others still run.

    python scripts/deadpixel_table.py                  # prints the markdown table
    python scripts/deadpixel_table.py --size 224 --out /tmp/deadpixel_table.md
"""

from __future__ import annotations

from model_table import write_table

from rflens.capture import capture
from rflens.deadpixel import culprits, structural_test
from rflens.sources import load_model
from rflens.transforms import kernel_pad

MODELS = ["torchvision:resnet18", "torchvision:resnet50", "torchvision:resnet152", "torchvision:resnext50_32x4d",
          "torchvision:wide_resnet50_2", "torchvision:vgg16", "torchvision:densenet121", "torchvision:mobilenet_v2",
          "torchvision:mobilenet_v3_large", "torchvision:efficientnet_b0", "torchvision:regnet_y_400mf",
          "torchvision:convnext_tiny", "timm:resnet50d", "timm:tf_efficientnet_b0", "timm:inception_v3"]


def _period(p: int | None) -> str:
    return f"{p} px" if p else "none"


def row(spec: str, size: int) -> str:
    try:
        model = load_model(spec).eval()
        graph = capture(model, size)
        found = culprits(graph)
        before = structural_test(graph).indices
        fixed = kernel_pad(model, size)
        after = structural_test(capture(fixed.model, size)).indices
        left = [c.name for c in culprits(capture(fixed.model, size))]
    except Exception as exc:  # noqa: BLE001 - one failing model must not hide the others
        return f"| {spec} | error: {type(exc).__name__}: {str(exc)[:80]} | | | | |"
    function = "same" if fixed.exact else "changed (wider pooling)"
    rel = fixed.max_abs_output_change / max(fixed.output_scale, 1e-30)
    return (f"| {spec} | {len(found)} | {before.l1:.3f} / {_period(before.period)} | {after.l1:.4f} / "
            f"{_period(after.period)} | {len(left)}{' (' + ', '.join(left[:3]) + ')' if left else ''} | "
            f"{function}, max change {rel:.1e} of the output scale |")


def main() -> None:
    write_table(__doc__, "deadpixel_table.py", ["model", "culprits", "structural L1 / period", "after kernel padding",
                                                "culprits left", "function"], MODELS, row)


if __name__ == "__main__":
    main()

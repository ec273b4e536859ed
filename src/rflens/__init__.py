"""rflens: what your convolutional network can actually see."""

from rflens.border import BorderReport, LayerBorder, Resolutions, border_report
from rflens.errors import (
    CaptureError,
    InputSizeError,
    InputTooSmallError,
    MetaDeviceError,
    ModelSourceError,
    NotResizableError,
    RefineError,
    RflensError,
    UnsupportedOpError,
    WeightsError,
)
from rflens.rf import LayerRF, ReceptiveFields, receptive_field

__version__ = "0.1.0"

__all__ = [
    "BorderReport", "CaptureError", "InputSizeError", "InputTooSmallError", "LayerBorder", "LayerRF",
    "MetaDeviceError", "ModelSourceError", "NotResizableError", "ReceptiveFields", "RefineError", "Resolutions",
    "ERF", "PathMap", "RflensError", "UnsupportedOpError", "WeightsError", "apply_recipe", "border_report",
    "culprits", "dead_pixel_test", "erf", "kernel_pad", "path_counts", "receptive_field", "refine", "structural",
    "structural_map", "PaddingReport", "padding_report", "padding_mode_fix", "mean_activation", "blind_spot_probe",
]


def __getattr__(name: str):  # torch is imported only when a model is changed or run; scipy only to count paths
    if name in ("erf", "ERF", "structural"):  # rflens.erf is the module, callable as the function
        import importlib

        module = importlib.import_module("rflens.erf")
        return module if name == "erf" else getattr(module, name)
    if name in ("refine", "apply_recipe", "kernel_pad", "padding_mode_fix"):
        from rflens import transforms

        return getattr(transforms, name)
    if name in ("dead_pixel_test", "culprits"):
        from rflens import deadpixel

        return getattr(deadpixel, name)
    if name in ("PaddingReport", "padding_report"):
        from rflens import padding

        return getattr(padding, name)
    if name in ("mean_activation", "blind_spot_probe"):
        from rflens import spatialbias

        return getattr(spatialbias, name)
    if name in ("PathMap", "path_counts", "structural_map"):
        from rflens import pathcount

        return getattr(pathcount, name)
    raise AttributeError(name)

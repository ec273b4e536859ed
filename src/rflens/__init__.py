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
    "ERF", "PathMap", "RflensError", "UnsupportedOpError", "WeightsError", "border_report", "erf", "path_counts",
    "receptive_field", "refine", "structural", "structural_map",
]


def __getattr__(name: str):  # torch is imported only when a model is changed or run; scipy only to count paths
    if name in ("erf", "ERF", "structural"):  # rflens.erf is the module, callable as the function
        import importlib

        module = importlib.import_module("rflens.erf")
        return module if name == "erf" else getattr(module, name)
    if name == "refine":
        from rflens.transforms import refine

        return refine
    if name in ("PathMap", "path_counts", "structural_map"):
        from rflens import pathcount

        return getattr(pathcount, name)
    raise AttributeError(name)

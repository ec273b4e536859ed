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
    "RflensError", "UnsupportedOpError", "WeightsError", "border_report", "receptive_field", "refine",
]


def __getattr__(name: str):  # torch is imported only when a model is changed
    if name == "refine":
        from rflens.transforms import refine

        return refine
    raise AttributeError(name)

"""rflens: what your convolutional network can actually see."""

from rflens.errors import (
    CaptureError,
    InputTooSmallError,
    MetaDeviceError,
    ModelSourceError,
    RflensError,
    UnsupportedOpError,
    WeightsError,
)
from rflens.rf import LayerRF, ReceptiveFields, receptive_field

__version__ = "0.1.0"

__all__ = [
    "CaptureError", "InputTooSmallError", "LayerRF", "MetaDeviceError", "ModelSourceError",
    "ReceptiveFields", "RflensError", "UnsupportedOpError", "WeightsError", "receptive_field",
]

"""Errors rflens raises: each one says what went wrong and where, never a silent wrong answer."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class RflensError(Exception):
    """Base class of every error rflens raises on purpose."""


class ModelSourceError(RflensError):
    """A model specification (``timm:NAME``, ``file.py:factory``...) could not be resolved."""


class WeightsError(RflensError):
    """A weights file is missing, corrupt, untrusted or does not fit the model."""


class CaptureError(RflensError):
    """The model could not be traced at the requested input size."""


class UnsupportedOpError(CaptureError):
    """An op touches a spatial dimension in a way rflens does not understand."""

    def __init__(self, op: str, module: str, detail: str = "") -> None:
        self.op = op
        self.module = module
        where = f"module '{module}'" if module else "the model's top-level forward"
        msg = f"unsupported op {op} in {where}"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class InputSizeError(CaptureError):
    """The model cannot run at this input size (a layer's output would be empty, or two paths that meet have
    different sizes)."""


class InputTooSmallError(InputSizeError):
    """The input is so small that some layer's output would be empty."""


class NotResizableError(RflensError):
    """The captured graph cannot be carried to another input size: part of its geometry was computed by Python
    code from the input size (TF-"same" padding, an interpolation to another tensor's size...)."""


class RefineError(RflensError):
    """A refinement recipe cannot be applied to this model (a stride hard-coded in a functional call...)."""


class MetaDeviceError(CaptureError):
    """The model cannot run on the meta device (data-dependent Python, ``.item()``, ``nonzero``...)."""



def unknown_layer(name: str, known: Sequence[str], where: str = "in the model") -> RflensError:
    """The error for a layer name that is not a module: the closest names, else the first few, and 'output'."""
    known = [k for k in known if k]
    close = difflib.get_close_matches(name, known, n=5)
    hint = f"; close: {', '.join(close)}" if close else \
        (f"; modules include {', '.join(known[:8])}" + (", ..." if len(known) > 8 else "") if known else "")
    return RflensError(f"no module {name!r} {where}{hint} (use 'output' for the model's output)")

"""Turn a model specification and an optional weights file into a ready ``nn.Module``.

A receptive field depends only on the architecture, so models are built with random weights by default;
the init is seeded so that two runs (and two machines) analyse the very same network. Weights are only
ever read as plain tensors: a checkpoint that would need Python code to load is refused, never executed.

Spec forms: an ``nn.Module`` instance, ``torchvision:NAME``, ``timm:NAME``, ``path/to/file.py:factory`` and
``path/to/model.onnx`` (read for its graph, without weights: :mod:`rflens.capture_onnx`).
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import importlib.util
import itertools
import os
import pickle
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from rflens.errors import ModelSourceError, WeightsError

_ACCEPTED_FORMS = ("an nn.Module instance, 'torchvision:NAME', 'timm:NAME', 'path/to/file.py:factory' or "
                   "'path/to/model.onnx'")
_ZOO_HINT = 'install the model zoos with: pip install "rflens[zoo]"'
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
_MAX_LISTED = 5
_module_counter = itertools.count()


def parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    """Parse repeated ``--model-arg key=value`` strings into constructor kwargs.

    Values are Python literals where they parse as one (so ``width=32`` is an int and ``pool=(2, 2)`` a
    tuple) and raw strings otherwise, so ``act=relu`` needs no quoting on the command line.
    """
    args: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ModelSourceError(f"malformed model argument {item!r}: expected key=value, e.g. width=32")
        if key in args:
            raise ModelSourceError(f"model argument {key!r} given twice ({item!r})")
        try:
            args[key] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            args[key] = raw
    return args


def load_model(
    spec: str | torch.nn.Module,
    *,
    model_args: Mapping[str, Any] | None = None,
    weights: str | os.PathLike | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> torch.nn.Module:
    """Build (or take) the model named by ``spec``, load ``weights`` if given, and return it in eval mode.

    Construction runs under a forked, seeded RNG: the same seed always gives the same parameters and the
    caller's global random state is left exactly as it was. Eval mode because analysis must not update
    batch-norm statistics or apply dropout.

    ``device``: build a spec string's model with ``torch.device(device)`` as the default device. ``"meta"``
    gives parameters without storage and skips the cost of the random init (large models build in
    milliseconds); every weight-free analysis captures on meta anyway. A constructor that needs real values
    (``.item()``, ``.tolist()`` of a tensor it made) fails on meta: build it without ``device`` then. Ignored
    for an ``nn.Module`` instance and an ONNX file (already built); refused with ``weights`` on meta.
    """
    args = dict(model_args or {})
    meta = device is not None and torch.device(device).type == "meta"
    if meta and weights is not None:
        raise WeightsError(f"weights ({weights}) cannot be loaded into a model built on the meta device")
    if isinstance(spec, str) and spec.lower().endswith(".onnx"):
        return _load_onnx(spec, args, weights)
    if isinstance(spec, torch.nn.Module):
        if args:
            raise ModelSourceError(
                f"model_args {args} cannot be applied to an already built {type(spec).__name__}; "
                "pass them to its constructor instead"
            )
        model = spec
    elif isinstance(spec, str):
        loader, target = _resolve(spec)
        with _seeded(seed), (torch.device(device) if device is not None else contextlib.nullcontext()):
            model = loader(target, args)
    else:
        raise ModelSourceError(f"model spec must be {_ACCEPTED_FORMS}, got {type(spec).__name__}")
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def describe(spec: str | torch.nn.Module) -> str:
    """A short display name for reports: the spec string itself, or the class name of a module."""
    return type(spec).__name__ if isinstance(spec, torch.nn.Module) else str(spec)


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint into ``model`` strictly, reading tensors only.

    Pickles are opened with ``weights_only=True`` so a malicious checkpoint cannot run code; strict
    loading because a half-loaded model would silently give wrong answers.
    """
    from rflens.capture_onnx import is_onnx

    if is_onnx(model):
        raise WeightsError(f"{model.source} is an ONNX graph: rflens reads its graph only and loads no weights "
                           f"into it ({path} refused)")
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    state = _extract_state_dict(_read_checkpoint(path), path)
    _check_fits(model, state, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"weights in {path} do not fit {type(model).__name__}: {e}") from e


# --- spec resolution -------------------------------------------------------------------------------------

Loader = Callable[[str, dict[str, Any]], torch.nn.Module]


def _resolve(spec: str) -> tuple[Loader, str]:
    """Pick the loader for a spec string and the part of the spec it needs (model name or file:factory)."""
    prefix, sep, name = spec.partition(":")
    if sep and prefix in _ZOO_LOADERS:
        return _ZOO_LOADERS[prefix], name
    path, sep, _ = spec.rpartition(":")
    if sep and path.endswith(".py"):
        return _load_file, spec
    if spec.endswith(".py"):
        raise ModelSourceError(f"model spec {spec!r} names no factory: write it as '{spec}:FUNCTION'")
    raise ModelSourceError(f"unrecognised model spec {spec!r}: expected {_ACCEPTED_FORMS}")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for the duration of the block and restore the caller's RNG state afterwards."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _build(what: str, build: Callable[..., Any], args: dict[str, Any]) -> torch.nn.Module:
    """Call a constructor, turning its failures into errors that name the model and the arguments."""
    try:
        model = build(**args)
    except TypeError as e:
        detail = f"rejected model args {args}" if args else "failed"
        raise ModelSourceError(f"{what} {detail}: {e}") from e
    except Exception as e:
        with_args = f" with model args {args}" if args else ""
        raise ModelSourceError(f"{what} raised {type(e).__name__}{with_args}: {e}") from e
    if not isinstance(model, torch.nn.Module):
        raise ModelSourceError(f"{what} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _unknown_name(zoo: str, name: str, known: Sequence[str]) -> ModelSourceError:
    close = difflib.get_close_matches(name, known, n=_MAX_LISTED)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ModelSourceError(f"unknown {zoo} model {name!r}{hint}")


def _load_onnx(path: str, args: dict[str, Any], weights: str | os.PathLike | None) -> torch.nn.Module:
    from rflens.capture_onnx import read_onnx

    if args:
        raise ModelSourceError(f"model_args {args} cannot be applied to {path}: an ONNX file is a built model")
    if weights is not None:
        raise WeightsError(f"{path} is an ONNX file: rflens reads its graph only and loads no weights into it "
                           f"(weights file {weights} refused)")
    return read_onnx(path)


def _load_torchvision(name: str, args: dict[str, Any]) -> torch.nn.Module:
    try:
        import torchvision.models
    except ImportError as e:
        raise ModelSourceError(f"torchvision is not installed; {_ZOO_HINT}") from e
    known = torchvision.models.list_models()
    if name.lower() not in known:
        raise _unknown_name("torchvision", name, known)
    import inspect

    # no download ever: detection and segmentation builders would fetch ImageNet weights for their backbone
    offline = {"weights": None}
    if "weights_backbone" in inspect.signature(torchvision.models.get_model_builder(name.lower())).parameters:
        offline["weights_backbone"] = None
    if set(offline) & set(args):
        raise ModelSourceError(f"torchvision model {name!r}: rflens builds it without downloading weights "
                               f"({', '.join(sorted(set(offline) & set(args)))} refused); load a weights file "
                               "with --weights")
    return _build(
        f"torchvision model {name!r}",
        lambda **kw: torchvision.models.get_model(name, **offline, **kw),
        args,
    )


def _load_timm(name: str, args: dict[str, Any]) -> torch.nn.Module:
    try:
        import timm
    except ImportError as e:
        raise ModelSourceError(f"timm is not installed; {_ZOO_HINT}") from e
    if not timm.is_model(name):
        raise _unknown_name("timm", name, timm.list_models())
    return _build(f"timm model {name!r}", lambda **kw: timm.create_model(name, pretrained=False, **kw), args)


def _load_file(spec: str, args: dict[str, Any]) -> torch.nn.Module:
    """Import ``file.py`` under a fresh module name and call its factory."""
    file_name, _, factory_name = spec.rpartition(":")
    path = Path(file_name).expanduser()
    if not path.is_file():
        raise ModelSourceError(f"model file not found: {path}")
    module = _import_file(path.resolve())
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        listed = f"; callables there: {', '.join(found[:10])}" if found else ""
        what = "no callable" if factory is None or factory_name == "" else "a non-callable"
        raise ModelSourceError(f"{path} has {what} {factory_name!r}{listed}")
    return _build(f"factory {factory_name!r} in {path}", factory, args)


def _import_file(path: Path) -> Any:
    # A unique name so two files called model.py never shadow each other (or a real package).
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_rflens_user_model_{next(_module_counter)}_{stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelSourceError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling and typing look the module up here
    # The file may import its neighbours, but its folder must not leak onto the caller's sys.path.
    folder = str(path.parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ModelSourceError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    return module


_ZOO_LOADERS: dict[str, Loader] = {"torchvision": _load_torchvision, "timm": _load_timm}


# --- weights ---------------------------------------------------------------------------------------------

# Failures of torch's weights-only unpickler that mean "this pickle wants to build arbitrary objects",
# as opposed to bytes that are simply not a pickle (which it reports as e.g. "Unsupported operand").
_NEEDS_CODE = re.compile(r"GLOBAL|unrecognized function|Can only (create new object|build)")


def _needs_code(error: Exception) -> bool:
    if isinstance(error, pickle.UnpicklingError):
        return _NEEDS_CODE.search(str(error)) is not None
    return isinstance(error, RuntimeError) and "weights_only" in str(error)  # e.g. legacy .tar checkpoints


def _read_checkpoint(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:
            raise _corrupt(path, e) from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if _needs_code(e):
            found = re.search(r"GLOBAL (\S+)", str(e))
            what = f" (it needs {found.group(1)})" if found else ""
            raise WeightsError(
                f"{path} holds arbitrary Python objects{what}, and rflens refuses to execute untrusted "
                "pickles, which could run any code. Re-save just the tensors, e.g. "
                "torch.save(model.state_dict(), ...) or safetensors.torch.save_file(model.state_dict(), ...)"
            ) from None
        raise _corrupt(path, e) from e


def _corrupt(path: Path, error: Exception) -> WeightsError:
    # torch wraps low-level pickle errors in advice about weights_only=False, which is the wrong advice for
    # a damaged file: keep only the unpickler's own reason.
    reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", str(error))
    detail = reason.group(1) if reason else f"{type(error).__name__}: {error}".rstrip(": ")
    return WeightsError(f"cannot read {path}: the file is corrupt, truncated or not a checkpoint ({detail})")


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict in a checkpoint: the object itself or one of the usual wrapper keys."""
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise WeightsError(
            f"{path} does not hold a state dict (a mapping from names to tensors, possibly under "
            f"{' / '.join(repr(k) for k in _STATE_DICT_KEYS)}); got {type(obj).__name__}"
        )
    state = dict(obj)
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state):  # saved from DataParallel / DDP
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _check_fits(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Compare key sets and shapes up front so the error lists what is wrong, not just that it is."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    found = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": mismatched}
    problems = [f"{label} ({len(items)}): {_listing(items)}" for label, items in found.items() if items]
    if problems:
        raise WeightsError(f"weights in {path} do not fit {type(model).__name__}: " + "; ".join(problems))


def _listing(items: Sequence[str]) -> str:
    return ", ".join(items[:_MAX_LISTED]) + (", ..." if len(items) > _MAX_LISTED else "")

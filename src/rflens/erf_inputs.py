"""Input images of an ERF run: seeded noise, a folder of pictures, or the user's tensors, in batches.

Every source yields float32 CPU tensors of shape ``(B, C, *input_size)``; the engine moves them. Images are
loaded by index: noise image ``i`` is drawn from its own generator (seeded by ``(seed, i)``), picture ``i`` is
the ``i``-th file in name order. So the images do not depend on the batch size, and a shard of the source
(:meth:`InputSource.shard`, one rank's part of a distributed run) holds exactly the images a single process
would take at those indices.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rflens.errors import RflensError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
DEFAULT_NOISE_IMAGES = 50


@dataclass(frozen=True)
class Preprocess:
    """How a picture becomes a tensor: resize so that the centre crop keeps ``crop_pct`` of it, centre crop,
    normalise. timm's evaluation transform when the model has a timm data config, else ImageNet statistics."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    source: str = "ImageNet statistics"
    crop_mode: str = "center"  # timm's "squash" resizes both sides to the scaled size before the crop

    @staticmethod
    def for_model(model: torch.nn.Module) -> Preprocess:
        if getattr(model, "pretrained_cfg", None) is None:
            return Preprocess()
        try:
            from timm.data import resolve_data_config
        except ImportError:
            return Preprocess()
        cfg = resolve_data_config({}, model=model)
        return Preprocess(tuple(cfg["mean"]), tuple(cfg["std"]), float(cfg.get("crop_pct", 0.875)),
                          str(cfg.get("interpolation", "bilinear")), "the model's timm data config",
                          "squash" if cfg.get("crop_mode") == "squash" else "center")


@dataclass
class InputSource:
    """A description of the images (for reports) and a way to load them in batches. ``indices``: the images
    this source yields, in order (all of them, or one rank's shard); ``labels``: the class of each of them
    (a labelled folder), in the same order."""

    kind: str  # "noise", "folder" or "tensor"
    description: str  # the whole set of images, also in a shard
    total: int  # images in the whole set
    input_size: tuple[int, ...]
    in_channels: int
    _load: Callable[[Sequence[int]], torch.Tensor]  # images at these indices, stacked
    indices: Sequence[int] = ()
    labels: list[int] | None = None

    @property
    def count(self) -> int:
        """Images this source yields."""
        return len(self.indices)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.indices), batch_size):
            yield self._load(self.indices[start:start + batch_size])

    def shard(self, rank: int, ranks: int) -> InputSource:
        """Rank ``rank``'s part of ``ranks`` contiguous parts whose sizes differ by at most one (the first
        ``count % ranks`` ranks take one more image); a rank may get none."""
        share, extra = divmod(len(self.indices), ranks)
        lo = rank * share + min(rank, extra)
        hi = lo + share + (rank < extra)
        labels = self.labels[lo:hi] if self.labels is not None else None
        return dataclasses.replace(self, indices=self.indices[lo:hi], labels=labels)


def noise(count: int, in_channels: int, input_size: Sequence[int], seed: int = 0) -> InputSource:
    """``count`` standard Gaussian images, image ``i`` drawn from a generator seeded with ``(seed, i)``."""
    if seed < 0:
        raise RflensError(f"the noise seed must be a non-negative integer, got {seed}")
    shape = (in_channels, *input_size)

    def image(i: int) -> torch.Tensor:
        state = int(np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0] >> 1)
        return torch.randn(shape, generator=torch.Generator().manual_seed(state))

    def load(indices: Sequence[int]) -> torch.Tensor:
        return torch.stack([image(i) for i in indices])

    return InputSource("noise", f"{count} Gaussian noise images (seed {seed})", count, tuple(input_size),
                       in_channels, load, range(count))


def folder(path: str | os.PathLike, count: int | None, in_channels: int, input_size: Sequence[int],
           preprocess: Preprocess) -> InputSource:
    """The pictures of a folder in name order (the first ``count`` of them), preprocessed like the model's
    evaluation data. A folder of class folders is labelled (:func:`folder_labels`)."""
    root = Path(path)
    if not root.is_dir():
        raise RflensError(f"image folder {str(root)!r} does not exist or is not a folder")
    files = _pictures(root)
    labels = None
    if not files:
        files, labels = folder_labels(root)
    if not files:
        raise RflensError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {str(root)!r} or its class folders")
    if len(input_size) != 2:
        raise RflensError(f"pictures feed 2-D models; this input size is {len(input_size)}-D")
    if in_channels not in (1, 3):
        raise RflensError(f"pictures have 1 or 3 channels; the model expects {in_channels}")
    files = files[:count] if count is not None else files
    labels = labels[:len(files)] if labels is not None else None

    def load(indices: Sequence[int]) -> torch.Tensor:
        return torch.stack([_picture(files[i], in_channels, tuple(input_size), preprocess) for i in indices])

    labelled = f", labelled by {len(set(labels))} class folders" if labels is not None else ""
    return InputSource("folder", f"{len(files)} images from {str(root)!r} ({preprocess.source}{labelled})",
                       len(files), tuple(input_size), in_channels, load, range(len(files)), labels)


def _pictures(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def folder_labels(root: Path) -> tuple[list[Path], list[int]]:
    """The pictures of ``root``'s subfolders and their classes, folder by folder in name order. A subfolder is
    named after its class: the class index (``207``) or an ImageNet-1k WordNet id (``n02099601``, the layout
    of ImageNet's validation set), read from timm's class list."""
    files: list[Path] = []
    labels: list[int] = []
    synsets: dict[str, int] | None = None
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        pictures = _pictures(sub)
        if not pictures:
            continue
        if sub.name.isdigit():
            label = int(sub.name)
        elif re.fullmatch(r"n\d{8}", sub.name):
            synsets = synsets if synsets is not None else _imagenet_synsets()
            if sub.name not in synsets:
                raise RflensError(f"class folder {sub.name!r} is not one of ImageNet-1k's WordNet ids")
            label = synsets[sub.name]
        else:
            raise RflensError(f"class folder {str(sub)!r}: name class folders by class index (e.g. 207) or ImageNet "
                              "WordNet id (e.g. n02099601)")
        files += pictures
        labels += [label] * len(pictures)
    return files, labels


def _imagenet_synsets() -> dict[str, int]:
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        raise RflensError("WordNet-id class folders need timm's ImageNet class list (pip install timm), or "
                          "name the folders by class index") from None
    return {name: i for i, name in enumerate(ImageNetInfo().label_names())}


def _picture(path: Path, in_channels: int, size: tuple[int, int], pre: Preprocess) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if in_channels == 3 else "L")
            h, w = size
            scaled = (math.floor(h / pre.crop_pct), math.floor(w / pre.crop_pct))
            if h == w and pre.crop_mode == "center":  # shorter side to the scaled size (torchvision's Resize(int))
                s = scaled[0]
                new = ((s, int(s * im.height / im.width)) if im.width <= im.height
                       else (int(s * im.width / im.height), s))
                im = im.resize(new, _resample(pre.interpolation))
            else:  # both sides to the scaled size ("squash", and non-square sizes: the aspect is not kept)
                im = im.resize((scaled[1], scaled[0]), _resample(pre.interpolation))
            top, left = round((im.height - h) / 2), round((im.width - w) / 2)
            im = im.crop((left, top, left + w, top + h))
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise RflensError(f"cannot read image {str(path)!r}: {exc}") from exc
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    mean = np.asarray(pre.mean[:in_channels] if in_channels == 3 else pre.mean[:1], dtype=np.float32)
    std = np.asarray(pre.std[:in_channels] if in_channels == 3 else pre.std[:1], dtype=np.float32)
    return torch.from_numpy((arr - mean[:, None, None]) / std[:, None, None])


def _resample(name: str) -> Any:
    from PIL import Image

    return {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS,
            "box": Image.Resampling.BOX}.get(name, Image.Resampling.BILINEAR)


def tensors(data: torch.Tensor | Iterable[Any], count: int | None, ndim: int) -> InputSource:
    """The user's images for a model with ``ndim`` spatial axes: one tensor ``(N, C, *S)`` or ``(C, *S)``, or
    an iterable of such tensors, or of ``(images, labels)`` pairs as a DataLoader yields them (the labels are
    ignored). An iterable is read only until ``count`` images are in."""
    items = [data] if isinstance(data, torch.Tensor) else data
    batches_in: list[torch.Tensor] = []
    taken = 0
    for t in items:
        if isinstance(t, (tuple, list)) and t and isinstance(t[0], torch.Tensor):
            t = t[0]
        if not isinstance(t, torch.Tensor):
            raise RflensError(f"inputs must be tensors (or (images, labels) pairs); got {type(t).__name__}")
        if t.dim() not in (ndim + 1, ndim + 2):
            raise RflensError(f"an input tensor for a {ndim}-D model has shape (N, C, *spatial) or (C, *spatial); "
                              f"got {tuple(t.shape)}")
        batches_in.append(t if t.dim() == ndim + 2 else t.unsqueeze(0))
        taken += batches_in[-1].shape[0]
        if count is not None and taken >= count:
            break
    if not batches_in:
        raise RflensError("the input iterable is empty")
    shape = tuple(batches_in[0].shape[1:])
    for t in batches_in:
        if tuple(t.shape[1:]) != shape:
            raise RflensError(f"input tensors differ in shape: {shape} and {tuple(t.shape[1:])}")
    stacked = torch.cat([t.detach().cpu() for t in batches_in])  # the engine casts to its dtype
    if count is not None:
        stacked = stacked[:count]

    def load(indices: Sequence[int]) -> torch.Tensor:
        return stacked[indices[0]:indices[-1] + 1] if isinstance(indices, range) and indices.step == 1 \
            else stacked[list(indices)]

    n = stacked.shape[0]
    return InputSource("tensor", f"{n} given images", n, shape[1:], shape[0], load, range(n))

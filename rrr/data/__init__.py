"""Segmentation data for :mod:`rrr`: Fashion-MNIST scenes, PASCAL VOC, image folders.

All datasets share the item format and attributes described in
:mod:`rrr.data.common`; :func:`build_dataset` is the factory the command-line
tools use.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .common import IGNORE_INDEX, DatasetError, labels_from_mask
from .fashion_mnist import FASHION_MNIST_CLASSES, find_fashion_mnist, load_fashion_mnist, read_idx
from .folder import SegmentationFolder
from .scenes import FashionScenes, SceneObject
from .semisupervised import (
    MixedBatchSampler,
    PixelLabelSubset,
    choose_pixel_labelled,
    dataset_labels,
)
from .voc import VOC_CLASSES, VOCSegmentationDataset

__all__ = [
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "DatasetError",
    "FashionScenes",
    "MixedBatchSampler",
    "PixelLabelSubset",
    "SceneObject",
    "SegmentationFolder",
    "VOCSegmentationDataset",
    "build_dataset",
    "choose_pixel_labelled",
    "dataset_labels",
    "find_fashion_mnist",
    "labels_from_mask",
    "load_fashion_mnist",
    "read_idx",
]

DATASETS = ("fashion-scenes", "voc", "folder")
"""Names :func:`build_dataset` accepts."""

# Options each dataset uses; the CLI passes all of them, unused ones are ignored.
_COMMON_OPTIONS = {"root", "size", "length", "objects", "scene_seed", "download"}
_EXTRA_OPTIONS = {
    "fashion-scenes": {"scale", "threshold"},
    "voc": {"year", "extra_image_labels"},
    "folder": set(),
}


def build_dataset(name: str, split: str, **options: Any) -> Dataset:
    """Build dataset ``name`` ("fashion-scenes", "voc" or "folder") for ``split``.

    Options (``None`` means the dataset's default; options a dataset does not
    use are ignored):

    - ``root``: data directory (fashion-scenes: where to look for Fashion-MNIST
      first; required for voc and folder).
    - ``size``: image side (defaults: 64 for fashion-scenes, 256 for voc,
      original size for folder).
    - ``length``: number of scenes of the split (fashion-scenes; default 1000).
    - ``objects``: ``(min, max)`` items per scene (fashion-scenes).
    - ``scene_seed``: scene seed (fashion-scenes; default 0).
    - ``download``: allow downloading (fashion-scenes: Fashion-MNIST; voc: VOC).
    - fashion-scenes also takes ``scale`` and ``threshold``; voc takes
      ``year`` and ``extra_image_labels``.

    Splits: fashion-scenes "train" / "val" / "test"; voc "train" / "val", and
    "test" maps to "val" (VOC test masks are not public; the paper evaluates
    on val); folder: ``root/splits/{split}.txt``, or all images (with a
    warning) when ``root/splits`` does not exist.
    """
    key = name.lower().replace("_", "-")
    if key in ("scenes", "fashion", "fashion-mnist-scenes"):
        key = "fashion-scenes"
    if key not in _EXTRA_OPTIONS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    unknown = set(options) - _COMMON_OPTIONS - set().union(*_EXTRA_OPTIONS.values())
    if unknown:
        raise TypeError(f"build_dataset got unknown option(s): {', '.join(sorted(unknown))}")
    opts = {k: v for k, v in options.items() if v is not None}
    root = opts.get("root")

    if key == "fashion-scenes":
        kwargs = {
            "split": split,
            "root": root,
            "download": bool(opts.get("download", False)),
            "seed": int(opts.get("scene_seed", 0)),
        }
        for option, arg in (
            ("size", "size"),
            ("length", "length"),
            ("objects", "objects"),
            ("scale", "scale"),
            ("threshold", "threshold"),
        ):
            if option in opts:
                kwargs[arg] = opts[option]
        return FashionScenes(**kwargs)

    if root is None:
        raise ValueError(f"dataset {name!r} needs the option root=<data directory>")

    if key == "voc":
        return VOCSegmentationDataset(
            root,
            split="val" if split == "test" else split,
            size=opts.get("size", 256),
            year=str(opts.get("year", "2012")),
            extra_image_labels=opts.get("extra_image_labels"),
            download=bool(opts.get("download", False)),
        )

    folder_split: str | None = split
    if split is not None and not (Path(root).expanduser() / "splits").is_dir():
        warnings.warn(
            f"{root}: no splits/ directory, so split {split!r} uses all images",
            stacklevel=2,
        )
        folder_split = None
    return SegmentationFolder(root, split=folder_split, size=opts.get("size"))

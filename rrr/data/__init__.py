"""Segmentation data for :mod:`rrr`: Fashion-MNIST scenes, PASCAL VOC, image folders.

All datasets share the item format and attributes described in
:mod:`rrr.data.common`; :func:`build_dataset` is the factory the command-line
tools use, and :func:`dataset_names` lists the names it accepts (the CLI's
``--data`` choices).

Data sets register themselves by declaration: a
:class:`~rrr.data.base.SegmentationDataset` subclass that defines ``name`` and
``from_options`` (see :mod:`rrr.data.base`). This package imports every one of
its modules when it is imported (``pkgutil``, below), so adding a data set is
one new module in ``rrr/data/`` plus its test; nothing here needs editing
(import its class here only to re-export it from :mod:`rrr.data`).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from .base import (
    COMMON_OPTIONS,
    FileSample,
    FileSegmentationDataset,
    SegmentationDataset,
    dataset_class,
    dataset_names,
    known_options,
    unregister_dataset,
)
from .common import IGNORE_INDEX, DatasetError, labels_from_mask
from .fashion_mnist import FASHION_MNIST_CLASSES, find_fashion_mnist, load_fashion_mnist, read_idx
from .folder import SegmentationFolder
from .scenes import FashionScenes, SceneObject
from .semisupervised import (
    MixedBatchSampler,
    PixelLabelSubset,
    choose_pixel_labelled,
    dataset_labels,
    pixel_label_split,
)
from .voc import VOC_CLASSES, VOCSegmentationDataset

__all__ = [
    "COMMON_OPTIONS",
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "DatasetError",
    "FashionScenes",
    "FileSample",
    "FileSegmentationDataset",
    "MixedBatchSampler",
    "PixelLabelSubset",
    "SceneObject",
    "SegmentationDataset",
    "SegmentationFolder",
    "VOCSegmentationDataset",
    "build_dataset",
    "choose_pixel_labelled",
    "dataset_class",
    "dataset_labels",
    "pixel_label_split",
    "dataset_names",
    "find_fashion_mnist",
    "known_options",
    "labels_from_mask",
    "load_fashion_mnist",
    "read_idx",
    "unregister_dataset",
]


def _import_package_modules() -> None:
    """Import every module of this package, so each data set defined in one registers."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_package_modules()

DATASETS: tuple[str, ...] = tuple(dataset_names())
"""The data set names registered when :mod:`rrr.data` was imported (sorted).

Kept for compatibility; it is a snapshot, so data sets registered later (from
modules outside this package) are missing. Use :func:`dataset_names` for the
current list.
"""


def build_dataset(name: str, split: str, **options: Any) -> SegmentationDataset:
    """Build the registered data set ``name`` for ``split``.

    ``name`` is one of :func:`dataset_names` ("fashion-scenes", "folder",
    "voc", ...) or an alias ("scenes", "fashion", "fashion-mnist-scenes");
    case and ``_``/``-`` do not matter. The data set's ``from_options``
    receives the options it lists; options another data set uses are ignored.

    Options (``None`` means the dataset's default):

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

    Raises:
        ValueError: unknown ``name`` (the message lists the registered names),
            or a data set that needs ``root`` got none.
        TypeError: an option no registered data set takes.
    """
    cls = dataset_class(name)
    unknown = set(options) - known_options()
    if unknown:
        raise TypeError(f"build_dataset got unknown option(s): {', '.join(sorted(unknown))}")
    accepted = cls.option_names()
    return cls.from_options(split, **{k: v for k, v in options.items() if k in accepted})

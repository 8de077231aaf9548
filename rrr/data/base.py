"""Base classes of the data sets in :mod:`rrr.data` and the registry behind ``build_dataset``.

Adding a data set
-----------------

Write one module, e.g. ``rrr/data/cityscapes.py``, with a subclass of
:class:`SegmentationDataset` whose own class body defines

- ``name``: the name :func:`rrr.data.build_dataset` and the CLI's ``--data``
  accept (lower case, ``-`` rather than ``_``), and optionally ``aliases``;
- the classmethod ``from_options(split, *, root=None, size=None, ...)``, which
  maps the command-line options to the constructor. It lists the options the
  data set uses as keyword parameters with default ``None`` (``None`` means
  "the data set's default"); options it does not list are not passed to it.
  Options beyond :data:`COMMON_OPTIONS` (e.g. VOC's ``year``) become valid
  ``build_dataset`` options by being listed there; there is no other list.

Defining the class registers it (:meth:`SegmentationDataset.__init_subclass__`),
and :mod:`rrr.data` imports every module of its package at import time
(``pkgutil``), so a new module in ``rrr/data/`` needs no edit anywhere else:
one file plus its test. A data set defined outside the package registers when
its module is imported. Items must follow the format of :mod:`rrr.data.common`.

Data sets of image files with class-index PNG masks and/or image-level labels
(VOC, image folders) derive from :class:`FileSegmentationDataset`: their
constructors only build the list of :class:`FileSample`; loading, resizing,
the image labels and the ignore masks of image-label-only items live here.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch.utils.data import Dataset

from .common import (
    IGNORE_INDEX,
    labels_from_mask,
    load_mask,
    load_rgb,
    make_item,
    resize_and_crop,
    resize_and_crop_mask,
    to_image_tensor,
)

__all__ = [
    "COMMON_OPTIONS",
    "FileSample",
    "FileSegmentationDataset",
    "SegmentationDataset",
    "dataset_class",
    "dataset_names",
    "known_options",
    "normalise_name",
    "unregister_dataset",
]

COMMON_OPTIONS: frozenset[str] = frozenset(
    {"root", "size", "length", "objects", "scene_seed", "download"}
)
"""Options the CLI passes for every data set; each data set uses those it lists."""

_REGISTRY: dict[str, type[SegmentationDataset]] = {}
"""Canonical name -> data set class, filled by :meth:`SegmentationDataset.__init_subclass__`."""


def normalise_name(name: str) -> str:
    """The registry spelling of a data set name: lower case, ``_`` -> ``-``."""
    return name.lower().replace("_", "-")


class SegmentationDataset(Dataset):
    """A segmentation data set in the shared item format (see :mod:`rrr.data.common`).

    A subclass that defines ``name`` in its own class body is registered under
    that name and the ``aliases`` of its own class body (subclasses that only
    inherit ``name``, and abstract bases without one, are not); it must then
    define :meth:`from_options` or inherit one from a data set. Instances have ``classes`` (names, background first)
    and ``num_classes`` (foreground classes).
    """

    name: ClassVar[str]
    """Registry name (lower case, ``-`` not ``_``), e.g. ``"voc"``."""
    aliases: ClassVar[tuple[str, ...]] = ()
    """Other names ``build_dataset`` accepts for this data set."""

    classes: list[str]
    num_classes: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _register(cls)

    @classmethod
    def from_options(cls, split: str, **options: Any) -> SegmentationDataset:
        """Build ``split`` from command-line level options (``None``: the default).

        Subclasses list the options they use as keyword parameters, e.g.
        ``from_options(cls, split, *, root=None, size=None, download=False)``;
        :func:`rrr.data.build_dataset` passes exactly those.
        """
        raise NotImplementedError(f"{cls.__name__} does not define from_options")

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The options :meth:`from_options` takes (its keyword parameters but ``split``)."""
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        parameters = inspect.signature(cls.from_options).parameters.values()
        return frozenset(p.name for p in parameters if p.kind in kinds and p.name != "split")

    @classmethod
    def require_root(cls, root: str | Path | None) -> str | Path:
        """``root``, or the ``ValueError`` of a data set that needs a data directory."""
        if root is None:
            raise ValueError(f"dataset {cls.name!r} needs the option root=<data directory>")
        return root


def _register(cls: type[SegmentationDataset]) -> None:
    name = cls.__dict__["name"]
    if not isinstance(name, str) or not name or normalise_name(name) != name:
        raise ValueError(
            f"{cls.__qualname__}.name must be a non-empty lower-case name without '_', got {name!r}"
        )
    own = getattr(cls.from_options, "__func__", None)
    if own is SegmentationDataset.from_options.__func__:
        raise TypeError(f"{cls.__qualname__} defines name {name!r} but not from_options")
    aliases = tuple(normalise_name(a) for a in cls.__dict__.get("aliases", ()))
    cls.aliases = aliases  # its own, normalised; a subclass with a new name inherits none
    for other in list(_REGISTRY.values()):
        same = (other.__module__, other.__qualname__) == (cls.__module__, cls.__qualname__)
        if same:  # the same class defined again (module reload, a test run twice)
            del _REGISTRY[other.name]
            continue
        clash = {name, *aliases} & {other.name, *other.aliases}
        if clash:
            raise ValueError(
                f"{cls.__qualname__}: dataset name {sorted(clash)[0]!r} is already taken "
                f"by {other.__module__}.{other.__qualname__}"
            )
    _REGISTRY[name] = cls


def dataset_names() -> list[str]:
    """Registered data set names, sorted (aliases not included); e.g. for ``--data``."""
    return sorted(_REGISTRY)


def dataset_class(name: str) -> type[SegmentationDataset]:
    """The data set class registered as ``name`` or alias (case and ``_``/``-`` ignored).

    Raises:
        ValueError: unknown name; the message lists :func:`dataset_names`.
    """
    key = normalise_name(name)
    for cls in _REGISTRY.values():
        if key == cls.name or key in cls.aliases:
            return cls
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(dataset_names())}")


def unregister_dataset(name: str) -> type[SegmentationDataset]:
    """Remove data set ``name`` (or alias) from the registry and return its class.

    For tests and interactive use; raises ``ValueError`` for an unknown name.
    """
    cls = dataset_class(name)
    del _REGISTRY[cls.name]
    return cls


def known_options() -> frozenset[str]:
    """Every option ``build_dataset`` accepts: the common ones and every data set's own."""
    return COMMON_OPTIONS.union(*(cls.option_names() for cls in _REGISTRY.values()))


class FileSample(NamedTuple):
    """One item of a :class:`FileSegmentationDataset`."""

    id: str
    image: Path
    mask: Path | None
    """Class-index PNG; ``None`` for an item with image-level labels only."""
    classes: list[int] | None
    """Image-level classes (1..C, the mask convention) when ``mask`` is ``None``."""


class FileSegmentationDataset(SegmentationDataset):
    """Image files with class-index PNG masks, or image-level labels only.

    A subclass's constructor sets ``classes``, ``num_classes``, ``size`` and
    ``samples`` (a list of :class:`FileSample`, checked to exist). Then an
    item with a mask decodes image and mask (the mask must match the image's
    size and hold only ``0..C`` and :data:`IGNORE_INDEX`), resizes the shorter
    side to ``size`` and centre-crops both (image bilinear, mask nearest;
    ``size=None`` keeps sizes), and derives its image labels from the mask.
    An item with image-level labels only gets those labels, an all-ignore
    mask and ``has_mask`` False. Problems raise
    :class:`~rrr.data.common.DatasetError` naming the file.
    """

    samples: list[FileSample]
    size: int | None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def pixel_labelled(self) -> list[int]:
        """Indices of the items that have a segmentation mask."""
        return [i for i, sample in enumerate(self.samples) if sample.mask is not None]

    def multi_hot(self, classes: list[int]) -> torch.Tensor:
        """``(C,)`` float vector with entry ``c - 1`` set for each class ``c`` in ``classes``."""
        labels = torch.zeros(self.num_classes)
        labels[[c - 1 for c in classes]] = 1.0
        return labels

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        sample = self.samples[index]
        image = load_rgb(sample.image)
        if sample.mask is not None:
            mask = load_mask(sample.mask, self.num_classes, expected_size=image.size)
            image, mask = resize_and_crop(image, mask, self.size)
            mask_t = torch.from_numpy(mask)
            labels = labels_from_mask(mask_t, self.num_classes)
            return make_item(to_image_tensor(image), mask_t, labels, True, index)
        image, _ = resize_and_crop(image, None, self.size)
        width, height = image.size
        mask_t = torch.full((height, width), IGNORE_INDEX, dtype=torch.long)
        labels = self.multi_hot(sample.classes or [])
        return make_item(to_image_tensor(image), mask_t, labels, False, index)

    def all_labels(self) -> torch.Tensor:
        """Multi-hot image labels ``(len, C)`` of every item, as ``__getitem__`` gives them.

        Reads the masks only (after the same resize and crop), not the images.
        """
        rows = []
        for sample in self.samples:
            if sample.mask is not None:
                mask = resize_and_crop_mask(load_mask(sample.mask, self.num_classes), self.size)
                rows.append(labels_from_mask(torch.from_numpy(mask), self.num_classes))
            else:
                rows.append(self.multi_hot(sample.classes or []))
        return torch.stack(rows)

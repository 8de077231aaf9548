"""Conventions and helpers shared by every dataset in :mod:`rrr.data`.

Every dataset item is a dict that the default torch collate can batch::

    {
        "image": FloatTensor (3, H, W) in [0, 1],
        "mask": LongTensor (H, W),  # 0 background, 1..C classes, 255 ignore
        "labels": FloatTensor (C,),  # multi-hot of the foreground classes present
        "has_mask": BoolTensor (),  # False: image-level labels only
        "index": int,
    }

and every dataset has ``classes`` (names, ``"background"`` first, so ``C + 1``
entries) and ``num_classes`` (``C``, the number of foreground classes).

:data:`IGNORE_INDEX` is defined once, in :mod:`heatmaps.labels`, and
re-exported here.
"""

from __future__ import annotations

from collections.abc import Container
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from heatmaps.labels import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "DatasetError",
    "labels_from_mask",
    "load_mask",
    "load_rgb",
    "make_item",
    "read_image_labels",
    "resize_and_crop",
    "resize_and_crop_mask",
    "to_image_tensor",
    "validate_mask",
]


class DatasetError(ValueError):
    """Bad or missing data; the message names the file and the problem."""


def labels_from_mask(mask: torch.Tensor | np.ndarray, num_classes: int) -> torch.Tensor:
    """Multi-hot ``(num_classes,)`` float vector of the foreground classes in ``mask``.

    Background (0) and :data:`IGNORE_INDEX` are not classes; class ``k`` of the
    mask (``1 <= k <= num_classes``) sets entry ``k - 1``.
    """
    present = torch.unique(torch.as_tensor(mask))
    present = present[(present >= 1) & (present <= num_classes)]
    labels = torch.zeros(num_classes, dtype=torch.float32)
    labels[present.long() - 1] = 1.0
    return labels


def make_item(
    image: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    has_mask: bool,
    index: int,
) -> dict[str, torch.Tensor | int]:
    """Assemble one dataset item in the shared format (see the module docstring)."""
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.shape[0] == 1:
        image = image.repeat(3, 1, 1)
    return {
        "image": image.float(),
        "mask": mask.long(),
        "labels": labels.float(),
        "has_mask": torch.tensor(bool(has_mask)),
        "index": int(index),
    }


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file as RGB; decode failures raise :class:`DatasetError`."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: image file not found") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises these for corrupt files
        raise DatasetError(f"{path}: cannot decode image ({exc})") from exc


def read_image_labels(
    path: str | Path,
    num_classes: int,
    *,
    id_separator: str | None,
    class_separator: str,
    known: Container[str] | None = None,
) -> dict[str, list[int]]:
    """Parse an image-level label file: one ``<id><id_separator><classes>`` line per image.

    The two formats in use: VOC's ``2008_000004 3,7`` (``id_separator=None``:
    whitespace, the spaces of the class list are dropped) and the image
    folder's ``stem,3;7`` (``id_separator=","``, ``class_separator=";"``).
    Class indices use the mask convention (1..``num_classes``); the list may
    be empty. Blank lines and lines starting with ``#`` are skipped; a
    repeated id keeps its last line. Returns ``{id: sorted distinct classes}``
    in file order.

    A missing file, an id not in ``known`` (when given), unparsable class
    indices and indices out of range (the message names the line's first)
    raise :class:`DatasetError` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image-level label file not found")
    result: dict[str, list[int]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if id_separator is None:
            parts = line.split(maxsplit=1)
            image_id = parts[0]
            values = parts[1].replace(" ", "") if len(parts) > 1 else ""
        else:
            image_id, _, values = line.partition(id_separator)
            image_id = image_id.strip()
        if known is not None and image_id not in known:
            raise DatasetError(f"{path}:{number}: {image_id!r} has no image")
        try:
            classes = [int(v) for v in values.replace(" ", "").split(class_separator) if v]
        except ValueError as exc:
            raise DatasetError(f"{path}:{number}: cannot parse class indices {values!r}") from exc
        bad = [c for c in classes if not 1 <= c <= num_classes]
        if bad:
            raise DatasetError(
                f"{path}:{number}: class index {bad[0]} out of range 1..{num_classes}"
            )
        result[image_id] = sorted(set(classes))
    return result


_MASK_MODES = ("L", "P", "I", "I;16")


def validate_mask(mask: np.ndarray, num_classes: int, path: str | Path) -> None:
    """Raise :class:`DatasetError` when ``mask`` holds a value not in ``0..C`` or 255."""
    bad = (mask < 0) | ((mask > num_classes) & (mask != IGNORE_INDEX))
    if bad.any():
        values = sorted({int(v) for v in np.unique(mask[bad])})
        shown = ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
        raise DatasetError(
            f"{path}: mask contains class index {shown}, but there are only {num_classes} "
            f"foreground classes (allowed: 0..{num_classes} and {IGNORE_INDEX} = ignore)"
        )


def load_mask(
    path: str | Path,
    num_classes: int,
    expected_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read a class-index mask PNG (mode L, P or I) as an int64 ``(H, W)`` array.

    Palette ("P") PNGs give their palette indices, which is how PASCAL VOC
    stores classes. ``expected_size`` is the ``(width, height)`` of the image
    the mask belongs to. Decode errors, other modes (e.g. RGB colour masks), a
    size mismatch and out-of-range class indices raise :class:`DatasetError`
    naming ``path``.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            size = img.size
            array = np.asarray(img)
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: mask file not found") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot decode mask PNG ({exc})") from exc
    if mode not in _MASK_MODES:
        raise DatasetError(
            f"{path}: mask must be a single-channel class-index PNG (mode L or P), got mode {mode}"
        )
    if expected_size is not None and tuple(size) != tuple(expected_size):
        raise DatasetError(
            f"{path}: mask size {size[0]}x{size[1]} differs from its image's size "
            f"{expected_size[0]}x{expected_size[1]} (width x height)"
        )
    mask = array.astype(np.int64)
    validate_mask(mask, num_classes, path)
    return mask


def _crop_geometry(
    width: int, height: int, size: int
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    if size < 1:
        raise ValueError(f"size must be a positive int or None, got {size}")
    scale = size / min(width, height)
    new_w = max(size, round(width * scale))
    new_h = max(size, round(height * scale))
    left = (new_w - size) // 2
    top = (new_h - size) // 2
    return (new_w, new_h), (left, top, left + size, top + size)


def resize_and_crop_mask(mask: np.ndarray, size: int | None) -> np.ndarray:
    """Nearest-neighbour resize of ``mask``'s shorter side to ``size``, centre crop to a square.

    Same geometry as :func:`resize_and_crop`; values must fit in uint8
    (class indices and :data:`IGNORE_INDEX`). ``size=None`` returns ``mask``.
    """
    if size is None:
        return mask
    height, width = mask.shape
    new_size, box = _crop_geometry(width, height, size)
    mask_img = Image.fromarray(mask.astype(np.uint8))
    return np.asarray(mask_img.resize(new_size, Image.NEAREST).crop(box)).astype(np.int64)


def resize_and_crop(
    image: Image.Image, mask: np.ndarray | None, size: int | None
) -> tuple[Image.Image, np.ndarray | None]:
    """Resize the shorter side to ``size`` and centre-crop to ``size x size``.

    The image is resampled bilinearly, the mask (same size as the image) with
    nearest neighbour, so class indices and :data:`IGNORE_INDEX` survive.
    ``size=None`` returns both unchanged.
    """
    if size is None:
        return image, mask
    new_size, box = _crop_geometry(*image.size, size)
    image = image.resize(new_size, Image.BILINEAR).crop(box)
    if mask is not None:
        mask = resize_and_crop_mask(mask, size)
    return image, mask


def to_image_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> FloatTensor ``(3, H, W)`` in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()

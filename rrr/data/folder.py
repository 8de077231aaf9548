"""A segmentation data set from a plain image folder with PNG masks."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from .common import (
    IGNORE_INDEX,
    DatasetError,
    labels_from_mask,
    load_mask,
    load_rgb,
    make_item,
    resize_and_crop,
    resize_and_crop_mask,
    to_image_tensor,
)

__all__ = ["IMAGE_SUFFIXES", "SegmentationFolder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class SegmentationFolder(Dataset):
    """Images with class-index PNG masks and/or image-level labels.

    Layout::

        root/classes.txt          one class name per line, first line the background
        root/images/<stem>.png    (or .jpg / .jpeg)
        root/masks/<stem>.png     optional per image; single-channel "L" or palette
                                  "P" PNG whose values are class indices
                                  (0 background, 1..C classes, 255 ignore)
        root/labels.csv           optional; image-level labels of images without a
                                  mask, one line per image: ``stem,1;3`` (class
                                  indices as in the masks, ``;``-separated, may be
                                  empty; blank and ``#`` lines skipped)
        root/splits/<split>.txt   optional; the stems of a split, one per line

    With ``split=None`` all images are used. Every image needs a mask or a
    ``labels.csv`` line; when it has a mask, its labels are derived from the
    mask (``labels.csv`` is ignored for it) and ``has_mask`` is True;
    otherwise the mask is all 255 and ``has_mask`` False.

    ``size``: resize the shorter side and centre-crop to ``size x size``
    (image bilinear, mask nearest); ``None`` keeps the original sizes (then
    batching needs equal sizes).

    Construction checks the layout, ``classes.txt``, the image/mask pairing,
    ``labels.csv`` and the split; loading an item checks decoding, the mask
    size and its class indices. Every problem raises
    :class:`~rrr.data.common.DatasetError` naming the file.
    """

    def __init__(self, root: str | Path, split: str | None = None, size: int | None = None) -> None:
        root = Path(root).expanduser()
        self.root = root
        self.split = split
        self.size = size
        if not root.is_dir():
            raise DatasetError(f"{root}: dataset directory not found")
        self.classes: list[str] = self._read_classes(root / "classes.txt")
        self.num_classes: int = len(self.classes) - 1
        image_dir, mask_dir = root / "images", root / "masks"
        if not image_dir.is_dir():
            raise DatasetError(f"{image_dir}: images directory not found")
        images: dict[str, Path] = {}
        for path in sorted(image_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            if path.stem in images:
                raise DatasetError(f"{path}: two images share the stem {path.stem!r}")
            images[path.stem] = path
        masks: dict[str, Path] = {}
        if mask_dir.is_dir():
            for path in sorted(mask_dir.glob("*.png")):
                if path.stem not in images:
                    raise DatasetError(f"{path}: mask has no image {path.stem}.* in {image_dir}")
                masks[path.stem] = path
        image_labels = self._read_labels(root / "labels.csv", images)
        stems = sorted(images)
        if split is not None:
            split_file = root / "splits" / f"{split}.txt"
            if not split_file.is_file():
                raise DatasetError(f"{split_file}: split file not found")
            stems = [s.strip() for s in split_file.read_text().splitlines() if s.strip()]
            for stem in stems:
                if stem not in images:
                    raise DatasetError(f"{split_file}: lists {stem!r}, which has no image")
            if not stems:
                raise DatasetError(f"{split_file}: empty split (no stems)")
        if not stems:
            raise DatasetError(f"{image_dir}: empty split (no .png/.jpg images)")
        self.samples: list[tuple[str, Path, Path | None, list[int] | None]] = []
        for stem in stems:
            if stem in masks:
                self.samples.append((stem, images[stem], masks[stem], None))
            elif stem in image_labels:
                self.samples.append((stem, images[stem], None, image_labels[stem]))
            else:
                raise DatasetError(
                    f"{images[stem]}: image has neither a mask ({mask_dir / (stem + '.png')}) "
                    f"nor a line in {root / 'labels.csv'}"
                )

    @staticmethod
    def _read_classes(path: Path) -> list[str]:
        if not path.is_file():
            raise DatasetError(f"{path}: classes.txt not found (one class name per line)")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(names) < 2:
            raise DatasetError(
                f"{path}: needs the background and at least one class, got {len(names)} names"
            )
        if len(names) > IGNORE_INDEX:
            raise DatasetError(f"{path}: at most {IGNORE_INDEX - 1} foreground classes")
        return names

    def _read_labels(self, path: Path, images: dict[str, Path]) -> dict[str, list[int]]:
        if not path.is_file():
            return {}
        result: dict[str, list[int]] = {}
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            stem, _, values = line.partition(",")
            stem = stem.strip()
            if stem not in images:
                raise DatasetError(f"{path}:{number}: {stem!r} has no image")
            try:
                classes = sorted({int(v) for v in values.replace(" ", "").split(";") if v})
            except ValueError as exc:
                raise DatasetError(
                    f"{path}:{number}: cannot parse class indices {values!r}"
                ) from exc
            bad = [c for c in classes if not 1 <= c <= self.num_classes]
            if bad:
                raise DatasetError(
                    f"{path}:{number}: class index {bad[0]} out of range 1..{self.num_classes}"
                )
            result[stem] = classes
        return result

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def pixel_labelled(self) -> list[int]:
        """Indices of the items that have a mask."""
        return [i for i, sample in enumerate(self.samples) if sample[2] is not None]

    def _multi_hot(self, classes: list[int]) -> torch.Tensor:
        labels = torch.zeros(self.num_classes)
        labels[[c - 1 for c in classes]] = 1.0
        return labels

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        _, image_path, mask_path, classes = self.samples[index]
        image = load_rgb(image_path)
        if mask_path is not None:
            mask = load_mask(mask_path, self.num_classes, expected_size=image.size)
            image, mask = resize_and_crop(image, mask, self.size)
            mask_t = torch.from_numpy(mask)
            labels = labels_from_mask(mask_t, self.num_classes)
            return make_item(to_image_tensor(image), mask_t, labels, True, index)
        image, _ = resize_and_crop(image, None, self.size)
        width, height = image.size
        mask_t = torch.full((height, width), IGNORE_INDEX, dtype=torch.long)
        return make_item(
            to_image_tensor(image), mask_t, self._multi_hot(classes or []), False, index
        )

    def all_labels(self) -> torch.Tensor:
        """Multi-hot image labels ``(len, C)`` as ``__getitem__`` gives them (masks only read)."""
        rows = []
        for _, _, mask_path, classes in self.samples:
            if mask_path is not None:
                mask = resize_and_crop_mask(load_mask(mask_path, self.num_classes), self.size)
                rows.append(labels_from_mask(torch.from_numpy(mask), self.num_classes))
            else:
                rows.append(self._multi_hot(classes or []))
        return torch.stack(rows)

    def __repr__(self) -> str:
        return f"SegmentationFolder({str(self.root)!r}, split={self.split!r}, size={self.size})"

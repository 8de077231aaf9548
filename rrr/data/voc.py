"""PASCAL VOC segmentation on torchvision's on-disk layout.

Expected layout (what :class:`torchvision.datasets.VOCSegmentation` downloads)::

    root/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    root/VOCdevkit/VOC2012/SegmentationClass/<id>.png   (palette PNG, 255 = boundary/ignore)
    root/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
"""

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

__all__ = ["VOC_CLASSES", "VOCSegmentationDataset", "read_image_label_file"]

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
"""Background plus the 20 VOC classes; mask value k is ``VOC_CLASSES[k]``."""


def read_image_label_file(path: str | Path, num_classes: int) -> dict[str, list[int]]:
    """Parse an image-level label file of ``image_id class_idx,class_idx,...`` lines.

    Class indices use the mask convention (1..``num_classes``); an id with no
    foreground class may have an empty list. Blank lines and lines starting
    with ``#`` are skipped. Problems raise :class:`DatasetError` naming the
    file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image-level label file not found")
    result: dict[str, list[int]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        image_id = parts[0]
        values = parts[1].replace(" ", "") if len(parts) > 1 else ""
        try:
            classes = [int(v) for v in values.split(",") if v]
        except ValueError as exc:
            raise DatasetError(f"{path}:{number}: cannot parse class indices {values!r}") from exc
        bad = [c for c in classes if not 1 <= c <= num_classes]
        if bad:
            raise DatasetError(
                f"{path}:{number}: class index {bad[0]} out of range 1..{num_classes}"
            )
        result[image_id] = sorted(set(classes))
    return result


class VOCSegmentationDataset(Dataset):
    """PASCAL VOC 2012 segmentation: 20 classes + background, 255 = ignore.

    Args:
        root: directory holding ``VOCdevkit/VOC<year>`` (or that year directory,
            or its parent ``VOCdevkit``).
        split: ``"train"`` or ``"val"`` (``ImageSets/Segmentation/{split}.txt``).
        size: images and masks are resized (shorter side) and centre-cropped to
            ``size x size``; image bilinear, mask nearest. ``None`` keeps sizes.
        year: VOC year directory suffix.
        extra_image_labels: optional file of ``image_id class_idx,class_idx,...``
            lines (class indices 1..20, as in the masks) adding images with
            image-level labels only (SBD-style): for those ``has_mask`` is False
            and the mask is all 255. Ids already in the split are skipped.
        download: pass through to :class:`torchvision.datasets.VOCSegmentation`.

    Image labels of pixel-labelled images are derived from their masks.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        size: int | None = 256,
        year: str = "2012",
        extra_image_labels: str | Path | None = None,
        download: bool = False,
    ) -> None:
        if split not in ("train", "val", "trainval"):
            raise ValueError(f"VOC split must be 'train', 'val' or 'trainval', got {split!r}")
        root = Path(root).expanduser()
        if download:
            from torchvision.datasets import VOCSegmentation

            VOCSegmentation(str(root), year=year, image_set=split, download=True)
        self.classes: list[str] = list(VOC_CLASSES)
        self.num_classes: int = len(VOC_CLASSES) - 1
        self.split = split
        self.size = size
        self.base = self._find_base(root, year)
        self.image_dir = self.base / "JPEGImages"
        self.mask_dir = self.base / "SegmentationClass"
        for directory in (self.image_dir, self.mask_dir):
            if not directory.is_dir():
                raise DatasetError(f"{directory}: VOC directory missing")
        split_file = self.base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise DatasetError(f"{split_file}: VOC split file missing")
        ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise DatasetError(f"{split_file}: empty split (no image ids)")
        for image_id in ids:
            for path in (self._image_path(image_id), self.mask_dir / f"{image_id}.png"):
                if not path.is_file():
                    raise DatasetError(f"{path}: file listed in {split_file.name} is missing")
        # entries: (image id, image-level classes or None when the mask provides them)
        self.samples: list[tuple[str, list[int] | None]] = [(i, None) for i in ids]
        if extra_image_labels is not None:
            known = set(ids)
            extra = read_image_label_file(extra_image_labels, self.num_classes)
            for image_id, classes in extra.items():
                if image_id in known:
                    continue
                if not self._image_path(image_id).is_file():
                    raise DatasetError(
                        f"{self._image_path(image_id)}: image listed in {extra_image_labels} "
                        "is missing"
                    )
                self.samples.append((image_id, classes))

    @staticmethod
    def _find_base(root: Path, year: str) -> Path:
        candidates = [root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root]
        for candidate in candidates:
            if (candidate / "JPEGImages").is_dir():
                return candidate
        searched = ", ".join(str(c) for c in candidates)
        raise DatasetError(
            f"VOC{year} dataset directory (with JPEGImages/) not found; searched: {searched}"
        )

    def _image_path(self, image_id: str) -> Path:
        return self.image_dir / f"{image_id}.jpg"

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def pixel_labelled(self) -> list[int]:
        """Indices of the items that have a segmentation mask."""
        return [i for i, (_, classes) in enumerate(self.samples) if classes is None]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        image_id, classes = self.samples[index]
        image = load_rgb(self._image_path(image_id))
        if classes is None:
            mask_path = self.mask_dir / f"{image_id}.png"
            mask = load_mask(mask_path, self.num_classes, expected_size=image.size)
            image, mask = resize_and_crop(image, mask, self.size)
            mask_t = torch.from_numpy(mask)
            return make_item(
                to_image_tensor(image),
                mask_t,
                labels_from_mask(mask_t, self.num_classes),
                True,
                index,
            )
        image, _ = resize_and_crop(image, None, self.size)
        labels = torch.zeros(self.num_classes)
        labels[[c - 1 for c in classes]] = 1.0
        width, height = image.size
        mask_t = torch.full((height, width), IGNORE_INDEX, dtype=torch.long)
        return make_item(to_image_tensor(image), mask_t, labels, False, index)

    def all_labels(self) -> torch.Tensor:
        """Multi-hot image labels ``(len, 20)`` of every item, as ``__getitem__`` gives them.

        Reads the masks only (after the same resize and crop), not the images.
        """
        rows = []
        for image_id, classes in self.samples:
            if classes is None:
                path = self.mask_dir / f"{image_id}.png"
                mask = resize_and_crop_mask(load_mask(path, self.num_classes), self.size)
                rows.append(labels_from_mask(torch.from_numpy(mask), self.num_classes))
            else:
                row = torch.zeros(self.num_classes)
                row[[c - 1 for c in classes]] = 1.0
                rows.append(row)
        return torch.stack(rows)

    def __repr__(self) -> str:
        return f"VOCSegmentationDataset({str(self.base)!r}, split={self.split!r}, size={self.size})"

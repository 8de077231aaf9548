"""A segmentation data set from a plain image folder with PNG masks."""

from __future__ import annotations

import warnings
from pathlib import Path

from .base import FileSample, FileSegmentationDataset
from .common import IGNORE_INDEX, DatasetError, read_image_labels

__all__ = ["IMAGE_SUFFIXES", "SegmentationFolder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class SegmentationFolder(FileSegmentationDataset):
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
    ``labels.csv`` and the split; loading an item
    (:class:`~rrr.data.base.FileSegmentationDataset`) checks decoding, the
    mask size and its class indices. Every problem raises
    :class:`~rrr.data.common.DatasetError` naming the file.
    """

    name = "folder"

    @classmethod
    def from_options(
        cls,
        split: str | None,
        *,
        root: str | Path | None = None,
        size: int | None = None,
    ) -> SegmentationFolder:
        """``build_dataset("folder", ...)``: ``root`` required, ``size`` None (original sizes).

        The split is ``root/splits/{split}.txt``; without a ``root/splits``
        directory every split uses all images, with a warning.
        """
        root = cls.require_root(root)
        folder_split = split
        if split is not None and not (Path(root).expanduser() / "splits").is_dir():
            warnings.warn(
                f"{root}: no splits/ directory, so split {split!r} uses all images",
                stacklevel=3,  # build_dataset's caller
            )
            folder_split = None
        return cls(root, split=folder_split, size=size)

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
        self.samples: list[FileSample] = []
        for stem in stems:
            if stem in masks:
                self.samples.append(FileSample(stem, images[stem], masks[stem], None))
            elif stem in image_labels:
                self.samples.append(FileSample(stem, images[stem], None, image_labels[stem]))
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
        return read_image_labels(
            path, self.num_classes, id_separator=",", class_separator=";", known=images
        )

    def __repr__(self) -> str:
        return f"SegmentationFolder({str(self.root)!r}, split={self.split!r}, size={self.size})"

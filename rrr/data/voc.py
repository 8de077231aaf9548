"""PASCAL VOC segmentation on torchvision's on-disk layout.

Expected layout (what :class:`torchvision.datasets.VOCSegmentation` downloads)::

    root/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    root/VOCdevkit/VOC2012/SegmentationClass/<id>.png   (palette PNG, 255 = boundary/ignore)
    root/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
"""

from __future__ import annotations

from pathlib import Path

from .base import FileSample, FileSegmentationDataset
from .common import DatasetError, read_image_labels

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
    file and line (see :func:`rrr.data.common.read_image_labels`).
    """
    return read_image_labels(path, num_classes, id_separator=None, class_separator=",")


class VOCSegmentationDataset(FileSegmentationDataset):
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

    Image labels of pixel-labelled images are derived from their masks; items
    are loaded by :class:`~rrr.data.base.FileSegmentationDataset`.
    """

    name = "voc"

    @classmethod
    def from_options(
        cls,
        split: str,
        *,
        root: str | Path | None = None,
        size: int | None = None,
        download: bool | None = False,
        year: str | int | None = None,
        extra_image_labels: str | Path | None = None,
    ) -> VOCSegmentationDataset:
        """``build_dataset("voc", ...)``: ``root`` required, ``size`` 256, ``year`` "2012".

        Split ``"test"`` maps to ``"val"``: VOC test masks are not public and
        the paper evaluates on val.
        """
        root = cls.require_root(root)
        return cls(
            root,
            split="val" if split == "test" else split,
            size=256 if size is None else size,
            year="2012" if year is None else str(year),
            extra_image_labels=extra_image_labels,
            download=bool(download),
        )

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
        self.samples: list[FileSample] = []
        for image_id in ids:
            image_path, mask_path = self._image_path(image_id), self.mask_dir / f"{image_id}.png"
            for path in (image_path, mask_path):
                if not path.is_file():
                    raise DatasetError(f"{path}: file listed in {split_file.name} is missing")
            self.samples.append(FileSample(image_id, image_path, mask_path, None))
        if extra_image_labels is not None:
            known = set(ids)
            extra = read_image_label_file(extra_image_labels, self.num_classes)
            for image_id, classes in extra.items():
                if image_id in known:
                    continue
                image_path = self._image_path(image_id)
                if not image_path.is_file():
                    raise DatasetError(
                        f"{image_path}: image listed in {extra_image_labels} is missing"
                    )
                self.samples.append(FileSample(image_id, image_path, None, classes))

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

    def __repr__(self) -> str:
        return f"VOCSegmentationDataset({str(self.base)!r}, split={self.split!r}, size={self.size})"

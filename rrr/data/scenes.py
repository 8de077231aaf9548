"""Fashion-MNIST scenes: real Fashion-MNIST items pasted on a black canvas.

The embedded default data set. Each scene holds one or more real Fashion-MNIST
items (classes may repeat), each rescaled and placed fully inside the canvas;
later items occlude earlier ones. An item owns exactly the pixels where its
rescaled intensity exceeds ``threshold``: there the image takes the item's
intensity and the mask the item's class, so every pixel's class is exact and
the background is exactly 0 in the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import SegmentationDataset
from .common import labels_from_mask, make_item
from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist

__all__ = ["FashionScenes", "SceneObject"]

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_VAL_ITEMS = 10_000  # the last 10,000 Fashion-MNIST train items form the val pool


@dataclass(frozen=True)
class SceneObject:
    """One pasted item of a scene; ``order`` 0 is drawn first (lowest)."""

    order: int
    source_split: str  # Fashion-MNIST split the item comes from: "train" or "test"
    source_index: int  # index into that Fashion-MNIST split
    label: int  # Fashion-MNIST label 0..9
    class_index: int  # mask value, label + 1
    scale: float
    top: int
    left: int
    height: int
    width: int


class FashionScenes(SegmentationDataset):
    """Synthetic multi-object scenes of real Fashion-MNIST items with exact masks.

    Args:
        split: ``"train"`` and ``"val"`` draw from disjoint pools of the
            Fashion-MNIST train set (val: its last 10,000 items), ``"test"``
            from the Fashion-MNIST test set.
        size: canvas side in pixels.
        length: number of scenes.
        objects: ``(min, max)`` items per scene, inclusive.
        scale: ``(min, max)`` rescaling factor of the 28 px items.
        seed: scene seed; item ``i`` is a pure function of
            ``(seed, split, i)``, whatever the access order or worker process.
        root: where to find Fashion-MNIST, see :mod:`rrr.data.fashion_mnist`.
        download: allow downloading Fashion-MNIST through torchvision.
        threshold: intensity in [0, 1] above which an item pixel counts as the item.

    Items follow the shared format of :mod:`rrr.data.common`;
    :meth:`objects` returns the pasted items of a scene in drawing order.
    """

    name = "fashion-scenes"
    aliases = ("scenes", "fashion", "fashion-mnist-scenes")

    @classmethod
    def from_options(
        cls,
        split: str,
        *,
        root: str | Path | None = None,
        size: int | None = None,
        length: int | None = None,
        objects: tuple[int, int] | None = None,
        scene_seed: int | None = None,
        download: bool | None = False,
        scale: tuple[float, float] | None = None,
        threshold: float | None = None,
    ) -> FashionScenes:
        """``build_dataset("fashion-scenes", ...)``; ``None`` keeps the constructor's default.

        ``root`` is where to look for Fashion-MNIST first, ``scene_seed`` the
        scene seed (default 0).
        """
        kwargs: dict = {
            "split": split,
            "root": root,
            "download": bool(download),
            "seed": 0 if scene_seed is None else int(scene_seed),
        }
        given = {
            "size": size,
            "length": length,
            "objects": objects,
            "scale": scale,
            "threshold": threshold,
        }
        kwargs.update({k: v for k, v in given.items() if v is not None})
        return cls(**kwargs)

    def __init__(
        self,
        split: str = "train",
        size: int = 64,
        length: int = 1000,
        objects: tuple[int, int] = (1, 3),
        scale: tuple[float, float] = (0.6, 1.2),
        seed: int = 0,
        root: str | Path | None = None,
        download: bool = False,
        threshold: float = 0.1,
    ) -> None:
        if split not in _SPLIT_CODES:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        if int(size) < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if int(length) < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        lo, hi = (int(v) for v in objects)
        if not 1 <= lo <= hi:
            raise ValueError(f"objects must be (min, max) with 1 <= min <= max, got {objects}")
        s_lo, s_hi = (float(v) for v in scale)
        if not 0 < s_lo <= s_hi:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {scale}")
        self.split = split
        self.size = int(size)
        self.length = int(length)
        self.objects_range = (lo, hi)
        self.scale_range = (s_lo, s_hi)
        self.seed = int(seed)
        self.threshold = float(threshold)
        self.root = root
        self.classes: list[str] = ["background", *FASHION_MNIST_CLASSES]
        self.num_classes: int = len(FASHION_MNIST_CLASSES)
        self._source_split = "test" if split == "test" else "train"
        images, _ = self._load(download)  # fail early when the data are missing
        total = len(images)
        n_val = min(_VAL_ITEMS, total // 6)
        if split == "train":
            self._pool_start, self._pool_size = 0, total - n_val
        elif split == "val":
            self._pool_start, self._pool_size = total - n_val, n_val
        else:
            self._pool_start, self._pool_size = 0, total
        if self._pool_size < 1:
            raise ValueError(f"Fashion-MNIST {self._source_split} set too small for split {split}")

    # The source arrays come from an in-process cache; they are not pickled
    # to worker processes but reloaded there.
    def _load(self, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        arrays = load_fashion_mnist(self._source_split, root=self.root, download=download)
        self._arrays = arrays
        return arrays

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_arrays", None)
        return state

    def _source(self) -> tuple[torch.Tensor, torch.Tensor]:
        arrays = getattr(self, "_arrays", None)
        return arrays if arrays is not None else self._load()

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int) -> np.random.Generator:
        seed = self.seed % (1 << 64)
        return np.random.default_rng([seed, _SPLIT_CODES[self.split], index])

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"scene index {index} out of range for length {self.length}")
        return index

    def _plan(self, index: int) -> list[SceneObject]:
        """Draw the scene's items and placements (no pixels yet)."""
        rng = self._rng(index)
        lo, hi = self.objects_range
        count = int(rng.integers(lo, hi + 1))
        picks = rng.integers(0, self._pool_size, size=count) + self._pool_start
        scales = rng.uniform(*self.scale_range, size=count)
        where = rng.random((count, 2))
        _, labels = self._source()
        plan = []
        for order in range(count):
            side = int(min(self.size, max(1, round(28 * scales[order]))))
            top, left = (int(u * (self.size - side + 1)) for u in where[order])
            label = int(labels[picks[order]])
            plan.append(
                SceneObject(
                    order=order,
                    source_split=self._source_split,
                    source_index=int(picks[order]),
                    label=label,
                    class_index=label + 1,
                    scale=float(scales[order]),
                    top=top,
                    left=left,
                    height=side,
                    width=side,
                )
            )
        return plan

    def objects(self, index: int) -> list[SceneObject]:
        """The items of scene ``index`` in drawing (occlusion) order, first drawn first."""
        return self._plan(self._check_index(index))

    def render(self, index: int) -> tuple[torch.Tensor, torch.Tensor, list[SceneObject]]:
        """Scene ``index`` as (grey image (H, W) float, mask (H, W) long, objects)."""
        index = self._check_index(index)
        plan = self._plan(index)
        images, _ = self._source()
        image = torch.zeros(self.size, self.size)
        mask = torch.zeros(self.size, self.size, dtype=torch.long)
        for obj in plan:
            item = images[obj.source_index].float().div_(255.0)
            if obj.height != 28:
                item = F.interpolate(
                    item[None, None],
                    size=(obj.height, obj.width),
                    mode="bilinear",
                    align_corners=False,
                    antialias=obj.height < 28,
                )[0, 0].clamp_(0.0, 1.0)
            fg = item > self.threshold
            rows = slice(obj.top, obj.top + obj.height)
            cols = slice(obj.left, obj.left + obj.width)
            image[rows, cols] = torch.where(fg, item, image[rows, cols])
            mask[rows, cols].masked_fill_(fg, obj.class_index)
        return image, mask, plan

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        index = self._check_index(index)
        image, mask, _ = self.render(index)
        labels = labels_from_mask(mask, self.num_classes)
        return make_item(image, mask, labels, True, index)

    def all_labels(self) -> torch.Tensor:
        """Multi-hot image labels ``(len, C)`` of every scene (renders each scene)."""
        return torch.stack(
            [labels_from_mask(self.render(i)[1], self.num_classes) for i in range(len(self))]
        )

    def __repr__(self) -> str:
        return (
            f"FashionScenes(split={self.split!r}, size={self.size}, length={self.length}, "
            f"objects={self.objects_range}, scale={self.scale_range}, seed={self.seed})"
        )

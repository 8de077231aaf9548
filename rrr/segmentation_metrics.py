"""Segmentation and classification metrics accumulated over a data set.

* per-class IoU (Jaccard, Everingham et al. 2010, PASCAL VOC): for class ``c``,
  ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` from the confusion matrix over all
  labelled pixels (``IGNORE_INDEX`` excluded); ``miou`` is the mean over the
  classes that occur in the ground truth or the prediction;
* pixel accuracy: ``sum_c TP_c / #labelled pixels``;
* classification: macro mean average precision and macro F1 at probability 0.5
  of the multi-label image classification (torchmetrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

from heatmaps.labels import IGNORE_INDEX


@dataclass
class SegmentationMetrics:
    """Accumulate predictions; :meth:`compute` returns a JSON-ready dict."""

    num_classes: int  # foreground classes C; label maps use 0..C
    class_names: list[str] | None = None
    _confusion: MulticlassConfusionMatrix = field(init=False)
    _ap: MultilabelAveragePrecision = field(init=False)
    _f1: MultilabelF1Score = field(init=False)
    _images: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        # evaluation runs in one process (rank 0 of a multi-process run): no cross-process sync
        local = {"sync_on_compute": False}
        self._confusion = MulticlassConfusionMatrix(
            self.num_classes + 1, ignore_index=IGNORE_INDEX, validate_args=False, **local
        )
        self._ap = MultilabelAveragePrecision(self.num_classes, average="macro", **local)
        self._f1 = MultilabelF1Score(self.num_classes, average="macro", **local)

    def update(
        self,
        pred: Tensor,
        target: Tensor,
        logits: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> None:
        """``pred``/``target`` label maps (B, H, W); optional class logits and labels (B, C)."""
        has_pixels = (target != IGNORE_INDEX).flatten(1).any(1)
        if has_pixels.any():
            self._confusion.update(pred[has_pixels].cpu(), target[has_pixels].cpu())
        if logits is not None and labels is not None:
            probs = logits[:, : self.num_classes].detach().float().sigmoid().cpu()
            self._ap.update(probs, labels.long().cpu())
            self._f1.update(probs, labels.long().cpu())
            self._images += len(labels)

    def compute(self) -> dict:
        matrix = self._confusion.compute().double()
        tp = matrix.diag()
        union = matrix.sum(0) + matrix.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        names = self.class_names or [str(i) for i in range(self.num_classes + 1)]
        total = matrix.sum()
        result = {
            "miou": float(iou.nanmean()) if (union > 0).any() else float("nan"),
            "per_class_iou": {
                name: (None if value != value else float(value))
                for name, value in zip(names, iou.tolist())
            },
            "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        }
        if self._images:
            result["map"] = float(self._ap.compute())
            result["f1"] = float(self._f1.compute())
        return result

"""The training objective of one batch: classification plus a heatmap/segmentation loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .losses import IGNORE_INDEX, SEGMENTATION_LOSSES, get_loss
from .segmenter import SegmenterOutput


def class_masks(target: Tensor, num_classes: int) -> Tensor:
    """``(B, C, H, W)`` bool object masks of classes 1..C from a label map (B, H, W)."""
    classes = torch.arange(1, num_classes + 1, device=target.device)
    return target[:, None] == classes[None, :, None, None]


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Multi-label soft-margin loss (mean binary cross-entropy over classes), as in Yu et al."""
    return F.binary_cross_entropy_with_logits(logits[:, : labels.shape[1]], labels.to(logits.dtype))


def segmentation_loss(
    name: str, out: SegmenterOutput, target: Tensor, has_mask: Tensor, present: Tensor
) -> Tensor:
    """The ``--loss`` term on the pixel-labelled images of the batch.

    ``ce`` and ``dice`` act on the segmentation logits (unlabelled pixels carry
    ``IGNORE_INDEX``); the guidance losses (``rrr``, ``rrr_star``, ``energy``,
    ``l1``, ``ppce``) act on the raw class maps of the present classes of the
    pixel-labelled images.
    """
    loss = get_loss(name)
    if name in SEGMENTATION_LOSSES:
        return loss(out.seg_logits, target, ignore_index=IGNORE_INDEX)
    num_classes = out.maps.shape[1]
    masks = class_masks(target, num_classes)
    valid = has_mask[:, None] & present
    return loss(out.maps, masks, valid)

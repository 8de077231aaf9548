"""The supervised objective shared by segmenters: classification plus a segmentation loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from heatmaps.labels import IGNORE_INDEX, class_masks, classification_loss

from ..losses import SEGMENTATION_LOSSES, get_loss

if TYPE_CHECKING:
    from .base import Segmenter, SegmenterOutput

__all__ = ["segmentation_loss", "supervised_loss"]


def segmentation_loss(
    name: str, out: SegmenterOutput, target: Tensor, has_mask: Tensor, present: Tensor
) -> Tensor:
    """The ``--loss`` term on the pixel-labelled images of the batch.

    ``ce`` and ``dice`` act on the segmentation logits (unlabelled pixels carry
    ``IGNORE_INDEX``); the guidance losses (``rrr``, ``rrr_star``, ``energy``,
    ``l1``, ``ppce``) act on the raw class maps of the present classes of the
    pixel-labelled images; a loss marked ``every_class`` (``bce``) on the maps
    of every class of those images, absent ones included, at their labelled pixels.
    """
    loss = get_loss(name)
    if name in SEGMENTATION_LOSSES:
        return loss(out.seg_logits, target, ignore_index=IGNORE_INDEX)
    masks = class_masks(target, out.maps.shape[1])
    if getattr(loss, "every_class", False):
        labelled = has_mask[:, None, None, None] & (target != IGNORE_INDEX)[:, None]
        return loss(out.maps, masks, labelled)
    valid = has_mask[:, None] & present
    return loss(out.maps, masks, valid)


def supervised_loss(
    segmenter: Segmenter,
    out: SegmenterOutput,
    batch: dict[str, Tensor],
    with_classification: bool,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``cls_weight * classification + seg_weight * segmentation`` and the unweighted terms.

    Reads ``loss_name``, ``cls_weight`` and ``seg_weight`` from ``segmenter``;
    a term of weight 0 is not computed. ``with_classification=False`` for
    models whose class logits are not a classifier's (the plain U-Net).
    """
    labels = batch["labels"]
    loss = torch.zeros((), device=labels.device)
    terms: dict[str, Tensor] = {}
    if with_classification and segmenter.cls_weight > 0:
        terms["cls"] = classification_loss(out.logits, labels)
        loss = loss + segmenter.cls_weight * terms["cls"]
    if segmenter.seg_weight > 0:
        terms["seg"] = segmentation_loss(
            segmenter.loss_name, out, batch["mask"], batch["has_mask"], labels > 0.5
        )
        loss = loss + segmenter.seg_weight * terms["seg"]
    return loss, terms

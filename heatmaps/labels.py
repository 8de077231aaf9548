"""Label-map conventions shared by :mod:`heatmaps` and :mod:`rrr`.

A label map is a ``(B, H, W)`` integer tensor: 0 is the background, ``c + 1``
is foreground class ``c`` (``0 <= c < C``), and :data:`IGNORE_INDEX` marks
unlabelled pixels, which no loss or metric counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IGNORE_INDEX", "class_masks", "classification_loss"]

IGNORE_INDEX = 255
"""Label of unlabelled or ignored pixels (PASCAL VOC's boundary value)."""


def class_masks(target: Tensor, num_classes: int) -> Tensor:
    """``(B, C, H, W)`` bool object masks of classes ``0..C-1`` from a label map ``(B, H, W)``.

    Entry ``[b, c]`` is True where ``target[b] == c + 1``; background and
    ignored pixels are False in every channel.
    """
    classes = torch.arange(1, num_classes + 1, device=target.device)
    return target[:, None] == classes[None, :, None, None]


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Multi-label binary cross-entropy of class logits against image-level labels.

    ``L = -1/(B C) sum_{b,c} [y_bc log sigmoid(l_bc) + (1 - y_bc) log(1 - sigmoid(l_bc))]``,
    the multi-label soft-margin loss of Yu et al. (segmentation paper) and the
    classification term of Stalder et al. (NeurIPS 2022, sec. 3; mean reduction
    as ``torch.nn.BCEWithLogitsLoss``). Only the first ``C = labels.shape[1]``
    logits count, so a classifier with an extra background output neuron is
    scored on its foreground classes.

    Args:
        logits: ``(B, C')`` class logits, ``C' >= C``.
        labels: ``(B, C)`` targets in ``[0, 1]``.
    """
    return F.binary_cross_entropy_with_logits(logits[:, : labels.shape[1]], labels.to(logits.dtype))

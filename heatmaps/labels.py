"""Label-map conventions shared by :mod:`heatmaps` and :mod:`rrr`.

A label map is a ``(B, H, W)`` integer tensor: 0 is the background, ``c + 1``
is foreground class ``c`` (``0 <= c < C``), and :data:`IGNORE_INDEX` marks
unlabelled pixels, which no loss or metric counts.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["IGNORE_INDEX", "class_masks"]

IGNORE_INDEX = 255
"""Label of unlabelled or ignored pixels (PASCAL VOC's boundary value)."""


def class_masks(target: Tensor, num_classes: int) -> Tensor:
    """``(B, C, H, W)`` bool object masks of classes ``0..C-1`` from a label map ``(B, H, W)``.

    Entry ``[b, c]`` is True where ``target[b] == c + 1``; background and
    ignored pixels are False in every channel.
    """
    classes = torch.arange(1, num_classes + 1, device=target.device)
    return target[:, None] == classes[None, :, None, None]

"""Segmenters: every model ``rrr.finetune`` trains implements :class:`Segmenter`.

* :class:`HeatmapSegmenter` (``--model heatmap``): a classifier's heatmaps as
  segmentation logits (Yu et al.);
* :class:`ExplainerSegmenter` (``--model explainer`` or ``--method explainer``):
  a frozen classifier and its Explainer masks (Stalder et al.);
* :class:`UNetSegmenter` / :class:`MultiTaskUNetSegmenter` (``--model unet`` /
  ``mt-unet``): the baselines on the same data.

To add a segmenter, write one module in this package with a :class:`Segmenter`
subclass that sets ``name`` and implements ``from_config``, ``forward`` and
``training_loss``; :func:`segmenter_names` imports every module of the package,
so nothing else changes (import it below only to export the class).
"""

from .base import (
    NEG,
    Segmenter,
    SegmenterOutput,
    build_segmenter,
    freeze_batchnorm,
    segmenter_names,
)
from .explainer import ExplainerSegmenter
from .heatmap import HeatmapSegmenter
from .objective import segmentation_loss, supervised_loss
from .unet import SMP_ENCODERS, MultiTaskUNetSegmenter, UNetSegmenter

__all__ = [
    "NEG",
    "SMP_ENCODERS",
    "ExplainerSegmenter",
    "HeatmapSegmenter",
    "MultiTaskUNetSegmenter",
    "Segmenter",
    "SegmenterOutput",
    "UNetSegmenter",
    "build_segmenter",
    "freeze_batchnorm",
    "segmentation_loss",
    "segmenter_names",
    "supervised_loss",
]

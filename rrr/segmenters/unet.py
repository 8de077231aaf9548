"""U-Net baselines on the same data (segmentation-models-pytorch).

* ``unet``: a U-Net with the same encoder family as the classifier, trained on
  the pixel-labelled images only (image-level labels cannot train it);
* ``mt-unet``: the multi-task U-Net of the segmentation paper's comparison: the
  same U-Net plus an image classification head on the encoder
  (``aux_params``), trained with segmentation loss on pixel-labelled images and
  multi-label classification loss on all images.

Both implement :class:`~rrr.segmenters.base.Segmenter`, so the training loop
and the evaluation treat every model alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import segmentation_models_pytorch as smp
import torch
from torch import Tensor, nn

from .base import Segmenter, SegmenterOutput
from .objective import supervised_loss

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["SMP_ENCODERS", "MultiTaskUNetSegmenter", "UNetSegmenter"]

#: torchvision architecture name -> segmentation-models-pytorch encoder name
SMP_ENCODERS = {
    **{f"resnet{d}": f"resnet{d}" for d in (18, 34, 50, 101, 152)},
    "resnext50_32x4d": "resnext50_32x4d",
    "resnext101_32x8d": "resnext101_32x8d",
    **{f"vgg{d}": f"vgg{d}" for d in (11, 13, 16, 19)},
    **{f"vgg{d}_bn": f"vgg{d}_bn" for d in (11, 13, 16, 19)},
    **{f"densenet{d}": f"densenet{d}" for d in (121, 161, 169, 201)},
    "mobilenet_v2": "mobilenet_v2",
    **{f"efficientnet_b{i}": f"efficientnet-b{i}" for i in range(8)},
}


class UNetSegmenter(Segmenter):
    """A U-Net trained on the pixel-labelled images only.

    Its image "logits" come from the segmentation (the largest class
    probability over the pixels), so it has no classifier to pre-train and no
    classification term.
    """

    name = "unet"
    has_classifier_stage = False
    gated_by_labels = False
    multitask = False

    def __init__(
        self,
        arch: str,
        num_classes: int,
        depth: int = 5,
        loss: str = "ce",
        cls_weight: float = 1.0,
        seg_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if arch not in SMP_ENCODERS:
            raise ValueError(
                f"--model {self.name}: no U-Net encoder for --arch {arch}; "
                f"supported: {', '.join(sorted(SMP_ENCODERS))}"
            )
        self.num_classes = num_classes
        self.loss_name = loss
        self.cls_weight = cls_weight
        self.seg_weight = seg_weight
        aux = {"classes": num_classes, "dropout": 0.0} if self.multitask else None
        self.net = smp.Unet(
            encoder_name=SMP_ENCODERS[arch],
            encoder_weights=None,  # nothing is downloaded at run time
            encoder_depth=depth,
            decoder_channels=(256, 128, 64, 32, 16)[:depth],
            classes=num_classes + 1,
            aux_params=aux,
        )

    @classmethod
    def from_config(cls, config: RunConfig, num_classes: int) -> UNetSegmenter:
        return cls(
            config.arch,
            num_classes,
            loss=config.loss,
            cls_weight=1.0 if config.cls_weight is None else config.cls_weight,
            seg_weight=config.seg_weight,
        )

    def forward(
        self, x: Tensor, present: Tensor | None = None, *, classify_only: bool = False, **_: object
    ) -> SegmenterOutput:
        """Segmentation logits and image logits; ``present`` and ``classify_only`` change nothing."""
        out = self.net(x)
        if self.multitask:
            seg_logits, logits = out
        else:
            seg_logits = out
            # image-level "logits" from the segmentation: max over pixels of class vs background
            probs = seg_logits.softmax(dim=1)
            logits = torch.logit(probs[:, 1:].amax(dim=(2, 3)).clamp(1e-6, 1 - 1e-6))
        return SegmenterOutput(seg_logits, logits, seg_logits[:, 1:])

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """``(B, H, W)`` label maps: the argmax of the segmentation logits (no gating)."""
        return self.net(x)[0].argmax(1) if self.multitask else self.net(x).argmax(1)

    def training_loss(
        self, batch: dict[str, Tensor], phase: str
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The segmentation term; the multi-task U-Net adds the classification term.

        Pre-training (multi-task U-Net only) is the classification loss of its head.
        """
        if phase == "pretrain":
            return super().training_loss(batch, phase)
        present = batch["labels"] > 0.5
        out = self(batch["image"], present & batch["has_mask"][:, None])
        return supervised_loss(self, out, batch, with_classification=self.multitask)

    @property
    def backbone(self) -> nn.Module:
        return self.net.encoder


class MultiTaskUNetSegmenter(UNetSegmenter):
    """The U-Net plus a classification head on its encoder (``aux_params``), trained on all images."""

    name = "mt-unet"
    has_classifier_stage = True
    multitask = True

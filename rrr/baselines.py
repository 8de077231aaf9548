"""U-Net baselines on the same data (segmentation-models-pytorch).

* ``unet``: a U-Net with the same encoder family as the classifier, trained on
  the pixel-labelled images only (image-level labels cannot train it);
* ``mt-unet``: the multi-task U-Net of the segmentation paper's comparison: the
  same U-Net plus an image classification head on the encoder
  (``aux_params``), trained with segmentation loss on pixel-labelled images and
  multi-label classification loss on all images.

Both return :class:`rrr.segmenter.SegmenterOutput`, so the training loop and
the evaluation treat every model alike.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import Tensor, nn

from .segmenter import SegmenterOutput

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


class UNetSegmenter(nn.Module):
    """U-Net (optionally multi-task) with the :class:`HeatmapSegmenter` output contract."""

    def __init__(self, arch: str, num_classes: int, multitask: bool, depth: int = 5) -> None:
        super().__init__()
        if arch not in SMP_ENCODERS:
            raise ValueError(
                f"--model {'mt-unet' if multitask else 'unet'}: no U-Net encoder for --arch {arch}; "
                f"supported: {', '.join(sorted(SMP_ENCODERS))}"
            )
        self.num_classes = num_classes
        self.multitask = multitask
        aux = {"classes": num_classes, "dropout": 0.0} if multitask else None
        self.net = smp.Unet(
            encoder_name=SMP_ENCODERS[arch],
            encoder_weights=None,  # nothing is downloaded at run time
            encoder_depth=depth,
            decoder_channels=(256, 128, 64, 32, 16)[:depth],
            classes=num_classes + 1,
            aux_params=aux,
        )

    def forward(
        self, x: Tensor, present: Tensor | None = None, *, classify_only: bool = False, **_: object
    ) -> SegmenterOutput:
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
        return self.net(x)[0].argmax(1) if self.multitask else self.net(x).argmax(1)

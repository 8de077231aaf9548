"""Explainer networks: images ``(B, 3, H, W)`` to per-class mask logits ``(B, K, H, W)``.

The Explainer of Stalder et al. ("What you see is what you classify: black box
attributions", NeurIPS 2022, sec. 3) is a semantic-segmentation network with one
output channel per class of the classifier it explains; the mask of class ``c``
is ``s_c = sigmoid(E(x)_c)``. The paper uses torchvision's DeepLabV3-ResNet50.

:func:`build_explainer` returns any of torchvision's segmentation models
(``weights=None`` always: the segmentation head is trained from scratch against
the classifier, only the backbone may start from ImageNet weights) wrapped so
that it returns the logits tensor instead of torchvision's ``{"out": ...}``
dict; :class:`SmallExplainer`, a tiny encoder-decoder for tests and CPU runs; or
:class:`ClassifierUNet`, a U-Net whose encoder starts from the explained
classifier's own trained weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import segmentation

__all__ = [
    "ARCHITECTURES",
    "ClassifierUNet",
    "SegmentationLogits",
    "SmallExplainer",
    "build_explainer",
]


class SegmentationLogits(nn.Module):
    """Wrap a torchvision segmentation model: return ``model(x)["out"]``, ``(B, K, H, W)``.

    torchvision's segmentation models already upsample their output to the input
    resolution, so the logits have the same ``H, W`` as the image.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return out["out"] if isinstance(out, dict) else out


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU(inplace=True))


class SmallExplainer(nn.Module):
    """A tiny convolutional encoder-decoder (a 3-level U-Net without normalisation).

    Encoder: 3x3 convolutions + ReLU at strides 1, 2 and 4 (``width``, ``2 width``,
    ``2 width`` channels). Decoder: bilinear upsampling of the deeper features to
    the resolution of the shallower ones, concatenation with them (skip
    connection) and a 3x3 convolution + ReLU, twice; a final 1x1 convolution gives
    ``num_classes`` logits at the input resolution. Any ``H, W`` (odd ones
    included) is accepted. With ``width=16`` it has ~50k parameters: meant for
    tests and quick CPU experiments, not for quality.
    """

    def __init__(self, num_classes: int, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(_conv(in_channels, width), _conv(width, width))
        self.enc2 = _conv(width, 2 * width, stride=2)
        self.enc3 = nn.Sequential(
            _conv(2 * width, 2 * width, stride=2), _conv(2 * width, 2 * width)
        )
        self.dec2 = _conv(4 * width, 2 * width)
        self.dec1 = _conv(3 * width, width)
        self.head = nn.Conv2d(width, num_classes, 1)

    @staticmethod
    def _up(x: Tensor, like: Tensor) -> Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        f1 = self.enc1(x)
        f2 = self.enc2(f1)
        f3 = self.enc3(f2)
        d2 = self.dec2(torch.cat((self._up(f3, f2), f2), dim=1))
        d1 = self.dec1(torch.cat((self._up(d2, f1), f1), dim=1))
        return self.head(d1)


class ClassifierUNet(nn.Module):
    """A U-Net Explainer whose encoder is the explained classifier's network and weights.

    The mask of class ``c`` must cover the items *of class c*, so the Explainer
    has to tell the classes apart; the classifier it explains already does. This
    Explainer is segmentation-models-pytorch's ``Unet`` with the encoder of the
    same architecture as the classifier (``encoder_name``, e.g. ``"resnet18"``)
    and a light decoder; :meth:`initialise_from` copies the classifier's trained
    weights into the encoder (every encoder entry must match by name and shape,
    which holds for the torchvision ResNet/ResNeXt/VGG/DenseNet encoders of
    smp). The rrr Explainer segmenter calls it once, when the classifier is
    frozen after pre-training; the ``initialised`` buffer is saved with the
    weights, so a resumed run does not copy again over a trained encoder. Our
    construction, not the paper's (which starts its DeepLabV3 from ImageNet).
    Input sides must be multiples of 32 (five stride-2 stages).
    """

    def __init__(
        self,
        num_classes: int,
        encoder_name: str = "resnet18",
        decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 16),
    ) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.Unet(
            encoder_name,
            encoder_weights=None,
            classes=num_classes,
            decoder_channels=decoder_channels,
        )
        self.register_buffer("initialised", torch.tensor(False))

    def initialise_from(self, classifier: nn.Module) -> None:
        """Copy the classifier's weights into the encoder (name and shape must match).

        Raises:
            ValueError: an encoder entry without a same-named, same-shaped weight in
                the classifier (another architecture than ``encoder_name``).
        """
        source = classifier.state_dict()
        own = self.net.encoder.state_dict()
        missing = [k for k, v in own.items() if k not in source or source[k].shape != v.shape]
        if missing:
            raise ValueError(
                f"ClassifierUNet: the classifier has no weight of the same name and shape for "
                f"{len(missing)} of the {len(own)} encoder entries (first: {missing[0]}); "
                "encoder_name must be the classifier's architecture"
            )
        self.net.encoder.load_state_dict({k: source[k] for k in own})
        self.initialised.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(
                f"ClassifierUNet: image sides must be multiples of 32, got {tuple(x.shape[-2:])}"
            )
        return self.net(x)


def _torchvision(builder: Callable[..., nn.Module], aux: bool) -> Callable[..., nn.Module]:
    def build(num_classes: int, backbone_weights: Any) -> nn.Module:
        kwargs: dict[str, Any] = {
            "weights": None,
            "weights_backbone": backbone_weights,
            "num_classes": num_classes,
        }
        if aux:
            kwargs["aux_loss"] = False
        return SegmentationLogits(builder(**kwargs))

    return build


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "deeplabv3_resnet50": _torchvision(segmentation.deeplabv3_resnet50, aux=True),
    "deeplabv3_resnet101": _torchvision(segmentation.deeplabv3_resnet101, aux=True),
    "deeplabv3_mobilenet_v3_large": _torchvision(
        segmentation.deeplabv3_mobilenet_v3_large, aux=True
    ),
    "fcn_resnet50": _torchvision(segmentation.fcn_resnet50, aux=True),
    "lraspp_mobilenet_v3_large": _torchvision(segmentation.lraspp_mobilenet_v3_large, aux=False),
}
"""torchvision segmentation architectures by name (``"small"`` is :class:`SmallExplainer`,
``"unet"`` :class:`ClassifierUNet`)."""


def build_explainer(
    arch: str = "deeplabv3_resnet50",
    num_classes: int = 20,
    backbone_weights: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """Build an Explainer network: ``(B, 3, H, W)`` images to ``(B, K, H, W)`` mask logits.

    Args:
        arch: ``"deeplabv3_resnet50"`` (the paper's), ``"lraspp_mobilenet_v3_large"``
            (light), ``"fcn_resnet50"``, ``"deeplabv3_resnet101"``,
            ``"deeplabv3_mobilenet_v3_large"``, ``"small"`` (:class:`SmallExplainer`) or
            ``"unet"`` (:class:`ClassifierUNet`; pass ``encoder_name``, the classifier's
            architecture, and call its ``initialise_from(classifier)``).
        num_classes: ``K``, the number of classes of the classifier to explain.
        backbone_weights: passed to torchvision as ``weights_backbone``: ``None``
            (random initialisation, the default: nothing is downloaded), ``"DEFAULT"``
            or a weights enum for an ImageNet-pretrained backbone (downloaded into the
            torch hub cache by torchvision). The segmentation head is always new
            (``weights=None``, ``aux_loss=False``).
        **kwargs: passed to :class:`SmallExplainer` (``width``) for ``arch="small"``
            and to :class:`ClassifierUNet` (``encoder_name``) for ``arch="unet"``.

    Returns:
        A module whose output is the logits tensor; masks are ``sigmoid`` of it.

    Raises:
        ValueError: unknown ``arch``, ``num_classes < 1``, or backbone weights for
            ``"small"``.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
    if arch == "small":
        if backbone_weights is not None:
            raise ValueError("build_explainer: the 'small' explainer has no pretrained backbone")
        return SmallExplainer(num_classes, **kwargs)
    if arch == "unet":
        if backbone_weights is not None:
            raise ValueError("build_explainer: 'unet' starts from the classifier's weights")
        return ClassifierUNet(num_classes, **kwargs)
    if arch not in ARCHITECTURES:
        names = ", ".join(sorted([*ARCHITECTURES, "small", "unet"]))
        raise ValueError(f"build_explainer: unknown arch {arch!r}; available: {names}")
    if kwargs:
        raise TypeError(f"build_explainer: unexpected options for {arch!r}: {sorted(kwargs)}")
    return ARCHITECTURES[arch](num_classes, backbone_weights)

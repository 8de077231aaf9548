"""Training the Explainer against a frozen classifier, optionally with pixel labels.

One step (:func:`explainer_step`) runs the Explainer once, the frozen
classifier on the masked-in and masked-out images (:class:`ExplainerLoss`),
and, beyond the paper, an optional pixel-level segmentation loss on the
samples that have pixel labels. The classifier is never changed: it must be
in ``eval()`` with ``requires_grad`` off (:func:`freeze_classifier`), which
:func:`explainer_step` checks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from ..labels import IGNORE_INDEX
from .losses import ExplainerLoss

__all__ = [
    "IGNORE_INDEX",
    "check_frozen",
    "explainer_step",
    "freeze_classifier",
    "segmentation_logits",
]


def freeze_classifier(model: nn.Module) -> nn.Module:
    """Put ``model`` in ``eval()`` and turn ``requires_grad`` off; returns the same module."""
    model.eval()
    model.requires_grad_(False)
    return model


def check_frozen(classifier: nn.Module) -> None:
    """Raise ``ValueError`` unless the classifier is in eval mode with no trainable parameter.

    The Explainer is trained against a fixed classifier (Stalder et al. 2022,
    sec. 3); a classifier in train mode would update BatchNorm statistics and
    use dropout, and one with trainable parameters would receive gradients.
    """
    training = [name or "<root>" for name, m in classifier.named_modules() if m.training]
    trainable = [name for name, p in classifier.named_parameters() if p.requires_grad]
    if training or trainable:
        problems = []
        if training:
            problems.append(f"modules in train mode ({', '.join(training[:3])}, ...)")
        if trainable:
            problems.append(f"parameters with requires_grad=True ({', '.join(trainable[:3])}, ...)")
        raise ValueError(
            "explainer_step: the classifier must be frozen, but it has "
            + " and ".join(problems)
            + "; call heatmaps.explainer.freeze_classifier(classifier) first"
        )


def segmentation_logits(mask_logits: Tensor) -> Tensor:
    """``(B, C + 1, H, W)`` segmentation logits from Explainer mask logits ``z`` ``(B, C, H, W)``.

    Channel 0 (background) is the logit of the probability that *no* class mask
    covers the pixel, ``logit(1 - max_c sigmoid(z_c)) = -max_c z_c``; channels
    ``1..C`` are the class logits ``z_c`` themselves. The argmax is background
    exactly where every class mask is below 0.5, and otherwise the class with the
    largest mask. (Our construction for the pixel-level term; not in the paper.)
    """
    background = -mask_logits.amax(dim=1, keepdim=True)
    return torch.cat((background, mask_logits), dim=1)


def _default_pixel_loss(seg_logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(seg_logits, target, ignore_index=IGNORE_INDEX)


def explainer_step(
    explainer: nn.Module,
    classifier: nn.Module,
    x: Tensor,
    labels: Tensor,
    loss: ExplainerLoss,
    pixel_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
    pixel_targets: Tensor | None = None,
    *,
    optimizer: Optimizer | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The Explainer's loss on one batch (and, with ``optimizer``, one update).

    Args:
        explainer: ``(B, 3, H, W) -> (B, C, H, W)`` mask logits; run exactly once.
        classifier: frozen classifier ``(B, 3, H, W) -> (B, C)``.
        x: ``(B, 3, H, W)`` images.
        labels: ``(B, C)`` float multi-hot image-level labels.
        loss: the paper's loss terms (:class:`ExplainerLoss`).
        pixel_loss: optional segmentation loss ``f(seg_logits (B', C + 1, H, W),
            target (B', H, W) long, IGNORE_INDEX = ignore) -> scalar``, e.g. any
            segmentation loss of ``rrr.losses``; ``seg_logits`` come from
            :func:`segmentation_logits`. Defaults to cross-entropy when
            ``pixel_targets`` are given.
        pixel_targets: ``(B, H, W)`` long label maps (0 = background, ``c + 1`` =
            class ``c``, :data:`~heatmaps.labels.IGNORE_INDEX` = unlabelled); the
            pixel term uses only the samples with at least one labelled pixel and
            is weighted by ``loss.config.pixel``.
        optimizer: if given, ``zero_grad``, ``backward`` and ``step`` are run too.

    Returns:
        ``(total, terms)``: the total loss (detached when ``optimizer`` stepped)
        and the detached unweighted terms, with ``"pixel"`` when pixel targets were given.

    Raises:
        ValueError: the classifier is not frozen (see :func:`freeze_classifier`),
            or ``pixel_loss`` without ``pixel_targets``, or malformed pixel targets.
    """
    check_frozen(classifier)
    if pixel_loss is not None and pixel_targets is None:
        raise ValueError("explainer_step: pixel_loss needs pixel_targets (B, H, W)")
    mask_logits = explainer(x)
    total, terms = loss(mask_logits, x, labels, classifier)
    if pixel_targets is not None:
        if pixel_targets.shape != (x.shape[0], *x.shape[-2:]):
            raise ValueError(
                f"pixel_targets: expected shape (B, H, W) = {(x.shape[0], *x.shape[-2:])}, "
                f"got {tuple(pixel_targets.shape)}"
            )
        labelled = (pixel_targets != IGNORE_INDEX).flatten(1).any(dim=1)
        if bool(labelled.any()):
            seg = segmentation_logits(mask_logits[labelled])
            term = (pixel_loss or _default_pixel_loss)(seg, pixel_targets[labelled].long())
        else:
            term = 0 * mask_logits.sum()
        total = total + loss.config.pixel * term
        terms["pixel"] = term.detach()
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        total = total.detach()
    return total, terms

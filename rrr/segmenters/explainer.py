"""``ExplainerSegmenter``: a frozen classifier plus an Explainer as a segmenter.

The Explainer of Stalder et al. ("What you see is what you classify: black box
attributions", NeurIPS 2022) predicts one sigmoid mask
per class of a classifier in a single forward pass, and is trained against the
*frozen* classifier with :class:`heatmaps.explainer.ExplainerLoss`. This module
packs both networks behind the :class:`~rrr.segmenters.base.Segmenter`
interface, so that ``python -m rrr.finetune --method explainer`` (or ``--model
explainer``) trains it with the same :class:`~rrr.trainer.Trainer`
(checkpoints, resume, logs, ``torchrun``) and ``rrr.evaluate`` / ``rrr.predict``
work on its checkpoints:

* stage 1 (``"pretrain"``, ``--pretrain-epochs``): the classifier learns
  multi-label classification on the image-level labels, exactly as the
  classifier of a heatmap segmenter (``forward(x, classify_only=True)``);
* stage 2 (``"finetune"``, ``--epochs``): the classifier is frozen (``eval()``,
  ``requires_grad`` off, kept in ``eval()`` by :meth:`ExplainerSegmenter.train`)
  and only the Explainer learns, from :meth:`ExplainerSegmenter.objective`
  (:meth:`~ExplainerSegmenter.training_loss` of the stage): the
  paper's loss on every image plus, beyond the paper, ``--seg-weight`` times a
  pixel-level loss (``--loss``) on the ``--pixel-labels`` images.

Segmentation logits from the mask logits ``z`` (``(B, C, H, W)``), with the
classes gated off (absent) set to ``NEG`` first::

    seg_logits[:, 0]  = -max_{c on} z_c      (background: no mask of a class that is on covers the pixel)
    seg_logits[:, c]  = z_c  if class c is on, else NEG

so the argmax is background exactly where every mask of the classes that are
on is below 0.5, and otherwise the class with the largest mask
(:func:`heatmaps.explainer.segmentation_logits`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from heatmaps.explainer import (
    ClassifierUNet,
    ExplainerHeatmap,
    ExplainerLoss,
    build_explainer,
    check_frozen,
    freeze_classifier,
    segmentation_logits,
)

from ..classifiers import build_classifier, check_support
from ..config import explainer_loss_options
from .base import NEG, Segmenter, SegmenterOutput
from .objective import segmentation_loss

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["ExplainerSegmenter"]


class ExplainerSegmenter(Segmenter):
    """A classifier and its Explainer behind the :class:`~rrr.segmenters.base.Segmenter` interface.

    Args:
        classifier: a classifier with ``num_classes`` outputs (e.g. from
            :func:`rrr.classifiers.build_classifier`).
        explainer: ``(B, 3, H, W)`` images to ``(B, num_classes, H, W)`` mask
            logits (e.g. from :func:`heatmaps.explainer.build_explainer`), or an
            architecture name for :func:`~heatmaps.explainer.build_explainer`.
        num_classes: ``C``, the number of foreground classes.
        gating: inference gating, ``"predicted"`` (classes whose classifier logit
            exceeds ``threshold``) or ``"none"`` (every class).
        threshold: class-logit threshold of ``"predicted"`` gating.
        loss: the paper's loss (:class:`heatmaps.explainer.ExplainerLoss`);
            default: the paper's weights 1, 1, 1, 1, 0.1, 0.3 and area bounds 0.05, 0.3.
        pixel_loss: the pixel term's loss on the pixel-labelled images (a name
            of :data:`rrr.losses.LOSSES`).
        seg_weight: weight of the pixel term (0: the paper's unsupervised Explainer).

    Attributes:
        classifier_frozen: whether :meth:`freeze_classifier` has been called
            (stage 2); from then on the classifier stays in ``eval()`` whatever
            :meth:`train` is asked.
    """

    name = "explainer"

    def __init__(
        self,
        classifier: nn.Module,
        explainer: nn.Module | str,
        num_classes: int,
        gating: str = "predicted",
        threshold: float = 0.0,
        loss: ExplainerLoss | None = None,
        pixel_loss: str = "ce",
        seg_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if gating not in ("predicted", "none"):
            raise ValueError(f"gating: expected 'predicted' or 'none', got {gating!r}")
        if explainer == "unet":
            raise ValueError(
                "explainer 'unet': pass build_explainer('unet', num_classes, encoder_name=ARCH) "
                "with ARCH the classifier's architecture (from_config does)"
            )
        if isinstance(explainer, str):
            explainer = build_explainer(explainer, num_classes=num_classes)
        self.classifier = classifier
        self.explainer = explainer
        self.num_classes = num_classes
        self.gating = gating
        self.threshold = threshold
        self.loss = loss if loss is not None else ExplainerLoss()
        self.loss_name = pixel_loss
        self.seg_weight = seg_weight
        self.classifier_frozen = False

    @classmethod
    def from_config(cls, config: RunConfig, num_classes: int) -> ExplainerSegmenter:
        check_support("explainer", config.arch)
        if config.background != "constant":
            raise ValueError("--background neuron does not apply to --method explainer")
        explainer: nn.Module | str = config.explainer
        if explainer == "unet":
            explainer = build_explainer("unet", num_classes, encoder_name=config.arch)
        return cls(
            build_classifier(config.arch, num_classes, config.weights),
            explainer,
            num_classes,
            gating=config.gating,
            threshold=config.threshold,
            pixel_loss=config.loss,
            seg_weight=config.seg_weight,
            loss=ExplainerLoss(**explainer_loss_options(config.explainer_loss)),
        )

    # -- stages -------------------------------------------------------------------------------
    def freeze_classifier(self) -> ExplainerSegmenter:
        """Stage 2: classifier in ``eval()`` with ``requires_grad`` off, for good (idempotent)."""
        freeze_classifier(self.classifier)
        self.classifier_frozen = True
        # a ClassifierUNet starts from the pre-trained classifier, once (not again on resume)
        if isinstance(self.explainer, ClassifierUNet) and not bool(self.explainer.initialised):
            self.explainer.initialise_from(self.classifier)
        return self

    def train(self, mode: bool = True) -> ExplainerSegmenter:
        """As :meth:`torch.nn.Module.train`, but a frozen classifier stays in ``eval()``."""
        super().train(mode)
        if self.classifier_frozen:
            self.classifier.eval()
        return self

    def heatmap(self) -> ExplainerHeatmap:
        """The Explainer as a :mod:`heatmaps` backend of the classifier (masks in ``[0, 1]``)."""
        return ExplainerHeatmap(self.classifier, self.explainer)

    # -- forward ------------------------------------------------------------------------------
    @staticmethod
    def gated_segmentation_logits(mask_logits: Tensor, gate: Tensor) -> Tensor:
        """``(B, C + 1, H, W)`` logits of the module docstring from mask logits and a ``(B, C)`` gate."""
        gated = torch.where(gate[:, :, None, None], mask_logits, torch.full_like(mask_logits, NEG))
        return segmentation_logits(gated)

    def forward(
        self,
        x: Tensor,
        present: Tensor | None = None,
        *,
        create_graph: bool | None = None,
        classify_only: bool = False,
    ) -> SegmenterOutput:
        """Segmentation logits, classifier logits and masks for ``x``.

        Args:
            x: images ``(B, 3, H, W)``.
            present: ``(B, C)`` bool image-level labels; when given they gate the
                classes, otherwise ``gating`` does.
            create_graph: keep the outputs differentiable (default:
                ``self.training``); ``False`` runs both networks under
                ``torch.no_grad()``. The masks are the Explainer's output, so no
                backward pass is involved either way.
            classify_only: only run the classifier (stage 1): ``seg_logits`` and
                ``maps`` are ``None``.

        Returns:
            :class:`~rrr.segmenters.base.SegmenterOutput` with ``seg_logits`` ``(B, C + 1, H, W)``,
            the classifier's ``logits`` ``(B, C)`` and the sigmoid masks of every
            class as ``maps`` ``(B, C, H, W)`` (not gated).
        """
        if classify_only:
            return SegmenterOutput(None, self.classifier(x), None)  # type: ignore[arg-type]
        if create_graph is None:
            create_graph = self.training
        with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
            logits = self.classifier(x)
            mask_logits = self.explainer(x)
        if mask_logits.shape != (x.shape[0], self.num_classes, *x.shape[-2:]):
            raise ValueError(
                f"explainer: expected mask logits {(x.shape[0], self.num_classes, *x.shape[-2:])}, "
                f"got {tuple(mask_logits.shape)}"
            )
        gate = self.gate(logits, present)
        seg_logits = self.gated_segmentation_logits(mask_logits, gate)
        return SegmenterOutput(seg_logits, logits, mask_logits.sigmoid())

    # -- stage 2 objective --------------------------------------------------------------------
    def objective(
        self,
        x: Tensor,
        labels: Tensor,
        target: Tensor,
        has_mask: Tensor,
        loss_name: str = "ce",
        seg_weight: float = 1.0,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The Explainer's training loss on one batch (stage 2).

        ``total = ExplainerLoss(masks, x, labels, classifier)
        + seg_weight * loss_name(pixel term)``, where the pixel term is
        :func:`rrr.segmenters.objective.segmentation_loss` on the pixel-labelled samples
        (``has_mask``): ``ce`` / ``dice`` on the segmentation logits gated by
        the true labels, the guidance losses (``l1``, ``energy``, ``ppce``, ...)
        on the masks of the present classes. ``seg_weight = 0`` is the paper's
        purely unsupervised Explainer. The Explainer runs once; the frozen
        classifier runs on the masked-in and masked-out images. Freezes the
        classifier first (:meth:`freeze_classifier`) and checks it.

        Args:
            x: ``(B, 3, H, W)`` images.
            labels: ``(B, C)`` float multi-hot image-level labels.
            target: ``(B, H, W)`` label maps (0 = background, ``c + 1`` = class
                ``c``, 255 = unlabelled).
            has_mask: ``(B,)`` bool, which samples carry pixel labels.
            loss_name: a name of :data:`rrr.losses.LOSSES`.
            seg_weight: weight of the pixel term.

        Returns:
            ``(total, terms)``: the differentiable total and the detached terms
            (``classification``, ``entropy``, ``tv``, ``area``,
            ``present_sparsity``, ``absent_sparsity`` unweighted, and ``seg``
            when ``seg_weight > 0``).
        """
        self.freeze_classifier()
        check_frozen(self.classifier)
        mask_logits = self.explainer(x)
        total, terms = self.loss(mask_logits, x, labels, self.classifier)
        if seg_weight > 0:
            present = (labels > 0.5) & has_mask[:, None].bool()
            out = SegmenterOutput(
                self.gated_segmentation_logits(mask_logits, present), None, mask_logits.sigmoid()
            )  # type: ignore[arg-type]
            seg = segmentation_loss(loss_name, out, target, has_mask.bool(), labels > 0.5)
            total = total + seg_weight * seg
            terms["seg"] = seg.detach()
        return total, terms

    def training_loss(
        self, batch: dict[str, Tensor], phase: str
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Stage 1: the classifier's classification loss; stage 2: :meth:`objective`."""
        if phase == "pretrain":
            return super().training_loss(batch, phase)
        return self.objective(
            batch["image"],
            batch["labels"],
            batch["mask"],
            batch["has_mask"],
            self.loss_name,
            self.seg_weight,
        )

    @property
    def backbone(self) -> nn.Module:
        return self.classifier

"""``HeatmapSegmenter``: a classifier's class heatmaps used as segmentation logits.

The segmentation paper (Yu et al., "Model guidance via explanations turns image
classifiers into segmentation models") observes that an LRP heatmap of a
classifier is an encoder-decoder whose decoder is the LRP backward pass with
weights tied to the encoder; stacked class heatmaps plus a background channel
are segmentation logits, and standard segmentation losses on them train the
classifier. This module turns maps ``R_c`` (B, C, H, W) of any backend into
logits (B, C + 1, H, W), channel 0 being the background::

    logit_0      = b                        (background = "constant")
                 = s * N(S(R_bg))           (background = "neuron": heatmap of an extra output)
    logit_c      = s * N(S(R_c))            c = 1..C
    logit_c      = NEG  if class c is gated off (absent)

with ``S`` an optional box blur and ``N`` a per-image normalisation (``"std"``:
divide by the standard deviation of the image's maps, ``"max"``: by their
maximum absolute value, ``"none"``). ``s`` and ``b`` are learned scalars.

Gating: during training the image-level labels say which classes are present,
so the softmax runs over the background and the present classes only (in
calibration runs this beat an all-class softmax by a wide margin; see
docs/finetuning.md). At inference the classifier's own prediction gates the
classes (``gating="predicted"``: logit > ``threshold``), or nothing does
(``"none"``). Gated inference decides presence first (from the logits of the
same forward pass) and computes only the kept classes' maps: cheaper than
every class's map, and the per-image normalisation then sees the same set of
maps as in training, where the labels gate (on the recipe's three seeds this
raised validation mIoU by 0.003-0.005 over normalising all ten maps).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import heatmaps
from heatmaps.base import Heatmap

from ..classifiers import build_classifier, check_support
from .base import NEG, Segmenter, SegmenterOutput
from .objective import supervised_loss

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["HeatmapSegmenter"]


class HeatmapSegmenter(Segmenter):
    """Segmentation logits from the heatmaps of a classifier.

    Args:
        classifier: any classifier; it outputs ``C`` logits, or ``C + 1`` with
            ``background="neuron"`` (the last output is the background neuron).
        backend: a :class:`heatmaps.Heatmap` built on ``classifier``.
        num_classes: ``C``, the number of foreground classes.
        background: ``"constant"`` (learned constant logit) or ``"neuron"``.
        normalise: ``"std"``, ``"max"`` or ``"none"`` (see module docstring).
        smoothing: box-blur size in pixels (odd; 0 or 1 = none).
        gating: inference gating, ``"predicted"`` or ``"none"``.
        threshold: class-logit threshold of ``"predicted"`` gating.
        init_scale: initial value of the learned map scale ``s``.
        presence: which classifier gates the classes at inference: ``"finetuned"``
            (the classifier the heatmap stage trains) or ``"pretrained"`` (a frozen
            copy taken when the heatmap stage starts, so the heatmap loss cannot
            degrade the image-level decision; costs one more forward pass at
            inference, and its logits are the ``logits`` of inference calls).
        loss: the segmentation loss of the heatmap stage (a name of
            :data:`rrr.losses.LOSSES`).
        cls_weight: weight of the classification term in the heatmap stage (10 keeps
            the image-level classifier improving while the maps learn; at 1 the heatmap
            loss degraded it: docs/results.md).
        seg_weight: weight of the segmentation term.
    """

    name = "heatmap"

    def __init__(
        self,
        classifier: nn.Module,
        backend: Heatmap,
        num_classes: int,
        background: str = "constant",
        normalise: str = "std",
        smoothing: int = 0,
        gating: str = "predicted",
        threshold: float = 0.0,
        init_scale: float = 1.0,
        loss: str = "ce",
        cls_weight: float = 10.0,
        seg_weight: float = 1.0,
        presence: str = "finetuned",
    ) -> None:
        super().__init__()
        if presence not in ("finetuned", "pretrained"):
            raise ValueError(f"presence: expected 'finetuned' or 'pretrained', got {presence!r}")
        if background not in ("constant", "neuron"):
            raise ValueError(f"background: expected 'constant' or 'neuron', got {background!r}")
        if normalise not in ("std", "max", "none"):
            raise ValueError(f"normalise: expected 'std', 'max' or 'none', got {normalise!r}")
        if gating not in ("predicted", "none"):
            raise ValueError(f"gating: expected 'predicted' or 'none', got {gating!r}")
        if smoothing < 0:
            raise ValueError(f"smoothing: expected >= 0, got {smoothing}")
        if backend.model is not classifier:
            raise ValueError("backend: the heatmap backend must wrap the same classifier")
        self.classifier = classifier
        # the backend holds the classifier (and, for Grad-CAM, captum's view of one of its
        # layers): keep it out of the module tree so that state_dict has each weight once
        object.__setattr__(self, "backend", backend)
        self.num_classes = num_classes
        self.background = background
        self.normalise = normalise
        self.smoothing = smoothing
        self.gating = gating
        self.threshold = threshold
        self.loss_name = loss
        self.cls_weight = cls_weight
        self.seg_weight = seg_weight
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))
        self.background_logit = nn.Parameter(torch.tensor(0.0))
        self.presence = presence
        self.presence_classifier: nn.Module | None = None
        if presence == "pretrained":
            self.presence_classifier = copy.deepcopy(classifier).requires_grad_(False).eval()
            # whether the copy has been taken (saved with the weights, so a resumed run keeps it)
            self.register_buffer("presence_frozen", torch.tensor(False))

    @classmethod
    def from_config(cls, config: RunConfig, num_classes: int) -> HeatmapSegmenter:
        check_support(config.method, config.arch)
        outputs = num_classes + (1 if config.background == "neuron" else 0)
        classifier = build_classifier(config.arch, outputs, config.weights)
        options: dict[str, Any] = {}
        if config.method == "lrp":
            options = {"composite": config.composite, "relevance": config.relevance}
            if config.composite == "epsilon":
                options["epsilon"] = config.epsilon
        if config.method not in heatmaps.available():
            raise ValueError(
                f"--method {config.method}: unknown backend; "
                f"available: {', '.join(heatmaps.available())}"
            )
        backend = heatmaps.get(config.method, classifier, **options)
        return cls(
            classifier,
            backend,
            num_classes,
            background=config.background,
            normalise=config.normalise,
            smoothing=config.smoothing,
            gating=config.gating,
            threshold=config.threshold,
            loss=config.loss,
            cls_weight=10.0 if config.cls_weight is None else config.cls_weight,
            seg_weight=config.seg_weight,
            presence=config.presence,
        )

    def start_phase(self, phase: str) -> None:
        """With ``presence="pretrained"``: copy the classifier when the heatmap stage starts."""
        if phase == "finetune" and self.presence_classifier is not None:
            if not bool(self.presence_frozen):
                self.presence_classifier.load_state_dict(self.classifier.state_dict())
                self.presence_frozen.fill_(True)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """As :meth:`torch.nn.Module.load_state_dict`, also for checkpoints of older versions.

        * Checkpoints written while the backend was a submodule hold a second copy
          of the classifier's weights under ``backend.`` (the backend is now kept
          out of the module tree): those keys are dropped.
        * A checkpoint without a presence copy (written by the pre-training stage,
          or with ``--presence finetuned``) loads into ``presence="pretrained"``:
          the copy is then taken when the heatmap stage starts.
        """
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("backend.")}
        if self.presence_classifier is not None and "presence_frozen" not in state_dict:
            for key, value in self.presence_classifier.state_dict().items():
                state_dict.setdefault(f"presence_classifier.{key}", value)
            state_dict["presence_frozen"] = torch.tensor(False)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def train(self, mode: bool = True) -> HeatmapSegmenter:
        """As :meth:`torch.nn.Module.train`; the frozen presence classifier stays in ``eval()``."""
        super().train(mode)
        if self.presence_classifier is not None:
            self.presence_classifier.eval()
        return self

    def param_groups(self) -> list[dict[str, Any]]:
        """``"model"``: the classifier; ``"scalars"``: the map scale and background logit."""
        scalars = [self.scale, self.background_logit]
        return [
            {"params": list(self.classifier.parameters()), "name": "model"},
            {"params": scalars, "name": "scalars"},
        ]

    # -- the pieces ---------------------------------------------------------------------------
    def _smooth(self, maps: Tensor) -> Tensor:
        if self.smoothing <= 1:
            return maps
        k = self.smoothing | 1
        flat = maps.flatten(0, 1)[:, None]
        return F.avg_pool2d(flat, k, stride=1, padding=k // 2, count_include_pad=False).view_as(
            maps
        )

    def _normalise(self, maps: Tensor) -> Tensor:
        if self.normalise == "none":
            return maps
        if self.normalise == "std":
            scale = maps.flatten(1).std(dim=1)
        else:
            scale = maps.flatten(1).abs().amax(dim=1)
        return maps / (scale[:, None, None, None] + 1e-12)

    def _with_background(self, classes: Tensor) -> Tensor:
        """``(B, C)`` class targets, plus the background neuron's column when there is one."""
        if self.background == "neuron":
            return torch.cat([classes, classes.new_ones(classes.shape[0], 1)], dim=1)
        return classes

    # -- forward ------------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        present: Tensor | None = None,
        *,
        create_graph: bool | None = None,
        classify_only: bool = False,
    ) -> SegmenterOutput:
        """Segmentation logits for ``x``.

        Args:
            x: images ``(B, 3, H, W)``.
            present: ``(B, C)`` bool image-level labels. When given, maps are
                computed only for these classes and the others are gated off
                (training). When ``None``, classes are gated by ``gating``.
            create_graph: keep the maps differentiable w.r.t. the classifier
                (default: ``self.training``).
            classify_only: only run the classifier (``seg_logits`` and ``maps``
                are ``None``); used by the classification pre-training stage.
        """
        if classify_only:
            return SegmenterOutput(None, self.classifier(x), None)  # type: ignore[arg-type]
        if create_graph is None:
            create_graph = self.training
        c = self.num_classes
        batch = x.shape[0]
        presence_logits = None
        if present is None and self.presence_classifier is not None:
            with torch.no_grad():
                presence_logits = self.presence_classifier(x)
        if present is not None:
            present = self.check_present(present, batch, x.device)
            targets: Any = self._with_background(present)
        elif self.gating == "predicted":
            # decide presence first and explain only the kept classes: the gated-off maps are
            # never computed (the same maps as training, where the labels gate)
            if presence_logits is not None:
                targets = self._with_background(self.class_presence(presence_logits))
            else:
                targets = lambda logits: self._with_background(self.class_presence(logits))  # noqa: E731
        else:
            targets = self._with_background(torch.ones(batch, c, dtype=torch.bool, device=x.device))
        out = self.backend.explain(x, targets, create_graph=create_graph)
        maps = out.maps
        if self.background == "neuron":
            background = maps[:, c:]
            maps = maps[:, :c]
        class_maps = self.scale * self._normalise(self._smooth(maps))
        if self.background == "neuron":
            background = self.scale * self._normalise(self._smooth(background))
        else:
            background = self.background_logit.expand(batch, 1, *x.shape[-2:])
        logits = out.logits if presence_logits is None else presence_logits
        gate = present if present is not None else self.gate(logits, None)  # checked above
        class_maps = torch.where(
            gate[:, :, None, None], class_maps, torch.full_like(class_maps, NEG)
        )
        seg_logits = torch.cat([background.to(class_maps.dtype), class_maps], dim=1)
        return SegmenterOutput(seg_logits, logits, maps)

    # -- training -----------------------------------------------------------------------------
    def training_loss(
        self, batch: dict[str, Tensor], phase: str
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Pre-training: classification. Heatmap stage: ``cls_weight * classification +
        seg_weight * loss`` on maps of the labelled classes of the pixel-labelled images."""
        if phase == "pretrain":
            return super().training_loss(batch, phase)
        present = batch["labels"] > 0.5
        out = self(batch["image"], present & batch["has_mask"][:, None])
        return supervised_loss(self, out, batch, with_classification=True)

    @property
    def backbone(self) -> nn.Module:
        return self.classifier

    def heatmap(self) -> Heatmap:
        """The backend whose maps this segmenter turns into logits."""
        return self.backend

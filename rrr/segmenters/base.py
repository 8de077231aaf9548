"""The interface every segmenter implements, and the registry that builds them by name.

A segmenter is an ``nn.Module`` that maps images ``(B, 3, H, W)`` to
segmentation logits ``(B, C + 1, H, W)`` (channel 0 the background) and image
class logits ``(B, C)``. The :class:`~rrr.trainer.Trainer`, ``rrr.evaluate`` and
``rrr.predict`` use only this interface:

* :meth:`Segmenter.forward` ``(x, present=None, *, create_graph=None,
  classify_only=False)`` -> :class:`SegmenterOutput`;
* :meth:`Segmenter.predict` -> ``(B, H, W)`` label maps;
* :meth:`Segmenter.gate`: which classes may appear (written once here: the
  image-level labels in training, the classifier's prediction or nothing at
  inference);
* :meth:`Segmenter.training_loss` ``(batch, phase)`` -> the loss and its named
  terms, so each segmenter owns its objective;
* :meth:`Segmenter.param_groups`: named optimizer groups (``"model"`` trains at
  the stage's learning rate, ``"scalars"`` at ``--scalar-lr``).

A subclass that sets ``name`` in its class body registers itself under that name
(the values of ``--model``); :func:`build_segmenter` builds one from a
:class:`~rrr.config.RunConfig` through the class's ``from_config``. Adding a
segmenter is one module in this package with one subclass (the registry
imports every module of the package).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from heatmaps.base import Heatmap
from heatmaps.labels import classification_loss

from ..checkpoint import CheckpointError

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = [
    "NEG",
    "Segmenter",
    "SegmenterOutput",
    "build_segmenter",
    "freeze_batchnorm",
    "segmenter_names",
]

NEG = -1e4
"""The logit of a class that is gated off: "minus infinity" that keeps softmax and CE finite."""

_REGISTRY: dict[str, type[Segmenter]] = {}


@dataclass
class SegmenterOutput:
    """Segmentation logits ``(B, C+1, H, W)``, class logits ``(B, C)`` and maps ``(B, C, H, W)``.

    ``seg_logits`` and ``maps`` are ``None`` for ``classify_only`` calls.
    """

    seg_logits: Tensor
    logits: Tensor
    maps: Tensor


class Segmenter(nn.Module):
    """Base class of every segmenter (see the module docstring).

    Subclasses set ``num_classes``, ``gating`` (``"predicted"`` or ``"none"``)
    and ``threshold`` and implement :meth:`forward`, :meth:`training_loss` and
    :meth:`from_config`.

    Class attributes:
        name: the registry name (``--model``).
        has_classifier_stage: whether the classification pre-training stage
            trains this model (the plain U-Net has no classifier: it skips it).
        gated_by_labels: whether ``present`` changes the output, so validation
            also reports the mIoU with the true labels as the gate.
    """

    name: ClassVar[str]
    has_classifier_stage: ClassVar[bool] = True
    gated_by_labels: ClassVar[bool] = True

    num_classes: int
    gating: str = "predicted"
    threshold: float = 0.0
    loss_name: str = "ce"
    cls_weight: float = 1.0
    seg_weight: float = 1.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is not None:
            if name in _REGISTRY and _REGISTRY[name].__qualname__ != cls.__qualname__:
                raise ValueError(
                    f"segmenter name {name!r} is taken by {_REGISTRY[name].__qualname__}"
                )
            _REGISTRY[name] = cls

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: RunConfig, num_classes: int) -> Segmenter:
        """The segmenter a run of ``config`` trains, for ``num_classes`` foreground classes."""
        raise NotImplementedError

    # -- gating -------------------------------------------------------------------------------
    def class_presence(self, logits: Tensor) -> Tensor:
        """``(B, C)`` bool: classes the classifier predicts present (logit > threshold)."""
        return logits[:, : self.num_classes] > self.threshold

    def check_present(self, present: Tensor, batch: int, device: torch.device) -> Tensor:
        """``present`` as a ``(B, C)`` bool tensor on ``device``, or a ``ValueError``."""
        present = present.to(device=device, dtype=torch.bool)
        if present.shape != (batch, self.num_classes):
            raise ValueError(
                f"present: expected a (B, C) = ({batch}, {self.num_classes}) multi-hot, "
                f"got {tuple(present.shape)}"
            )
        return present

    def gate(self, logits: Tensor, present: Tensor | None) -> Tensor:
        """``(B, C)`` bool: the classes whose channels stay on.

        The labels ``present`` when given (training, or evaluation with the true
        labels); otherwise the classifier's prediction (``gating="predicted"``) or
        every class (``"none"``).
        """
        if present is not None:
            return self.check_present(present, logits.shape[0], logits.device)
        if self.gating == "predicted":
            return self.class_presence(logits)
        return torch.ones(logits.shape[0], self.num_classes, dtype=torch.bool, device=logits.device)

    # -- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """``(B, H, W)`` label maps (0 = background), gated as configured."""
        return self.forward(x, None, create_graph=False).seg_logits.argmax(dim=1)

    # -- training -----------------------------------------------------------------------------
    def training_loss(
        self, batch: dict[str, Tensor], phase: str
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one batch in ``phase`` (``"pretrain"`` or ``"finetune"``) and its terms.

        ``batch`` holds ``image`` ``(B, 3, H, W)``, ``labels`` ``(B, C)`` float
        multi-hot, ``mask`` ``(B, H, W)`` label maps and ``has_mask`` ``(B,)``
        bool, on the model's device. The default pre-training objective is the
        multi-label classification loss of the classifier alone.
        """
        if phase != "pretrain":
            raise NotImplementedError
        out = self(batch["image"], batch["labels"] > 0.5, classify_only=True)
        cls = classification_loss(out.logits, batch["labels"])
        return cls, {"cls": cls}

    def param_groups(self) -> list[dict[str, Any]]:
        """Named parameter groups for the optimizer; by default one group ``"model"``."""
        return [{"params": list(self.parameters()), "name": "model"}]

    def start_phase(self, phase: str) -> None:
        """Called by the training loop before each epoch of ``phase`` (default: nothing)."""

    def prepare_phase(self, phase: str) -> None:
        """Called when a stage starts (e.g. the Explainer freezes its classifier)."""

    def load_matching(self, state: dict[str, Tensor], source: str) -> list[str]:
        """Load every entry of ``state`` whose name and shape match; return their names.

        Used by ``--init-from`` to start one method from another run's weights
        (e.g. a heatmap and an Explainer segmenter from one pre-trained
        classifier). Raises ``CheckpointError`` naming ``source`` when the backbone is
        not covered, since a segmenter that keeps its random backbone is never
        what was meant.
        """
        own = self.state_dict()
        matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        prefix = next(name for name, module in self.named_modules() if module is self.backbone)
        needed = [k for k in own if k.startswith(prefix + ".")]
        missing = [k for k in needed if k not in matching]
        if missing:
            raise CheckpointError(
                f"{source}: no weights of the same shape for {len(missing)} of the "
                f"{len(needed)} backbone entries of this --model {self.name} (first: "
                f"{missing[0]}); was it written for another --model, --arch or data set?"
            )
        self.load_state_dict(matching, strict=False)
        return sorted(matching)

    @property
    def backbone(self) -> nn.Module:
        """The network whose stages ``--checkpoint-activations`` recomputes."""
        raise NotImplementedError

    def heatmap(self) -> Heatmap | None:
        """The :class:`heatmaps.Heatmap` whose maps explain this model's classifier, if any."""
        return None


def segmenter_names() -> list[str]:
    """The registered segmenter names (``--model`` choices).

    Every module of this package is imported first (importing registers its
    classes), so a new segmenter is one new module here and nothing else.
    """
    import importlib
    import pkgutil

    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{info.name}")
    return list(_REGISTRY)


def build_segmenter(config: RunConfig, num_classes: int) -> Segmenter:
    """The segmenter of ``config`` (its ``model`` names a registered class)."""
    names = segmenter_names()
    if config.model not in _REGISTRY:
        raise ValueError(f"--model: expected one of {', '.join(names)}, got {config.model!r}")
    return _REGISTRY[config.model].from_config(config, num_classes)


def freeze_batchnorm(model: nn.Module) -> list[nn.Module]:
    """Put every BatchNorm of ``model`` in eval mode (statistics frozen); return them.

    Fine-tuning batches are small and LRP canonizers need fixed statistics, so
    statistics are frozen by default; the affine parameters still train. Call
    again after every ``model.train()``.
    """
    frozen = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            frozen.append(module)
    return frozen

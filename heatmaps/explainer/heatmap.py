"""``ExplainerHeatmap``: learned class-specific masks behind the common interface.

The maps are the Explainer's sigmoid masks ``s_c = sigmoid(E(x)_c)`` (Stalder
et al., NeurIPS 2022): one forward pass of the Explainer computes the masks of
all ``K`` classes, and the requested target classes are gathered from them.
The classifier is still run once per call, as for every backend, so that
:meth:`~heatmaps.Heatmap.explain` returns its logits and resolves ``None``
(predicted class) targets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..base import Heatmap, check_input, check_model_input, preserved_state

__all__ = ["ExplainerHeatmap"]


class ExplainerHeatmap(Heatmap):
    """Explainer masks as heatmaps of a classifier.

    Args:
        classifier: the explained classifier, returning logits ``(B, C)``; it is
            :attr:`model`, so ``explain()`` returns its logits.
        explainer: a network mapping ``(B, 3, H, W)`` images to ``(B, C, H, W)``
            mask logits (see :func:`heatmaps.explainer.build_explainer`), one
            channel per class of the classifier.

    The argument order matches the registry: ``heatmaps.get("explainer",
    classifier, explainer=net)``. Maps are in ``[0, 1]``; with
    ``create_graph=True`` they are differentiable w.r.t. the Explainer's
    parameters (they *are* its output, no backward pass is involved). With
    ``create_graph=False`` the Explainer runs under ``torch.no_grad()``.

    Hygiene: neither network's modes or ``requires_grad`` flags are changed, and
    BatchNorm running statistics of both are left untouched even in train mode
    (the Explainer is trained with its own forward passes, see
    :func:`heatmaps.explainer.explainer_step`).
    """

    name = "explainer"

    def __init__(self, classifier: nn.Module, explainer: nn.Module) -> None:
        super().__init__(classifier)
        if not isinstance(explainer, nn.Module):
            raise TypeError(
                f"explainer: expected a torch.nn.Module (see heatmaps.explainer.build_explainer), "
                f"got {type(explainer).__name__}"
            )
        self.explainer = explainer

    @property
    def classifier(self) -> nn.Module:
        """The explained classifier (the same object as :attr:`model`)."""
        return self.model

    def masks(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` masks of every class from one Explainer forward pass.

        Differentiable w.r.t. the Explainer's parameters whenever autograd is
        enabled; BatchNorm statistics are not updated (use the Explainer itself
        for training forward passes).
        """
        x = check_input(x, finite=self.check_finite)
        check_model_input(self.explainer, x)
        with preserved_state(self.explainer):
            return self._all_masks(x)

    def _all_masks(self, x: Tensor) -> Tensor:
        logits = self.explainer(x)
        if not isinstance(logits, Tensor) or logits.ndim != 4:
            raise ValueError(
                "explainer: must return mask logits of shape (B, C, H, W), got "
                f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}"
            )
        if logits.shape[0] != x.shape[0] or logits.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"explainer: output {tuple(logits.shape)} does not match the input "
                f"{tuple(x.shape)} in batch size or resolution"
            )
        return logits.sigmoid()

    @contextlib.contextmanager
    def _attached(self, x: Tensor) -> Iterator[None]:
        check_model_input(self.explainer, x)
        with preserved_state(self.explainer):
            yield

    def _attribute(self, x: Tensor, logits: Tensor, index: Tensor, create_graph: bool) -> Tensor:
        with torch.set_grad_enabled(create_graph):
            masks = self._all_masks(x.detach() if not create_graph else x)
        if masks.shape[1] != logits.shape[1]:
            raise ValueError(
                f"explainer: predicts {masks.shape[1]} class masks but the classifier has "
                f"{logits.shape[1]} classes"
            )
        height, width = masks.shape[-2:]
        return masks.gather(1, index[:, :, None, None].expand(-1, -1, height, width))

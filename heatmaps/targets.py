"""Normalising the many ways of naming target classes into one ``(B, K)`` index tensor.

Accepted forms (``C`` is the number of classes the classifier outputs):

=====================  =========================================================
``None``               the predicted class of every sample (``K = 1``)
``int``                that class for every sample (``K = 1``)
``LongTensor (B,)``    one class per sample (``K = 1``)
``LongTensor (B, K)``  ``K`` classes per sample
``BoolTensor (B, C)``  multi-hot: ``K = C``; absent classes get all-zero maps
``"all"``              every class (``K = C``)
a callable             ``f(logits)`` of the ``(B, C)`` logits of the same forward
                       pass, returning any form above; e.g. ``lambda z: z > 0``
                       explains the classes the classifier predicts present,
                       with no second forward pass
=====================  =========================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

TargetsLike = None | int | str | Tensor | Callable[[Tensor], Any]


@dataclass(frozen=True)
class ResolvedTargets:
    """Targets as class indices plus which entries must really be computed.

    Attributes:
        index: ``(B, K)`` long tensor of class indices, one map per entry.
        active: ``(B, K)`` bool tensor; ``False`` entries (absent classes of a
            multi-hot target) get an all-zero map and need no backward pass.
    """

    index: Tensor
    active: Tensor

    @property
    def all_active(self) -> bool:
        return bool(self.active.all())


def resolve_targets(targets: TargetsLike, logits: Tensor) -> ResolvedTargets:
    """Turn any accepted ``targets`` form into :class:`ResolvedTargets`.

    Args:
        targets: see the module docstring for the accepted forms.
        logits: ``(B, C)`` classifier output of the batch being explained.

    Raises:
        ValueError: out-of-range classes, wrong shapes or an unknown string.
        TypeError: a target of an unsupported type or dtype.
    """
    batch, num_classes = logits.shape
    device = logits.device
    if callable(targets) and not isinstance(targets, Tensor):
        chosen = targets(logits.detach())
        if callable(chosen) and not isinstance(chosen, Tensor):
            raise TypeError("targets: a callable must return targets, not another callable")
        return resolve_targets(chosen, logits)

    def full(index: Tensor) -> ResolvedTargets:
        return ResolvedTargets(index, torch.ones_like(index, dtype=torch.bool))

    if targets is None:
        return full(logits.detach().argmax(dim=1, keepdim=True))
    if isinstance(targets, str):
        if targets != "all":
            raise ValueError(
                f"targets: unknown string {targets!r}; the only string accepted is 'all'"
            )
        return full(torch.arange(num_classes, device=device).expand(batch, num_classes))
    if isinstance(targets, bool):
        raise TypeError(
            "targets: a bool is not a class index; pass an int, a tensor, 'all' or None"
        )
    if isinstance(targets, int):
        _check_range(torch.tensor([targets]), num_classes)
        return full(torch.full((batch, 1), targets, dtype=torch.long, device=device))
    if not isinstance(targets, Tensor):
        raise TypeError(
            f"targets: expected None, int, 'all' or a tensor, got {type(targets).__name__}"
        )
    targets = targets.to(device)
    if targets.dtype == torch.bool:
        if targets.shape != (batch, num_classes):
            raise ValueError(
                f"targets: a multi-hot bool tensor must have shape (B, C) = ({batch}, {num_classes}), "
                f"got {tuple(targets.shape)}"
            )
        index = torch.arange(num_classes, device=device).expand(batch, num_classes)
        return ResolvedTargets(index, targets.clone())
    if targets.dtype.is_floating_point or targets.dtype.is_complex:
        raise TypeError(
            f"targets: class indices must be an integer tensor (or a bool multi-hot), got {targets.dtype}"
        )
    targets = targets.long()
    if targets.ndim == 0:
        targets = targets.expand(batch)
    if targets.ndim == 1:
        if targets.shape[0] != batch:
            raise ValueError(
                f"targets: a (B,) tensor must have one class per sample (B = {batch}), "
                f"got {targets.shape[0]}"
            )
        targets = targets[:, None]
    elif targets.ndim == 2:
        if targets.shape[0] != batch:
            raise ValueError(
                f"targets: a (B, K) tensor must have B = {batch} rows, got shape {tuple(targets.shape)}"
            )
        if targets.shape[1] == 0:
            raise ValueError("targets: a (B, K) tensor needs K >= 1 classes per sample")
    else:
        raise ValueError(
            f"targets: expected a tensor of shape (B,) or (B, K), got {targets.ndim} dimensions"
        )
    _check_range(targets, num_classes)
    return full(targets)


def _check_range(index: Tensor, num_classes: int) -> None:
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_classes):
        bad = index[(index < 0) | (index >= num_classes)][0].item()
        raise ValueError(
            f"targets: class index {bad} is out of range for a classifier with {num_classes} classes"
        )

"""The Explainer's training loss (Stalder et al., NeurIPS 2022, sec. 3 and appendix).

Notation: the Explainer ``E`` gives mask logits ``z = E(x)`` of shape
``(B, C, H, W)`` and class masks ``s_c = sigmoid(z_c)``; ``y`` is the ``(B, C)``
multi-hot label vector; ``F`` is the frozen classifier (the *Explanandum*).
The masks of the classes present in the image are merged by the pixel-wise
maximum into the *target mask* ``m``, those of the absent classes into the
*non-target mask* ``n``::

    m = max_{c: y_c = 1} s_c          n = max_{c: y_c = 0} s_c          (0 if the set is empty)

and the loss is::

    L = w_c L_class(F(m * x), y) + w_e L_entropy(F((1 - m) * x))
        + w_tv (TV(m) + TV(n)) + w_a L_area(s, y) + w_m mean(m) + w_n mean(n)

with defaults ``w_c, w_e, w_tv, w_a, w_m, w_n = 1, 1, 1, 1, 0.1, 0.3`` and the
area bounds ``0.05`` and ``0.3``. Where the paper leaves a detail open (the
normalisations, the boundary of the total variation, the shape of the area
penalty), the functions below follow the authors' released implementation
(github.com/stevenstalder/NN-Explainer, ``src/utils/loss.py`` and
``src/models/explainer_classifier.py``); each docstring gives the exact formula.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..labels import classification_loss

__all__ = [
    "ExplainerLoss",
    "ExplainerLossConfig",
    "aggregate_masks",
    "area_loss",
    "classification_loss",
    "entropy_loss",
    "per_class_masked_inputs",
    "present_classes",
    "sparsity_loss",
    "total_variation",
]


# --------------------------------------------------------------------------- helpers


def present_classes(labels: Tensor, num_classes: int | None = None) -> Tensor:
    """``(B, C)`` bool: which classes are present (``labels > 0.5``; bool labels as they are).

    Raises:
        ValueError: labels that are not ``(B, C)`` (with ``C = num_classes`` if given).
    """
    if not isinstance(labels, Tensor) or labels.ndim != 2:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels: expected a (B, C) multi-hot tensor, got {shape}")
    if num_classes is not None and labels.shape[1] != num_classes:
        raise ValueError(
            f"labels: expected C = {num_classes} classes (the explainer's channels), "
            f"got {labels.shape[1]}"
        )
    return labels if labels.dtype == torch.bool else labels > 0.5


def aggregate_masks(masks: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
    """Target and non-target masks ``m, n`` of shape ``(B, H, W)`` (paper, sec. 3, fig. 2).

    ``m[b] = max_{c present} masks[b, c]`` and ``n[b] = max_{c absent} masks[b, c]``,
    pixel-wise; the maximum over an empty set is ``0`` (a sample without any
    present class has an all-zero target mask).

    Args:
        masks: ``(B, C, H, W)`` masks in ``[0, 1]``.
        present: ``(B, C)`` bool.
    """
    keep = present[:, :, None, None]
    target = masks.masked_fill(~keep, 0.0).amax(dim=1)
    non_target = masks.masked_fill(keep, 0.0).amax(dim=1)
    return target, non_target


# --------------------------------------------------------------------------- loss terms

# ``L_class``, the multi-label binary cross-entropy of the classifier's logits on the
# masked-in images (Stalder et al. 2022, sec. 3, "classification loss"), is
# heatmaps.labels.classification_loss, shared with rrr; it is re-exported here.


def entropy_loss(logits: Tensor) -> Tensor:
    """Negative, class-averaged entropy of the classifier's softmax on masked-out images.

    ``L_entropy = -1/(B C) sum_b H(p_b)``, ``H(p) = -sum_c p_c log p_c``,
    ``p_b = softmax(F((1 - m) * x)_b)`` (Stalder et al. 2022, sec. 3: the
    masked-out image must leave the classifier maximally uncertain, so the
    entropy is *maximised* by minimising its negative). The mean over the ``B C``
    entries of ``-p log p`` (i.e. the entropy divided by ``C``) is the released
    code's normalisation; ``log p`` is taken from ``log_softmax`` instead of
    ``log(clamp(p, 1e-16))`` (identical unless a probability is below ``1e-16``,
    whose contribution is then negligible either way). Its minimum is
    ``-log(C) / C`` (uniform prediction).

    Args:
        logits: ``(B, C)`` classifier logits of the masked-out images.
    """
    log_p = F.log_softmax(logits, dim=-1)
    return (log_p.exp() * log_p).mean()


def total_variation(mask: Tensor) -> Tensor:
    """Anisotropic L1 total variation, averaged over pixels, with reflected borders.

    ``TV(m) = 1/N sum_{i,j} (|m_ij - m_i,j+1| + |m_ij - m_i+1,j|)`` over all
    ``N`` pixels (of every leading index), where the missing neighbour of the
    last column / row is its reflection (``m_i,W := m_i,W-2``), so that the
    border differences count twice. Absolute (not squared) differences; this is
    the released code's 3x3 difference filters with ``padding_mode="reflect"``
    (Stalder et al. 2022, sec. 3, "smoothness"). Applied to the target and the
    non-target mask: ``TV(m) + TV(n)``.

    Args:
        mask: ``(..., H, W)`` masks.
    """
    total = mask.new_zeros(())
    if mask.shape[-1] >= 2:
        dx = (mask[..., :, :-1] - mask[..., :, 1:]).abs()
        total = total + dx.sum() + dx[..., :, -1].sum()
    if mask.shape[-2] >= 2:
        dy = (mask[..., :-1, :] - mask[..., 1:, :]).abs()
        total = total + dy.sum() + dy[..., -1, :].sum()
    return total / max(mask.numel(), 1) + 0 * mask.sum()


def area_loss(
    masks: Tensor, present: Tensor, min_area: float = 0.05, max_area: float = 0.3
) -> Tensor:
    """Area constraint on each present class mask, in the sorted-reference form.

    Sort the ``N = H W`` values of a present mask ``s_c`` in descending order,
    ``v = sort_desc(s_c)``, and compare with two step references: ``r_min`` has
    ones on its first ``floor(N min_area)`` entries and zeros after, ``r_max``
    ones on its first ``floor(N max_area)`` entries and zeros after. Then::

        A(s_c) = 1/N sum_k [ relu(r_min_k - v_k) + relu(v_k - r_max_k) ]
        L_area = 1/B sum_b sum_{c present in b} A(s_bc)

    i.e. a one-sided linear penalty for a mask covering less than ``min_area``
    of the image (its top ``min_area`` pixels should be 1) or more than
    ``max_area`` (pixels below the top ``max_area`` should be 0); between the
    two bounds the mask is free. Per-sample sum over the present classes, mean
    over the batch, and the hinge (not squared) differences follow the
    released code (Stalder et al. 2022, sec. 3 "area constraints" and appendix;
    the idea is the area regulariser of Fong et al., ICCV 2019). The reference
    uses the actual ``H W`` of the masks instead of a fixed 224 x 224.

    Args:
        masks: ``(B, C, H, W)`` masks in ``[0, 1]``.
        present: ``(B, C)`` bool.
        min_area: smallest allowed area fraction, ``0 <= min_area <= max_area``.
        max_area: largest allowed area fraction, ``<= 1``.
    """
    if not 0.0 <= min_area <= max_area <= 1.0:
        raise ValueError(
            f"area_loss: need 0 <= min_area <= max_area <= 1, got {min_area} and {max_area}"
        )
    batch = masks.shape[0]
    values = masks[present].flatten(1)  # (P, N): the present masks only
    if values.shape[0] == 0:
        return 0 * masks.sum()
    n = values.shape[1]
    ordered = values.sort(dim=1, descending=True).values
    rank = torch.arange(n, device=masks.device)
    r_min = (rank < int(n * min_area)).to(masks.dtype)
    r_max = (rank < int(n * max_area)).to(masks.dtype)
    per_mask = (F.relu(r_min - ordered) + F.relu(ordered - r_max)).mean(dim=1)
    return per_mask.sum() / batch


def sparsity_loss(mask: Tensor) -> Tensor:
    """Mean mask value, ``1/N sum mask`` (Stalder et al. 2022, sec. 3 / released code).

    Used as ``w_m mean(m) + w_n mean(n)`` on the target and non-target masks:
    small target masks, and above all no evidence claimed for absent classes.
    """
    return mask.mean()


def per_class_masked_inputs(x: Tensor, masks: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
    """Images masked with each present class's own mask, and one-hot targets.

    For every pair ``(b, c)`` with class ``c`` present in sample ``b``: the image
    ``s_bc * x_b`` and the target ``e_c`` (one-hot). Used by the optional
    ``classification_mode="per_class"`` (not the paper's default: there the
    union mask ``m`` with all labels ``y`` is used).

    Returns:
        ``(P, 3, H, W)`` images and ``(P, C)`` float targets, ``P`` the number of present pairs.
    """
    b_idx, c_idx = torch.nonzero(present, as_tuple=True)
    images = masks[b_idx, c_idx][:, None] * x[b_idx]
    targets = F.one_hot(c_idx, masks.shape[1]).to(masks.dtype)
    return images, targets


# --------------------------------------------------------------------------- the combination


@dataclass
class ExplainerLossConfig:
    """Weights and bounds of :class:`ExplainerLoss` (defaults: the paper's).

    Attributes:
        classification: ``w_c``, weight of the masked-in classification loss.
        entropy: ``w_e`` (the paper's ``lambda_e``), masked-out entropy.
        tv: ``w_tv`` (``lambda_tv``), total variation of ``m`` and ``n``.
        area: ``w_a`` (``lambda_a``), area constraint of the present masks.
        present_sparsity: ``w_m``, mean of the target mask ``m``.
        absent_sparsity: ``w_n``, mean of the non-target mask ``n``.
        min_area, max_area: bounds of the area constraint (fractions of the image).
        pixel: weight of the optional pixel-level term (not in the paper; see
            :func:`heatmaps.explainer.training.explainer_step`).
        classification_mode: ``"union"`` (the paper: ``BCE(F(m * x), y)``) or
            ``"per_class"`` (``BCE(F(s_c * x), e_c)`` for every present class
            ``c``, one classifier input per present class).
    """

    classification: float = 1.0
    entropy: float = 1.0
    tv: float = 1.0
    area: float = 1.0
    present_sparsity: float = 0.1
    absent_sparsity: float = 0.3
    min_area: float = 0.05
    max_area: float = 0.3
    pixel: float = 1.0
    classification_mode: str = "union"

    def __post_init__(self) -> None:
        if self.classification_mode not in ("union", "per_class"):
            raise ValueError(
                "classification_mode: expected 'union' or 'per_class', "
                f"got {self.classification_mode!r}"
            )
        if not 0.0 <= self.min_area <= self.max_area <= 1.0:
            raise ValueError(
                f"need 0 <= min_area <= max_area <= 1, got {self.min_area} and {self.max_area}"
            )


TERMS = ("classification", "entropy", "tv", "area", "present_sparsity", "absent_sparsity")
"""Names of the terms :class:`ExplainerLoss` returns (besides ``"total"``)."""


class ExplainerLoss(nn.Module):
    """The Explainer's loss ``L`` of the module docstring, for one batch.

    ``ExplainerLoss(config=None, **overrides)``: a :class:`ExplainerLossConfig`
    and/or keyword overrides of its fields, e.g. ``ExplainerLoss(entropy=0.5)``.

    Calling it with ``(mask_logits (B, C, H, W), x (B, 3, H, W), labels (B, C),
    classifier)`` runs the classifier twice (masked-in and masked-out batch;
    terms with weight 0 are skipped) and returns ``(total, terms)``: the
    weighted sum, differentiable w.r.t. ``mask_logits``, and a dict of the
    *unweighted*, detached terms (keys :data:`TERMS`). The classifier should
    be frozen (see :func:`heatmaps.explainer.training.freeze_classifier`).
    """

    def __init__(self, config: ExplainerLossConfig | None = None, **overrides: float | str) -> None:
        super().__init__()
        config = config or ExplainerLossConfig()
        if overrides:
            known = {f.name for f in fields(ExplainerLossConfig)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise TypeError(f"ExplainerLoss: unknown options {unknown}; known: {sorted(known)}")
            config = ExplainerLossConfig(**{**config.__dict__, **overrides})
        self.config = config

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.__dict__.items())

    def forward(  # type: ignore[override]
        self, mask_logits: Tensor, x: Tensor, labels: Tensor, classifier: nn.Module
    ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        if mask_logits.ndim != 4 or x.ndim != 4 or mask_logits.shape[0] != x.shape[0]:
            raise ValueError(
                "ExplainerLoss: expected mask logits (B, C, H, W) and images (B, 3, H, W), got "
                f"{tuple(mask_logits.shape)} and {tuple(x.shape)}"
            )
        if mask_logits.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"ExplainerLoss: masks {tuple(mask_logits.shape[-2:])} and images "
                f"{tuple(x.shape[-2:])} differ in size"
            )
        present = present_classes(labels, mask_logits.shape[1])
        if labels.shape[0] != x.shape[0]:
            raise ValueError(f"labels: expected B = {x.shape[0]} rows, got {labels.shape[0]}")
        masks = mask_logits.sigmoid()
        target, non_target = aggregate_masks(masks, present)
        zero = 0 * mask_logits.sum()
        terms: dict[str, Tensor] = {}

        if cfg.classification:
            if cfg.classification_mode == "union":
                logits = classifier(target[:, None] * x)
                terms["classification"] = classification_loss(logits, labels.to(x.dtype))
            else:
                images, onehot = per_class_masked_inputs(x, masks, present)
                terms["classification"] = (
                    classification_loss(classifier(images), onehot) if len(images) else zero
                )
        else:
            terms["classification"] = zero
        terms["entropy"] = (
            entropy_loss(classifier((1 - target[:, None]) * x)) if cfg.entropy else zero
        )
        terms["tv"] = total_variation(target) + total_variation(non_target) if cfg.tv else zero
        terms["area"] = area_loss(masks, present, cfg.min_area, cfg.max_area) if cfg.area else zero
        terms["present_sparsity"] = sparsity_loss(target)
        terms["absent_sparsity"] = sparsity_loss(non_target)

        weights = {
            "classification": cfg.classification,
            "entropy": cfg.entropy,
            "tv": cfg.tv,
            "area": cfg.area,
            "present_sparsity": cfg.present_sparsity,
            "absent_sparsity": cfg.absent_sparsity,
        }
        total = sum((weights[k] * terms[k] for k in TERMS), zero)
        return total, {k: v.detach() for k, v in terms.items()}

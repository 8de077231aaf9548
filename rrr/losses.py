"""Losses that turn explanation heatmaps into a training signal.

Two families, both returning a scalar tensor that is differentiable with respect
to the maps (and so, through an exactly differentiable heatmap backend, with
respect to the model's parameters):

* **Guidance losses** ``f(maps, masks, valid=None)`` (Ross et al. 2017; Rao et al.
  ICCV 2023). ``maps`` is ``(B, K, H, W)``, one attribution map per target
  class; ``masks`` is bool ``(B, K, H, W)`` or ``(B, 1, H, W)``, true where the
  object of that class is; ``valid`` (optional) is bool ``(B,)``, ``(B, K)`` or
  broadcastable to ``(B, K, H, W)`` and marks which samples / maps / pixels
  count. Ignored pixels are removed from every sum and maximum, so a loss sees
  each map restricted to its valid pixels. The reduction is the mean over the
  valid maps.
* **Segmentation losses** ``f(seg_logits, target, ignore_index=255)`` (Yu et
  al., "Model guidance via explanations turns image classifiers into
  segmentation models"). ``seg_logits`` is the ``(B, C + 1, H, W)`` stack of
  heatmaps with the background channel first; ``target`` is a ``(B, H, W)``
  label map with 0 = background and ``ignore_index`` for unlabelled pixels.

When nothing is valid every loss returns ``0`` still connected to the graph
(``maps.sum() * 0``), so ``loss.backward()`` works on any batch.

``LOSSES`` maps the names used on the command line to the functions; see its
comment for which calling convention each entry follows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255
"""Label value of unlabelled pixels in ``(B, H, W)`` label maps."""

LOG_FLOOR = -100.0
"""Lower bound of the logarithm in :func:`ppce_loss` (the floor ``torch.nn.BCELoss`` uses)."""

__all__ = [
    "IGNORE_INDEX",
    "LOSSES",
    "SEGMENTATION_LOSSES",
    "dice_loss",
    "energy_loss",
    "get_loss",
    "heatmap_cross_entropy",
    "l1_loss",
    "mask_bce_loss",
    "ppce_loss",
    "rrr_loss",
    "rrr_masked_loss",
    "rrr_star_loss",
]


# --------------------------------------------------------------------------- helpers


def _check_maps(maps: Tensor, name: str = "maps") -> None:
    if not isinstance(maps, Tensor) or maps.dim() != 4:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"{name}: expected a tensor of shape (B, K, H, W), got {shape}")
    if not maps.dtype.is_floating_point:
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {maps.dtype}")


def _broadcast_bool(x: Tensor, shape: torch.Size, name: str) -> Tensor:
    try:
        return x.expand(shape)
    except RuntimeError as error:
        raise ValueError(
            f"{name}: shape {tuple(x.shape)} does not broadcast to {tuple(shape)}"
        ) from error


def _region(masks: Tensor, shape: torch.Size, device: torch.device) -> Tensor:
    """``masks`` as a bool tensor of exactly ``shape`` (``(B, K, H, W)``)."""
    if not isinstance(masks, Tensor) or masks.dim() != 4:
        got = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"masks: expected (B, K, H, W) or (B, 1, H, W), got {got}")
    return _broadcast_bool(masks.to(device) != 0, shape, "masks")


def _pixel_validity(valid: Tensor | None, shape: torch.Size, device: torch.device) -> Tensor:
    """``valid`` as a bool tensor of exactly ``shape``; all true when ``valid`` is None.

    Accepts ``(B,)`` (samples), ``(B, K)`` (maps) or a 4-D tensor broadcastable
    to ``shape`` (pixels).
    """
    if valid is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    valid = valid.to(device) != 0
    if valid.dim() == 1:
        valid = valid[:, None, None, None]
    elif valid.dim() == 2:
        valid = valid[:, :, None, None]
    elif valid.dim() != 4:
        raise ValueError(
            f"valid: expected (B,), (B, K) or a 4-D tensor broadcastable to {tuple(shape)}, "
            f"got {tuple(valid.shape)}"
        )
    return _broadcast_bool(valid, shape, "valid")


def _mean_over(per_map: Tensor, counts: Tensor, anchor: Tensor) -> Tensor:
    """Mean of ``per_map`` where ``counts`` is true; ``anchor.sum() * 0`` when none is."""
    if not bool(counts.any()):
        return anchor.sum() * 0
    return per_map[counts].mean()


def _safe(denominator: Tensor) -> Tensor:
    """``denominator`` with zeros replaced by ones (keeps NaN out of forward and backward)."""
    return torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def _normalised(maps: Tensor, pixel_valid: Tensor, positive_only: bool = True) -> Tensor:
    """Per-map normalisation to ``[0, 1]`` (or ``[-1, 1]``) over the valid pixels.

    ``A^+ / max(A^+)`` when ``positive_only``, else ``A / max|A|``; a map whose
    maximum is 0 stays 0. Invalid pixels are set to 0.
    """
    values = maps.clamp(min=0) if positive_only else maps
    values = values * pixel_valid
    scale = values.abs().amax(dim=(2, 3), keepdim=True)
    return values / _safe(scale)


# --------------------------------------------------------------------------- guidance losses


def rrr_loss(input_grads: Tensor, irrelevant: Tensor, valid: Tensor | None = None) -> Tensor:
    r"""Right-for-the-right-reasons penalty on input gradients (Ross et al. 2017).

    .. math::

        L = \frac{1}{|N|} \sum_{n \in N} \sum_{c,h,w} \bigl(A_{nchw}\,
            \partial_{x_{nchw}} \textstyle\sum_k \log \hat p_{nk}\bigr)^2

    with :math:`A` the *irrelevant* region (1 where the model should not look)
    and :math:`N` the valid samples. The caller supplies the gradient map
    :math:`\partial_x \sum_k \log \hat p_k` (computed with ``create_graph=True``).

    Source: A. S. Ross, M. C. Hughes, F. Doshi-Velez, "Right for the Right
    Reasons: Training Differentiable Models by Constraining their
    Explanations", IJCAI 2017, Eq. 1 (the "right reasons" term; the
    cross-entropy and weight-decay terms are left to the caller).

    Args:
        input_grads: ``(B, C, H, W)`` gradient of the summed log-probabilities w.r.t. the input.
        irrelevant: bool, broadcastable to ``input_grads``; true where the gradient is penalised.
        valid: optional ``(B,)`` or broadcastable bool; false samples / pixels do not count.

    Returns:
        Scalar: sum over the region, mean over valid samples (0 if none is valid).
    """
    _check_maps(input_grads, "input_grads")
    shape, device = input_grads.shape, input_grads.device
    region = _region(irrelevant, shape, device) & _pixel_validity(valid, shape, device)
    per_sample = (input_grads.square() * region).sum(dim=(1, 2, 3))
    sample_valid = _pixel_validity(valid, shape, device).flatten(1).any(dim=1)
    return _mean_over(per_sample, sample_valid, input_grads)


def rrr_masked_loss(input_grads: Tensor, masks: Tensor, valid: Tensor | None = None) -> Tensor:
    """:func:`rrr_loss` with the object-mask convention of the other guidance losses.

    The irrelevant region is the complement of the union of ``masks`` over
    classes: ``irrelevant = ~masks.any(dim=1)``. ``valid`` of shape ``(B, K)``
    or ``(B, K, H, W)`` is reduced the same way (a sample / pixel counts if it
    counts for any class). Formula and source as :func:`rrr_loss`.

    Args:
        input_grads: ``(B, C, H, W)`` gradient of the summed log-probabilities w.r.t. the input.
        masks: bool ``(B, K, H, W)`` or ``(B, 1, H, W)``, true on the objects.
        valid: optional ``(B,)``, ``(B, K)`` or 4-D bool.
    """
    if not isinstance(masks, Tensor) or masks.dim() != 4:
        raise ValueError("masks: expected a 4-D bool tensor (B, K, H, W) or (B, 1, H, W)")
    irrelevant = ~(masks != 0).any(dim=1, keepdim=True)
    if valid is not None and valid.dim() in (2, 4):
        valid = (valid != 0).any(dim=1, keepdim=valid.dim() == 4)
    return rrr_loss(input_grads, irrelevant, valid)


def rrr_star_loss(
    maps: Tensor,
    masks: Tensor,
    valid: Tensor | None = None,
    positive_only: bool = True,
) -> Tensor:
    r"""RRR* localisation loss of Rao et al. (ICCV 2023).

    .. math::

        L_k = \sum_{h,w} (1 - M_k) \odot \hat A_k^2, \qquad
        \hat A_k = \frac{A_k^+}{\max_{h,w} A_k^+}

    averaged over the valid maps. :math:`\hat A_k` is the positive part of the
    attribution normalised by its maximum (a map whose maximum is 0 stays 0);
    only attributions *outside* the mask are penalised, nothing is demanded
    inside it.

    Source: S. Rao, M. Böhle, A. Parchami-Araghi, B. Schiele, "Studying How to
    Efficiently and Effectively Guide Models with Explanations", ICCV 2023,
    Sec. 3.3 ("RRR*"), which generalises Ross et al.'s input-gradient RRR to any
    attribution method. By default only positive attributions are penalised
    (``positive_only=True``: evidence *for* the class outside the mask); the authors' released code squares
    the signed normalised map ``A / max|A|``, which ``positive_only=False`` gives.

    Args:
        maps: ``(B, K, H, W)`` attributions.
        masks: bool, broadcastable to ``maps``; true on the object of that class.
        valid: optional ``(B,)``, ``(B, K)`` or broadcastable bool.
        positive_only: penalise only positive attributions (default) or both signs.
    """
    _check_maps(maps)
    pixel_valid = _pixel_validity(valid, maps.shape, maps.device)
    outside = ~_region(masks, maps.shape, maps.device) & pixel_valid
    normalised = _normalised(maps, pixel_valid, positive_only)
    per_map = (normalised.square() * outside).sum(dim=(2, 3))
    return _mean_over(per_map, pixel_valid.any(dim=(2, 3)), maps)


def energy_loss(
    maps: Tensor, masks: Tensor, valid: Tensor | None = None, eps: float = 1e-8
) -> Tensor:
    r"""Energy loss of Rao et al. (ICCV 2023): one minus the energy pointing game.

    .. math::

        L_k = 1 - \frac{\sum_{h,w} M_k \odot A_k^+}{\sum_{h,w} A_k^+ + \epsilon}

    averaged over the valid maps. Only positive attribution counts; it is
    minimised by moving all positive attribution inside the mask, with no
    constraint on how it is distributed there. A map without positive
    attribution gives ``L = 1`` (and no gradient through the ratio).

    Source: Rao et al., "Studying How to Efficiently and Effectively Guide
    Models with Explanations", ICCV 2023, Sec. 3.3 ("Energy loss", built on the
    EPG score of Wang et al., Score-CAM, CVPRW 2020). The paper writes
    :math:`-\mathrm{EPG}`; the constant 1 only shifts the value.

    Args:
        maps: ``(B, K, H, W)`` attributions.
        masks: bool, broadcastable to ``maps``.
        valid: optional ``(B,)``, ``(B, K)`` or broadcastable bool.
        eps: added to the denominator.
    """
    _check_maps(maps)
    pixel_valid = _pixel_validity(valid, maps.shape, maps.device)
    inside = _region(masks, maps.shape, maps.device) & pixel_valid
    positive = maps.clamp(min=0)
    energy_inside = (positive * inside).sum(dim=(2, 3))
    energy_total = (positive * pixel_valid).sum(dim=(2, 3))
    per_map = 1 - energy_inside / (energy_total + eps)
    return _mean_over(per_map, pixel_valid.any(dim=(2, 3)), maps)


def l1_loss(maps: Tensor, masks: Tensor, valid: Tensor | None = None) -> Tensor:
    r"""L1 localisation loss of Rao et al. (ICCV 2023).

    .. math::

        L_k = \frac{1}{|V_k|} \sum_{(h,w) \in V_k} \bigl| M_{k,hw} - \hat A_{k,hw} \bigr|,
        \qquad \hat A_k = \frac{A_k^+}{\max_{h,w} A_k^+}

    averaged over the valid maps (:math:`V_k` = valid pixels of map k). Outside
    the mask this is the L1 norm of the normalised positive attributions;
    inside it pulls every pixel towards 1 (the "uniformity prior" the paper
    discusses), so it is not only an outside-the-mask penalty.

    Source: Rao et al., "Studying How to Efficiently and Effectively Guide
    Models with Explanations", ICCV 2023, Sec. 3.3 ("L1 loss", after Gao et
    al.'s GRADIA). Normalisation as in the authors' code: positive part divided
    by the per-map maximum, mean over all pixels.

    Args:
        maps: ``(B, K, H, W)`` attributions.
        masks: bool, broadcastable to ``maps``.
        valid: optional ``(B,)``, ``(B, K)`` or broadcastable bool.
    """
    _check_maps(maps)
    pixel_valid = _pixel_validity(valid, maps.shape, maps.device)
    target = _region(masks, maps.shape, maps.device).to(maps.dtype)
    normalised = _normalised(maps, pixel_valid)
    count = pixel_valid.sum(dim=(2, 3))
    per_map = ((target - normalised).abs() * pixel_valid).sum(dim=(2, 3)) / _safe(count)
    return _mean_over(per_map, count > 0, maps)


def ppce_loss(maps: Tensor, masks: Tensor, valid: Tensor | None = None) -> Tensor:
    r"""Per-pixel cross-entropy (PPCE) loss of Rao et al. (ICCV 2023).

    .. math::

        L_k = -\frac{1}{\|M_k\|_1} \sum_{h,w} M_k \odot \log \hat A_k,
        \qquad \hat A_k = \frac{A_k^+}{\max_{h,w} A_k^+}

    i.e. binary cross-entropy with target 1 on the mask pixels only, averaged
    over the maps that have at least one valid mask pixel (the loss is
    undefined on an empty mask). No sigmoid is applied: the normalised positive
    attribution is used directly as the probability, and
    :math:`\log \hat A` is floored at ``LOG_FLOOR = -100`` (as
    ``torch.nn.BCELoss`` does) so that pixels with zero attribution give a
    finite value (and no gradient).

    Source: Rao et al., "Studying How to Efficiently and Effectively Guide
    Models with Explanations", ICCV 2023, Sec. 3.3 ("PPCE loss", after Shen et
    al. 2021); normalisation as in the authors' code.

    Args:
        maps: ``(B, K, H, W)`` attributions.
        masks: bool, broadcastable to ``maps``.
        valid: optional ``(B,)``, ``(B, K)`` or broadcastable bool.
    """
    _check_maps(maps)
    pixel_valid = _pixel_validity(valid, maps.shape, maps.device)
    inside = _region(masks, maps.shape, maps.device) & pixel_valid
    normalised = _normalised(maps, pixel_valid)
    positive = normalised > 0
    log_prob = torch.where(
        positive, torch.log(torch.where(positive, normalised, 1.0)), LOG_FLOOR
    ).clamp(min=LOG_FLOOR)
    count = inside.sum(dim=(2, 3))
    per_map = -(log_prob * inside).sum(dim=(2, 3)) / _safe(count)
    return _mean_over(per_map, count > 0, maps)


# --------------------------------------------------------------------------- segmentation losses


def _check_segmentation(seg_logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """Validate shapes and label values; return the bool map of labelled pixels."""
    _check_maps(seg_logits, "seg_logits")
    if not isinstance(target, Tensor) or target.dim() != 3:
        raise ValueError("target: expected a (B, H, W) label map")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target: expected an integer label map, got dtype {target.dtype}")
    batch, channels, height, width = seg_logits.shape
    if tuple(target.shape) != (batch, height, width):
        raise ValueError(
            f"target: shape {tuple(target.shape)} does not match seg_logits "
            f"{tuple(seg_logits.shape)} (expected {(batch, height, width)})"
        )
    labelled = target != ignore_index
    labels = target[labelled]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= channels):
        raise ValueError(
            f"target: labels must lie in [0, {channels - 1}] or equal ignore_index="
            f"{ignore_index}; found values in [{int(labels.min())}, {int(labels.max())}]"
        )
    return labelled


def heatmap_cross_entropy(
    seg_logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    r"""Cross-entropy with the stack of heatmaps used as segmentation logits.

    .. math::

        L = -\frac{1}{|P|} \sum_{(n,h,w) \in P}
            \log \frac{\exp R_{n, y_{nhw}, hw}}{\sum_{c=0}^{C} \exp R_{n,c,hw}}

    with :math:`R_0` the background channel, :math:`R_c` the heatmap of class
    c, and :math:`P` the labelled pixels (``target != ignore_index``). Equal to
    ``F.cross_entropy(seg_logits, target, ignore_index=ignore_index)`` whenever
    some pixel is labelled; 0 (connected to the graph) otherwise, where the
    PyTorch function would return NaN.

    Source: Yu, Franzen, Samek, Höhne, Kainmueller, "Model guidance via
    explanations turns image classifiers into segmentation models" (the
    heatmaps of all classes plus a background heatmap used as logits under
    cross-entropy, unlabelled pixels ignored).

    Args:
        seg_logits: ``(B, C + 1, H, W)``, background channel first.
        target: ``(B, H, W)`` integer labels, 0 = background.
        ignore_index: label of unlabelled pixels.
    """
    labelled = _check_segmentation(seg_logits, target, ignore_index)
    if not bool(labelled.any()):
        return seg_logits.sum() * 0
    return F.cross_entropy(seg_logits, target.long(), ignore_index=ignore_index)


def dice_loss(
    seg_logits: Tensor,
    target: Tensor,
    ignore_index: int = IGNORE_INDEX,
    smooth: float = 1.0,
) -> Tensor:
    r"""Soft multi-class Dice loss on softmax probabilities over labelled pixels.

    .. math::

        L = 1 - \frac{1}{C + 1} \sum_{c=0}^{C}
            \frac{2 \sum_{p \in P} s_{c,p}\, y_{c,p} + \text{smooth}}
                 {\sum_{p \in P} s_{c,p} + \sum_{p \in P} y_{c,p} + \text{smooth}}

    with :math:`s = \mathrm{softmax}(R)` over the channel axis, :math:`y` the
    one-hot labels and :math:`P` the labelled pixels of the whole batch (sums
    run over samples and pixels together). All :math:`C + 1` classes count,
    including those absent from the batch (their term rewards low probability).

    Source: Milletari, Navab, Ahmadi, "V-Net", 3DV 2016, Eq. 1 (soft Dice),
    in the common variant with plain (not squared) sums in the denominator and
    additive smoothing, as in segmentation-models-pytorch's ``DiceLoss``.

    Args:
        seg_logits: ``(B, C + 1, H, W)``, background channel first.
        target: ``(B, H, W)`` integer labels, 0 = background.
        ignore_index: label of unlabelled pixels.
        smooth: additive smoothing of numerator and denominator.
    """
    labelled = _check_segmentation(seg_logits, target, ignore_index)
    if not bool(labelled.any()):
        return seg_logits.sum() * 0
    num_channels = seg_logits.shape[1]
    weight = labelled.unsqueeze(1).to(seg_logits.dtype)
    probs = seg_logits.softmax(dim=1) * weight
    labels = torch.where(labelled, target, torch.zeros_like(target)).long()
    one_hot = F.one_hot(labels, num_channels).permute(0, 3, 1, 2).to(seg_logits.dtype) * weight
    intersection = (probs * one_hot).sum(dim=(0, 2, 3))
    denominator = probs.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return 1 - dice.mean()


def mask_bce_loss(maps: Tensor, masks: Tensor, valid: Tensor | None = None) -> Tensor:
    r"""Binary cross-entropy of every class's mask against that class's pixels.

    .. math::

        L_k = -\frac{1}{|V_k|} \sum_{(h,w) \in V_k} \bigl( M_{k,hw} \log s_{k,hw}
              + (1 - M_{k,hw}) \log (1 - s_{k,hw}) \bigr)

    averaged over the valid maps, with :math:`s_k \in [0, 1]` the mask of class
    k (an Explainer's sigmoid mask) and :math:`M_k` the pixels of class k. Unlike
    the other guidance losses it is meant for *every* class of a pixel-labelled
    image, absent ones included (``every_class``): an absent class's target is
    all zeros, and a present class's mask is pushed off the items of the other
    classes, which is what makes masks class-specific. The per-pixel binary
    cross-entropy is the standard one (e.g. Long et al.'s FCN with sigmoid
    outputs); applying it to every class of the Explainer is our construction.
    ``log`` arguments are clamped to ``[1e-6, 1]``.

    Args:
        maps: ``(B, K, H, W)`` masks in ``[0, 1]``.
        masks: bool, broadcastable to ``maps``.
        valid: optional ``(B,)``, ``(B, K)`` or broadcastable bool.

    Raises:
        ValueError: maps outside ``[0, 1]`` (e.g. raw LRP maps: use another loss).
    """
    _check_maps(maps)
    if bool((maps.detach() < 0).any() or (maps.detach() > 1).any()):
        raise ValueError(
            "mask_bce_loss: maps must lie in [0, 1] (sigmoid masks, e.g. the Explainer's)"
        )
    pixel_valid = _pixel_validity(valid, maps.shape, maps.device)
    target = _region(masks, maps.shape, maps.device).to(maps.dtype)
    eps = 1e-6
    bce = -(target * maps.clamp_min(eps).log() + (1 - target) * (1 - maps).clamp_min(eps).log())
    count = pixel_valid.sum(dim=(2, 3))
    per_map = (bce * pixel_valid).sum(dim=(2, 3)) / _safe(count)
    return _mean_over(per_map, count > 0, maps)


mask_bce_loss.every_class = True  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- registry

LOSSES: dict[str, Callable[..., Tensor]] = {
    # (seg_logits (B, C+1, H, W), target (B, H, W), ignore_index=255)
    "ce": heatmap_cross_entropy,
    "dice": dice_loss,
    # (maps (B, K, H, W), masks, valid=None); for "rrr" the maps are input
    # gradients and the penalised region is outside the union of the masks.
    "rrr": rrr_masked_loss,
    "rrr_star": rrr_star_loss,
    "energy": energy_loss,
    "l1": l1_loss,
    "ppce": ppce_loss,
    # every class's mask, absent classes included (masks in [0, 1]: the Explainer's)
    "bce": mask_bce_loss,
}
"""Loss functions by command-line name.

``"ce"`` and ``"dice"`` take ``(seg_logits, target, ignore_index=255)``; all
others take ``(maps, masks, valid=None)`` (``"rrr"`` expects input gradients
as ``maps``; see :func:`rrr_masked_loss`). On the command line (``rrr.finetune
--loss rrr``) the maps are the backend's class maps, so there the squared
penalty of Ross et al. falls on those maps outside the masks (input gradients of
the class logits with ``--method saliency``), not on the gradient of the summed
log-probabilities; examples/04 uses the paper's form from Python.
"""

SEGMENTATION_LOSSES = frozenset({"ce", "dice"})
"""Names in :data:`LOSSES` that take ``(seg_logits, target)`` rather than ``(maps, masks, valid)``."""


def get_loss(name: str) -> Callable[..., Tensor]:
    """Look a loss up by name in :data:`LOSSES`.

    Raises:
        ValueError: for an unknown name; the message lists the valid names.
    """
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}"
        ) from None

"""Evaluation metrics for heatmaps and explanation masks.

Shapes: ``maps`` are ``(B, K, H, W)`` (one map per target class) unless a
function says otherwise; ``masks`` are bool ``(B, K, H, W)`` or
``(B, 1, H, W)``, true where the object of that class is. Per-map metrics
return ``(B, K)`` tensors, model-based metrics ``(B,)``; averaging over a data
set is left to the caller. Metrics are evaluation tools: they detach their
inputs and are not differentiable.

Two groups:

* localisation of attribution maps (signed, unbounded): :func:`pointing_game`,
  :func:`energy_pointing_game`, :func:`iou_at_threshold`, and the perturbation
  curves of :func:`deletion_insertion_auc`;
* agreement of ``[0, 1]`` masks with ground truth, as reported by Stalder et al.
  (NeurIPS 2022): :func:`mask_f1`, :func:`discrete_iou`, :func:`continuous_iou`,
  :func:`mask_auc`, :func:`saliency_metric`;
* class specificity of the maps of scenes with several items (does the map of a
  class pick its own item, or every item?): :func:`class_specificity`, summed over
  batches and finalised by :func:`summarise_class_specificity`, with the
  class-agnostic reference :func:`all_items_maps`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_auroc

__all__ = [
    "SPECIFICITY_SUMS",
    "all_items_maps",
    "class_specificity",
    "continuous_iou",
    "deletion_insertion_auc",
    "discrete_iou",
    "energy_pointing_game",
    "iou_at_threshold",
    "mask_auc",
    "mask_f1",
    "normalise_maps",
    "pointing_game",
    "saliency_metric",
    "summarise_class_specificity",
]

Normalisation = Literal["max", "minmax", "sigmoid"]
Activation = Literal["softmax", "sigmoid"]


# --------------------------------------------------------------------------- helpers


def _maps_and_masks(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Detached 4-D maps and bool masks expanded to the maps' shape."""
    if not isinstance(maps, Tensor) or maps.dim() != 4:
        raise ValueError(f"maps: expected (B, K, H, W), got {getattr(maps, 'shape', maps)}")
    if not isinstance(masks, Tensor) or masks.dim() != 4:
        raise ValueError(f"masks: expected (B, K, H, W) or (B, 1, H, W), got {masks!r:.60}")
    try:
        region = (masks.to(maps.device) != 0).expand(maps.shape)
    except RuntimeError as error:
        raise ValueError(
            f"masks: shape {tuple(masks.shape)} does not broadcast to {tuple(maps.shape)}"
        ) from error
    return maps.detach(), region


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, 0 where the denominator is 0."""
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, torch.zeros_like(numerator))


def _binary_iou(predicted: Tensor, truth: Tensor) -> Tensor:
    intersection = (predicted & truth).sum(dim=(-2, -1)).float()
    union = (predicted | truth).sum(dim=(-2, -1)).float()
    return _ratio(intersection, union)


def normalise_maps(maps: Tensor, how: Normalisation = "max") -> Tensor:
    r"""Rescale every map (over its last two dimensions) to ``[0, 1]``.

    * ``"max"``: :math:`A^+ / \max_{h,w} A^+` (negative evidence becomes 0;
      a map without positive values becomes all 0);
    * ``"minmax"``: :math:`(A - \min A) / (\max A - \min A)` (a constant map becomes 0);
    * ``"sigmoid"``: :math:`\sigma(A)` elementwise (no per-map statistics).

    Differentiable (no division by zero in forward or backward); works on any
    ``(..., H, W)`` tensor.

    Source: the ``"max"`` form is the normalisation used by Rao et al. (ICCV
    2023, Sec. 3.3) for the L1 / PPCE losses and the IoU metric; ``"minmax"``
    is the usual display normalisation.
    """
    if maps.dim() < 2:
        raise ValueError(f"maps: expected at least 2 dimensions (..., H, W), got {maps.dim()}")
    if how == "sigmoid":
        return torch.sigmoid(maps)
    if how == "max":
        positive = maps.clamp(min=0)
        scale = positive.amax(dim=(-2, -1), keepdim=True)
        return positive / torch.where(scale > 0, scale, torch.ones_like(scale))
    if how == "minmax":
        low = maps.amin(dim=(-2, -1), keepdim=True)
        span = maps.amax(dim=(-2, -1), keepdim=True) - low
        return (maps - low) / torch.where(span > 0, span, torch.ones_like(span))
    raise ValueError(f"how: expected 'max', 'minmax' or 'sigmoid', got {how!r}")


# --------------------------------------------------------------------------- localisation


def pointing_game(maps: Tensor, masks: Tensor, tolerance: float = 0) -> Tensor:
    r"""Pointing game: does the map's maximum fall on the object?

    .. math::

        \mathrm{hit}_{bk} = \exists (h, w) \in M_{bk}:\;
            \| (h, w) - \arg\max_{h', w'} A_{bk h' w'} \|_2 \le \text{tolerance}

    Source: J. Zhang et al., "Top-down Neural Attention by Excitation Backprop",
    ECCV 2016 / IJCV 2018, Sec. 5.1 (they use a 15-pixel tolerance; the
    accuracy over a data set is hits / (hits + misses)).

    Assumptions: higher values mean more relevant; the sign and scale of the
    map do not matter (only the position of its maximum); ties go to the first
    maximum in row-major order, so a constant map points at pixel (0, 0). A
    map with an empty mask is a miss.

    Args:
        maps: ``(B, K, H, W)``.
        masks: bool, broadcastable to ``maps``.
        tolerance: distance in pixels (Euclidean) within which a mask pixel still counts.

    Returns:
        ``(B, K)`` bool hits.
    """
    maps, region = _maps_and_masks(maps, masks)
    width = maps.shape[-1]
    flat_index = maps.flatten(2).argmax(dim=-1)
    if tolerance <= 0:
        return region.flatten(2).gather(-1, flat_index.unsqueeze(-1)).squeeze(-1)
    row = (flat_index // width)[..., None, None]
    col = (flat_index % width)[..., None, None]
    rows = torch.arange(maps.shape[-2], device=maps.device)[:, None]
    cols = torch.arange(width, device=maps.device)[None, :]
    near = (rows - row).square() + (cols - col).square() <= tolerance**2
    return (region & near).flatten(2).any(dim=-1)


def energy_pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    r"""Energy-based pointing game: share of positive attribution on the object.

    .. math::

        \mathrm{EPG}_{bk} = \frac{\sum_{h,w} M_{bk} \odot A_{bk}^+}{\sum_{h,w} A_{bk}^+}

    and 0 for a map without positive attribution (as in Rao et al.'s code).

    Source: H. Wang et al., "Score-CAM", CVPR Workshops 2020, Sec. 5.2
    ("energy-based pointing game"); used as metric and loss by Rao et al.,
    ICCV 2023.

    Assumptions: positive values are evidence for the class and negative
    values are ignored; the scale of the map does not matter; the value lies
    in ``[0, 1]``.

    Returns:
        ``(B, K)`` float.
    """
    maps, region = _maps_and_masks(maps, masks)
    positive = maps.clamp(min=0)
    return _ratio((positive * region).sum(dim=(2, 3)), positive.sum(dim=(2, 3)))


def iou_at_threshold(
    maps: Tensor,
    masks: Tensor,
    threshold: float = 0.5,
    normalise: Normalisation | None = "max",
) -> Tensor:
    r"""IoU of the binarised map with the mask.

    .. math::

        \mathrm{IoU}_{bk} = \frac{|\{\hat A_{bk} > t\} \cap M_{bk}|}
                                 {|\{\hat A_{bk} > t\} \cup M_{bk}|},
        \qquad \hat A = \mathrm{normalise}(A)

    with ``normalise="max"``: :math:`\hat A = A^+ / \max A^+`; 0 when the union is empty.

    Source: Rao et al., "Studying How to Efficiently and Effectively Guide
    Models with Explanations", ICCV 2023, Sec. 4 ("IoU" metric, threshold 0.5
    on the normalised positive attributions).

    Assumptions: higher values mean more relevant; with ``normalise="max"``
    negative values never count as on-object; with ``normalise=None`` the maps
    must already be on the threshold's scale (e.g. masks in ``[0, 1]``).

    Returns:
        ``(B, K)`` float.
    """
    maps, region = _maps_and_masks(maps, masks)
    scores = maps if normalise is None else normalise_maps(maps, normalise)
    return _binary_iou(scores > threshold, region)


# --------------------------------------------------------------------------- perturbation curves


def _class_log_probability(
    model: nn.Module, images: Tensor, target: Tensor, activation: Activation
) -> Tensor:
    """Log-probability of the target class(es) of each image.

    ``target`` is ``(N,)`` class indices or ``(N, C)`` multi-hot; for multi-hot
    targets the probabilities of the marked classes are summed.
    """
    logits = model(images)
    if activation == "softmax":
        log_probs = logits.log_softmax(dim=1)
    elif activation == "sigmoid":
        log_probs = F.logsigmoid(logits)
    else:
        raise ValueError(f"activation: expected 'softmax' or 'sigmoid', got {activation!r}")
    if target.dim() == 1:
        return log_probs.gather(1, target.long().unsqueeze(1)).squeeze(1)
    marked = torch.where(target != 0, log_probs, torch.full_like(log_probs, -math.inf))
    return marked.logsumexp(dim=1)


def _chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def deletion_insertion_auc(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    steps: int = 20,
    mode: Literal["deletion", "insertion"] = "deletion",
    baseline: float | Tensor = 0.0,
    batch_size: int = 64,
    activation: Activation = "softmax",
) -> Tensor:
    r"""Deletion / insertion curve and its area (RISE).

    Pixels are ranked by the map, most relevant first. At step
    :math:`i = 0, \dots, S` the top :math:`n_i = \mathrm{round}(i\,HW/S)` pixels
    are replaced by the baseline (deletion) or revealed on top of the baseline
    image (insertion), in all channels, and the classifier's probability
    :math:`p_i` of the target class is recorded. The score is the trapezoidal
    area over the revealed/removed fraction :math:`f_i = n_i / HW \in [0, 1]`:

    .. math::

        \mathrm{AUC} = \sum_{i=0}^{S-1} \tfrac{1}{2}(p_i + p_{i+1})(f_{i+1} - f_i)

    Lower is better for deletion, higher for insertion.

    Source: V. Petsiuk, A. Das, K. Saenko, "RISE: Randomized Input Sampling for
    Explanation of Black-box Models", BMVC 2018, Sec. 4.2 (they insert onto a
    blurred copy; pass it as ``baseline``).

    Assumptions: higher map values mean more relevant (signed maps are ranked
    as they are; pass ``maps.abs()`` to rank by magnitude); ties are broken by
    pixel order; ``baseline`` is in the model's input space (0 is black only
    for unnormalised inputs). The model is called under ``torch.no_grad()`` in
    whatever train/eval mode it is in, and its mode, flags and parameters are
    left as they are. Call ``model.eval()`` yourself first if it has dropout or
    BatchNorm: in train mode BatchNorm would also update its running statistics.

    Args:
        model: classifier returning logits ``(N, C)``.
        images: ``(B, C_in, H, W)``.
        maps: ``(B, H, W)`` or ``(B, 1, H, W)`` relevance per pixel.
        target: ``(B,)`` class indices (or ``(B, C)`` multi-hot: summed probabilities).
        steps: number of steps S.
        mode: ``"deletion"`` or ``"insertion"``.
        baseline: value or tensor broadcastable to ``images`` that replaces pixels.
        batch_size: images per forward pass.
        activation: ``"softmax"`` (single-label) or ``"sigmoid"`` (multi-label).

    Returns:
        ``(B,)`` areas under the curve.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode: expected 'deletion' or 'insertion', got {mode!r}")
    if steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps}")
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    maps, target = maps.detach().to(images.device), target.to(images.device)
    batch, _, height, width = images.shape
    if tuple(maps.shape) != (batch, height, width):
        raise ValueError(f"maps: expected shape {(batch, height, width)}, got {tuple(maps.shape)}")
    pixels = height * width
    counts = torch.tensor([round(i * pixels / steps) for i in range(steps + 1)], device=maps.device)
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(pixels, device=maps.device).expand(batch, -1))
    images = images.detach()
    replacement = torch.as_tensor(baseline, dtype=images.dtype, device=images.device)
    replacement = replacement.expand_as(images)

    log_probs = torch.empty((steps + 1) * batch, dtype=images.dtype, device=images.device)
    with torch.no_grad():
        for part in _chunks((steps + 1) * batch, batch_size):
            index = torch.arange(part.start, part.stop, device=images.device)
            step, sample = index // batch, index % batch
            chosen = (rank[sample] < counts[step].unsqueeze(1)).view(-1, 1, height, width)
            if mode == "deletion":
                perturbed = torch.where(chosen, replacement[sample], images[sample])
            else:
                perturbed = torch.where(chosen, images[sample], replacement[sample])
            log_probs[part] = _class_log_probability(model, perturbed, target[sample], activation)
    curve = log_probs.exp().view(steps + 1, batch)
    fractions = (counts.to(curve.dtype) / pixels).unsqueeze(1).expand_as(curve)
    return torch.trapezoid(curve, fractions, dim=0)


# --------------------------------------------------------------------------- mask metrics


def mask_f1(maps: Tensor, masks: Tensor, threshold: float = 0.5) -> Tensor:
    r"""F1 score of the binarised mask against the ground truth.

    .. math::

        F_1 = \frac{2\,TP}{2\,TP + FP + FN}, \qquad
        \text{prediction} = [m > t],\ \text{truth} = g

    counted over the pixels of each map; 0 when both prediction and truth are empty.

    Source: S. Stalder et al., "What You See is What You Classify: Black Box
    Attributions", NeurIPS 2022, Sec. 4 (F1 at threshold 0.5; their code
    also reports 0.25 / 0.75).

    Assumptions: maps are masks or normalised heatmaps in ``[0, 1]``, higher
    meaning "part of the object"; strict ``>`` at the threshold.

    Returns:
        ``(B, K)`` float.
    """
    maps, region = _maps_and_masks(maps, masks)
    predicted = maps > threshold
    true_pos = (predicted & region).sum(dim=(2, 3)).float()
    false_pos = (predicted & ~region).sum(dim=(2, 3)).float()
    false_neg = (~predicted & region).sum(dim=(2, 3)).float()
    return _ratio(2 * true_pos, 2 * true_pos + false_pos + false_neg)


def discrete_iou(maps: Tensor, masks: Tensor, threshold: float = 0.5) -> Tensor:
    r"""IoU of the mask binarised at ``threshold`` with the ground truth.

    .. math::

        \mathrm{IoU} = \frac{|[m > t] \cap g|}{|[m > t] \cup g|}

    (0 when the union is empty).

    Source: Stalder et al., NeurIPS 2022, Sec. 4 ("discrete IoU").

    Assumptions: maps in ``[0, 1]``, higher meaning "part of the object".

    Returns:
        ``(B, K)`` float.
    """
    maps, region = _maps_and_masks(maps, masks)
    return _binary_iou(maps > threshold, region)


def continuous_iou(maps: Tensor, masks: Tensor) -> Tensor:
    r"""Continuous IoU of a soft mask with the ground truth (no thresholding).

    .. math::

        \mathrm{cIoU} = \frac{\sum_{h,w} \min(m, g)}{\sum_{h,w} \max(m, g)}

    the Ruzicka similarity (one minus the Soergel distance); it equals the IoU
    when :math:`m` is binary. 0 when both are all zero.

    Source: Stalder et al., NeurIPS 2022, Sec. 4 ("continuous IoU"; the
    definition is the one in their evaluation code).

    Assumptions: maps in ``[0, 1]`` (values above 1 are not clipped and
    would inflate the denominator); higher means "part of the object".

    Returns:
        ``(B, K)`` float.
    """
    maps, region = _maps_and_masks(maps, masks)
    truth = region.to(maps.dtype)
    return _ratio(
        torch.minimum(maps, truth).sum(dim=(2, 3)), torch.maximum(maps, truth).sum(dim=(2, 3))
    )


def mask_auc(maps: Tensor, masks: Tensor) -> Tensor:
    r"""Area under the ROC curve of the pixel scores against the ground truth.

    .. math::

        \mathrm{AUC} = P(m_p > m_q) + \tfrac{1}{2} P(m_p = m_q),
        \quad p \in g,\ q \notin g

    (the probability that a random object pixel outscores a random background
    pixel). NaN when the mask is all true or all false (undefined).

    Source: Stalder et al., NeurIPS 2022, Sec. 4 ("AUC"); computed with
    ``torchmetrics.functional.classification.binary_auroc``.

    Assumptions: higher means "part of the object"; only the order of the
    values matters, so any monotone rescaling gives the same AUC.

    Returns:
        ``(B, K)`` float.
    """
    maps, region = _maps_and_masks(maps, masks)
    scores = maps.flatten(2).flatten(0, 1).float()
    labels = region.flatten(2).flatten(0, 1)
    result = torch.full((scores.shape[0],), math.nan, device=maps.device)
    for index in range(scores.shape[0]):
        positives = int(labels[index].sum())
        if 0 < positives < labels.shape[1]:
            result[index] = binary_auroc(scores[index], labels[index].long(), thresholds=None)
    return result.view(maps.shape[:2])


def _tight_box_crops(
    images: Tensor, selected: Tensor
) -> tuple[Tensor, Tensor]:  # (B, C, H, W), (B,) area fractions
    """Crop each image to the tight box around its selected pixels, resized back to (H, W).

    An image with nothing selected keeps the whole image (area fraction 1).
    """
    height, width = images.shape[-2:]
    crops, areas = [], []
    for image, chosen in zip(images, selected):
        rows = chosen.any(dim=1).nonzero().flatten()
        cols = chosen.any(dim=0).nonzero().flatten()
        if rows.numel() == 0:
            crops.append(image)
            areas.append(1.0)
            continue
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        box = image[:, top:bottom, left:right].unsqueeze(0)
        crops.append(
            F.interpolate(box, size=(height, width), mode="bilinear", align_corners=False)[0]
        )
        areas.append((bottom - top) * (right - left) / (height * width))
    return torch.stack(crops), torch.tensor(areas, dtype=images.dtype, device=images.device)


def saliency_metric(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    target: Tensor,
    variant: Literal["crop", "mask"] = "crop",
    threshold: float = 0.5,
    min_area: float = 0.05,
    activation: Activation = "softmax",
    batch_size: int = 64,
) -> Tensor:
    r"""Saliency metric of Dabkowski & Gal: small regions that keep the class score.

    .. math::

        s = \log \max(a, a_{\min}) - \log p

    Lower is better. Two variants:

    * ``"crop"`` (the original): :math:`a` is the area fraction of the tightest
      box around the pixels with :math:`m > t`, and :math:`p` the classifier's
      probability of the target on that box cropped out and resized (bilinear)
      to the full input size. If no pixel exceeds the threshold, the box is the
      whole image (:math:`a = 1`).
    * ``"mask"`` (Stalder et al.'s adaptation): :math:`a = \mathrm{mean}(m)` and
      :math:`p` is the probability on the masked image :math:`m \odot x`.

    Source: P. Dabkowski, Y. Gal, "Real Time Image Saliency for Black Box
    Classifiers", NeurIPS 2017, Sec. 5.1 (:math:`a_{\min} = 0.05`); adapted to
    soft masks by Stalder et al., NeurIPS 2022, Sec. 4.

    Assumptions: maps are masks in ``[0, 1]`` (higher = keep); the model
    returns logits; with multi-hot ``target`` the probabilities of the marked
    classes are summed (as Stalder et al. do). The model is called under
    ``torch.no_grad()`` in its current mode and is not changed.

    Args:
        model: classifier returning logits ``(N, C)``.
        images: ``(B, C_in, H, W)``.
        maps: ``(B, H, W)`` or ``(B, 1, H, W)``.
        target: ``(B,)`` class indices or ``(B, C)`` multi-hot.
        variant: ``"crop"`` or ``"mask"``.
        threshold: binarisation threshold of the ``"crop"`` variant.
        min_area: lower bound :math:`a_{\min}` of the area term.
        activation: ``"softmax"`` or ``"sigmoid"`` for the probability.
        batch_size: images per forward pass.

    Returns:
        ``(B,)`` float.
    """
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.shape != images.shape[:1] + images.shape[2:]:
        raise ValueError(
            f"maps: expected shape {tuple(images.shape[:1] + images.shape[2:])}, "
            f"got {tuple(maps.shape)}"
        )
    images, target = images.detach(), target.to(images.device)
    maps = maps.detach().to(images.device, images.dtype)
    if variant == "crop":
        inputs, areas = _tight_box_crops(images, maps > threshold)
    elif variant == "mask":
        inputs, areas = maps.unsqueeze(1) * images, maps.mean(dim=(1, 2))
    else:
        raise ValueError(f"variant: expected 'crop' or 'mask', got {variant!r}")
    log_probs = torch.empty(images.shape[0], dtype=images.dtype, device=images.device)
    with torch.no_grad():
        for part in _chunks(images.shape[0], batch_size):
            log_probs[part] = _class_log_probability(model, inputs[part], target[part], activation)
    return torch.log(areas.clamp(min=min_area)) - log_probs


# --------------------------------------------------------------------------- class specificity

#: the keys of :func:`class_specificity`'s sums, in order
SPECIFICITY_SUMS = ("own_sum", "other_sum", "pairs", "absent_sum", "absent_pairs")


def _present_classes(present: Tensor, shape: torch.Size) -> Tensor:
    """``(B, C)`` bool from bool or multi-hot labels (``> 0.5``), checked against the maps."""
    if not isinstance(present, Tensor) or tuple(present.shape) != tuple(shape[:2]):
        raise ValueError(
            f"present: expected (B, C) = {tuple(shape[:2])} labels, "
            f"got {tuple(getattr(present, 'shape', ())) or type(present).__name__}"
        )
    return present if present.dtype == torch.bool else present > 0.5


def class_specificity(maps: Tensor, masks: Tensor, present: Tensor) -> dict[str, Tensor]:
    r"""Sums of how much of each class's map lies on its own item and on the other items.

    For scene :math:`b` and class :math:`c` let :math:`M_{bc}` be the pixels of
    class :math:`c`'s items, :math:`I_b = \bigcup_d M_{bd}` all item pixels and
    :math:`O_{bc} = I_b \setminus M_{bc}` the pixels of the items of the other
    classes. With :math:`\bar A(R) = \frac{1}{|R|}\sum_{p \in R} A_{bc}(p)`,
    the mean of class :math:`c`'s map over a region:

    .. math::

        \mathrm{own}_{bc} = \bar A_{bc}(M_{bc}), \qquad
        \mathrm{other}_{bc} = \bar A_{bc}(O_{bc}), \qquad
        \mathrm{absent}_{ba} = \bar A_{ba}(I_b)

    over the *pairs* :math:`P = \{(b, c): y_{bc} = 1,\ |M_{bc}| > 0,\
    |O_{bc}| > 0\}` (a present class whose scene also holds an item of another
    class) and the *absent pairs* :math:`Q = \{(b, a): y_{ba} = 0,\ |I_b| > 0\}`.
    Returned are the sums :math:`\sum_P \mathrm{own}`, :math:`\sum_P
    \mathrm{other}`, :math:`|P|`, :math:`\sum_Q \mathrm{absent}` and
    :math:`|Q|` (keys :data:`SPECIFICITY_SUMS`), so that batches can be added up;
    :func:`summarise_class_specificity` turns them into the means and the ratio
    :math:`\overline{\mathrm{own}} / \overline{\mathrm{other}}`. Every pair
    weighs the same, whatever the size of its items.

    A map that paints every item of the scene (a class-agnostic "where are the
    items" mask, :func:`all_items_maps`) has own = other, ratio 1; a perfectly
    class-specific map has other = 0.

    Source: not a metric from the literature; it measures the
    "class-discriminative" property of maps (R. R. Selvaraju et al.,
    "Grad-CAM", ICCV 2017) on scenes whose items are labelled per pixel.

    Assumptions: maps in ``[0, 1]`` (masks as they are, attribution maps
    normalised first, e.g. :func:`normalise_maps` ``how="max"``), higher meaning
    "this class is here"; one map per class, channel ``c`` of ``maps``, ``masks``
    and ``present`` being the same class; ``present`` are the image-level labels
    and agree with ``masks`` (a present class without pixels forms no pair; the
    pixels of a class not marked present still count as item pixels). Pixels in
    no mask (background, unlabelled) are ignored. Overlapping masks are allowed:
    a pixel of :math:`M_{bc}` is never in :math:`O_{bc}`.

    Args:
        maps: ``(B, C, H, W)``.
        masks: bool ``(B, C, H, W)`` (not broadcast), true on the items of class ``c``
            (e.g. :func:`heatmaps.labels.class_masks` of a label map).
        present: ``(B, C)`` bool or multi-hot image-level labels (``> 0.5`` is present).

    Returns:
        dict of 0-dim float64 tensors on the maps' device, keys :data:`SPECIFICITY_SUMS`.
    """
    if isinstance(masks, Tensor) and isinstance(maps, Tensor) and masks.shape != maps.shape:
        raise ValueError(
            f"masks: expected one mask per map, shape {tuple(maps.shape)}, got {tuple(masks.shape)}"
        )
    maps, region = _maps_and_masks(maps, masks)
    present = _present_classes(present, maps.shape).to(maps.device)
    maps = maps.double()
    items = region.any(dim=1, keepdim=True)
    others = items & ~region
    own_count = region.sum(dim=(2, 3))
    other_count = others.sum(dim=(2, 3))
    item_count = items.sum(dim=(2, 3)).expand_as(own_count)
    own = _ratio((maps * region).sum(dim=(2, 3)), own_count.double())
    other = _ratio((maps * others).sum(dim=(2, 3)), other_count.double())
    absent = _ratio((maps * items).sum(dim=(2, 3)), item_count.double())
    pairs = present & (own_count > 0) & (other_count > 0)
    absent_pairs = ~present & (item_count > 0)
    return {
        "own_sum": own[pairs].sum(),
        "other_sum": other[pairs].sum(),
        "pairs": pairs.sum().double(),
        "absent_sum": absent[absent_pairs].sum(),
        "absent_pairs": absent_pairs.sum().double(),
    }


def summarise_class_specificity(*sums: dict[str, Tensor]) -> dict[str, Tensor]:
    r"""Means and ratio from one or more :func:`class_specificity` results (e.g. one per batch).

    .. math::

        \overline{\mathrm{own}} = \frac{\sum_P \mathrm{own}}{|P|}, \quad
        \overline{\mathrm{other}} = \frac{\sum_P \mathrm{other}}{|P|}, \quad
        \mathrm{ratio} = \frac{\overline{\mathrm{own}}}{\overline{\mathrm{other}}}, \quad
        \overline{\mathrm{absent}} = \frac{\sum_Q \mathrm{absent}}{|Q|}

    (the ratio of the means, not the mean of per-pair ratios).

    Assumptions: the sums come from :func:`class_specificity` and are simply
    added up. Undefined values follow IEEE division: no pair gives ``nan`` for
    own, other and ratio; other = 0 gives ratio ``inf`` (``nan`` if own is 0
    too); no absent pair gives ``nan`` absent.

    Returns:
        dict of 0-dim float64 tensors ``own``, ``other``, ``ratio``, ``absent``,
        ``pairs`` (:math:`|P|`) and ``absent_pairs`` (:math:`|Q|`).
    """
    if not sums:
        raise ValueError("summarise_class_specificity: expected at least one result")
    total = {
        key: torch.stack([torch.as_tensor(part[key]).double().cpu() for part in sums]).sum()
        for key in SPECIFICITY_SUMS
    }
    own = total["own_sum"] / total["pairs"]
    other = total["other_sum"] / total["pairs"]
    return {
        "own": own,
        "other": other,
        "ratio": own / other,
        "absent": total["absent_sum"] / total["absent_pairs"],
        "pairs": total["pairs"],
        "absent_pairs": total["absent_pairs"],
    }


def all_items_maps(masks: Tensor, present: Tensor) -> Tensor:
    r"""The class-agnostic reference: every item of the scene as the map of every present class.

    .. math::

        R_{bc} = y_{bc} \cdot [\textstyle\bigcup_d M_{bd}]

    i.e. a map that knows which classes are in the scene and where the items
    are, but not which item is which. Under :func:`class_specificity` it has
    own = other = 1, ratio 1 and absent 0 by construction; under
    :func:`continuous_iou` it scores what "where the items are" alone is worth.

    Args:
        masks: bool ``(B, C, H, W)``, true on the items of class ``c``.
        present: ``(B, C)`` bool or multi-hot image-level labels.

    Returns:
        ``(B, C, H, W)`` float32 maps with values 0 and 1.
    """
    if not isinstance(masks, Tensor) or masks.dim() != 4:
        raise ValueError(f"masks: expected (B, C, H, W), got {getattr(masks, 'shape', masks)}")
    present = _present_classes(present, masks.shape).to(masks.device)
    items = (masks != 0).any(dim=1, keepdim=True)
    return (items & present[:, :, None, None]).float()

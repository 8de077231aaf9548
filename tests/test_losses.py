"""rrr.losses against slow textbook implementations written with explicit loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from rrr.losses import (
    IGNORE_INDEX,
    LOSSES,
    SEGMENTATION_LOSSES,
    dice_loss,
    energy_loss,
    get_loss,
    heatmap_cross_entropy,
    l1_loss,
    mask_bce_loss,
    ppce_loss,
    rrr_loss,
    rrr_masked_loss,
    rrr_star_loss,
)

GUIDANCE_LOSSES = [rrr_star_loss, energy_loss, l1_loss, ppce_loss]

# ----------------------------------------------------------------- textbook versions
# Each works on nested Python loops over samples b, maps k and pixels (i, j) of
# float64 tensors, with `valid` already expanded to (B, K, H, W).


def _pixels(maps):
    _, _, height, width = maps.shape
    return [(i, j) for i in range(height) for j in range(width)]


def _normalised_value(maps, valid, b, k, i, j, positive_only=True):
    def value(a):
        return max(a, 0.0) if positive_only else a

    scale = max(
        [abs(value(float(maps[b, k, y, x]))) for y, x in _pixels(maps) if valid[b, k, y, x]]
        or [0.0]
    )
    raw = value(float(maps[b, k, i, j]))
    return raw / scale if scale > 0 else raw


def _mean(values):
    return sum(values) / len(values) if values else 0.0


def slow_rrr_star(maps, masks, valid, positive_only=True):
    per_map = []
    for b in range(maps.shape[0]):
        for k in range(maps.shape[1]):
            pixels = [(i, j) for i, j in _pixels(maps) if valid[b, k, i, j]]
            if not pixels:
                continue
            total = 0.0
            for i, j in pixels:
                if not masks[b, k, i, j]:
                    total += _normalised_value(maps, valid, b, k, i, j, positive_only) ** 2
            per_map.append(total)
    return _mean(per_map)


def slow_energy(maps, masks, valid, eps=1e-8):
    per_map = []
    for b in range(maps.shape[0]):
        for k in range(maps.shape[1]):
            pixels = [(i, j) for i, j in _pixels(maps) if valid[b, k, i, j]]
            if not pixels:
                continue
            inside = sum(max(float(maps[b, k, i, j]), 0.0) for i, j in pixels if masks[b, k, i, j])
            total = sum(max(float(maps[b, k, i, j]), 0.0) for i, j in pixels)
            per_map.append(1 - inside / (total + eps))
    return _mean(per_map)


def slow_l1(maps, masks, valid):
    per_map = []
    for b in range(maps.shape[0]):
        for k in range(maps.shape[1]):
            pixels = [(i, j) for i, j in _pixels(maps) if valid[b, k, i, j]]
            if not pixels:
                continue
            errors = [
                abs(float(masks[b, k, i, j]) - _normalised_value(maps, valid, b, k, i, j))
                for i, j in pixels
            ]
            per_map.append(_mean(errors))
    return _mean(per_map)


def slow_ppce(maps, masks, valid):
    per_map = []
    for b in range(maps.shape[0]):
        for k in range(maps.shape[1]):
            pixels = [(i, j) for i, j in _pixels(maps) if valid[b, k, i, j] and masks[b, k, i, j]]
            if not pixels:
                continue
            terms = []
            for i, j in pixels:
                p = _normalised_value(maps, valid, b, k, i, j)
                terms.append(-max(math.log(p), -100.0) if p > 0 else 100.0)
            per_map.append(_mean(terms))
    return _mean(per_map)


def slow_rrr(grads, irrelevant, sample_valid):
    per_sample = []
    for b in range(grads.shape[0]):
        if not sample_valid[b]:
            continue
        total = 0.0
        for c in range(grads.shape[1]):
            for i, j in _pixels(grads):
                if irrelevant[b, 0, i, j]:
                    total += float(grads[b, c, i, j]) ** 2
        per_sample.append(total)
    return _mean(per_sample)


def slow_cross_entropy(logits, target, ignore_index=IGNORE_INDEX):
    terms = []
    for b in range(logits.shape[0]):
        for i, j in _pixels(logits):
            label = int(target[b, i, j])
            if label == ignore_index:
                continue
            scores = [float(logits[b, c, i, j]) for c in range(logits.shape[1])]
            log_norm = math.log(sum(math.exp(s) for s in scores))
            terms.append(log_norm - scores[label])
    return _mean(terms)


def slow_dice(logits, target, ignore_index=IGNORE_INDEX, smooth=1.0):
    channels = logits.shape[1]
    dices = []
    for c in range(channels):
        intersection = prob_sum = label_sum = 0.0
        for b in range(logits.shape[0]):
            for i, j in _pixels(logits):
                label = int(target[b, i, j])
                if label == ignore_index:
                    continue
                scores = [float(logits[b, q, i, j]) for q in range(channels)]
                norm = sum(math.exp(s) for s in scores)
                p = math.exp(scores[c]) / norm
                y = 1.0 if label == c else 0.0
                intersection += p * y
                prob_sum += p
                label_sum += y
        dices.append((2 * intersection + smooth) / (prob_sum + label_sum + smooth))
    return 1 - _mean(dices)


SLOW = {
    rrr_star_loss: slow_rrr_star,
    energy_loss: slow_energy,
    l1_loss: slow_l1,
    ppce_loss: slow_ppce,
}

# ----------------------------------------------------------------- inputs


def random_case(seed, batch=2, classes=3, size=4, valid_kind="pixels"):
    gen = torch.Generator().manual_seed(seed)
    maps = torch.randn(batch, classes, size, size, generator=gen, dtype=torch.float64)
    masks = torch.rand(batch, classes, size, size, generator=gen) > 0.5
    if valid_kind == "none":
        valid = None
    elif valid_kind == "maps":
        valid = torch.rand(batch, classes, generator=gen) > 0.3
    else:
        valid = torch.rand(batch, classes, size, size, generator=gen) > 0.2
    return maps, masks, valid


def expanded(valid, shape):
    if valid is None:
        return torch.ones(shape, dtype=torch.bool)
    if valid.dim() == 2:
        valid = valid[:, :, None, None]
    return valid.expand(shape)


# ----------------------------------------------------------------- guidance losses


@pytest.mark.parametrize("loss", GUIDANCE_LOSSES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("valid_kind", ["none", "maps", "pixels"])
def test_guidance_loss_matches_textbook(loss, valid_kind):
    maps, masks, valid = random_case(seed=3, valid_kind=valid_kind)
    expected = SLOW[loss](maps, masks, expanded(valid, maps.shape))
    assert loss(maps, masks, valid).item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(1, 3),
    classes=st.integers(1, 3),
    size=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    broadcast_mask=st.booleans(),
)
def test_guidance_losses_match_textbook_on_random_shapes(
    batch, classes, size, seed, broadcast_mask
):
    maps, masks, valid = random_case(seed, batch, classes, size)
    if broadcast_mask:
        masks = masks[:, :1]
    full_masks = masks.expand(maps.shape)
    full_valid = expanded(valid, maps.shape)
    for loss in GUIDANCE_LOSSES:
        expected = SLOW[loss](maps, full_masks, full_valid)
        assert loss(maps, masks, valid).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_rrr_star_signed_variant_matches_textbook():
    maps, masks, valid = random_case(seed=5)
    expected = slow_rrr_star(maps, masks, expanded(valid, maps.shape), positive_only=False)
    got = rrr_star_loss(maps, masks, valid, positive_only=False)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_rrr_star_ignores_negative_attributions_and_inside():
    maps = torch.tensor([[[[2.0, -5.0], [1.0, 0.5]]]])
    masks = torch.tensor([[[[True, False], [False, True]]]])
    # normalised positive map [[1, 0], [0.5, 0.25]]; outside pixels: 0 and 0.5
    assert rrr_star_loss(maps, masks).item() == pytest.approx(0.25)


def test_energy_loss_hand_computed():
    maps = torch.tensor([[[[3.0, -1.0], [1.0, 0.0]]]])
    masks = torch.tensor([[[[True, True], [False, False]]]])
    assert energy_loss(maps, masks, eps=0.0).item() == pytest.approx(1 - 3 / 4)


def test_l1_loss_hand_computed():
    maps = torch.tensor([[[[4.0, 2.0], [-1.0, 1.0]]]])
    masks = torch.tensor([[[[True, False], [True, False]]]])
    # normalised [[1, .5], [0, .25]]; |M - A| = [[0, .5], [1, .25]]
    assert l1_loss(maps, masks).item() == pytest.approx(1.75 / 4)


def test_ppce_loss_hand_computed_and_floor():
    maps = torch.tensor([[[[4.0, 2.0], [-1.0, 1.0]]]], dtype=torch.float64)
    masks = torch.tensor([[[[True, True], [False, False]]]])
    assert ppce_loss(maps, masks).item() == pytest.approx(-math.log(0.5) / 2)
    masks_on_negative = torch.tensor([[[[False, False], [True, False]]]])
    assert ppce_loss(maps, masks_on_negative).item() == pytest.approx(100.0)


def test_ppce_skips_maps_with_empty_mask():
    maps = torch.tensor([[[[4.0, 2.0]], [[1.0, 1.0]]]])
    masks = torch.tensor([[[[False, True]], [[False, False]]]])
    assert ppce_loss(maps, masks).item() == pytest.approx(-math.log(0.5))


@pytest.mark.parametrize("loss", GUIDANCE_LOSSES, ids=lambda f: f.__name__)
def test_guidance_loss_gradient_is_finite_and_matches_finite_differences(loss):
    maps, masks, valid = random_case(seed=7, valid_kind="pixels")
    maps = maps.abs() + 0.1  # keep away from the kinks of clamp / max for the check
    maps.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: loss(m, masks, valid), (maps,))
    maps.grad = None
    loss(maps, masks, valid).backward()
    assert maps.grad is not None and torch.isfinite(maps.grad).all()


@pytest.mark.parametrize("loss", GUIDANCE_LOSSES, ids=lambda f: f.__name__)
def test_gradient_finite_on_degenerate_maps(loss):
    maps = torch.zeros(2, 2, 3, 3, requires_grad=True)
    masks = torch.zeros(2, 2, 3, 3, dtype=torch.bool)
    masks[0, 0, 1, 1] = True
    loss(maps, masks).backward()
    assert torch.isfinite(maps.grad).all()


@pytest.mark.parametrize("loss", [*GUIDANCE_LOSSES, rrr_masked_loss], ids=lambda f: f.__name__)
@pytest.mark.parametrize("valid", [torch.zeros(2, dtype=torch.bool), torch.zeros(2, 3)])
def test_nothing_valid_returns_connected_zero(loss, valid):
    maps = torch.randn(2, 3, 4, 4, requires_grad=True)
    masks = torch.rand(2, 3, 4, 4) > 0.5
    value = loss(maps, masks, valid)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(maps.grad, torch.zeros_like(maps))


def test_invalid_map_values_do_not_change_the_loss():
    maps, masks, valid = random_case(seed=11, valid_kind="maps")
    changed = maps.clone()
    changed[~valid] = 1e6
    for loss in GUIDANCE_LOSSES:
        assert loss(changed, masks, valid).item() == pytest.approx(loss(maps, masks, valid).item())


def test_bad_shapes_raise_value_error():
    maps = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="maps"):
        energy_loss(maps[0], torch.ones(3, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="masks"):
        energy_loss(maps, torch.ones(2, 2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid"):
        energy_loss(maps, torch.ones(2, 3, 4, 4, dtype=torch.bool), torch.ones(2, 3, 4))


# ----------------------------------------------------------------- RRR (Ross et al.)


def test_rrr_loss_matches_textbook():
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(3, 2, 4, 5, generator=gen, dtype=torch.float64)
    irrelevant = torch.rand(3, 1, 4, 5, generator=gen) > 0.5
    sample_valid = torch.tensor([True, False, True])
    expected = slow_rrr(grads, irrelevant, sample_valid)
    assert rrr_loss(grads, irrelevant, sample_valid).item() == pytest.approx(expected, rel=1e-12)
    expected_all = slow_rrr(grads, irrelevant, torch.ones(3, dtype=torch.bool))
    assert rrr_loss(grads, irrelevant).item() == pytest.approx(expected_all, rel=1e-12)


def test_rrr_masked_penalises_outside_union_of_masks():
    grads = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    masks = torch.rand(2, 2, 4, 4) > 0.6
    irrelevant = ~masks.any(dim=1, keepdim=True)
    assert rrr_masked_loss(grads, masks).item() == pytest.approx(
        rrr_loss(grads, irrelevant).item(), rel=1e-12
    )
    valid = torch.tensor([[False, False], [True, False]])
    assert rrr_masked_loss(grads, masks, valid).item() == pytest.approx(
        rrr_loss(grads[1:], irrelevant[1:]).item(), rel=1e-12
    )


def test_rrr_gradient_exists():
    grads = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    irrelevant = torch.rand(2, 1, 4, 4) > 0.5
    assert torch.autograd.gradcheck(lambda g: rrr_loss(g, irrelevant), (grads,))


# ----------------------------------------------------------------- segmentation losses


def test_heatmap_cross_entropy_tiny_example_by_hand():
    # one sample, background + 1 class, 1 x 3 pixels; the third pixel is unlabelled
    logits = torch.tensor([[[[0.0, 1.0, 5.0]], [[0.0, 0.0, -5.0]]]], requires_grad=True)
    target = torch.tensor([[[1, 0, IGNORE_INDEX]]])
    expected = (math.log(2.0) + math.log(1 + math.exp(-1.0))) / 2
    value = heatmap_cross_entropy(logits, target)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    reference = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    assert value.item() == pytest.approx(reference.item(), rel=1e-6)
    value.backward()
    assert logits.grad[..., 2].abs().max() == 0  # ignored pixel gets no gradient


def test_heatmap_cross_entropy_matches_textbook_and_torch():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 3, 5, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 3, 5), generator=gen)
    target[0, 0, :3] = IGNORE_INDEX
    got = heatmap_cross_entropy(logits, target)
    assert got.item() == pytest.approx(slow_cross_entropy(logits, target), rel=1e-12)
    assert torch.allclose(got, F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX))


def test_dice_matches_textbook():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 3, 4), generator=gen)
    target[1, 2] = IGNORE_INDEX
    for smooth in (1.0, 0.1):
        got = dice_loss(logits, target, smooth=smooth)
        assert got.item() == pytest.approx(
            slow_dice(logits.detach(), target, smooth=smooth), rel=1e-12
        )
    assert torch.autograd.gradcheck(lambda x: dice_loss(x, target), (logits,))


def test_dice_is_near_zero_for_confident_correct_logits():
    target = torch.tensor([[[0, 1], [2, 1]]])
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).double() * 50
    assert dice_loss(logits, target, smooth=0.0).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("loss", [heatmap_cross_entropy, dice_loss], ids=lambda f: f.__name__)
def test_segmentation_loss_all_ignored_is_connected_zero(loss):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE_INDEX)
    value = loss(logits, target)
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("loss", [heatmap_cross_entropy, dice_loss], ids=lambda f: f.__name__)
def test_segmentation_loss_rejects_bad_targets(loss):
    logits = torch.randn(1, 3, 2, 2)
    with pytest.raises(ValueError, match="labels must lie"):
        loss(logits, torch.tensor([[[0, 3], [1, 2]]]))
    with pytest.raises(ValueError, match="shape"):
        loss(logits, torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        loss(logits, torch.zeros(1, 2, 2))


# ----------------------------------------------------------------- registry


def test_registry_names_and_lookup():
    assert set(LOSSES) == {"ce", "rrr", "rrr_star", "energy", "l1", "ppce", "dice", "bce"}
    assert SEGMENTATION_LOSSES <= set(LOSSES)
    assert get_loss("energy") is energy_loss
    with pytest.raises(ValueError, match="rrr_star"):
        get_loss("nope")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_gives_scalar_with_gradient(name):
    loss = get_loss(name)
    if name in SEGMENTATION_LOSSES:
        inputs = torch.randn(2, 4, 5, 5, requires_grad=True)
        value = loss(inputs, torch.randint(0, 4, (2, 5, 5)))
    else:
        inputs = torch.randn(2, 3, 5, 5, requires_grad=True)
        maps = inputs.sigmoid() if name == "bce" else inputs  # bce takes masks in [0, 1]
        value = loss(maps, torch.rand(2, 3, 5, 5) > 0.5, torch.ones(2, 3, dtype=torch.bool))
    assert value.dim() == 0
    value.backward()
    assert torch.isfinite(inputs.grad).all() and inputs.grad.abs().sum() > 0


# ----------------------------------------------------------------- mask binary cross-entropy


def slow_mask_bce(maps, masks, valid):
    """Per map: mean over valid pixels of -(y log s + (1 - y) log(1 - s)); mean over maps."""
    per_map = []
    for b in range(maps.shape[0]):
        for k in range(maps.shape[1]):
            terms = []
            for i in range(maps.shape[2]):
                for j in range(maps.shape[3]):
                    if not valid[b, k, i, j]:
                        continue
                    s, y = float(maps[b, k, i, j]), float(masks[b, k, i, j])
                    terms.append(
                        -(y * math.log(max(s, 1e-6)) + (1 - y) * math.log(max(1 - s, 1e-6)))
                    )
            if terms:
                per_map.append(_mean(terms))
    return _mean(per_map) if per_map else 0.0


@pytest.mark.parametrize("valid_kind", ["none", "maps", "pixels"])
def test_mask_bce_matches_textbook(valid_kind):
    maps, masks, valid = random_case(seed=13, valid_kind=valid_kind)
    probabilities = maps.sigmoid()
    expected = slow_mask_bce(probabilities, masks, expanded(valid, maps.shape))
    got = mask_bce_loss(probabilities, masks, valid).item()
    assert got == pytest.approx(expected, rel=1e-12)


def test_mask_bce_hand_computed_and_refuses_raw_maps():
    maps = torch.tensor([[[[0.5, 0.25]]]], dtype=torch.float64)
    masks = torch.tensor([[[[True, False]]]])
    expected = (-math.log(0.5) - math.log(0.75)) / 2
    assert mask_bce_loss(maps, masks).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mask_bce_loss(maps * 3, masks)


def test_mask_bce_is_applied_to_every_class_of_labelled_images():
    """Absent classes' masks count (target all zero); unlabelled images do not."""
    from types import SimpleNamespace

    from rrr.segmenters.objective import segmentation_loss

    maps = torch.full((2, 2, 1, 2), 0.5, dtype=torch.float64)
    maps[0, 1] = 0.75  # class 1 is absent from image 0: its mask should be 0
    target = torch.tensor([[[1, 0]], [[2, 2]]])  # image 0: class 0 and background
    present = torch.tensor([[True, False], [False, True]])
    out = SimpleNamespace(maps=maps, seg_logits=None)
    got = segmentation_loss("bce", out, target, torch.tensor([True, False]), present)
    class0 = (-math.log(0.5) - math.log(0.5)) / 2
    class1 = -math.log(0.25)  # absent: both pixels target 0 at 0.75
    assert got.item() == pytest.approx((class0 + class1) / 2)

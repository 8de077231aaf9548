"""heatmaps.metrics on tiny examples whose values are worked out by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from heatmaps.labels import class_masks
from heatmaps.metrics import (
    SPECIFICITY_SUMS,
    all_items_maps,
    class_specificity,
    continuous_iou,
    deletion_insertion_auc,
    discrete_iou,
    energy_pointing_game,
    iou_at_threshold,
    mask_auc,
    mask_f1,
    normalise_maps,
    pointing_game,
    saliency_metric,
    summarise_class_specificity,
)


def as_maps(rows):
    """A (1, 1, H, W) float tensor from nested lists."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def as_mask(rows):
    return torch.tensor(rows, dtype=torch.bool)[None, None]


# One 4x4 attribution map used by several tests: maximum 4 at (2, 2).
MAP = as_maps(
    [
        [1.0, 2.0, 0.0, 0.0],
        [0.0, -3.0, 0.0, 0.0],
        [0.0, 0.0, 4.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
TOP_LEFT = as_mask(
    [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
)


# ----------------------------------------------------------------- normalisation


def test_normalise_maps_by_hand():
    maps = torch.tensor([[-2.0, 0.0], [1.0, 2.0]])
    assert torch.allclose(normalise_maps(maps, "max"), torch.tensor([[0.0, 0.0], [0.5, 1.0]]))
    assert torch.allclose(normalise_maps(maps, "minmax"), torch.tensor([[0.0, 0.5], [0.75, 1.0]]))
    assert torch.allclose(normalise_maps(maps, "sigmoid"), torch.sigmoid(maps))
    assert torch.equal(normalise_maps(torch.full((2, 2), -1.0), "max"), torch.zeros(2, 2))
    assert torch.equal(normalise_maps(torch.full((2, 2), 3.0), "minmax"), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="how"):
        normalise_maps(maps, "zscore")


def test_normalise_maps_gradient_is_finite_on_zero_maps():
    maps = torch.zeros(1, 2, 3, 3, requires_grad=True)
    (normalise_maps(maps, "max").sum() + normalise_maps(maps, "minmax").sum()).backward()
    assert torch.isfinite(maps.grad).all()


# ----------------------------------------------------------------- localisation


def test_pointing_game_by_hand():
    on_max = as_mask([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert pointing_game(MAP, on_max).tolist() == [[True]]
    assert pointing_game(MAP, TOP_LEFT).tolist() == [[False]]
    # nearest top-left pixel to (2, 2) is (1, 1): distance sqrt(2)
    assert pointing_game(MAP, TOP_LEFT, tolerance=1.5).tolist() == [[True]]
    assert pointing_game(MAP, TOP_LEFT, tolerance=1.4).tolist() == [[False]]


def test_pointing_game_shapes_broadcast_and_empty_mask():
    maps = torch.cat([MAP, -MAP], dim=1).expand(2, 2, 4, 4)  # second map peaks at (1, 1)
    hits = pointing_game(maps, TOP_LEFT.expand(2, 1, 4, 4))
    assert hits.shape == (2, 2) and hits.dtype == torch.bool
    assert hits.tolist() == [[False, True], [False, True]]
    assert not pointing_game(MAP, torch.zeros_like(TOP_LEFT), tolerance=10).any()


def test_energy_pointing_game_by_hand():
    # positive energy: inside 1 + 2 = 3, total 1 + 2 + 4 + 1 = 8
    assert energy_pointing_game(MAP, TOP_LEFT).item() == pytest.approx(3 / 8)
    assert energy_pointing_game(-MAP.abs(), TOP_LEFT).item() == 0.0


def test_iou_at_threshold_by_hand():
    # normalised positive map > 0.5  <=>  value > 2: only (2, 2)
    predicted_region = as_mask([[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    assert iou_at_threshold(MAP, predicted_region).item() == pytest.approx(1 / 2)
    # threshold 0.2: values > 0.8 -> (0,0), (0,1), (2,2), (3,3); top-left has 4 pixels
    assert iou_at_threshold(MAP, TOP_LEFT, threshold=0.2).item() == pytest.approx(2 / 6)
    assert iou_at_threshold(torch.zeros(1, 1, 4, 4), torch.zeros_like(TOP_LEFT)).item() == 0.0


def test_iou_at_threshold_minmax_and_raw():
    # min-max over [-3, 4]: value > -3 + 0.5 * 7 = 0.5 -> (0,0), (0,1), (2,2), (3,3)
    assert iou_at_threshold(MAP, TOP_LEFT, normalise="minmax").item() == pytest.approx(2 / 6)
    # raw maps: value > 1.5 -> (0,1), (2,2)
    assert iou_at_threshold(MAP, TOP_LEFT, 1.5, normalise=None).item() == pytest.approx(1 / 5)


# ----------------------------------------------------------------- mask metrics (Stalder et al.)

SOFT = as_maps(
    [
        [0.9, 0.6, 0.2, 0.0],
        [0.7, 0.4, 0.0, 0.0],
        [0.0, 0.0, 0.8, 0.0],
        [0.0, 0.0, 0.0, 0.1],
    ]
)


def test_mask_f1_by_hand():
    # > 0.5: (0,0), (0,1), (1,0), (2,2): TP 3, FP 1, FN 1 ((1,1) has 0.4)
    assert mask_f1(SOFT, TOP_LEFT).item() == pytest.approx(6 / 8)
    assert mask_f1(torch.zeros(1, 1, 4, 4), torch.zeros_like(TOP_LEFT)).item() == 0.0


def test_discrete_iou_by_hand():
    assert discrete_iou(SOFT, TOP_LEFT).item() == pytest.approx(3 / 5)
    # > 0.3 adds (1,1): intersection 4, union 5
    assert discrete_iou(SOFT, TOP_LEFT, threshold=0.3).item() == pytest.approx(4 / 5)


def test_continuous_iou_by_hand():
    # sum min(m, g) = 0.9 + 0.6 + 0.7 + 0.4 = 2.6
    # sum max(m, g) = 4 (mask pixels) + 0.2 + 0.8 + 0.1 = 5.1
    assert continuous_iou(SOFT, TOP_LEFT).item() == pytest.approx(2.6 / 5.1)
    binary = TOP_LEFT.float()
    assert continuous_iou(binary, TOP_LEFT).item() == pytest.approx(1.0)
    assert continuous_iou(torch.zeros(1, 1, 4, 4), torch.zeros_like(TOP_LEFT)).item() == 0.0


def test_mask_auc_by_hand():
    # positives 0.9, 0.6, 0.7, 0.4; negatives 0.2, 0.8, 0.1 and nine zeros.
    # pairs (pos > neg) over 4 * 12 = 48: 0.9 beats 12, 0.6 beats 11, 0.7 beats 11, 0.4 beats 11
    assert mask_auc(SOFT, TOP_LEFT).item() == pytest.approx(45 / 48)
    ties = as_maps([[1.0, 1.0], [1.0, 0.0]])
    assert mask_auc(ties, as_mask([[1, 0], [0, 0]])).item() == pytest.approx((0.5 + 0.5 + 1) / 3)


def test_mask_auc_undefined_for_single_class_masks():
    result = mask_auc(SOFT.expand(1, 2, 4, 4), torch.stack([TOP_LEFT[0, 0], TOP_LEFT[0, 0]])[None])
    assert result.shape == (1, 2)
    assert math.isnan(mask_auc(SOFT, torch.zeros_like(TOP_LEFT)).item())
    assert math.isnan(mask_auc(SOFT, torch.ones_like(TOP_LEFT)).item())


# ----------------------------------------------------------------- model-based metrics


def linear_model():
    """Two logits for a (1, 2, 2) image: z0 = 1 x00 + 2 x01 + 3 x10 + 4 x11, z1 = 0.

    So the softmax probability of class 0 is sigmoid(z0).
    """
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.Dropout(p=0.0))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]))
        model[1].bias.zero_()
    return model


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def trapezoid(values, dx):
    return sum((a + b) / 2 * dx for a, b in zip(values, values[1:]))


RANKING = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])  # removes x00, x01, x10, x11 in this order


def test_deletion_auc_by_hand():
    images = torch.ones(1, 1, 2, 2)
    # logits after removing 0..4 pixels: 10, 9, 7, 4, 0
    expected = trapezoid([sigmoid(z) for z in (10, 9, 7, 4, 0)], 0.25)
    got = deletion_insertion_auc(linear_model(), images, RANKING, torch.tensor([0]), steps=4)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_insertion_auc_by_hand_with_baseline_and_small_batches():
    images = torch.ones(2, 1, 2, 2)
    maps = torch.cat([RANKING, -RANKING])  # second sample inserts x11 first
    got = deletion_insertion_auc(
        linear_model(),
        images,
        maps,
        torch.tensor([0, 1]),
        steps=4,
        mode="insertion",
        baseline=0.0,
        batch_size=3,
    )
    first = trapezoid([sigmoid(z) for z in (0, 1, 3, 6, 10)], 0.25)
    second = trapezoid([sigmoid(-z) for z in (0, 4, 7, 9, 10)], 0.25)  # class 1: sigmoid(-z0)
    assert got.tolist() == pytest.approx([first, second], rel=1e-6)


def test_deletion_with_fewer_steps_than_pixels_and_tensor_baseline():
    images = torch.ones(1, 1, 2, 2)
    baseline = torch.full((1, 1, 1, 1), 0.5)
    # steps 2: remove 0, 2, 4 pixels -> z = 10, 10 - 0.5 * 3, 10 - 0.5 * 10
    expected = trapezoid([sigmoid(z) for z in (10, 8.5, 5)], 0.5)
    got = deletion_insertion_auc(
        linear_model(), images, RANKING[None], torch.tensor([0]), steps=2, baseline=baseline
    )
    assert got.item() == pytest.approx(expected, rel=1e-6)


def assert_model_untouched(model, run):
    model.train()
    before = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    run(model)
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_perturbation_metrics_leave_model_untouched():
    images = torch.rand(2, 1, 2, 2)
    maps = torch.rand(2, 2, 2)
    target = torch.tensor([0, 1])
    assert_model_untouched(
        linear_model(), lambda m: deletion_insertion_auc(m, images, maps, target, steps=3)
    )
    assert_model_untouched(linear_model(), lambda m: saliency_metric(m, images, maps, target))


def test_deletion_rejects_bad_arguments():
    images = torch.ones(1, 1, 2, 2)
    with pytest.raises(ValueError, match="mode"):
        deletion_insertion_auc(linear_model(), images, RANKING, torch.tensor([0]), mode="blur")
    with pytest.raises(ValueError, match="maps"):
        deletion_insertion_auc(linear_model(), images, torch.ones(1, 3, 3), torch.tensor([0]))


def test_saliency_metric_crop_by_hand():
    images = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    maps = torch.tensor([[[0.9, 0.1], [0.2, 0.3]]])
    # tight box = pixel (0, 0), area 1/4; resized crop is all ones -> z0 = 10
    got = saliency_metric(linear_model(), images, maps, torch.tensor([0]))
    assert got.item() == pytest.approx(math.log(0.25) - math.log(sigmoid(10)), rel=1e-6)
    # nothing above the threshold: whole image (area 1), z0 = 1 + 4 + 9 + 16 = 30
    empty = saliency_metric(linear_model(), images, maps * 0, torch.tensor([0]))
    assert empty.item() == pytest.approx(-math.log(sigmoid(30)), abs=1e-6)


def test_saliency_metric_mask_variant_by_hand():
    images = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.5]]])
    # area 1.5 / 4 = 0.375; masked image [[1, 0], [0, 2]] -> z0 = 1 + 8 = 9
    got = saliency_metric(linear_model(), images, maps, torch.tensor([0]), variant="mask")
    assert got.item() == pytest.approx(math.log(0.375) - math.log(sigmoid(9)), rel=1e-6)
    # tiny mask: the area term is floored at 0.05; masked image is 0 -> p = 1/2
    tiny = saliency_metric(linear_model(), images, maps * 0, torch.tensor([0]), variant="mask")
    assert tiny.item() == pytest.approx(math.log(0.05) - math.log(0.5), rel=1e-6)


def test_saliency_metric_multi_hot_target_sums_probabilities():
    images = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    maps = torch.ones(1, 2, 2)
    both = torch.tensor([[True, True]])
    got = saliency_metric(linear_model(), images, maps, both, variant="mask")
    assert got.item() == pytest.approx(0.0, abs=1e-6)  # area 1, probability 1


# ----------------------------------------------------------------- class specificity

# One 3x4 scene with three classes: class 0 is the left column pair, class 1 the right
# column; class 2 is absent. 0 = background.
SCENE = torch.tensor(
    [
        [1, 0, 0, 2],
        [1, 0, 0, 2],
        [0, 0, 0, 2],
    ]
)[None]
SCENE_MASKS = class_masks(SCENE, 3)  # (1, 3, 3, 4)
SCENE_PRESENT = torch.tensor([[True, True, False]])


def scene_maps(class0, class1, class2):
    return torch.tensor([class0, class1, class2], dtype=torch.float32)[None]


def test_class_specificity_by_hand():
    maps = scene_maps(
        [[1.0, 0.5, 0.0, 0.2], [0.6, 0.0, 0.0, 0.1], [0.0, 0.0, 0.0, 0.3]],
        [[0.4, 0.0, 0.0, 0.9], [0.0, 0.0, 0.0, 0.9], [0.0, 0.0, 0.0, 0.6]],
        [[0.5, 0.0, 0.0, 0.5], [0.5, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]],
    )
    sums = class_specificity(maps, SCENE_MASKS, SCENE_PRESENT)
    assert tuple(sums) == SPECIFICITY_SUMS
    # class 0: own (1.0 + 0.6) / 2 = 0.8, other (0.2 + 0.1 + 0.3) / 3 = 0.2
    # class 1: own (0.9 + 0.9 + 0.6) / 3 = 0.8, other (0.4 + 0.0) / 2 = 0.2
    # class 2 (absent): over the 5 item pixels (0.5 * 4) / 5 = 0.4; background pixels ignored
    expected = {"own_sum": 1.6, "other_sum": 0.4, "pairs": 2, "absent_sum": 0.4, "absent_pairs": 1}
    for key, value in expected.items():
        assert sums[key].dtype == torch.float64 and sums[key].dim() == 0
        assert sums[key].item() == pytest.approx(value), key
    summary = summarise_class_specificity(sums)
    assert summary["own"].item() == pytest.approx(0.8)
    assert summary["other"].item() == pytest.approx(0.2)
    assert summary["ratio"].item() == pytest.approx(4.0)
    assert summary["absent"].item() == pytest.approx(0.4)
    assert summary["pairs"].item() == 2 and summary["absent_pairs"].item() == 1
    # multi-hot float labels mean the same as bool ones
    again = class_specificity(maps, SCENE_MASKS, SCENE_PRESENT.float())
    assert all(torch.equal(again[k], sums[k]) for k in SPECIFICITY_SUMS)


def test_class_specificity_accumulates_over_batches_pairwise():
    # batch 1: the scene above with own 1, other 0.5 for both classes
    first = scene_maps(
        [[1.0, 0.0, 0.0, 0.5], [1.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.5]],
        [[0.5, 0.0, 0.0, 1.0], [0.5, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]],
        torch.zeros(3, 4).tolist(),
    )
    # batch 2: the same scene, maps 0.25 on the own item and 0 elsewhere
    second = SCENE_MASKS.float() * 0.25
    a = class_specificity(first, SCENE_MASKS, SCENE_PRESENT)
    b = class_specificity(second, SCENE_MASKS, SCENE_PRESENT)
    summary = summarise_class_specificity(a, b)
    # pairs: 4 (each pair weighs the same); own (1 + 1 + 0.25 + 0.25) / 4, other (0.5 * 2) / 4
    assert summary["pairs"].item() == 4
    assert summary["own"].item() == pytest.approx(0.625)
    assert summary["other"].item() == pytest.approx(0.25)
    assert summary["ratio"].item() == pytest.approx(2.5)
    assert summary["absent"].item() == pytest.approx(0.0)
    # one call on the concatenated batch gives the same sums
    both = class_specificity(
        torch.cat([first, second]), SCENE_MASKS.expand(2, -1, -1, -1), SCENE_PRESENT.expand(2, -1)
    )
    assert summarise_class_specificity(both) == summary


def test_class_specificity_perfect_map_and_the_all_items_reference():
    perfect = summarise_class_specificity(
        class_specificity(SCENE_MASKS.float(), SCENE_MASKS, SCENE_PRESENT)
    )
    assert perfect["own"].item() == 1.0 and perfect["other"].item() == 0.0
    assert perfect["ratio"].item() == math.inf  # documented: own > 0, other = 0
    assert perfect["absent"].item() == 0.0
    reference = all_items_maps(SCENE_MASKS, SCENE_PRESENT)
    assert reference.shape == (1, 3, 3, 4) and reference.dtype == torch.float32
    items = (SCENE[0] > 0).float()
    assert torch.equal(reference[0, 0], items) and torch.equal(reference[0, 1], items)
    assert not reference[0, 2].any()  # absent class: empty map
    summary = summarise_class_specificity(class_specificity(reference, SCENE_MASKS, SCENE_PRESENT))
    assert [summary[k].item() for k in ("own", "other", "ratio", "absent")] == [1.0, 1.0, 1.0, 0.0]
    # its continuous IoU is |own item| / |all items|: 2 / 5 and 3 / 5
    iou = continuous_iou(reference, SCENE_MASKS)[SCENE_PRESENT]
    assert iou.tolist() == pytest.approx([2 / 5, 3 / 5])


def test_class_specificity_without_pairs_is_nan():
    # a single item in the scene: its class has no other items, so there is no pair
    lonely = torch.tensor([[1, 1, 0], [0, 0, 0]])[None]
    masks = class_masks(lonely, 2)
    present = torch.tensor([[True, False]])
    sums = class_specificity(torch.ones(1, 2, 2, 3), masks, present)
    assert sums["pairs"].item() == 0 and sums["own_sum"].item() == 0.0
    assert sums["absent_pairs"].item() == 1 and sums["absent_sum"].item() == 1.0
    summary = summarise_class_specificity(sums)
    assert all(math.isnan(summary[k].item()) for k in ("own", "other", "ratio"))
    assert summary["absent"].item() == 1.0
    # an empty scene (no items): no pairs and no absent pairs either
    empty = summarise_class_specificity(
        class_specificity(torch.ones(1, 2, 2, 3), torch.zeros_like(masks), present)
    )
    assert all(math.isnan(empty[k].item()) for k in ("own", "other", "ratio", "absent"))
    # a present class without pixels forms no pair
    ghost = class_specificity(torch.ones(1, 2, 2, 3), masks, torch.tensor([[True, True]]))
    assert ghost["pairs"].item() == 0 and ghost["absent_pairs"].item() == 0


def test_class_specificity_detaches_and_rejects_bad_shapes():
    maps = torch.rand(1, 3, 3, 4, requires_grad=True)
    sums = class_specificity(maps, SCENE_MASKS, SCENE_PRESENT)
    assert not any(v.requires_grad for v in sums.values())
    with pytest.raises(ValueError, match="one mask per map"):
        class_specificity(maps, SCENE_MASKS[:, :1], SCENE_PRESENT)
    with pytest.raises(ValueError, match="present"):
        class_specificity(maps, SCENE_MASKS, SCENE_PRESENT[:, :2])
    with pytest.raises(ValueError, match="present"):
        all_items_maps(SCENE_MASKS, SCENE_PRESENT[0])
    with pytest.raises(ValueError, match="at least one"):
        summarise_class_specificity()

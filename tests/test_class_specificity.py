"""Class specificity in ``rrr.evaluate --explanation-metrics`` (``ExplanationMetrics``).

Hand-checked cases with stand-in backends whose maps are known exactly, and one
tiny Explainer run scored end to end. The measure itself is tested by hand in
``tests/test_metrics.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from rrr import evaluate, finetune
from rrr.evaluate import ExplanationMetrics

NUM_CLASSES = 3

# two 2x4 scenes; 0 = background, c + 1 = class c, 255 = unlabelled
TARGET = torch.tensor(
    [
        [[1, 1, 0, 2], [0, 0, 0, 2]],  # classes 0 and 1: one pair each
        [[3, 0, 255, 0], [3, 0, 0, 0]],  # class 2 alone: no pair, absent pairs only
    ]
)
LABELS = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


class Classifier(nn.Module):
    """Constant logits (the saliency metric needs a classifier; it is not checked here)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.new_ones(len(x), NUM_CLASSES)


class Backend:
    """Maps from the label map encoded in the image's first channel.

    ``"specific"``: class ``c``'s map is its own items (times ``scale``);
    ``"agnostic"``: every class's map is every item of the scene.
    """

    def __init__(self, kind: str, name: str = "explainer", scale: float = 1.0) -> None:
        self.kind, self.name, self.scale = kind, name, scale
        self.model = Classifier()

    def __call__(self, x: Tensor, targets: Tensor, create_graph: bool = False) -> Tensor:
        ids = x[:, 0].round()
        classes = torch.arange(1, NUM_CLASSES + 1)[None, :, None, None]
        own = ids[:, None] == classes
        items = ((ids > 0) & (ids <= NUM_CLASSES))[:, None].expand_as(own)
        maps = (own if self.kind == "specific" else items).float() * self.scale
        return maps * targets[:, :, None, None]


def images() -> Tensor:
    return TARGET.float()[:, None].expand(-1, 3, -1, -1).clone()


def scored(backend: Backend) -> dict:
    metrics = ExplanationMetrics(backend, NUM_CLASSES)
    metrics.update(images()[:1], LABELS[:1], TARGET[:1])  # two batches, summed
    metrics.update(images()[1:], LABELS[1:], TARGET[1:])
    return metrics.compute()


def test_perfectly_class_specific_maps():
    result = scored(Backend("specific"))
    assert result["pairs"] == 3 and result["specificity_pairs"] == 2
    # absent pairs: scene 0 has class 2 absent, scene 1 classes 0 and 1
    assert result["absent_pairs"] == 3
    assert result["own"] == 1.0 and result["other"] == 0.0 and result["absent"] == 0.0
    assert result["ratio"] is None  # own / 0 is infinite: null in the JSON
    assert result["continuous_iou"] == 1.0


def test_class_agnostic_maps_have_ratio_one_and_match_the_reference():
    result = scored(Backend("agnostic"))
    assert result["own"] == 1.0 and result["other"] == 1.0 and result["ratio"] == 1.0
    assert result["absent"] == 1.0  # absent classes paint the items too
    reference = result["all_items_reference"]
    assert {k: reference[k] for k in ("own", "other", "ratio", "absent")} == {
        "own": 1.0,
        "other": 1.0,
        "ratio": 1.0,
        "absent": 0.0,
    }
    assert reference["specificity_pairs"] == 2 and reference["absent_pairs"] == 3
    # continuous IoU of all items with the own items: 2/3, 1/3 (scene 0), 1 (scene 1)
    assert reference["continuous_iou"] == pytest.approx((2 / 3 + 1 / 3 + 1) / 3)
    assert reference["discrete_iou"] == pytest.approx(reference["continuous_iou"])
    assert result["continuous_iou"] == pytest.approx(reference["continuous_iou"])


def test_other_backends_are_rescaled_before_scoring():
    result = scored(Backend("specific", name="gradcam", scale=7.0))
    assert result["maps"] == "normalise_maps(how='max')"
    assert result["own"] == 1.0 and result["other"] == 0.0


def test_no_pairs_gives_nulls():
    metrics = ExplanationMetrics(Backend("agnostic"), NUM_CLASSES)
    metrics.update(images()[1:], LABELS[1:], TARGET[1:])  # one item only
    result = metrics.compute()
    assert result["specificity_pairs"] == 0
    assert result["own"] is None and result["other"] is None and result["ratio"] is None
    assert result["absent"] == 1.0
    empty = ExplanationMetrics(Backend("agnostic"), NUM_CLASSES).compute()
    assert empty["pairs"] == 0 and empty["specificity_pairs"] == 0 and empty["absent"] is None


# --------------------------------------------------------------------------- end to end

TINY = [
    "--arch", "resnet18", "--image-size", "32", "--train-images", "24", "--val-images", "8",
    "--steps-per-epoch", "2", "--batch-size", "4", "--pixel-labels", "4", "--no-progress",
    "--overlays", "0", "--method", "explainer", "--explainer", "small",
    "--pretrain-epochs", "1", "--epochs", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("class_specificity") / "run"
    assert finetune.main([*TINY, "--out", str(out)]) == 0
    return out / "checkpoint.pt"


@pytest.mark.parametrize("method", [None, "gradcam"])
def test_evaluate_reports_class_specificity(checkpoint, tmp_path, method):
    report = tmp_path / "report.json"
    argv = ["--checkpoint", str(checkpoint), "--split", "val", "--no-progress", "--json"]
    extra = ["--explain-method", method] if method else ["--explanation-metrics"]
    assert evaluate.main([*argv, str(report), *extra]) == 0
    explanation = json.loads(report.read_text())["explanation"]
    assert 0 < explanation["specificity_pairs"] <= explanation["pairs"]
    assert explanation["absent_pairs"] > 0
    for key in ("own", "other", "absent"):
        assert 0.0 <= explanation[key] <= 1.0, key
    if explanation["other"] > 0:
        assert explanation["ratio"] == pytest.approx(explanation["own"] / explanation["other"])
    reference = explanation["all_items_reference"]
    assert [reference[k] for k in ("own", "other", "ratio", "absent")] == [1.0, 1.0, 1.0, 0.0]
    assert reference["specificity_pairs"] == explanation["specificity_pairs"]
    assert 0.0 < reference["continuous_iou"] <= 1.0
    assert not math.isnan(explanation["continuous_iou"])

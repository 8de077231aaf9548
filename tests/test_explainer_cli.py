"""``python -m rrr.finetune --method explainer`` and ``rrr.evaluate --explanation-metrics``.

Tiny runs on Fashion-MNIST scenes (32 px, a few steps), called in-process. The
explainer run is done in two legs: classification pre-training only, then a
``--resume`` that adds the Explainer stage, so the classifier weights at the
end of stage 1 can be compared bitwise with those at the end of training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from rrr import evaluate, finetune, predict
from rrr.checkpoint import load_checkpoint
from rrr.loading import load_trained
from rrr.segmenters import ExplainerSegmenter, SegmenterOutput

TINY = [
    "--arch", "resnet18", "--image-size", "32", "--train-images", "24", "--val-images", "8",
    "--steps-per-epoch", "2", "--batch-size", "4", "--pixel-labels", "4", "--no-progress",
    "--overlays", "1", "--deterministic",
]  # fmt: skip
EXPLAINER = ["--method", "explainer", "--explainer", "small", "--pretrain-epochs", "1"]
BOUNDED = ("mask_f1", "discrete_iou", "continuous_iou", "auc")


def finetune_run(out: Path, *extra: str) -> int:
    return finetune.main([*TINY, "--out", str(out), *extra])


def classifier_state(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state["model"].items() if k.startswith("classifier.")}


def explainer_state(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state["model"].items() if k.startswith("explainer.")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """``pretrain``: stage 1 only; ``resumed``: its copy resumed with one Explainer epoch;
    ``full``: the same two epochs in one uninterrupted run."""
    root = tmp_path_factory.mktemp("explainer")
    pretrain, resumed, full = root / "pretrain", root / "resumed", root / "full"
    assert finetune_run(pretrain, *EXPLAINER, "--epochs", "0") == 0
    shutil.copytree(pretrain, resumed)
    assert finetune_run(resumed, *EXPLAINER, "--epochs", "1", "--resume") == 0
    assert finetune_run(full, *EXPLAINER, "--epochs", "1") == 0
    return {"pretrain": pretrain, "resumed": resumed, "full": full}


def evaluate_json(tmp_path: Path, checkpoint: Path, *extra: str) -> dict:
    report = tmp_path / "report.json"
    argv = ["--checkpoint", str(checkpoint), "--split", "val", "--no-progress"]
    assert evaluate.main([*argv, "--json", str(report), *extra]) == 0
    return json.loads(report.read_text())


# --------------------------------------------------------------------------- the training CLI


def test_explainer_run_writes_checkpoint_and_metrics(runs):
    out = runs["full"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0
    assert 0.0 <= metrics["miou_true_gating"] <= 1.0
    assert metrics["config"]["method"] == "explainer"
    assert metrics["config"]["explainer"] == "small"
    last = metrics["history"][-1]
    assert last["phase"] == "finetune"
    for term in ("classification", "entropy", "tv", "area", "present_sparsity", "seg"):
        assert f"train_{term}" in last, term
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 2 and state["batch_in_epoch"] == 0
    assert list((out / "overlays").glob("epoch_*.png"))
    assert (out / "log.csv").read_text().count("\n") == 3


def test_classifier_bitwise_unchanged_by_the_explainer_stage(runs):
    before = load_checkpoint(runs["pretrain"] / "checkpoint.pt")
    after = load_checkpoint(runs["resumed"] / "checkpoint.pt")
    assert before["epoch"] == 1 and after["epoch"] == 2
    cls_before, cls_after = classifier_state(before), classifier_state(after)
    assert cls_before and cls_before.keys() == cls_after.keys()
    for key in cls_before:  # parameters and BatchNorm statistics
        assert torch.equal(cls_before[key], cls_after[key]), key
    exp_before, exp_after = explainer_state(before), explainer_state(after)
    assert any(not torch.equal(exp_before[k], exp_after[k]) for k in exp_before)


def test_resumed_run_equals_uninterrupted_run(runs):
    resumed = load_checkpoint(runs["resumed"] / "checkpoint.pt")["model"]
    full = load_checkpoint(runs["full"] / "checkpoint.pt")["model"]
    assert resumed.keys() == full.keys()
    for key in full:
        assert torch.equal(resumed[key], full[key]), key


def test_resume_with_another_explainer_is_refused(runs, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(runs["pretrain"], out)
    extra = ["--method", "explainer", "--explainer", "lraspp_mobilenet_v3_large"]
    assert finetune_run(out, *extra, "--pretrain-epochs", "1", "--resume") == 2
    assert "--explainer" in capsys.readouterr().err


def test_background_neuron_is_rejected(tmp_path, capsys):
    assert finetune_run(tmp_path / "bad", *EXPLAINER, "--background", "neuron") == 2
    assert "--background neuron" in capsys.readouterr().err


def test_checkpoint_loads_as_explainer_segmenter_and_predicts(runs, tmp_path):
    model, state = load_trained(runs["full"] / "checkpoint.pt", torch.device("cpu"))
    assert isinstance(model, ExplainerSegmenter)
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    assert out.seg_logits.shape == (2, 11, 32, 32) and out.maps.shape == (2, 10, 32, 32)
    assert model.predict(x).shape == (2, 32, 32)
    image = tmp_path / "scene.png"
    from PIL import Image

    Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(image)
    argv = ["--checkpoint", str(runs["full"] / "checkpoint.pt"), "--out", str(tmp_path / "p")]
    assert predict.main([*argv, str(image)]) == 0
    assert (tmp_path / "p" / "scene_labels.png").is_file()


# --------------------------------------------------------------------------- explanation metrics


@pytest.mark.parametrize("method", [None, "gradcam", "lrp"])
def test_explanation_metrics_of_an_explainer_checkpoint(runs, tmp_path, method):
    extra = ["--explanation-metrics"] + (["--explain-method", method] if method else [])
    result = evaluate_json(tmp_path, runs["full"] / "checkpoint.pt", *extra)
    assert {"miou", "map"} <= set(result)
    explanation = result["explanation"]
    assert explanation["method"] == (method or "explainer")
    assert explanation["pairs"] >= 8  # at least one present class per validation scene
    for key in BOUNDED:
        assert 0.0 <= explanation[key] <= 1.0, key
    assert torch.isfinite(torch.tensor(explanation["saliency"]))


def test_explain_method_on_a_heatmap_checkpoint(tmp_path, capsys):
    out = tmp_path / "heatmap"
    assert finetune_run(out, "--method", "saliency", "--pretrain-epochs", "0", "--epochs", "1") == 0
    for extra in (["--explanation-metrics"], ["--explain-method", "gradcam"]):
        result = evaluate_json(
            tmp_path, out / "checkpoint.pt", *extra, "--saliency-variant", "mask"
        )
        explanation = result["explanation"]
        assert explanation["method"] == ("gradcam" if "gradcam" in extra else "saliency")
        assert explanation["maps"] == "normalise_maps(how='max')"
        for key in BOUNDED:
            assert 0.0 <= explanation[key] <= 1.0, key
    argv = ["--checkpoint", str(out / "checkpoint.pt"), "--no-progress"]
    assert evaluate.main([*argv, "--explain-method", "explainer"]) == 2
    assert "no Explainer" in capsys.readouterr().err
    assert evaluate.main([*argv, "--explain-method", "nonsense"]) == 2
    assert "unknown backend" in capsys.readouterr().err


# --------------------------------------------------------------------------- the module itself


class TinyClassifier(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).relu().mean(dim=(2, 3)))


def tiny_segmenter(**options) -> ExplainerSegmenter:
    torch.manual_seed(0)
    return ExplainerSegmenter(TinyClassifier(), "small", 3, **options)


def test_forward_contract_and_gating():
    model = tiny_segmenter().eval()
    x = torch.rand(2, 3, 12, 10)
    out = model(x)
    assert isinstance(out, SegmenterOutput)
    assert out.seg_logits.shape == (2, 4, 12, 10) and out.logits.shape == (2, 3)
    assert out.maps.shape == (2, 3, 12, 10) and 0 <= out.maps.min() and out.maps.max() <= 1
    assert not out.seg_logits.requires_grad  # create_graph defaults to self.training
    mask_logits = model.explainer(x)
    present = torch.tensor([[True, False, True], [False, False, False]])
    gated = model(x, present).seg_logits
    torch.testing.assert_close(gated[0, 1], mask_logits[0, 0])
    assert (gated[0, 2] < -1e3).all()  # class 1 is gated off
    torch.testing.assert_close(gated[0, 0], -mask_logits[0, [0, 2]].amax(0))
    assert (gated[1].argmax(0) == 0).all()  # nothing present: all background
    model.gating = "none"
    torch.testing.assert_close(model(x).seg_logits[:, 1:], mask_logits)
    model.gating, model.threshold = "predicted", float("inf")
    assert (model.predict(x) == 0).all()
    assert model(x, classify_only=True).seg_logits is None
    with pytest.raises(ValueError, match="present"):
        model(x, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="gating"):
        tiny_segmenter(gating="true")


def test_frozen_classifier_stays_in_eval_and_gets_no_gradient():
    model = tiny_segmenter()
    model.train()
    assert model.classifier.training
    x, labels = (
        torch.rand(4, 3, 16, 16),
        torch.tensor([[1.0, 0, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1]]),
    )
    target = torch.full((4, 16, 16), 255)
    target[0, :8] = 1
    target[0, 8:] = 0
    has_mask = torch.tensor([True, False, False, False])
    before = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        loss, terms = model.objective(x, labels, target, has_mask, "ce", 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.train()
        assert not model.classifier.training and model.explainer.training
    assert {"classification", "entropy", "tv", "area", "seg"} <= set(terms)
    assert all(p.grad is None for p in model.classifier.parameters())
    assert all(torch.equal(v, model.classifier.state_dict()[k]) for k, v in before.items())
    _, unsupervised = model.objective(x, labels, target, has_mask, "ce", 0.0)
    assert "seg" not in unsupervised


@pytest.mark.parametrize("loss", ["dice", "l1", "energy"])
def test_objective_accepts_other_pixel_losses(loss):
    model = tiny_segmenter()
    x, labels = torch.rand(2, 3, 8, 8), torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    target = torch.randint(0, 3, (2, 8, 8))
    total, terms = model.objective(x, labels, target, torch.tensor([True, False]), loss, 0.5)
    total.backward()
    assert torch.isfinite(total) and "seg" in terms
    assert any(p.grad is not None for p in model.explainer.parameters())


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_explainer_stage_batchnorm_follows_freeze_bn(freeze_bn):
    """``--freeze-bn`` (default) keeps the Explainer's BatchNorm in eval() too; the classifier always."""
    from rrr.config import RunConfig
    from rrr.trainer import Trainer

    torch.manual_seed(0)
    explainer = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1))
    trainer = Trainer.__new__(Trainer)  # only the mode logic, no data or run directory
    trainer.config = RunConfig(model="explainer", freeze_bn=freeze_bn)
    trainer.model = ExplainerSegmenter(TinyClassifier(), explainer, 3).freeze_classifier()
    trainer.train_mode("finetune")
    assert not any(m.training for m in trainer.model.classifier.modules())
    assert explainer[1].training is not freeze_bn
    assert explainer[0].training

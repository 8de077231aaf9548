"""The Segmenter interface: registry, gating written once, training through the interface only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN
from torch import Tensor, nn

from rrr import finetune
from rrr.checkpoint import load_checkpoint, save_checkpoint
from rrr.config import parse_config
from rrr.loading import load_trained
from rrr.segmenters import (
    ExplainerSegmenter,
    HeatmapSegmenter,
    MultiTaskUNetSegmenter,
    Segmenter,
    SegmenterOutput,
    UNetSegmenter,
    base,
    build_segmenter,
    segmenter_names,
)

TINY = [*TINY_RUN, "--overlays", "2"]
ROOT = Path(__file__).resolve().parents[1]


def test_built_in_segmenters_register_under_their_names():
    assert set(segmenter_names()) == {"heatmap", "explainer", "unet", "mt-unet"}
    kinds = {
        "heatmap": HeatmapSegmenter,
        "explainer": ExplainerSegmenter,
        "unet": UNetSegmenter,
        "mt-unet": MultiTaskUNetSegmenter,
    }
    for name, cls in kinds.items():
        config = parse_config(["--model", name, "--explainer", "small"])
        model = build_segmenter(config, 3)
        assert type(model) is cls and isinstance(model, Segmenter)


class _Gated(Segmenter):
    """A segmenter with only the base class's gating (no name: not registered)."""

    def __init__(self, gating: str) -> None:
        super().__init__()
        self.num_classes, self.gating, self.threshold = 3, gating, 0.5


def test_gating_is_written_once_in_the_base_class():
    logits = torch.tensor([[1.0, 0.2, -3.0], [0.6, 0.5, 0.7]])
    present = torch.tensor([[False, True, False], [True, True, True]])
    assert torch.equal(_Gated("predicted").gate(logits, None), logits > 0.5)
    assert _Gated("none").gate(logits, None).all()
    assert torch.equal(_Gated("predicted").gate(logits, present), present)
    with pytest.raises(ValueError, match=r"present: expected a \(B, C\) = \(2, 3\)"):
        _Gated("none").gate(logits, present[:, :2])
    assert "_Gated" not in segmenter_names()


def test_param_groups_of_the_heatmap_segmenter():
    model = build_segmenter(parse_config([]), 3)
    groups = {g["name"]: g["params"] for g in model.param_groups()}
    assert groups["scalars"] == [model.scale, model.background_logit]
    assert len(groups["model"]) == len(list(model.classifier.parameters()))


def test_heatmap_segmenter_state_dict_holds_each_weight_once():
    for method in ("lrp", "gradcam"):
        model = build_segmenter(parse_config(["--method", method]), 3)
        keys = list(model.state_dict())
        assert not [k for k in keys if k.startswith("backend")]
        assert len(keys) == len(model.classifier.state_dict()) + 2


def _define_toy() -> type[Segmenter]:
    class ToySegmenter(Segmenter):
        """A segmenter the Trainer has never heard of: a 1x1 convolution and a pooled head."""

        name = "toy-test"

        def __init__(self, num_classes: int) -> None:
            super().__init__()
            self.num_classes = num_classes
            self.pixels = nn.Conv2d(3, num_classes + 1, 1)

        @classmethod
        def from_config(cls, config, num_classes):
            return cls(num_classes)

        def forward(self, x: Tensor, present=None, *, create_graph=None, classify_only=False):
            seg = self.pixels(x)
            logits = seg[:, 1:].mean(dim=(2, 3))
            return SegmenterOutput(seg, logits, seg[:, 1:])

        def training_loss(self, batch, phase):
            out = self(batch["image"])
            if phase == "pretrain":
                return super().training_loss(batch, phase)
            loss = nn.functional.cross_entropy(out.seg_logits, batch["mask"], ignore_index=255)
            return loss, {"toy": loss}

        @property
        def backbone(self) -> nn.Module:
            return self.pixels

    return ToySegmenter


@pytest.fixture
def toy():
    """Defining the class is all it takes to register it; removed again afterwards."""
    cls = _define_toy()
    assert "toy-test" in segmenter_names()
    yield cls
    base._REGISTRY.pop("toy-test", None)


def test_a_new_segmenter_trains_and_evaluates_through_the_cli(tmp_path, toy):
    from rrr import evaluate

    out = tmp_path / "toy"
    assert finetune.main([*TINY, "--model", "toy-test", "--out", str(out)]) == 0
    rows = (out / "log.csv").read_text().splitlines()
    assert "train_toy" in rows[0] and len(rows) == 3
    assert evaluate.main(["--checkpoint", str(out / "checkpoint.pt"), "--no-progress"]) == 0
    model, _ = load_trained(out / "checkpoint.pt", torch.device("cpu"))
    assert isinstance(model, toy)


def test_trainer_has_no_model_kind_branches_and_stays_small():
    source = (ROOT / "rrr" / "trainer.py").read_text()
    assert "isinstance" not in source
    for kind in ("Heatmap", "Explainer", "UNet", '"unet"', '"heatmap"', "mt-unet"):
        assert kind not in source, kind
    assert len(source.splitlines()) <= 350


def _tiny_run(out: Path, *extra: str) -> Path:
    assert finetune.main([*TINY, *extra, "--out", str(out)]) == 0
    return out / "checkpoint.pt"


def test_checkpoints_written_before_the_interface_still_load(tmp_path):
    """An old checkpoint: the backend's copy of the weights under ``backend.``, no
    ``relevance`` in its config; it loads and predicts as the new one does."""
    path = _tiny_run(tmp_path / "run", "--method", "gradcam")
    state = load_checkpoint(path)
    old = dict(state)
    model_state = dict(state["model"])
    # what the old HeatmapSegmenter saved: the classifier once more, through captum's layer
    for key, value in state["model"].items():
        if key.startswith("classifier."):
            model_state["backend.model." + key[len("classifier.") :]] = value
    model_state["backend._layer.0.conv1.weight"] = state["model"][
        "classifier.layer4.0.conv1.weight"
    ]
    old["model"] = model_state
    old["config"] = {k: v for k, v in state["config"].items() if k != "relevance"}
    old_path = tmp_path / "old.pt"
    save_checkpoint(old_path, old)
    new_model, _ = load_trained(path, torch.device("cpu"))
    old_model, old_state = load_trained(old_path, torch.device("cpu"))
    assert old_state["run_config"].relevance == "logit"
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(new_model.predict(x), old_model.predict(x))


def test_a_checkpoint_of_another_version_fails_in_one_line(tmp_path, capsys):
    from rrr import evaluate

    path = _tiny_run(tmp_path / "run", "--model", "unet")
    state = load_checkpoint(path)
    state["config"] = {**state["config"], "future_option": 1}
    save_checkpoint(path, state)
    assert evaluate.main(["--checkpoint", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "future_option" in err[0] and "another version" in err[0]


def test_resume_refuses_a_changed_option(tmp_path, capsys):
    out = tmp_path / "run"
    _tiny_run(out, "--model", "unet")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["model"] == "unet"
    code = finetune.main([*TINY, "--model", "mt-unet", "--out", str(out), "--resume"])
    assert code == 2
    assert "--model mt-unet differs" in capsys.readouterr().err


@pytest.mark.parametrize("method", [["--method", "gradcam"], ["--model", "explainer"]])
def test_init_from_starts_another_method_from_the_same_classifier(tmp_path, method):
    """``--init-from`` a classification-only LRP run: the other method's classifier starts
    bitwise equal to it; without the option it does not."""
    from rrr.trainer import Trainer

    given = load_checkpoint(_tiny_run(tmp_path / "pre", "--epochs", "0"))["model"]
    keys = [k for k in given if k.startswith("classifier.")]

    def start(*extra: str) -> dict[str, Tensor]:
        options = [*TINY, *method, "--explainer", "small", "--pretrain-epochs", "0", *extra]
        trainer = Trainer(parse_config(options + ["--out", str(tmp_path / str(len(extra)))]))
        try:
            return trainer.model.state_dict()
        finally:
            trainer.close()

    started = start("--init-from", str(tmp_path / "pre" / "checkpoint.pt"))
    assert keys and all(torch.equal(given[k], started[k]) for k in keys)
    fresh = start()
    assert not all(torch.equal(given[k], fresh[k]) for k in keys)


@pytest.mark.parametrize("presence", ["finetuned", "pretrained"])
@pytest.mark.parametrize("background", ["constant", "neuron"])
def test_predicted_gating_explains_only_the_kept_classes(presence, background):
    """Inference decides presence first and computes only the kept classes' maps: the
    result equals explaining with the classifier's own decision as the labels, and each
    kept map equals that of the all-class path."""
    torch.manual_seed(0)
    config = parse_config(["--presence", presence, "--background", background])
    model = build_segmenter(config, 4).eval()
    model.start_phase("finetune")
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        decider = model.presence_classifier if presence == "pretrained" else model.classifier
        kept = model.class_presence(decider(x))
    assert kept.any() and not kept.all()  # a real test of gating
    calls = []
    original = model.backend._attribute

    def spy(x, logits, index, create_graph):
        calls.append(index.shape[1])
        return original(x, logits, index, create_graph)

    model.backend._attribute = spy
    gated = model(x)
    assert calls == [int(kept.sum(1).max()) + (background == "neuron")]
    assert torch.equal(gated.seg_logits, model(x, kept).seg_logits)
    model.gating = "none"
    every = model(x)
    c = model.num_classes
    assert torch.allclose(gated.maps[:, :c][kept], every.maps[:, :c][kept], atol=1e-6)
    assert torch.equal(gated.maps[:, :c][~kept], torch.zeros_like(gated.maps[:, :c][~kept]))

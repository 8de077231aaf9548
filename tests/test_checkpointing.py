"""Activation checkpointing of the encoder: same gradients, model restored, CLI option."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import TINY_RUN, assert_unchanged, snapshot
from torch import nn

import heatmaps
from heatmaps.base import NormStatisticsCopies
from heatmaps.recomputation import (
    MARK,
    activation_checkpointing,
    default_checkpoint_modules,
    is_checkpointed,
)
from rrr import finetune
from rrr.checkpoint import load_checkpoint
from rrr.config import parse_config
from rrr.trainer import Trainer

TINY = [*TINY_RUN, "--overlays", "0"]


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).double()


def _step(model: nn.Module, method: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """One training step: cross-entropy (+ mean squared map), backward."""
    if method == "classification":
        loss = F.cross_entropy(model(x), y)
    else:
        out = heatmaps.get(method, model).explain(x, y, create_graph=True)
        loss = F.cross_entropy(out.logits, y) + out.maps.square().mean()
    loss.backward()


@pytest.mark.parametrize("method", ["classification", "gradcam", "input_x_gradient"])
def test_same_gradients_and_statistics_with_checkpointing(method):
    """Parameter gradients and BatchNorm statistics as without checkpointing (float64).

    The models are in train mode, so classification updates the BatchNorm
    statistics: the recomputation in the backward pass must not update them a
    second time.
    """
    plain = _resnet18().train()
    wrapped = copy.deepcopy(plain)
    torch.manual_seed(1)
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 4])
    _step(plain, method, x, y)
    with activation_checkpointing(wrapped) as model:
        assert model is wrapped and is_checkpointed(wrapped)
        _step(wrapped, method, x, y)
    for (name, p), q in zip(plain.named_parameters(), wrapped.parameters()):
        assert p.grad is not None and q.grad is not None, name
        assert torch.allclose(p.grad, q.grad, rtol=1e-10, atol=1e-12), name
    for (name, a), b in zip(plain.named_buffers(), wrapped.buffers()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-10, atol=1e-12), name
    if method == "classification":
        assert int(wrapped.layer1[0].bn1.num_batches_tracked) == 1


def _instance_attributes(model: nn.Module) -> dict[str, tuple[list[str], object]]:
    return {
        name: (sorted(module.__dict__), module.__dict__.get("forward"))
        for name, module in model.named_modules()
    }


def test_model_restored_after_the_context_and_after_an_exception():
    model = _resnet18().eval()
    own_forward = model.layer2.forward  # a forward the user set on the instance stays
    model.layer2.forward = own_forward
    before = _instance_attributes(model)
    keys = list(model.state_dict())
    with activation_checkpointing(model):
        assert getattr(model.layer1.__dict__["forward"], MARK) is True
        assert model.layer2.__dict__["forward"] is not own_forward
        assert "forward" not in model.conv1.__dict__
        assert list(model.state_dict()) == keys
    assert _instance_attributes(model) == before
    assert not is_checkpointed(model)

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom):
        with activation_checkpointing(model, ["layer1", "layer3.0"]):
            assert is_checkpointed(model)
            model(torch.rand(1, 3, 32, 32, dtype=torch.float64))
            raise Boom
    assert _instance_attributes(model) == before
    assert model.layer2.forward is own_forward
    assert not is_checkpointed(model)


def test_bad_module_names_raise():
    model = _resnet18()
    with pytest.raises(ValueError, match="'layer5'.*'head'"):
        with activation_checkpointing(model, ["layer1", "layer5", "head"]):
            pass
    with pytest.raises(ValueError, match="'layer1.0'"):
        with activation_checkpointing(model, ["layer1", "layer1.0"]):
            pass
    with activation_checkpointing(model, ["layer1"]):
        with pytest.raises(ValueError, match="already checkpointed"):
            with activation_checkpointing(model, ["layer1"]):
                pass
    assert not is_checkpointed(model)


def test_default_checkpoint_modules():
    assert default_checkpoint_modules(torchvision.models.resnet18()) == [
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    vgg = torchvision.models.vgg11()
    convs = [f"features.{i}" for i, m in enumerate(vgg.features) if isinstance(m, nn.Conv2d)]
    assert default_checkpoint_modules(vgg) == convs == [
        "features.0", "features.3", "features.6", "features.8",
        "features.11", "features.13", "features.16", "features.18",
    ]  # fmt: skip

    class TinyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

    with pytest.raises(ValueError, match="TinyNet.*pass the names"):
        default_checkpoint_modules(TinyNet())


@pytest.mark.parametrize("training_only", [False, True])
def test_norm_statistics_copies_swap_and_restore(training_only):
    """The one swap of running statistics used by heatmap calls and by the recomputation."""
    model = nn.Sequential(nn.BatchNorm2d(2), nn.BatchNorm2d(2), nn.InstanceNorm2d(2)).train()
    model[1].eval()
    originals = {
        name: buffer for name, buffer in model.named_buffers() if not name.startswith("2.")
    }
    values = {name: buffer.clone() for name, buffer in originals.items()}
    copies = NormStatisticsCopies(model, training_only=training_only)
    with copies:
        swapped = {name for name, b in model.named_buffers() if b is not originals.get(name)}
        expected = {n for n in originals if not (training_only and n.startswith("1."))}
        assert swapped == expected
        model(torch.rand(3, 2, 4, 4))
        with copies:  # re-entered, as by a double backward pass recomputing twice
            model(torch.rand(3, 2, 4, 4))
        assert {n for n, b in model.named_buffers() if b is not originals.get(n)} == expected
    assert all(b is originals[n] for n, b in model.named_buffers() if n in originals)
    assert all(torch.equal(originals[n], values[n]) for n in originals)


def _run(out, *extra: str) -> int:
    return finetune.main([*TINY, "--arch", "resnet18", "--out", str(out), *extra])


def test_cli_gradcam_run_with_checkpointing_trains_the_same_weights(tmp_path):
    """Same final weights and state_dict keys as the run without the option."""
    assert _run(tmp_path / "plain", "--method", "gradcam") == 0
    assert _run(tmp_path / "ckpt", "--method", "gradcam", "--checkpoint-activations") == 0
    plain = load_checkpoint(tmp_path / "plain" / "checkpoint.pt")
    ckpt = load_checkpoint(tmp_path / "ckpt" / "checkpoint.pt")
    assert ckpt["config"]["checkpoint_activations"] is True
    assert list(ckpt["model"]) == list(plain["model"])
    for key, value in plain["model"].items():
        assert torch.allclose(ckpt["model"][key].double(), value.double(), atol=1e-6), key


def test_cli_refuses_lrp_with_checkpointing(tmp_path, capsys):
    out = tmp_path / "lrp"
    assert _run(out, "--method", "lrp", "--checkpoint-activations") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("rrr.finetune: error: --checkpoint-activations")
    assert "--method lrp" in err[0]
    assert not out.exists()


def test_trainer_restores_the_encoder_after_a_failed_run(tmp_path, monkeypatch):
    config = parse_config(
        [*TINY, "--method", "gradcam", "--checkpoint-activations", "--out", str(tmp_path)]
    )
    trainer = Trainer(config)
    seen = []

    def failing_step(batch, phase):
        seen.append(is_checkpointed(trainer.model.classifier))
        raise FloatingPointError("stop")

    monkeypatch.setattr(trainer, "step", failing_step)
    try:
        with pytest.raises(FloatingPointError):
            trainer.run()
    finally:
        trainer.close()
    assert seen == [True]
    assert not is_checkpointed(trainer.model)


def test_lrp_refuses_a_checkpointed_model_and_leaves_it_as_it_was():
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.rand(1, 3, 32, 32)
    with activation_checkpointing(model):
        before = snapshot(model)
        with pytest.raises(RuntimeError, match="activation_checkpointing"):
            heatmaps.LRPHeatmap(model)(x, 0)
        assert_unchanged(before, snapshot(model))
    assert heatmaps.LRPHeatmap(model)(x, 0).shape == (1, 1, 32, 32)

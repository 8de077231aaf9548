"""Shared fixtures: small models with every feature the backends must handle."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision
from torch import nn

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

#: options of a tiny but complete ``rrr.finetune`` run (1 + 1 epochs of 2 steps on 24 scenes
#: at 32 px); tests add ``--overlays`` and what they vary
TINY_RUN = [
    "--image-size", "32", "--train-images", "24", "--val-images", "8",
    "--pretrain-epochs", "1", "--epochs", "1", "--steps-per-epoch", "2",
    "--batch-size", "4", "--pixel-labels", "4", "--no-progress",
]  # fmt: skip


class SmallResNet(nn.Module):
    """Conv + BatchNorm + in-place ReLU + max-pool + a residual block + GAP + Linear."""

    def __init__(self, num_classes: int = 5, width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.relu(self.bn1(self.conv1(x))))
        h = self.relu2(self.bn2(self.conv2(h)) + h)
        return self.fc(self.gap(h).flatten(1))


def randomize_batchnorm(model: nn.Module, eps: float | None = None) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                c = module.num_features
                module.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
                module.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                module.bias.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
            if eps is not None:
                module.eps = eps
    return model


@pytest.fixture
def small_model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(SmallResNet()).double().eval()


@pytest.fixture
def small_input() -> torch.Tensor:
    return torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="session")
def resnet18_double() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    return randomize_batchnorm(model).double().eval()


def count_hooks(model: nn.Module) -> dict[str, int]:
    """Every kind of hook a backend could leave on a model or its parameters."""
    counts = {"forward": 0, "forward_pre": 0, "backward": 0, "backward_pre": 0, "tensor": 0}
    for module in model.modules():
        counts["forward"] += len(module._forward_hooks)
        counts["forward_pre"] += len(module._forward_pre_hooks)
        counts["backward"] += len(module._backward_hooks)
        counts["backward_pre"] += len(module._backward_pre_hooks)
    for param in model.parameters():
        counts["tensor"] += len(param._backward_hooks or {})
        counts["tensor"] += len(getattr(param, "_post_accumulate_grad_hooks", None) or {})
    return counts


def snapshot(model: nn.Module) -> dict[str, object]:
    """Everything the hygiene contract promises not to change."""
    return {
        "hooks": count_hooks(model),
        "modes": [m.training for m in model.modules()],
        "flags": [p.requires_grad for p in model.parameters()],
        "params": [(id(p), p.detach().clone(), p._version) for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "grads": [p.grad for p in model.parameters()],
        "modules": [type(m).__name__ for m in model.modules()],
        "attrs": [sorted(m.__dict__) for m in model.modules()],
    }


def assert_unchanged(before: dict, after: dict) -> None:
    assert after["hooks"] == before["hooks"]
    assert after["modes"] == before["modes"]
    assert after["flags"] == before["flags"]
    assert after["modules"] == before["modules"]
    assert after["attrs"] == before["attrs"]
    assert all(g is None for g in after["grads"])
    for (id0, v0, ver0), (id1, v1, ver1) in zip(before["params"], after["params"]):
        assert id0 == id1, "a parameter object was replaced"
        assert torch.equal(v0, v1), "a parameter value changed"
        assert ver0 == ver1, "a parameter was written in place (version counter moved)"
    for b0, b1 in zip(before["buffers"], after["buffers"]):
        assert torch.equal(b0, b1)

"""Calling a heatmap never changes the model, also when the call fails."""

from __future__ import annotations

import pytest
import torch
import torchvision
from backends import BACKENDS
from conftest import assert_unchanged, snapshot
from torch import nn

import heatmaps
from heatmaps import registry


@pytest.fixture(params=["small", "resnet18"])
def model(request, small_model):
    if request.param == "small":
        return small_model
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).double().eval()


def _input(model):
    size = 8 if not isinstance(model, torchvision.models.ResNet) else 32
    return torch.rand(2, 3, size, size, dtype=torch.float64)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("create_graph", [False, True])
def test_call_leaves_model_untouched(backend, create_graph, model):
    x = _input(model)
    # an autograd graph the user built before the call must stay valid
    pending = model(x).square().sum()
    model.layer1.train() if hasattr(model, "layer1") else model.bn1.train()
    model.fc.bias.requires_grad_(False)
    before = snapshot(model)
    heatmap = BACKENDS[backend](model)
    out = heatmap.explain(x, torch.tensor([1, 2]), create_graph=create_graph)
    assert out.maps.shape == (2, 1, *x.shape[-2:])
    assert_unchanged(before, snapshot(model))
    pending.backward()  # would raise if a saved parameter had been written in place
    assert model.conv1.weight.grad is not None


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_exception_inside_call_leaves_model_untouched(backend, model):
    x = _input(model)
    before = snapshot(model)
    heatmap = BACKENDS[backend](model)
    with pytest.raises(ValueError, match="out of range"):
        heatmap(x, torch.tensor([1, 99]))  # raised after the forward pass, hooks attached
    assert_unchanged(before, snapshot(model))

    class Boom(RuntimeError):
        pass

    def explode(module, args, output):
        raise Boom("failure in the middle of the forward pass")

    handle = model.fc.register_forward_hook(explode)
    before = snapshot(model)
    with pytest.raises(Boom):
        heatmap(x, 1)
    assert_unchanged(before, snapshot(model))
    handle.remove()


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_inputs_untouched_and_inplace_relus(backend):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    x_copy = x.clone()
    maps = BACKENDS[backend](model)(x, "all", create_graph=True)
    assert maps.shape == (2, 3, 8, 8)
    assert torch.equal(x, x_copy)
    assert not x.requires_grad and x.grad is None


def test_optimizer_built_before_the_call_keeps_training(small_model, small_input):
    """Parameters keep their identity, so an existing optimizer sees the gradients."""
    from heatmaps import LRPHeatmap

    ids = [id(p) for p in small_model.parameters()]
    optimizer = torch.optim.SGD(small_model.parameters(), lr=0.1)
    heatmap = LRPHeatmap(small_model, composite="epsilon_plus_flat")
    for _ in range(2):
        optimizer.zero_grad()
        heatmap(small_input, 1, create_graph=True).square().sum().backward()
        assert all(p.grad is not None for p in small_model.parameters())
        optimizer.step()
    assert ids == [id(p) for p in small_model.parameters()]


def test_every_builtin_backend_is_checked_here(small_model):
    """A built-in backend registers itself when defined; this keeps it from skipping the checks.

    ``ExplainerHeatmap`` needs an Explainer network and has its own hygiene test
    in ``tests/test_explainer.py``.
    """
    builtin = {
        factory
        for factory in registry._BACKENDS.values()
        if isinstance(factory, type) and factory.__module__.startswith("heatmaps.")
    }
    covered = {type(make(small_model)) for make in BACKENDS.values()}
    assert builtin - covered == {heatmaps.ExplainerHeatmap}

"""Calling a heatmap never changes the model, also when the call fails."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torchvision
from backends import BACKENDS
from conftest import SmallResNet, assert_unchanged, randomize_batchnorm, snapshot
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
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
    if backend.startswith("lrp"):
        # LRP refuses train-mode BatchNorm (tests/test_bad_inputs_library.py); train the
        # rest with frozen BatchNorm, as rrr.segmenters.freeze_batchnorm does
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
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


# -- property: any call, any failure, the model is left as it was ---------------------------
TARGET_FORMS = ("none", "int", "per_sample", "per_sample_k", "multi_hot", "all")
MODES = ("eval", "train", "train_frozen_bn")
FROZEN = ("none", "fc", "all")


class Boom(RuntimeError):
    """The exception injected from a forward hook."""


def _hygiene_model(head_bn: bool) -> nn.Module:
    """SmallResNet (float64), optionally with a BatchNorm1d in its head.

    The head's BatchNorm1d sees one value per channel in a batch of one, so in
    train mode a batch of one is an error there.
    """
    torch.manual_seed(0)
    model = randomize_batchnorm(SmallResNet())
    if head_bn:
        model.fc = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 5))
    return model.double()


def _targets(form: str, batch: int, num_classes: int = 5) -> tuple[object, int]:
    """``targets`` of the given form for ``batch`` samples, and the number of maps ``K``."""
    rows = torch.arange(batch)
    if form == "none":
        return None, 1
    if form == "int":
        return 3, 1
    if form == "per_sample":
        return rows % num_classes, 1
    if form == "per_sample_k":
        return torch.stack([rows % num_classes, (rows + 2) % num_classes], dim=1), 2
    if form == "multi_hot":
        hot = torch.zeros(batch, num_classes, dtype=torch.bool)
        hot[rows, rows % num_classes] = True
        hot[0, 4] = True
        if batch > 2:
            hot[2] = False  # a sample with no class present
        return hot, num_classes
    return "all", num_classes


def _expected_error(
    backend: str, mode: str, head_bn: bool, batch: int, inject: int | None, leaves: list[nn.Module]
) -> tuple[type[BaseException], str] | None:
    """The error a call must raise for these settings, or ``None``."""
    if backend.startswith("lrp") and mode == "train":
        return ValueError, r"^LRPHeatmap: BatchNorm layer .* is in training mode"
    one_value = head_bn and batch == 1 and mode == "train"
    head_bn_index = len(leaves) - 2  # fc.0, the head's BatchNorm1d (a forward hook runs after it)
    if inject is not None and not (one_value and inject >= head_bn_index):
        return Boom, "^injected"
    if one_value:
        return ValueError, r"^batch of one: BatchNorm layer 'fc\.0' is in training mode"
    return None


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    backend=st.sampled_from(sorted(BACKENDS)),
    form=st.sampled_from(TARGET_FORMS),
    batch=st.integers(1, 3),
    mode=st.sampled_from(MODES),
    frozen=st.sampled_from(FROZEN),
    head_bn=st.booleans(),
    create_graph=st.booleans(),
    inject=st.one_of(st.none(), st.integers(0, 10)),
)
def test_property_any_call_leaves_the_model_as_it_was(
    backend: str,
    form: str,
    batch: int,
    mode: str,
    frozen: str,
    head_bn: bool,
    create_graph: bool,
    inject: int | None,
) -> None:
    """Backends x target forms x batch sizes x modes x create_graph x an injected failure.

    After the call, or the exception, the model has no extra hooks, the same
    modes and ``requires_grad`` flags, bitwise-equal parameters and buffers and
    unchanged version counters (``snapshot``/``assert_unchanged``).
    """
    model = _hygiene_model(head_bn)
    model.train(mode != "eval")
    if mode == "train_frozen_bn":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    if frozen != "none":
        frozen_params = model.parameters() if frozen == "all" else model.fc.parameters()
        for param in frozen_params:
            param.requires_grad_(False)
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    inject = None if inject is None else inject % len(leaves)
    handle = None
    if inject is not None:

        def explode(module: nn.Module, args: tuple, output: object) -> None:
            raise Boom("injected failure in the middle of the forward pass")

        handle = leaves[inject].register_forward_hook(explode)
    x = torch.rand(batch, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    targets, k = _targets(form, batch)
    before = snapshot(model)
    heatmap = BACKENDS[backend](model)
    expected = _expected_error(backend, mode, head_bn, batch, inject, leaves)
    event(f"outcome: {expected[0].__name__ if expected else 'maps'}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum's "did not already require gradients"
        if expected is None:
            out = heatmap.explain(x, targets, create_graph=create_graph)
            assert out.maps.shape == (batch, k, 8, 8)
        else:
            with pytest.raises(expected[0]) as info:
                heatmap.explain(x, targets, create_graph=create_graph)
            assert re.search(expected[1], str(info.value)), str(info.value)
    assert_unchanged(before, snapshot(model))
    if handle is not None:
        handle.remove()

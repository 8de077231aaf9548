"""Merged weights are recomputed in the backward pass, not kept, and user hooks still apply."""

from __future__ import annotations

import contextlib
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import heatmaps
from heatmaps.lrp.saved_weights import WeightRecipes


def _merged_conv():
    gen = torch.Generator().manual_seed(0)
    weight = nn.Parameter(torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=gen))
    scale = torch.rand(4, dtype=torch.float64, generator=gen).requires_grad_(True)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    return weight, scale, x


def _step(weight, scale, x, hooks: bool):
    index = (slice(None), None, None, None)
    merged = weight * scale[index]
    alive = weakref.ref(merged)
    recipes = WeightRecipes()
    if hooks:
        scale_values = scale.detach()
        recipes.remember(merged, lambda: weight * scale_values[index])
    with recipes.saving() if hooks else contextlib.nullcontext():
        y = F.conv2d(x, merged)
        # a differentiable backward inside, as in an LRP call: it keeps the weight a second time
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)
    del merged
    gc.collect()
    freed = alive() is None
    loss = y.square().sum() + g.square().sum()
    return torch.autograd.grad(loss, [weight, scale, x]), freed


def test_merged_weight_is_freed_and_gradients_are_unchanged():
    weight, scale, x = _merged_conv()
    expected, kept_freed = _step(weight, scale, x, hooks=False)
    actual, freed = _step(weight, scale, x, hooks=True)
    assert not kept_freed  # without the hooks autograd keeps the merged weight
    assert freed
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_enclosing_hooks_still_see_every_other_tensor():
    weight, scale, x = _merged_conv()
    packed: list[torch.Tensor] = []
    unpacked: list[int] = []

    def pack(tensor):
        packed.append(tensor)
        return ("user", tensor)

    def unpack(value):
        unpacked.append(1)
        return value[1]

    expected, _ = _step(weight, scale, x, hooks=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        actual, freed = _step(weight, scale, x, hooks=True)
    assert freed
    assert packed and unpacked
    # the user's hooks saw x but never the merged weight
    assert any(t.shape == x.shape for t in packed)
    assert all(t.shape != weight.shape or t.data_ptr() == weight.data_ptr() for t in packed)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_lrp_training_step_leaves_no_saved_tensor_hooks(small_model, small_input):
    top = torch._C._autograd._top_saved_tensors_default_hooks
    heatmap = heatmaps.LRPHeatmap(small_model, composite="epsilon")
    out = heatmap.explain(small_input, 1, create_graph=True)
    assert top(False) is None
    (out.maps.square().sum() + out.logits.sum()).backward()
    try:
        heatmap.explain(small_input, 99)  # an invalid class index raises inside the call
    except (IndexError, ValueError):
        pass
    assert top(False) is None


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat", "epsilon_alpha2_beta1"])
def test_lrp_call_saves_no_computed_weight(small_model, small_input, composite):
    """Merged and rule-modified weights reach the backward pass as recipes only.

    (Not ``epsilon_gamma_box``: zennit's gamma modifier ``w + gamma * max(w, 0)``
    makes autograd keep its intermediate ``max(w, 0)``, which is not ours to replace.)
    """
    parameters = {p.data_ptr() for p in small_model.parameters()}
    shapes = {tuple(p.shape) for p in small_model.parameters() if p.dim() > 1}
    seen: list[torch.Tensor] = []

    def pack(tensor):
        seen.append(tensor)
        return tensor

    heatmap = heatmaps.LRPHeatmap(small_model, composite=composite)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = heatmap.explain(small_input, torch.tensor([[1, 3], [0, 2]]), create_graph=True)
    computed = [t for t in seen if tuple(t.shape) in shapes and t.data_ptr() not in parameters]
    assert not computed
    # and the step's gradients are those of a run without the user's hooks
    grads = torch.autograd.grad(out.maps.square().sum(), list(small_model.parameters()))
    again = heatmap.explain(small_input, torch.tensor([[1, 3], [0, 2]]), create_graph=True)
    expected = torch.autograd.grad(again.maps.square().sum(), list(small_model.parameters()))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_a_call_without_graph_leaves_no_graph_behind():
    """Saved tensors are kept as detached aliases: a node saving its own output (a ReLU)
    would otherwise hold itself through its saved output, and nothing would free the graph."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    ).eval()
    x = torch.rand(2, 3, 8, 8)
    heatmap = heatmaps.LRPHeatmap(model, composite="epsilon")
    live = weakref.WeakSet()

    def remember(mod, args, out):
        live.add(out)

    handle = model[2].register_forward_hook(remember)
    try:
        for _ in range(3):
            heatmap(x, 1)
    finally:
        handle.remove()
    gc.collect()
    assert len(live) == 0, f"{len(live)} ReLU outputs of finished calls are still alive"

"""A loss on heatmaps trains the model."""

from __future__ import annotations

import pytest
import torch
from backends import BACKENDS


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat"])
def test_loss_on_lrp_maps_decreases_over_20_sgd_steps(composite, small_model, small_input):
    """Push the relevance of class 1 out of the right half of the image (RRR-style loss)."""
    from heatmaps import LRPHeatmap

    model = small_model
    # built before the first call; 0.05 since the residual `+` gets the sum rule (its LRP
    # maps put less on the biases' paths, and the loss falls more slowly per step at 0.03)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    heatmap = LRPHeatmap(model, composite=composite)
    outside = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    outside[..., 4:] = 1.0
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        maps = heatmap(small_input, 1, create_graph=True)
        loss = (maps * outside).square().sum()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_backend_gives_parameter_gradients(backend, small_model, small_input):
    out = BACKENDS[backend](small_model).explain(small_input, 1, create_graph=True)
    grads = torch.autograd.grad(
        out.maps.square().sum(), list(small_model.parameters()), allow_unused=True
    )
    grads = [g for g in grads if g is not None]
    assert any(g.abs().sum() > 0 for g in grads)
    assert out.logits.requires_grad  # the same forward pass serves the classification loss

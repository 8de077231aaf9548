"""Maps' gradients w.r.t. parameters match finite differences (float64).

For a random direction ``v`` in parameter space, the directional derivative of
``f(theta) = sum(maps(theta) * W)`` by a fourth-order central difference
``(-f(2h) + 8 f(h) - 8 f(-h) + f(-2h)) / 12h`` must equal ``<grad f, v>`` from
``create_graph=True`` autograd. Epsilon-rule maps have large higher derivatives
near small denominators, hence the fourth-order stencil and ``h = 1e-6``.
"""

from __future__ import annotations

import pytest
import torch
from backends import BACKENDS
from torch import nn

import heatmaps

TOLERANCE = 1e-6


def directional_check(
    heatmap, x: torch.Tensor, targets, params: list[nn.Parameter], directions: int = 3
) -> float:
    gen = torch.Generator().manual_seed(7)
    maps = heatmap(x, targets, create_graph=True)
    weights = torch.randn(maps.shape, dtype=maps.dtype, generator=gen)
    grads = torch.autograd.grad((maps * weights).sum(), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    originals = [p.detach().clone() for p in params]
    worst = 0.0
    h = 1e-6
    for _ in range(directions):
        vs = [torch.randn(p.shape, dtype=p.dtype, generator=gen) for p in params]
        norm = torch.sqrt(sum((v**2).sum() for v in vs))
        vs = [v / norm for v in vs]
        analytic = sum((g * v).sum() for g, v in zip(grads, vs)).item()

        def f(step: float, vs: list = vs) -> float:
            with torch.no_grad():
                for p, p0, v in zip(params, originals, vs):
                    p.copy_(p0 + step * v)
            value = (heatmap(x, targets) * weights).sum().item()
            with torch.no_grad():
                for p, p0 in zip(params, originals):
                    p.copy_(p0)
            return value

        numeric = (-f(2 * h) + 8 * f(h) - 8 * f(-h) + f(-2 * h)) / (12 * h)
        scale = max(abs(numeric), abs(analytic), 1e-3)
        worst = max(worst, abs(numeric - analytic) / scale)
    return worst


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_small_net_all_parameters(backend, small_model, small_input):
    heatmap = BACKENDS[backend](small_model)
    targets = torch.tensor([[1, 3], [0, 2]])
    error = directional_check(heatmap, small_input, targets, list(small_model.parameters()))
    assert error <= TOLERANCE, f"{backend}: relative error {error:.2e}"


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_resnet18_first_conv_bn_and_last_linear(backend, resnet18_double):
    model = resnet18_double
    heatmap = BACKENDS[backend](model)
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for name, param in [
        ("first conv", model.conv1.weight),
        ("BatchNorm weight", model.layer2[0].bn1.weight),
        ("last Linear", model.fc.weight),
    ]:
        error = directional_check(heatmap, x, torch.tensor([2]), [param], directions=1)
        assert error <= TOLERANCE, f"{backend}, {name}: relative error {error:.2e}"


def test_input_gradient_of_lrp_matches_finite_differences(small_model, small_input):
    """Maps are also differentiable w.r.t. the input (gradcheck on a random direction)."""
    from heatmaps import LRPHeatmap

    heatmap = LRPHeatmap(small_model, composite="epsilon_plus_flat")
    x = small_input.clone().requires_grad_(True)

    def fn(inp):
        return heatmap(inp, torch.tensor([1, 2]), create_graph=True)

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


class _ZennitAsShipped(nn.Module):
    """zennit's own attributor with create_graph=True: the thing LRPHeatmap fixes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, targets, create_graph: bool = False):
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlusFlat
        from zennit.torchvision import ResNetCanonizer

        composite = EpsilonPlusFlat(canonizers=[ResNetCanonizer()])
        with Gradient(self.model, composite, create_graph=create_graph) as attributor:
            out = self.model(x)
            _, relevance = attributor(x, torch.eye(out.shape[1], dtype=x.dtype)[targets])
        return relevance.sum(1, keepdim=True)


def test_the_check_catches_zennit_as_shipped(resnet18_double):
    """The finite-difference check has teeth: zennit's own gradients fail it."""
    model = resnet18_double
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    error = directional_check(
        _ZennitAsShipped(model), x, torch.tensor([2]), [model.layer2[0].conv1.weight], 1
    )
    assert error > 1e-2


@pytest.mark.parametrize("targets", [torch.tensor([1, 0]), torch.tensor([[1, 3], [0, 2]])])
def test_zplus_on_signed_input(small_model, small_input, targets):
    """z+ on the first convolution sees negative inputs: both of its terms are computed."""
    heatmap = heatmaps.LRPHeatmap(small_model, composite="epsilon_plus")
    x = small_input - 0.5
    error = directional_check(heatmap, x, targets, list(small_model.parameters()))
    assert error <= TOLERANCE, f"relative error {error:.2e}"

"""The convolution input gradient with a hand-written derivative, against autograd and finite differences."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from heatmaps.lrp.conv_relevance import ConvGeometry, conv_forward, conv_input_gradient

CONVS = {
    "conv2d stride 2, padding 1": lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1),
    "conv1d dilation 2, groups 2": lambda: nn.Conv1d(4, 6, 3, dilation=2, padding=2, groups=2),
    "conv3d anisotropic stride": lambda: nn.Conv3d(2, 4, 2, stride=(1, 2, 1)),
    "depthwise conv2d": lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4),
    "conv2d 1x1 stride 2, no bias": lambda: nn.Conv2d(4, 8, 1, stride=2, bias=False),
    "conv2d 3x3 on 12x12 (own kernels)": lambda: nn.Conv2d(3, 5, 3, padding=1),
    "conv2d dilation 2 (unfolded)": lambda: nn.Conv2d(3, 5, 3, dilation=2),
    "conv2d 3x3 padding 1 (double backward)": lambda: nn.Conv2d(3, 5, 3, padding=1, bias=False),
}
# which route ConvGeometry.derivatives takes (1x1 kernels: always the own kernels)
ROUTES = {
    "conv2d stride 2, padding 1": "unfolded",  # 4x4 output
    "conv2d dilation 2 (unfolded)": "unfolded",  # 3x3 output
    "conv2d 3x3 padding 1 (double backward)": "double backward",  # 7x7 output
    "conv1d dilation 2, groups 2": "double backward",
    "depthwise conv2d": "double backward",
    "conv2d 3x3 on 12x12 (own kernels)": "own kernels",
}


def _case(name: str, batched: bool = True):
    torch.manual_seed(0)
    module = CONVS[name]().double()
    spatial = [12 if "12x12" in name else 7] * (module.weight.dim() - 2)
    shape = [2, module.in_channels, *spatial] if batched else [module.in_channels, *spatial]
    x = torch.randn(shape, dtype=torch.float64)
    r = torch.randn_like(module(x), requires_grad=True)
    weight = module.weight.detach().clone().requires_grad_(True)
    return module, x, r, weight


@pytest.mark.parametrize("name", sorted(CONVS))
def test_values_and_derivatives_equal_autograd(name):
    module, x, r, weight = _case(name)
    geometry = ConvGeometry.of(module)
    assert geometry is not None
    inp = x.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(
        module._conv_forward(inp, weight, None), inp, r, create_graph=True
    )
    ours = conv_input_gradient(r, x, weight, geometry)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    s = torch.randn_like(ours)
    expected = torch.autograd.grad(reference, [r, weight], s)
    got = torch.autograd.grad(ours, [r, weight], s)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CONVS))
@pytest.mark.parametrize("batched", [True, False])
def test_derivatives_match_finite_differences(name, batched):
    module, x, r, weight = _case(name, batched)
    geometry = ConvGeometry.of(module)
    assert torch.autograd.gradcheck(
        lambda r, w: conv_input_gradient(r, x, w, geometry), (r, weight), eps=1e-6, atol=1e-8
    )


@pytest.mark.parametrize(
    "module",
    [
        nn.Conv2d(2, 2, 3, padding="same"),
        nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
        nn.ConvTranspose2d(2, 2, 3),
        nn.Linear(2, 2),
    ],
    ids=["padding same", "reflect padding", "transposed", "linear"],
)
def test_other_layers_have_no_geometry(module):
    """Only zero-padded convolutions with integer padding take the fast path."""
    assert ConvGeometry.of(module) is None


def test_overridden_forward_has_no_geometry():
    module = nn.Conv2d(2, 2, 3)
    module.forward = lambda x: x  # e.g. a canonizer's replacement
    assert ConvGeometry.of(module) is None


def test_benchmark_script_runs_at_small_size():
    """benchmarks/conv_double_backward.py measures every convolution of the model."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from conv_double_backward import run, table

    results = run(["resnet18"], batch=2, size=32, repeats=1, device=torch.device("cpu"))
    assert len(results["resnet18"]["layers"]) == 20
    assert results["resnet18"]["ratio"] > 0
    assert "| resnet18 |" in table(results, layers=True)


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_each_route_is_covered(name, monkeypatch):
    """The cases above exercise every route of ``ConvGeometry.derivatives``."""
    module, x, r, weight = _case(name)
    geometry = ConvGeometry.of(module)
    taken = []
    unfolded = ConvGeometry._unfolded_derivatives
    monkeypatch.setattr(
        ConvGeometry,
        "_unfolded_derivatives",
        lambda self, *a: taken.append("unfolded") or unfolded(self, *a),
    )
    double = torch.ops.aten._convolution_double_backward
    monkeypatch.setattr(
        torch.ops.aten,
        "_convolution_double_backward",
        lambda *a: taken.append("double backward") or double(*a),
        raising=False,
    )
    out = conv_input_gradient(r, x, weight, geometry)
    torch.autograd.grad(out, [r, weight], torch.randn_like(out))
    assert taken == ([] if ROUTES[name] == "own kernels" else [ROUTES[name]])


@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv_forward_equals_autograd(name):
    """``ConvForward`` (recomputed z+ layers): values and all three gradients equal autograd's."""
    module, x, _, weight = _case(name)
    geometry = ConvGeometry.of(module)
    bias = module.bias.detach().clone().requires_grad_(True) if module.bias is not None else None
    inp = x.clone().requires_grad_(True)
    leaves = [t for t in (inp, weight, bias) if t is not None]
    reference = module._conv_forward(inp, weight, bias)
    ours = conv_forward(inp, weight, bias, geometry)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    g = torch.randn_like(ours)
    for a, b in zip(
        torch.autograd.grad(ours, leaves, g), torch.autograd.grad(reference, leaves, g)
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda *t: conv_forward(t[0], t[1], t[2] if len(t) > 2 else None, geometry),
        tuple(leaves),
        eps=1e-6,
        atol=1e-8,
    )

"""Second derivatives through layers PyTorch lacks them for (heatmaps.double_backward).

MobileNetV3 (Hardsigmoid, Hardswish), ViT (fused attention) and Swin V2 (cosine
attention on padded windows) get exact ``create_graph=True`` maps from every
gradient backend and Grad-CAM: float64 finite differences of a loss on the maps
w.r.t. parameters agree with autograd; the model and the input are left as
they were; an operation without a second derivative that is not substituted
raises one error naming the layer and the backend.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import assert_unchanged, randomize_batchnorm, snapshot
from test_gradcheck import directional_check
from torch import nn
from torch.nn.attention import SDPBackend
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

import heatmaps
from heatmaps import double_backward

#: the issue's bound for the finite-difference check of every family
TOLERANCE = 1e-5

#: the non-LRP backends, with deterministic and small options
BACKENDS = {
    "saliency": lambda m: heatmaps.SaliencyHeatmap(m),
    "input_x_gradient": lambda m: heatmaps.InputXGradientHeatmap(m),
    "integrated_gradients": lambda m: heatmaps.IntegratedGradientsHeatmap(m, n_steps=2),
    "smoothgrad": lambda m: heatmaps.SmoothGradHeatmap(m, samples=2, seed=0),
    # without the ReLU: maps that are zero everywhere would pass any gradient check
    "gradcam-captum": lambda m: heatmaps.GradCAMHeatmap(m, closed_form=False, relu=False),
}


def _head_random(model: nn.Module) -> nn.Module:
    """ViT zero-initialises its head, which makes every map zero: give it random weights."""
    gen = torch.Generator().manual_seed(5)
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features == 5:
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
    return model


def tiny_mobilenet_v3() -> nn.Module:
    """MobileNetV3 with Hardsigmoid gates and Hardswish, its linear layers at PyTorch's default init.

    (torchvision's ``N(0, 0.01)`` for the two head layers makes maps of ~1e-9, too small
    for the finite-difference check to mean anything.)
    """
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=5, width_mult=0.25)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()
    return randomize_batchnorm(model).double().eval()


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=5,
    )  # fmt: skip
    return _head_random(model).double().eval()


def tiny_swin_v2() -> nn.Module:
    """Swin V2 whose 8 x 8 tokens get padded to 3 x 3 windows (zero keys: normalize's NaN)."""
    torch.manual_seed(0)
    model = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[3, 3],
        num_classes=5, block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2,
    )  # fmt: skip
    return model.double().eval()


MODELS = {"mobilenet_v3": tiny_mobilenet_v3, "vit": tiny_vit, "swin_v2": tiny_swin_v2}


def _sampled_parameters(model: nn.Module, count: int = 4) -> list[nn.Parameter]:
    """A few weight matrices or kernels spread over the depth of the model (first to last)."""
    params = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    picks = torch.linspace(0, len(params) - 1, count).round().long().unique()
    return [params[i] for i in picks]


def normalised(heatmap: heatmaps.Heatmap, x: torch.Tensor, targets: torch.Tensor):
    """``heatmap`` scaled to maps of order one on ``x``, for :func:`directional_check`.

    The check's relative error has a floor of 1e-3 in its denominator, under which
    derivatives of tiny maps (1e-8 on a randomly initialised MobileNetV3) would pass unseen.
    """
    maps = heatmap(x, targets)
    assert bool(maps.any()), "all-zero maps check nothing"
    scale = 1.0 / float(maps.abs().max())

    def scaled(inp: torch.Tensor, t: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        return heatmap(inp, t, create_graph=create_graph) * scale

    return scaled


def _input(seed: int = 3) -> torch.Tensor:
    return torch.rand(
        1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_maps_match_finite_differences(family, backend):
    model = MODELS[family]()
    x, targets = _input(), torch.tensor([2])
    heatmap = normalised(BACKENDS[backend](model), x, targets)
    params = _sampled_parameters(model)
    error = directional_check(heatmap, x, targets, params, directions=1)
    assert error <= TOLERANCE, f"{family}, {backend}: relative error {error:.2e}"


@pytest.mark.parametrize("family", sorted(MODELS))
def test_every_parameter_gets_a_finite_gradient(family):
    """No NaN from a missing or ill-defined second derivative, no silently dropped gradient."""
    model = MODELS[family]()
    maps = heatmaps.InputXGradientHeatmap(model)(_input(), torch.tensor([1]), create_graph=True)
    named = [(n, p) for n, p in model.named_parameters()]
    grads = torch.autograd.grad(maps.square().sum(), [p for _, p in named], allow_unused=True)
    assert all(g is None or bool(torch.isfinite(g).all()) for g in grads)
    # only biases of the head and of the last norm cannot move an input gradient of the logit
    zero = [n for (n, _), g in zip(named, grads) if g is None or not bool(g.any())]
    assert all(n.endswith("bias") for n in zero), zero


@pytest.mark.parametrize("family", sorted(MODELS))
def test_model_and_input_left_as_they_were(family):
    model = MODELS[family]()
    model.train()  # modes must come back as they were, dropout included
    x = torch.cat([_input(3), _input(4)])
    x_before = x.clone()
    before = snapshot(model)
    for backend in sorted(BACKENDS):
        BACKENDS[backend](model)(x, torch.tensor([0, 1]), create_graph=True)
    assert_unchanged(before, snapshot(model))
    assert torch.equal(x, x_before) and not x.requires_grad
    assert not torch._C._is_torch_function_mode_enabled()
    assert torch.backends.cuda.flash_sdp_enabled()


class _Boom(RuntimeError):
    pass


def test_substitutions_end_with_an_exception():
    model = tiny_vit()

    def boom(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        assert torch._C._is_torch_function_mode_enabled()
        raise _Boom

    handle = model.heads.register_forward_hook(boom)
    try:
        with pytest.raises(_Boom):
            heatmaps.SaliencyHeatmap(model)(_input(), 0, create_graph=True)
    finally:
        handle.remove()
    assert not torch._C._is_torch_function_mode_enabled()
    assert torch.backends.cuda.flash_sdp_enabled()


def test_substitutes_equal_pytorch():
    """Same values and first derivatives as PyTorch (off the kinks); second derivatives exist."""
    x = torch.linspace(-5, 5, 41, dtype=torch.float64)[1::2].requires_grad_(True)
    for ours, theirs in [
        (double_backward.hardsigmoid, F.hardsigmoid),
        (double_backward.hardswish, F.hardswish),
    ]:
        assert torch.allclose(ours(x), theirs(x), rtol=1e-15, atol=1e-15)
        (g_ours,) = torch.autograd.grad(ours(x).sum(), x, create_graph=True)
        (g_theirs,) = torch.autograd.grad(theirs(x).sum(), x)
        # PyTorch multiplies by 1/6 in single precision also for float64
        assert torch.allclose(g_ours, g_theirs, rtol=1e-7, atol=0)
        assert torch.autograd.gradgradcheck(ours, (x,))
    v = torch.randn(3, 4, dtype=torch.float64)
    v[1] = 0.0  # a zero vector: PyTorch's second derivative is NaN there
    v.requires_grad_(True)
    assert torch.allclose(double_backward.normalize(v, dim=1), F.normalize(v, dim=1), rtol=1e-15)
    (g,) = torch.autograd.grad(
        double_backward.normalize(v, dim=1)[:, 0].sum(), v, create_graph=True
    )
    (gg,) = torch.autograd.grad(g.square().sum(), v)
    assert bool(torch.isfinite(gg).all())


def test_attention_runs_on_the_math_kernel():
    """Fused attention has no second derivative: inside the call only the math kernel is allowed."""
    seen = []

    def record(module: nn.Module, args: tuple, out: object) -> None:
        seen.append(
            torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled()
        )

    model = tiny_vit()
    handle = model.encoder.layers[0].self_attention.register_forward_hook(record)
    try:
        heatmaps.SaliencyHeatmap(model)(_input(), 0, create_graph=True)
        heatmaps.SaliencyHeatmap(model)(_input(), 0)
    finally:
        handle.remove()
    assert seen == [True, False]
    assert SDPBackend.MATH  # the backend named in the docs


class _NativeGate(nn.Module):
    """Calls the ATen Hardsigmoid directly: an operation without a second derivative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch._C._nn.hardsigmoid(x)


def test_unsubstituted_operation_is_a_clear_error():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), _NativeGate(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    ).double()
    before = snapshot(model)
    # (Grad-CAM at the gate's output would not differentiate the gate at all)
    for backend in ("saliency", "integrated_gradients"):
        with pytest.raises(NotImplementedError, match=r"^\w+Heatmap: .*_NativeGate \('1'\)"):
            BACKENDS[backend](model)(_input(), 0, create_graph=True)
    assert_unchanged(before, snapshot(model))
    # without a graph the maps need no second derivative
    assert heatmaps.SaliencyHeatmap(model)(_input(), 0).shape == (1, 1, 32, 32)


def test_integrated_gradients_internal_batches_keep_the_graph(small_model, small_input):
    """captum's own chunking detaches all chunks but the first; ours keeps every chunk's graph."""
    targets = torch.tensor([1, 3])
    whole = heatmaps.IntegratedGradientsHeatmap(small_model, n_steps=5)
    chunked = heatmaps.IntegratedGradientsHeatmap(small_model, n_steps=5, internal_batch_size=4)
    assert torch.allclose(whole(small_input, targets), chunked(small_input, targets), rtol=1e-12)
    params = list(small_model.parameters())
    error = directional_check(chunked, small_input, targets, params, directions=1)
    assert error <= 1e-6, f"relative error {error:.2e}"
    with pytest.raises(ValueError, match="internal_batch_size"):
        heatmaps.IntegratedGradientsHeatmap(small_model, internal_batch_size=0)

"""Grad-CAM on every family: an automatic layer, the token grid, exact gradients.

Tiny float64 variants of the families whose feature map is not simply the last
4-D output (transformers, SqueezeNet's class maps, ConvNeXt's norm after the
pool, squeeze-excitation pools): the layer chosen automatically, ViT's token
grid against a reference written with explicit indices, and finite differences
of the maps w.r.t. sampled parameters.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import assert_unchanged, snapshot
from test_double_backward import (
    _input,
    _sampled_parameters,
    normalised,
    tiny_mobilenet_v3,
    tiny_vit,
)
from test_gradcheck import directional_check
from torch import nn
from torchvision.models.convnext import CNBlockConfig

import heatmaps
from heatmaps.feature_grid import nhwc_to_grid, tokens_to_grid
from heatmaps.gradcam import find_target_layer

TOLERANCE = 1e-5


def tiny_swin() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2],
        num_classes=5,
    )  # fmt: skip
    return model.double().eval()


def tiny_maxvit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.MaxVit(
        input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16],
        block_layers=[1, 1], head_dim=4, stochastic_depth_prob=0.0, num_classes=5,
    )  # fmt: skip
    return model.double().eval()


def tiny_convnext() -> nn.Module:
    torch.manual_seed(0)
    blocks = [CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)]
    return torchvision.models.ConvNeXt(blocks, num_classes=5, layer_scale=0.5).double().eval()


def tiny_squeezenet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.squeezenet1_1(num_classes=5).double().eval()


#: family: (tiny model, the layer Grad-CAM picks)
FAMILIES = {
    "vit": (tiny_vit, "encoder.layers.encoder_layer_0.ln_1"),
    "swin": (tiny_swin, "permute"),
    "maxvit": (tiny_maxvit, "blocks.1"),
    "convnext": (tiny_convnext, "features"),  # not the LayerNorm2d after the pool
    "squeezenet": (tiny_squeezenet, "classifier.2"),  # class maps, not the pooled classifier
    "mobilenet_v3": (tiny_mobilenet_v3, "features"),  # squeeze-excitation pools do not count
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_automatic_layer(family):
    build, expected = FAMILIES[family]
    assert find_target_layer(build(), _input())[0] == expected


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_maps_match_finite_differences(family):
    model = FAMILIES[family][0]()
    targets = torch.tensor([[1, 3]])  # two classes: the token path's batched backward
    heatmap = normalised(heatmaps.GradCAMHeatmap(model, relu=False), _input(), targets)
    params = _sampled_parameters(model)
    error = directional_check(heatmap, _input(), targets, params, directions=1)
    assert error <= TOLERANCE, f"{family}: relative error {error:.2e}"
    maps = heatmaps.GradCAMHeatmap(model)(_input(), targets, create_graph=True)
    assert bool(torch.isfinite(maps).all()) and bool(maps.any())
    assert maps.shape == (1, 2, 32, 32)


def test_vit_token_grid_equals_a_reference_with_explicit_indices():
    model = tiny_vit()
    x = torch.cat([_input(3), _input(4)])
    targets = torch.tensor([2, 4])
    heatmap = heatmaps.GradCAMHeatmap(model, relu=False, mode="nearest")
    ours = heatmap(x, targets)[:, 0]
    assert heatmap.last_path == "grid"

    kept = []
    layer = model.encoder.layers[-1].ln_1
    handle = layer.register_forward_hook(lambda m, a, out: kept.append(out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    tokens = kept[0]  # (B, 1 + 2 * 2, C): class token, then 2 x 2 patches row by row
    (grads,) = torch.autograd.grad(logits[[0, 1], targets].sum(), tokens)
    reference = torch.zeros(2, 2, 2, dtype=x.dtype)
    for b in range(2):
        alpha = grads[b, 1:].mean(dim=0)  # average over the 4 patch tokens, per channel
        for i in range(2):
            for j in range(2):
                reference[b, i, j] = (alpha * tokens[b, 1 + 2 * i + j]).sum()
    reference = reference.repeat_interleave(16, dim=1).repeat_interleave(16, dim=2)
    assert torch.allclose(ours, reference.detach(), rtol=1e-10, atol=1e-12)


def test_swin_channels_last_layer_equals_its_permutation():
    """The NHWC path (no captum) on ``norm`` equals captum on ``permute``, a view of it."""
    model = tiny_swin()
    x, targets = _input(), torch.tensor([[0, 2]])
    nhwc = heatmaps.GradCAMHeatmap(model, layer="norm", layout="nhwc")
    nchw = heatmaps.GradCAMHeatmap(model, layer="permute", closed_form=False)
    assert torch.allclose(nhwc(x, targets), nchw(x, targets), rtol=1e-10, atol=1e-12)
    assert (nhwc.last_path, nchw.last_path) == ("grid", "captum")


def test_grid_functions():
    tokens = torch.arange(2 * 10 * 3).reshape(2, 10, 3)  # one class token + 3 x 3 patches
    grid = tokens_to_grid(tokens)
    assert grid.shape == (2, 3, 3, 3)
    assert torch.equal(grid[1, 2, 1, 0], tokens[1, 1 + 3 * 1 + 0, 2])
    assert torch.equal(tokens_to_grid(tokens[:, 1:]), grid)  # no class token
    nhwc = torch.rand(2, 4, 5, 3)
    assert torch.equal(nhwc_to_grid(nhwc)[:, :, 3, 1], nhwc[:, 3, 1, :])
    with pytest.raises(ValueError, match="tokens"):
        tokens_to_grid(torch.rand(2, 3, 4, 5))
    with pytest.raises(ValueError, match="layout"):
        heatmaps.GradCAMHeatmap(tiny_swin(), layout="nwhc")


def test_model_left_as_it_was():
    model = tiny_vit()
    model.train()
    x = torch.cat([_input(3), _input(4)])
    before = snapshot(model)
    heatmaps.GradCAMHeatmap(model)(x, torch.tensor([0, 1]), create_graph=True)
    assert_unchanged(before, snapshot(model))


class _PatchTokens(nn.Module):
    """A convolutional patch embedding followed by token layers: an unknown transformer."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, 8, 8, stride=8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        return self.head(self.mix(tokens).mean(dim=1))


def test_unknown_token_model_is_a_clear_error():
    model = _PatchTokens().double()
    with pytest.raises(ValueError, match=r"GradCAMHeatmap: .*'patches'.*token layers.*'mix'"):
        heatmaps.GradCAMHeatmap(model)(_input(), 0)
    maps = heatmaps.GradCAMHeatmap(model, layer="mix")(_input(), 0, create_graph=True)
    assert maps.shape == (1, 1, 32, 32)

"""LRP beyond ResNet and VGG: one small model per torchvision family, float64.

For every family LRP claims (rrr.classifiers.LRP_FAMILIES): maps with
``create_graph=True`` match finite differences w.r.t. sampled parameters
(squeeze-excitation gates and BatchNorm included), relevance is conserved when
biases and BatchNorm shifts are zero, maps equal zennit's own attributor where
zennit handles the architecture, and the model is left as it was. The
transformer families are refused with one clear error naming the layer.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import assert_unchanged, randomize_batchnorm, snapshot
from test_gradcheck import directional_check
from test_reference import relative_error, zennit_maps
from torch import nn
from torchvision.models import convnext, swin_transformer
from zennit.canonizers import SequentialMergeBatchNorm

import heatmaps
from rrr.classifiers import LRP_FAMILIES, check_support

FD_TOLERANCE = 1e-5
CONSERVATION_TOLERANCE = 1e-3


def _googlenet() -> nn.Module:
    return torchvision.models.googlenet(num_classes=5, aux_logits=False, init_weights=False)


#: family -> (builder, names of parameters to check by finite differences: gates, BatchNorm, ...)
FAMILIES = {
    "mobilenet_v3_small": (
        lambda: torchvision.models.mobilenet_v3_small(num_classes=5),
        ["features.0.0.weight", "features.1.block.1.fc1.weight", "features.1.block.0.1.weight"],
    ),
    "mobilenet_v2": (
        lambda: torchvision.models.mobilenet_v2(num_classes=5, width_mult=0.25),
        ["features.0.1.weight", "features.2.conv.2.weight", "classifier.1.weight"],
    ),
    "efficientnet_b0": (
        lambda: torchvision.models.efficientnet_b0(num_classes=5),
        ["features.1.0.block.1.fc2.weight", "features.2.0.block.0.1.weight"],
    ),
    "densenet121": (
        lambda: torchvision.models.densenet121(num_classes=5),
        ["features.denseblock1.denselayer2.norm1.weight", "features.norm5.weight"],
    ),
    "regnet_y_400mf": (
        lambda: torchvision.models.regnet_y_400mf(num_classes=5),
        [
            "trunk_output.block1.block1-0.f.se.fc1.weight",
            "trunk_output.block1.block1-0.proj.1.weight",
        ],
    ),
    "shufflenet_v2_x0_5": (
        lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=5),
        ["stage2.0.branch1.1.weight", "stage2.1.branch2.0.weight", "fc.weight"],
    ),
    "squeezenet1_0": (
        lambda: torchvision.models.squeezenet1_0(num_classes=5),
        ["features.3.expand3x3.weight", "classifier.1.weight"],
    ),
    "googlenet": (
        _googlenet,
        ["inception3a.branch2.1.bn.weight", "inception3b.branch4.1.conv.weight"],
    ),
    "mnasnet0_5": (
        lambda: torchvision.models.mnasnet0_5(num_classes=5),
        ["layers.8.0.layers.4.weight", "classifier.1.weight"],
    ),
}


def build(family: str) -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(FAMILIES[family][0]()).double().eval()


def image(batch: int = 1, seed: int = 3) -> torch.Tensor:
    return torch.rand(
        batch, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )


def normalised(heatmap: heatmaps.Heatmap, x: torch.Tensor, target: int):
    """``heatmap`` divided by a fixed number so that its maps of ``x`` are of order one.

    With random weights most relevance of these deep networks goes to the biases
    and BatchNorm shifts; their maps can be as small as 1e-15, below the absolute
    floor (1e-3) of the finite-difference check's relative error.
    """
    scale = float(heatmap(x, target).abs().max())

    def maps(inputs, targets, create_graph: bool = False):
        return heatmap(inputs, targets, create_graph=create_graph) / scale

    return maps


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_is_claimed(family):
    assert family.startswith(LRP_FAMILIES)
    check_support("lrp", family)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_maps_match_finite_differences_and_leave_the_model(family):
    model = build(family)
    names = FAMILIES[family][1]
    params = dict(model.named_parameters())
    before = snapshot(model)
    heatmap = heatmaps.LRPHeatmap(model, composite="epsilon", relevance="logit")
    maps = heatmap(image(), 2, create_graph=True)
    torch.autograd.grad(maps.square().sum(), [params[n] for n in names])
    assert_unchanged(before, snapshot(model))
    # (the finite differences write the parameters, so the model is compared before them)
    error = directional_check(
        normalised(heatmap, image(), 2), image(), torch.tensor([2]), [params[n] for n in names], 1
    )
    assert error <= FD_TOLERANCE, f"{family}: relative error {error:.2e}"


def zero_shifts(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.zero_()
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_relevance_is_conserved_without_shifts(family):
    model = zero_shifts(build(family))
    # without shifts the logits of these deep random networks are as small as 1e-14, so
    # "tiny" must be far below that for epsilon not to absorb relevance
    heatmap = heatmaps.LRPHeatmap(
        model, composite="epsilon", relevance="logit", epsilon=1e-30, stabilizer=1e-30
    )
    x = image(batch=2)
    out = heatmap.explain(x, torch.tensor([1, 3]))
    total = out.maps.sum((1, 2, 3))
    logit = out.logits.gather(1, out.targets).squeeze(1)
    error = ((total - logit).abs() / logit.abs()).max().item()
    assert error <= CONSERVATION_TOLERANCE, f"{family}: conservation error {error:.2e}"


@pytest.mark.parametrize("family", ["squeezenet1_0", "googlenet"])
@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat"])
def test_equal_to_zennit_where_zennit_handles_the_model(family, composite):
    # concatenations, max-pools and module average pools: zennit's own attributor is exact here
    torch.manual_seed(0)
    model = randomize_batchnorm(FAMILIES[family][0](), eps=0.0).double().eval()
    x = image(batch=2)
    targets = torch.tensor([1, 4])
    ours = heatmaps.LRPHeatmap(model, composite=composite)(x, targets)[:, 0]
    reference = zennit_maps(model, composite, SequentialMergeBatchNorm(), x, targets)
    assert relative_error(ours, reference) <= 1e-6


def test_densenet_batchnorm_before_convolution_is_not_merged_into_the_wrong_layer():
    """DenseNet's norm1 reads a concatenation: only BatchNorms that read a layer's output merge."""
    model = build("densenet121")
    heatmap = heatmaps.LRPHeatmap(model, composite="epsilon")
    heatmap(image(), 0)
    (merge,) = [c for c in heatmap._canonizers if hasattr(c, "name_map")]
    merged = {bn for _, bn in merge.name_map}
    assert "features.norm0" in merged and "features.denseblock1.denselayer1.norm2" in merged
    assert "features.denseblock1.denselayer2.norm1" not in merged


def _tiny_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=16,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=5,
    )


def _tiny_swin() -> nn.Module:
    return swin_transformer.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=8,
        depths=[1, 1],
        num_heads=[1, 1],
        window_size=[2, 2],
        num_classes=5,
    )


def _tiny_convnext() -> nn.Module:
    settings = [convnext.CNBlockConfig(8, 16, 1), convnext.CNBlockConfig(16, None, 1)]
    return convnext.ConvNeXt(settings, num_classes=5)


@pytest.mark.parametrize(
    "builder, layer",
    [(_tiny_vit, "LayerNorm"), (_tiny_swin, "LayerNorm"), (_tiny_convnext, "LayerNorm2d")],
)
def test_transformers_are_refused_naming_the_layer(builder, layer):
    model = builder().double().eval()
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"\({layer}, .*backend 'lrp'"):
        heatmaps.LRPHeatmap(model, composite="epsilon")
    assert_unchanged(before, snapshot(model))


def test_attention_is_refused_even_where_composites_pass_it():
    # zennit's composites map MultiheadAttention with the activations (Pass)
    model = _tiny_vit().double().eval()
    with pytest.raises(ValueError, match=r"MultiheadAttention"):
        heatmaps.LRPHeatmap(model, composite="epsilon_plus_flat")


class _Functional(nn.Module):
    """A block whose forward calls ``op`` on two input-dependent tensors."""

    def __init__(self, op) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.op = op

    def forward(self, x):
        y = self.conv(x)
        return self.op(y, y.flip(-1))


def _with_block(op) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        _Functional(op), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).double()


@pytest.mark.parametrize(
    "op, function",
    [
        (lambda a, b: a - b, r"torch\.Tensor\.(sub|flip)"),
        (lambda a, b: a * b, r"torch\.Tensor\.(mul|flip)"),
        (lambda a, b: nn.functional.layer_norm(a + b, a.shape[1:]), r"layer_norm|flip"),
    ],
)
def test_unknown_functional_calls_are_refused_by_name_at_the_first_call(op, function):
    model = _with_block(op)
    heatmap = heatmaps.LRPHeatmap(model, composite="epsilon")
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"^LRPHeatmap: function {function}.*backend 'lrp'"):
        heatmap(image(batch=2), 1, create_graph=True)
    assert_unchanged(before, snapshot(model))


def test_functional_sum_splits_relevance_in_proportion():
    """``a + b`` in forward code gets the Norm rule: R_a = a R / (a + b), not R to both."""

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 2, 1, bias=False)
            self.b = nn.Conv2d(3, 2, 1, bias=False)

        def forward(self, x):
            return self.a(x) + self.b(x)

    torch.manual_seed(0)
    model = nn.Sequential(Residual(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2, bias=False)).double()
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    heatmap = heatmaps.LRPHeatmap(model, composite="epsilon", epsilon=1e-12, stabilizer=1e-12)
    maps = heatmap(x, 0)
    # each summand is a linear function of x with no bias: LRP-0 equals input x gradient
    ixg = heatmaps.InputXGradientHeatmap(model)(x, 0)
    assert relative_error(maps * model(x)[0, 0], ixg) <= 1e-8

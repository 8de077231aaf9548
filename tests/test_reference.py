"""Map values against the libraries' own outputs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from captum.attr import (
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from conftest import SmallResNet, randomize_batchnorm
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.layer import Sum
from zennit.rules import AlphaBeta, ZPlus
from zennit.torchvision import ResNetCanonizer

import heatmaps
from heatmaps.lrp import make_composite

COMPOSITES = ["epsilon", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def zennit_maps(model, composite_name, canonizer, x, targets):
    composite = make_composite(composite_name, canonizers=[canonizer])
    with Gradient(model, composite) as attributor:
        out = model(x)
        _, relevance = attributor(x, torch.eye(out.shape[1], dtype=x.dtype)[targets])
    return relevance.sum(1)


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("bn_eps, tolerance", [(0.0, 1e-6), (None, 1e-3)])
def test_lrp_equals_zennit_on_resnet18(composite, bn_eps, tolerance):
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=5), eps=bn_eps)
    model = model.double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    targets = torch.tensor([1, 4])
    ours = heatmaps.LRPHeatmap(model, composite=composite)(x, targets)[:, 0]
    reference = zennit_maps(model, composite, ResNetCanonizer(), x, targets)
    assert relative_error(ours, reference) <= tolerance


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat"])
def test_lrp_equals_zennit_on_resnet50_bottlenecks(composite):
    # the residual additions are ResidualSum modules here, stacked tensors in zennit
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.resnet50(num_classes=3), eps=0.0)
    model = model.double().eval()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    ours = heatmaps.LRPHeatmap(model, composite=composite)(x, 2)[:, 0]
    reference = zennit_maps(model, composite, ResNetCanonizer(), x, torch.tensor([2]))
    assert relative_error(ours, reference) <= 1e-6


@pytest.mark.parametrize("sum_rule", [ZPlus, AlphaBeta])
def test_other_rules_on_residual_sums_equal_zennit(sum_rule):
    # a rule that is not a modified gradient sees the stacked summands, as in zennit
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=5), eps=0.0)
    model = model.double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)

    def composite(canonizers):
        return make_composite("epsilon", layer_map=[(Sum, sum_rule())], canonizers=canonizers)

    ours = heatmaps.LRPHeatmap(model, composite=composite([ResNetCanonizer()]))(x, 1)[:, 0]
    with Gradient(model, composite([ResNetCanonizer()])) as attributor:
        _, relevance = attributor(x, torch.eye(5, dtype=x.dtype)[[1, 1]])
    assert relative_error(ours, relevance.sum(1)) <= 1e-6


@pytest.mark.parametrize("composite", COMPOSITES)
def test_lrp_equals_zennit_on_vgg_bn(composite):
    torch.manual_seed(0)
    model = torchvision.models.vgg11_bn(num_classes=4)
    model.classifier = torch.nn.Sequential(torch.nn.Linear(512 * 7 * 7, 4))
    model = randomize_batchnorm(model, eps=0.0).double().eval()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    ours = heatmaps.LRPHeatmap(model, composite=composite)(x, 2)[:, 0]
    reference = zennit_maps(model, composite, SequentialMergeBatchNorm(), x, torch.tensor([2]))
    assert relative_error(ours, reference) <= 1e-6


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon"])
def test_all_classes_equal_one_class_at_a_time(small_model, small_input, composite):
    heatmap = heatmaps.LRPHeatmap(small_model, composite=composite)
    every = heatmap(small_input, "all")
    for c in range(every.shape[1]):
        single = heatmap(small_input, c)[:, 0]
        assert torch.allclose(every[:, c], single, rtol=1e-10, atol=1e-12)
    for batched in (False, True):
        other = heatmaps.LRPHeatmap(small_model, composite=composite, batched=batched)
        assert torch.allclose(every, other(small_input, "all"), rtol=1e-10, atol=1e-12)


def captum_gradcam(model, layer, x, targets):
    cam = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
    return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")[:, 0]


@pytest.mark.parametrize("closed_form", ["auto", False])
def test_gradcam_equals_captum(closed_form):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=6).eval()
    x = torch.rand(3, 3, 64, 64)
    targets = torch.tensor([0, 5, 2])
    heatmap = heatmaps.GradCAMHeatmap(model, closed_form=closed_form)
    ours = heatmap(x, targets)[:, 0]
    assert heatmap.last_path == ("closed_form" if closed_form == "auto" else "captum")
    assert relative_error(ours, captum_gradcam(model, model.layer4, x, targets)) <= 1e-5


def test_gradcam_finds_layer4_and_features():
    resnet = torchvision.models.resnet18(num_classes=3).eval()
    vgg = torchvision.models.vgg11(num_classes=3).eval()
    x = torch.rand(1, 3, 64, 64)
    assert heatmaps.gradcam.find_target_layer(resnet, x)[0] == "layer4"
    assert heatmaps.gradcam.find_target_layer(vgg, x)[0] == "features"


def test_gradcam_non_gap_head_uses_captum():
    torch.manual_seed(0)
    model = torchvision.models.vgg11(num_classes=3).eval()
    x = torch.rand(2, 3, 32, 32)
    heatmap = heatmaps.GradCAMHeatmap(model)
    ours = heatmap(x, torch.tensor([0, 2]))[:, 0]
    assert heatmap.last_path == "captum"
    reference = captum_gradcam(model, model.features, x, torch.tensor([0, 2]))
    assert relative_error(ours, reference) <= 1e-5


@pytest.fixture
def float_model():
    torch.manual_seed(0)
    return randomize_batchnorm(SmallResNet()).eval()


def test_gradient_family_equals_captum(float_model):
    model = float_model
    x = torch.rand(2, 3, 8, 8)
    t = torch.tensor([1, 3])
    pairs = [
        (heatmaps.SaliencyHeatmap(model), Saliency(model).attribute(x, target=t)),
        (heatmaps.InputXGradientHeatmap(model), InputXGradient(model).attribute(x, target=t)),
        (
            heatmaps.IntegratedGradientsHeatmap(model, n_steps=8),
            IntegratedGradients(model).attribute(x, target=t, n_steps=8),
        ),
    ]
    for heatmap, reference in pairs:
        assert relative_error(heatmap(x, t)[:, 0], reference.sum(1)) <= 1e-5, heatmap.name
    torch.manual_seed(5)
    reference = NoiseTunnel(Saliency(model)).attribute(
        x, nt_type="smoothgrad", nt_samples=4, stdevs=0.1, target=t, abs=False
    )
    ours = heatmaps.SmoothGradHeatmap(model, samples=4, stdev=0.1, seed=5)(x, t)[:, 0]
    assert relative_error(ours, reference.sum(1)) <= 1e-5


def test_input_x_gradient_is_lrp0_without_biases():
    """On a bias-free ReLU network, LRP-0 (epsilon -> 0) equals input x gradient."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1, bias=False),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 3, bias=False),
    ).double()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    lrp0 = heatmaps.LRPHeatmap(model, composite="epsilon", epsilon=1e-12, stabilizer=1e-12)
    ixg = heatmaps.InputXGradientHeatmap(model)
    logits = model(x)
    lrp = lrp0(x, 1) * logits[:, 1, None, None, None]  # zennit starts from e_c, not y_c e_c
    assert relative_error(lrp, ixg(x, 1)) <= 1e-8


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_plus_flat"])
def test_zplus_equals_zennit_on_signed_input(composite):
    """z+ on a first convolution with negative inputs keeps both of its terms."""
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=5), eps=0.0)
    model = model.double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    targets = torch.tensor([1, 4])
    ours = heatmaps.LRPHeatmap(model, composite=composite)(x, targets)[:, 0]
    reference = zennit_maps(model, composite, ResNetCanonizer(), x, targets)
    assert relative_error(ours, reference) <= 1e-6

"""``rrr.finetune --method lrp|gradcam`` on the smallest model of every torchvision family.

Tiny runs (no classification epoch, one heatmap step on a few scenes at the
smallest image size the architecture takes): the run exits 0 and writes its
checkpoint. LRP runs on every family of ``rrr.classifiers.LRP_FAMILIES``;
Grad-CAM on those and on the families LRP refuses, whose refusal is one line
naming the method and the architecture.
"""

from __future__ import annotations

import pytest
from conftest import TINY_RUN
from test_finetune import _error_line

from rrr import finetune
from rrr.classifiers import LRP_FAMILIES

#: the smallest member of each family that LRP covers, keyed by the family's prefix
LRP_ARCHS = {
    "resnet": "resnet18",
    "resnext": "resnext50_32x4d",
    "wide_resnet": "wide_resnet50_2",
    "vgg": "vgg11",
    "alexnet": "alexnet",
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3": "mobilenet_v3_small",
    "efficientnet_b": "efficientnet_b0",
    "densenet": "densenet121",
    "regnet": "regnet_y_400mf",
    "shufflenet": "shufflenet_v2_x0_5",
    "squeezenet": "squeezenet1_1",
    "googlenet": "googlenet",
    "mnasnet": "mnasnet0_5",
}
#: families only Grad-CAM (and the gradient methods) train
GRADCAM_ONLY_ARCHS = [
    "convnext_tiny",
    "vit_b_32",
    "swin_t",
    "maxvit_t",
    "efficientnet_v2_s",
    "inception_v3",
]
#: the smallest input side the architecture takes, where 32 px is too small
IMAGE_SIZE = {"alexnet": 64, "inception_v3": 96, "vit_b_32": 224, "maxvit_t": 224}

#: TINY_RUN cut to one heatmap step on a handful of scenes, no classification epoch
SMALLEST = [
    "--pretrain-epochs", "0", "--steps-per-epoch", "1", "--train-images", "8",
    "--val-images", "2", "--batch-size", "2", "--pixel-labels", "2",
]  # fmt: skip


def run(out, arch: str, method: str) -> int:
    size = str(IMAGE_SIZE.get(arch, 32))
    options = [*TINY_RUN, *SMALLEST, "--image-size", size]
    return finetune.main([*options, "--arch", arch, "--method", method, "--out", str(out)])


def test_every_lrp_family_has_an_architecture_here():
    assert set(LRP_ARCHS) == set(LRP_FAMILIES)
    assert all(arch.startswith(family) for family, arch in LRP_ARCHS.items())


@pytest.mark.parametrize(
    "arch, method",
    [(arch, "lrp") for arch in LRP_ARCHS.values()]
    + [(arch, "gradcam") for arch in [*LRP_ARCHS.values(), *GRADCAM_ONLY_ARCHS]],
)
def test_tiny_run_writes_its_checkpoint(tmp_path, arch, method):
    out = tmp_path / "run"
    assert run(out, arch, method) == 0
    assert (out / "checkpoint.pt").is_file()


@pytest.mark.parametrize("arch", ["vit_b_32", "swin_t", "convnext_tiny", "maxvit_t"])
def test_lrp_on_a_refused_family_is_one_line_naming_both(tmp_path, capsys, arch):
    out = tmp_path / "run"
    assert run(out, arch, "lrp") == 2
    line = _error_line(capsys)
    assert "lrp" in line and arch in line
    assert not (out / "checkpoint.pt").exists()


def test_googlenet_loads_a_state_dict_saved_with_its_auxiliary_heads(tmp_path):
    """torchvision's own GoogLeNet keeps aux1/aux2; --weights drops them and keeps the rest."""
    import torch
    import torchvision

    from rrr.classifiers import build_classifier

    saved = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    torch.save(saved.state_dict(), tmp_path / "googlenet.pt")
    model = build_classifier("googlenet", 5, str(tmp_path / "googlenet.pt")).train()
    assert isinstance(model(torch.rand(2, 3, 32, 32)), torch.Tensor)
    assert torch.equal(model.conv1.conv.weight, saved.conv1.conv.weight)

"""torchvision classifiers by name, with a fresh head and optional local weights."""

from __future__ import annotations

from pathlib import Path

import torchvision
from torch import nn

# families whose layers and functional operations LRP rules and canonizers cover, each
# checked in tests/test_lrp_families.py or tests/test_reference.py (finite differences,
# conservation, zennit): convolutions, linear layers, pooling, BatchNorm (merged, or the
# epsilon rule before a convolution), activations (pass rule), residual sums,
# concatenations, squeeze-excitation gates; docs/concepts/lrp_rules.md
LRP_FAMILIES = (
    "resnet",
    "resnext",
    "wide_resnet",
    "vgg",
    "alexnet",
    "mobilenet_v2",
    "mobilenet_v3",
    "efficientnet_b",
    "densenet",
    "regnet",
    "shufflenet",
    "squeezenet",
    "googlenet",
    "mnasnet",
)


# what LRP lacks for the families it refuses (by the architecture's first word)
_LRP_MISSING = {
    "vit": " (no LRP rule for LayerNorm and MultiheadAttention)",
    "swin": " (no LRP rule for LayerNorm and ShiftedWindowAttention)",
    "maxvit": " (no LRP rule for LayerNorm and the attention blocks)",
    "convnext": " (no LRP rule for LayerNorm2d and CNBlock's layer scale)",
    "efficientnet": " (EfficientNet-V2's FusedMBConv blocks are not yet verified for LRP)",
    "inception": " (Inception-v3 is not yet verified for LRP)",
}


AUX_HEADS = ("googlenet", "inception_v3")
AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


def classification_architectures() -> list[str]:
    """Every classification architecture torchvision lists."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_support(method: str, arch: str) -> None:
    """Raise a ``ValueError`` naming the backend and the architecture if unsupported."""
    if arch not in classification_architectures():
        raise ValueError(
            f"--arch {arch}: not a torchvision classification architecture "
            "(see torchvision.models.list_models(module=torchvision.models))"
        )
    if method == "lrp" and not arch.startswith(LRP_FAMILIES):
        missing = _LRP_MISSING.get(arch.split("_")[0].rstrip("0123456789"), "")
        raise ValueError(
            f"--method lrp does not support --arch {arch}{missing}: LRP rules and canonizers "
            f"cover the {', '.join(LRP_FAMILIES)} families; use --method gradcam or saliency "
            f"for {arch}"
        )


def _head_slot(model: nn.Module) -> tuple[nn.Module, str, nn.Module]:
    """The parent, attribute name and module of the classifier's last linear/conv layer."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and name:
            last = (name, module)
    if last is None:
        raise ValueError("the model has no linear or convolutional output layer to replace")
    name, module = last
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr, module


def replace_head(model: nn.Module, num_outputs: int) -> nn.Module:
    """Replace the final classification layer with a fresh one of ``num_outputs``."""
    parent, attr, old = _head_slot(model)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_outputs, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_outputs, old.kernel_size, old.stride, old.padding)
    setattr(parent, attr, new.to(old.weight.device))
    return model


def build_classifier(arch: str, num_outputs: int, weights: str | None = None) -> nn.Module:
    """A torchvision classifier with a head of ``num_outputs``.

    Args:
        weights: ``None``/``"none"`` (random init), ``"DEFAULT"`` (torchvision's
            pretrained weights; downloads, only when the user asks), or a path
            to a local state dict (``torch.load(weights_only=True)``) of the
            same architecture with any head.
    """
    if arch not in classification_architectures():
        raise ValueError(f"--arch {arch}: not a torchvision classification architecture")
    # GoogLeNet and Inception-v3 return a named tuple with auxiliary logits in training
    # mode; the segmenters need a tensor of logits, so their auxiliary heads are dropped
    # (torchvision still loads pretrained weights and then removes the heads)
    options = {"aux_logits": False, "init_weights": False} if arch in AUX_HEADS else {}
    if weights in (None, "none", "None"):
        model = torchvision.models.get_model(arch, weights=None, **options)
    elif weights == "DEFAULT":
        model = torchvision.models.get_model(arch, weights="DEFAULT", **options)
    else:
        path = Path(weights)
        if not path.is_file():
            raise ValueError(f"--weights {weights}: no such file")
        model = torchvision.models.get_model(arch, weights=None, **options)
        from .checkpoint import safe_load

        state = safe_load(path, f"--weights {weights}")
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        _, _, head = _head_slot(model)
        head_name = next(name for name, module in model.named_modules() if module is head)
        head_keys = {f"{head_name}.{key}" for key, _ in head.named_parameters()}
        own = model.state_dict()
        mismatched = {k for k, v in state.items() if k in own and own[k].shape != v.shape}
        if mismatched - head_keys:
            raise ValueError(
                f"--weights {weights}: shapes do not match --arch {arch} for {sorted(mismatched)[:3]}"
            )
        state = {k: v for k, v in state.items() if k not in mismatched}
        if arch in AUX_HEADS:  # a state dict saved with the auxiliary heads (dropped here)
            state = {k: v for k, v in state.items() if not k.startswith(AUX_PREFIXES)}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - head_keys:
            raise ValueError(
                f"--weights {weights}: not a state dict of --arch {arch} "
                f"(missing {sorted(set(missing) - head_keys)[:3]}, unexpected {unexpected[:3]})"
            )
    return replace_head(model, num_outputs)

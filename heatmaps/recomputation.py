"""Activation recomputation of a classifier's encoder, for when memory is the limit.

PyTorch calls this *activation checkpointing*, and the public names here follow
it; the module is called ``recomputation`` because in this project a
"checkpoint" is also a file of saved weights (``rrr.checkpoint``).

:func:`activation_checkpointing` is a context manager that, for its duration,
runs chosen submodules (by default the stages of the encoder, see
:func:`default_checkpoint_modules`) under
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: their inner
activations are not kept for backward but recomputed when the backward pass
needs them, so a training step holds only the stage boundaries. The model is
not changed otherwise: the wrapper is an instance attribute ``forward`` of each
named submodule, removed again on exit (also after an exception), so parameters,
buffers and ``state_dict`` keys stay exactly the same, and the gradients are the
same as without checkpointing (one extra forward pass of the stages per
backward pass is the price).

BatchNorm layers in training mode update their running statistics in the
forward pass; the recomputation in the backward pass runs on copies of those
buffers (:class:`heatmaps.base.NormStatisticsCopies`), so the statistics are
updated once per step, as without checkpointing. As with any activation
checkpointing, do not change the parameters, buffers or train/eval modes
between a forward pass and its backward pass.

What it saves depends on the heatmap method. Checkpointing pays only for
methods with a single backward pass (Grad-CAM, the frozen classifier of the
Explainer, plain classification): their peak memory drops by the activations
inside the stages. A double-backprop heatmap step (input x gradient, saliency,
integrated gradients, ...) computes its maps with a first backward pass that
recomputes the activations and builds the relevance graph from the recomputed
ones, so they are held again until the final backward pass: no saving, and one
more forward pass. The measurements (``benchmarks/checkpoint_memory.py``) are
in docs/benchmarks.md.

LRP is not supported: :class:`heatmaps.LRPHeatmap` attaches its rule hooks
only for the duration of its call, so the recomputation in the final backward
pass would run without them. :func:`is_checkpointed` tells whether a model is
currently wrapped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models import ResNet

from .base import NormStatisticsCopies

__all__ = ["activation_checkpointing", "default_checkpoint_modules", "is_checkpointed"]

#: attribute that marks the ``forward`` wrappers installed by :func:`activation_checkpointing`
MARK = "__heatmaps_checkpoint__"


def default_checkpoint_modules(model: nn.Module) -> list[str]:
    """The submodules :func:`activation_checkpointing` wraps when given no names.

    * torchvision ResNet, ResNeXt and Wide-ResNet (and subclasses of
      ``torchvision.models.ResNet``): the four stages ``layer1`` .. ``layer4``;
    * models with a ``features`` ``nn.Sequential`` (VGG, AlexNet, DenseNet,
      MobileNet, EfficientNet, ConvNeXt, ...): the children of ``features`` that
      have parameters (``features.0``, ...). Where these are single layers
      (VGG, AlexNet) a checkpointed region is one layer, whose input is kept
      anyway, so checkpointing saves nothing there.

    Raises:
        ValueError: for any other model, naming its class.
    """
    if isinstance(model, ResNet):
        return ["layer1", "layer2", "layer3", "layer4"]
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        names = [
            f"features.{name}"
            for name, child in features.named_children()
            if next(child.parameters(), None) is not None
        ]
        if names:
            return names
    raise ValueError(
        f"activation checkpointing: no default modules for {type(model).__name__} (defaults "
        "exist for torchvision ResNet-like models and models with a 'features' Sequential); "
        "pass the names of the modules to checkpoint"
    )


def is_checkpointed(model: nn.Module) -> bool:
    """Whether any submodule of ``model`` currently runs under :func:`activation_checkpointing`."""
    return any(_is_wrapper(module.__dict__.get("forward")) for module in model.modules())


def _is_wrapper(forward: object) -> bool:
    return bool(getattr(forward, MARK, False))


def _checkpointed(module: nn.Module, original: Callable[..., Any]) -> Callable[..., Any]:
    """``forward`` of ``module`` running ``original`` under non-reentrant checkpointing."""

    def contexts() -> tuple[contextlib.AbstractContextManager, NormStatisticsCopies]:
        # the recomputation runs on copies of the running statistics of train-mode norm
        # layers, so they are updated once per step (by the forward pass); one instance
        # serves every recomputation of its checkpointed call (a double backward pass
        # recomputes more than once)
        return contextlib.nullcontext(), NormStatisticsCopies(module, training_only=True)

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # nothing is saved for backward anyway
            return original(*args, **kwargs)
        return checkpoint(original, *args, use_reentrant=False, context_fn=contexts, **kwargs)

    setattr(forward, MARK, True)
    forward.__wrapped__ = original  # type: ignore[attr-defined]
    return forward


@contextlib.contextmanager
def activation_checkpointing(
    model: nn.Module, modules: Sequence[str] | None = None
) -> Iterator[nn.Module]:
    """Checkpoint the activations of submodules of ``model`` for the duration of the block.

    >>> with activation_checkpointing(model):            # layer1..layer4 of a ResNet
    ...     out = GradCAMHeatmap(model).explain(x, y, create_graph=True)
    ...     (F.cross_entropy(out.logits, y) + out.maps.square().mean()).backward()

    The forward and the backward pass of a step must both run inside the block
    (the recomputation happens in the backward pass). On exit every wrapper is
    removed, also after an exception; a submodule that had an instance-attribute
    ``forward`` of its own gets it back. See the module docstring for what it
    saves with which heatmap method; :class:`heatmaps.LRPHeatmap` is not
    supported.

    Args:
        model: any module.
        modules: dotted names of the submodules to checkpoint (as in
            ``model.named_modules()``); ``None`` = :func:`default_checkpoint_modules`.

    Yields:
        ``model`` itself.

    Raises:
        ValueError: a name that is not a submodule of ``model``, a name given twice
            or inside another given one, a submodule that is already checkpointed,
            or, with ``modules=None``, a model without default modules.
    """
    if isinstance(modules, str):
        raise TypeError("activation_checkpointing: modules must be a sequence of names, not a str")
    names = default_checkpoint_modules(model) if modules is None else list(modules)
    unknown, targets = [], []
    for name in names:
        try:
            targets.append(model.get_submodule(name))
        except AttributeError:
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"activation_checkpointing: {type(model).__name__} has no submodule "
            f"{', '.join(repr(n) for n in unknown)}"
        )
    overlapping = sorted(
        {
            inner
            for i, inner in enumerate(names)
            for j, outer in enumerate(names)
            if i != j and (inner == outer or outer == "" or inner.startswith(f"{outer}."))
        }
    )
    if overlapping:
        raise ValueError(
            "activation_checkpointing: modules given twice or inside another given module: "
            f"{', '.join(repr(n) for n in overlapping)}"
        )
    already = [n for n, m in zip(names, targets) if _is_wrapper(m.__dict__.get("forward"))]
    if already:
        raise ValueError(
            f"activation_checkpointing: {', '.join(repr(n) for n in already)} already "
            "checkpointed (nested activation_checkpointing on the same module)"
        )

    installed: list[tuple[nn.Module, Callable[..., Any], bool, object]] = []
    try:
        for module in targets:
            had_own = "forward" in module.__dict__
            previous = module.__dict__.get("forward")
            wrapper = _checkpointed(module, module.forward)
            module.forward = wrapper  # type: ignore[method-assign]
            installed.append((module, wrapper, had_own, previous))
        yield model
    finally:
        for module, wrapper, had_own, previous in reversed(installed):
            if module.__dict__.get("forward") is not wrapper:
                continue  # replaced by someone else meanwhile: theirs to undo
            if had_own:
                module.forward = previous  # type: ignore[method-assign]
            else:
                del module.forward

"""Canonizers that never write a parameter.

zennit's ``MergeBatchNorm`` folds a BatchNorm into the preceding linear layer by
writing ``.data`` of both modules. That detaches the merged weights from the
autograd graph (so maps are not differentiable w.r.t. the BatchNorm affine
parameters) and corrupts ordinary gradients while attached. Here the merge is
functional: for the duration of one call the linear layer's ``weight`` and
``bias`` entries in ``module._parameters`` are swapped for tensors *computed
from* the live parameters (the way ``torch.func.functional_call`` swaps them),
and the BatchNorm computes the identity. No tensor is written in place, so
parameter version counters do not move and a graph built before the call stays
valid; the original ``Parameter`` objects are put back on exit.

Merge (eval-mode BatchNorm with running statistics ``m, v``, affine ``g, beta``)::

    s  = g / sqrt(v + eps)
    w' = w * s            (per output channel)
    b' = (b - m) * s + beta

BatchNorm layers are therefore evaluated with their running statistics during a
heatmap call (the usual canonizer assumption), and their statistics are never
updated by it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from zennit.canonizers import (
    Canonizer,
    CompositeCanonizer,
    MergeBatchNorm,
    NamedMergeBatchNorm,
    SequentialMergeBatchNorm,
)
from zennit.core import collect_leaves
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
from zennit.types import BatchNorm, ConvolutionTranspose
from zennit.types import Linear as LinearLike


def _identity(x: Tensor) -> Tensor:
    return x


class FunctionalMergeBatchNorm(Canonizer):
    """Merge BatchNorms into their preceding linear layers without writing parameters.

    Args:
        name_map: optional ``[((linear_name, ...), batch_norm_name), ...]`` as in
            zennit's ``NamedMergeBatchNorm``. Without it, every BatchNorm that
            directly follows a convolution or linear layer in module order is
            merged (zennit's ``SequentialMergeBatchNorm`` convention).
    """

    def __init__(self, name_map: Sequence[tuple[Sequence[str], str]] | None = None) -> None:
        super().__init__()
        self.name_map = name_map
        self._swaps: list[tuple[dict, str, object]] = []
        self._handles: dict[nn.Module, torch.utils.hooks.RemovableHandle] = {}
        self._batch_norm: nn.Module | None = None
        self.linears: list[nn.Module] = []

    def copy(self) -> FunctionalMergeBatchNorm:
        return FunctionalMergeBatchNorm(self.name_map)

    def apply(self, root_module: nn.Module) -> list[FunctionalMergeBatchNorm]:
        if self.name_map is not None:
            lookup = dict(root_module.named_modules())
            pairs = [([lookup[n] for n in linears], lookup[bn]) for linears, bn in self.name_map]
        else:
            pairs = []
            last = None
            for leaf in collect_leaves(root_module):
                if isinstance(last, LinearLike) and isinstance(leaf, BatchNorm):
                    pairs.append(([last], leaf))
                last = leaf
        instances = []
        try:
            for linears, batch_norm in pairs:
                instance = self.copy()
                instances.append(instance)
                instance.register(linears, batch_norm)
        except Exception:
            for instance in instances:
                instance.remove()
            raise
        return instances

    def register(self, linears: Sequence[nn.Module], batch_norm: nn.Module) -> None:  # type: ignore[override]
        if batch_norm.running_var is None or batch_norm.running_mean is None:
            raise ValueError(
                f"canonizer: cannot merge {batch_norm} without running statistics "
                "(track_running_stats=False); pass canonizers=[] to skip merging"
            )
        with torch.enable_grad():
            scale = batch_norm.running_var.add(batch_norm.eps).rsqrt()
            if batch_norm.weight is not None:
                scale = batch_norm.weight * scale
            shift = -batch_norm.running_mean * scale
            if batch_norm.bias is not None:
                shift = shift + batch_norm.bias
        self._scale, self._shift = scale, shift
        self.linears = list(linears)
        for linear in self.linears:
            self._handles[linear] = linear.register_forward_hook(self._affine_output)
        # the BatchNorm becomes the identity in every mode (no statistics update)
        self._batch_norm = batch_norm
        batch_norm.forward = _identity  # instance attribute, removed on exit

    def _affine_output(self, module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        """``s * layer(x) + (beta - m s)``: the merged layer, without touching its weight."""
        shape = (1, -1) + (1,) * (out.ndim - 2)
        return out * self._scale.view(shape) + self._shift.view(shape)

    def materialize(self, linear: nn.Module) -> None:
        """Swap merged ``weight``/``bias`` into ``linear`` instead of scaling its output.

        Rules that modify parameters (z+, gamma, flat, ...) need the merged
        weights themselves; rules that only rescale the gradient (epsilon) are
        served by the cheaper output scaling.
        """
        handle = self._handles.pop(linear, None)
        if handle is None:
            return
        handle.remove()
        with torch.enable_grad():
            weight = linear.weight
            if isinstance(linear, ConvolutionTranspose):
                index = (None, slice(None), *((None,) * (weight.ndim - 2)))
            else:
                index = (slice(None), *((None,) * (weight.ndim - 1)))
            new_weight = weight * self._scale[index]
            bias = linear.bias
            new_bias = self._shift if bias is None else bias * self._scale + self._shift
        self._swap(linear._parameters, "weight", new_weight)
        self._swap(linear._parameters, "bias", new_bias)

    def _swap(self, store: dict, key: str, value: object) -> None:
        self._swaps.append((store, key, store.get(key)))
        store[key] = value

    def remove(self) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        for store, key, original in reversed(self._swaps):
            store[key] = original
        self._swaps.clear()
        if self._batch_norm is not None:
            if "forward" in self._batch_norm.__dict__:
                del self._batch_norm.forward
            self._batch_norm = None


def translate_canonizers(canonizers: Sequence[Canonizer]) -> list[Canonizer]:
    """Replace zennit's in-place BatchNorm merges by :class:`FunctionalMergeBatchNorm`.

    Other canonizers (e.g. the ResNet block canonizers, which only swap a
    ``forward`` and add a ``Sum`` module) are kept as they are.
    """
    out: list[Canonizer] = []
    for canonizer in canonizers:
        if isinstance(canonizer, CompositeCanonizer):
            out += translate_canonizers(canonizer.canonizers)
        elif isinstance(canonizer, NamedMergeBatchNorm):
            out.append(FunctionalMergeBatchNorm(canonizer.name_map))
        elif isinstance(canonizer, (SequentialMergeBatchNorm, MergeBatchNorm)):
            out.append(FunctionalMergeBatchNorm())
        elif isinstance(canonizer, Canonizer):
            out.append(canonizer)
        else:
            raise TypeError(
                f"canonizers: expected zennit Canonizer instances, got {type(canonizer).__name__}"
            )
    return out


def auto_canonizers(model: nn.Module) -> list[Canonizer]:
    """Canonizers for a model, chosen by its modules.

    * torchvision ResNet blocks: explicit ``Sum`` for the residual addition plus
      BatchNorm merging (zennit's ``ResNetCanonizer``, made functional);
    * any other model with BatchNorm after a linear layer (VGG-BN, ...):
      BatchNorm merging (zennit's ``VGGCanonizer``/``SequentialMergeBatchNorm``);
    * otherwise none.
    """
    modules = list(model.modules())
    canonizers: list[Canonizer] = []
    if any(isinstance(m, BatchNorm) for m in modules):
        canonizers.append(FunctionalMergeBatchNorm())
    if any(isinstance(m, BasicBlock) for m in modules):
        canonizers.append(ResNetBasicBlockCanonizer())
    if any(isinstance(m, Bottleneck) for m in modules):
        canonizers.append(ResNetBottleneckCanonizer())
    return canonizers

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

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from zennit.canonizers import (
    AttributeCanonizer,
    Canonizer,
    CompositeCanonizer,
    MergeBatchNorm,
    NamedMergeBatchNorm,
    SequentialMergeBatchNorm,
)
from zennit.core import collect_leaves
from zennit.layer import Sum
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
from zennit.types import BatchNorm, ConvolutionTranspose
from zennit.types import Linear as LinearLike


def _identity(x: Tensor) -> Tensor:
    return x


def _merge_recipe(weight: Tensor, scale: Tensor, index: tuple) -> Callable[[], Tensor]:
    return lambda: weight * scale[index]


def _output_channels(linear: nn.Module) -> int:
    """Output channels of a convolution, transposed convolution or linear layer."""
    weight = linear.weight
    if isinstance(linear, ConvolutionTranspose):
        return weight.shape[1] * getattr(linear, "groups", 1)
    return weight.shape[0]


class FunctionalMergeBatchNorm(Canonizer):
    """Merge BatchNorms into their preceding linear layers without writing parameters.

    Args:
        name_map: optional ``[((linear_name, ...), batch_norm_name), ...]`` as in
            zennit's ``NamedMergeBatchNorm``. Without it, every BatchNorm that
            directly follows a convolution or linear layer with as many output
            channels in module order is merged (zennit's
            ``SequentialMergeBatchNorm`` convention); :class:`~heatmaps.lrp.LRPHeatmap`
            replaces that guess by the pairs the data flow of its first call shows
            (module order is not data flow: DenseNet's BatchNorm reads a
            concatenation, not the convolution before it).
    """

    def __init__(self, name_map: Sequence[tuple[Sequence[str], str]] | None = None) -> None:
        super().__init__()
        self.name_map = name_map
        self._swaps: list[tuple[dict, str, object]] = []
        self._batch_norm: nn.Module | None = None
        self.linears: list[nn.Module] = []
        # (merged weight, function recomputing it), for heatmaps.lrp.saved_weights
        self.merged_weights: list[tuple[Tensor, Callable[[], Tensor]]] = []

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
                if (
                    isinstance(last, LinearLike)
                    and isinstance(leaf, BatchNorm)
                    and _output_channels(last) == leaf.num_features
                ):
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
        # Merged weights are swapped in for every rule, also for modified-gradient rules
        # (epsilon) that could scale the layer's output instead: a weight-sized product per
        # call is much cheaper than an activation-sized product in the forward pass and in
        # both backward passes (docs/benchmarks.md has the figures).
        self.linears = list(linears)
        with torch.enable_grad():
            scale = batch_norm.running_var.add(batch_norm.eps).rsqrt()
            if batch_norm.weight is not None:
                scale = batch_norm.weight * scale
            shift = -batch_norm.running_mean * scale
            if batch_norm.bias is not None:
                shift = shift + batch_norm.bias
            for linear in self.linears:
                weight = linear.weight
                if isinstance(linear, ConvolutionTranspose):
                    index = (None, slice(None), *((None,) * (weight.ndim - 2)))
                else:
                    index = (slice(None), *((None,) * (weight.ndim - 1)))
                bias = linear.bias
                merged = weight * scale[index]
                self.merged_weights.append((merged, _merge_recipe(weight, scale.detach(), index)))
                self._swap(linear._parameters, "weight", merged)
                self._swap(
                    linear._parameters, "bias", shift if bias is None else bias * scale + shift
                )
        # the BatchNorm becomes the identity in every mode (no statistics update)
        self._batch_norm = batch_norm
        batch_norm.forward = _identity  # instance attribute, removed on exit

    def _swap(self, store: dict, key: str, value: object) -> None:
        self._swaps.append((store, key, store.get(key)))
        store[key] = value

    def remove(self) -> None:
        for store, key, original in reversed(self._swaps):
            store[key] = original
        self._swaps.clear()
        self.merged_weights.clear()
        if self._batch_norm is not None:
            if "forward" in self._batch_norm.__dict__:
                del self._batch_norm.forward
            self._batch_norm = None


class ResidualSum(Sum):
    """The residual addition ``a + b`` of a ResNet block as a module, so a rule can be attached.

    zennit's ResNet canonizers stack the two summands and reduce the stacked
    tensor with its ``Sum`` module. For a differentiable backward that is
    costly: every relevance step at the addition then works on a ``(..., 2)``
    tensor, and the stack's backward allocates and fills a zero tensor per
    summand, activation-sized work at every residual addition.
    This module adds the two tensors directly. It subclasses zennit's ``Sum``
    so composites give it the same rule (``Norm``: ``R_i = a_i R / stab(a + b)``);
    :func:`heatmaps.lrp.heatmap._register_rule` puts an input gate on each
    summand, and rules that need the stacked form get it there.
    """

    def forward(self, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        return a + b


def _basic_block_forward(self: BasicBlock, x: Tensor) -> Tensor:
    """torchvision's ``BasicBlock.forward`` with the addition done by ``self.canonizer_sum``."""
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(self.canonizer_sum(identity, out))


def _bottleneck_forward(self: Bottleneck, x: Tensor) -> Tensor:
    """torchvision's ``Bottleneck.forward`` with the addition done by ``self.canonizer_sum``."""
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(self.canonizer_sum(identity, out))


class ResNetBlockCanonizer(AttributeCanonizer):
    """zennit's ResNet block canonizers with the residual addition as :class:`ResidualSum`.

    Same relevance as ``zennit.torchvision.ResNetBasicBlockCanonizer`` and
    ``ResNetBottleneckCanonizer`` (checked against zennit's attributor on
    resnet18 and resnet50 in the tests), without the stacked tensor.
    Attributes are removed again by ``remove()``.
    """

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: nn.Module) -> dict | None:
        if isinstance(module, Bottleneck):
            forward = _bottleneck_forward
        elif isinstance(module, BasicBlock):
            forward = _basic_block_forward
        else:
            return None
        return {"forward": forward.__get__(module), "canonizer_sum": ResidualSum()}

    def copy(self) -> ResNetBlockCanonizer:
        return ResNetBlockCanonizer()


def translate_canonizers(canonizers: Sequence[Canonizer]) -> list[Canonizer]:
    """Replace zennit's in-place BatchNorm merges by :class:`FunctionalMergeBatchNorm`.

    zennit's ResNet block canonizers become one :class:`ResNetBlockCanonizer`
    (same relevance, no stacked tensor). Other canonizers are kept as they are.
    """
    out: list[Canonizer] = []
    for canonizer in canonizers:
        if isinstance(canonizer, CompositeCanonizer):
            out += translate_canonizers(canonizer.canonizers)
        elif isinstance(canonizer, NamedMergeBatchNorm):
            out.append(FunctionalMergeBatchNorm(canonizer.name_map))
        elif isinstance(canonizer, (SequentialMergeBatchNorm, MergeBatchNorm)):
            out.append(FunctionalMergeBatchNorm())
        elif isinstance(canonizer, (ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer)):
            if not any(isinstance(c, ResNetBlockCanonizer) for c in out):
                out.append(ResNetBlockCanonizer())
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
    if any(isinstance(m, (BasicBlock, Bottleneck)) for m in modules):
        canonizers.append(ResNetBlockCanonizer())
    return canonizers

"""Which layers of a model LRP covers, and the model states it refuses.

LRP is only LRP where a rule says how relevance crosses a layer. A layer that
no rule of the composite maps passes relevance down as its ordinary gradient;
for a layer that merely routes values (the identity, a reshape, the winner of
a max-pool, a ReLU's zero mask) that already *is* the relevance, but for a
layer that mixes or rescales values with its own parameters (a LayerNorm, a
learned scale) or is non-linear (GELU without a rule, a softmax) the result is
a modified gradient, not an LRP map. :func:`unsupported_layers` finds those
layers from the model's modules, after the canonizers are applied (merged
BatchNorms compute the identity, ResNet blocks gain their ``ResidualSum``).

What module-level inspection cannot see: operations a module's ``forward``
calls functionally (``x + y``, ``torch.cat``, ``x * s``, ``F.layer_norm``).
Those are found by a probe forward pass on the first call
(:mod:`heatmaps.lrp.functional`): the ones with a treatment get gates, the
others are refused by name (:func:`functional_message`).

:func:`check_batchnorm_frozen` refuses BatchNorm layers in training mode: the
canonizers merge a BatchNorm with its *running* statistics, so the maps and
logits of a call would be those of the eval-mode model while ``model(x)`` in
train mode normalises with the batch statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from .canonizers import _identity
from .functional import FunctionalFinding
from .registry import Refusal

try:  # torchvision's parameter-free routing layers (ConvNeXt, Swin, EfficientNet)
    from torchvision.ops import StochasticDepth
    from torchvision.ops.misc import Permute

    _TORCHVISION_ROUTING: tuple[type[nn.Module], ...] = (Permute, StochasticDepth)
except ImportError:  # pragma: no cover - torchvision is a dependency
    _TORCHVISION_ROUTING = ()

#: parameter-free layers whose ordinary gradient already is the LRP treatment, so they
#: need no rule: they route values without mixing them (identity, reshapes,
#: permutations, zero padding, the winner of a max-pool, dropout's mask), or, for
#: ReLU, mask exactly where the rules above have already put zero relevance
PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.ReLU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
    nn.ChannelShuffle,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    *_TORCHVISION_ROUTING,
)


@dataclass(frozen=True)
class UncoveredLayer:
    """A layer that no rule maps although its gradient is not its relevance.

    Attributes:
        name: qualified name from ``model.named_modules()`` (``""`` is the model itself).
        type_name: the module's class name.
        reason: ``"has parameters"`` or ``"is not known to pass relevance"``.
    """

    name: str
    type_name: str
    reason: str

    def describe(self) -> str:
        """``'features.0.1' (LayerNorm2d, has parameters)``."""
        return f"{self.name or '<model>'!r} ({self.type_name}, {self.reason})"


def unsupported_layers(
    named_rules: Sequence[tuple[str, nn.Module, object | None]],
) -> list[UncoveredLayer]:
    """The layers among ``(name, module, rule)`` that LRP does not cover, in module order.

    A module with no rule is not covered when

    * it has parameters of its own (``recurse=False``: a leaf such as a
      LayerNorm, or a container whose ``forward`` uses a parameter directly,
      such as ConvNeXt's layer scale), unless a canonizer merged it away (a
      BatchNorm whose ``forward`` is the identity); or
    * it is a leaf (no child modules) that is not in :data:`PASS_THROUGH`.

    A module whose rule is a :class:`~heatmaps.lrp.registry.Refusal` is not
    covered, for the refusal's reason. Containers without parameters are not
    inspected themselves; their children are (an empty ``Sequential`` is the
    identity). Layers come first, then containers, each in module order, so
    the first one names the layer type that lacks a rule.
    """
    uncovered = []
    containers = []
    for name, module, rule in named_rules:
        if isinstance(rule, Refusal):
            uncovered.append(UncoveredLayer(name, type(module).__name__, rule.reason))
            continue
        if rule is not None or module.__dict__.get("forward") is _identity:
            continue
        leaf = next(module.children(), None) is None
        if next(module.parameters(recurse=False), None) is not None:
            found = UncoveredLayer(name, type(module).__name__, "has parameters")
            (uncovered if leaf else containers).append(found)
        elif leaf and not isinstance(module, PASS_THROUGH) and not _empty_sequential(module):
            uncovered.append(
                UncoveredLayer(name, type(module).__name__, "is not known to pass relevance")
            )
    return uncovered + containers


def _empty_sequential(module: nn.Module) -> bool:
    return isinstance(module, (nn.Sequential, nn.ModuleList)) and len(module) == 0


def _type_names(uncovered: Sequence[UncoveredLayer]) -> str:
    return ", ".join(dict.fromkeys(layer.type_name for layer in uncovered))


def uncovered_message(uncovered: Sequence[UncoveredLayer], composite: str) -> str:
    """One line naming the first uncovered layer, how many there are, and the ways out."""
    first = uncovered[0]
    more = f" (and {len(uncovered) - 1} more)" if len(uncovered) > 1 else ""
    return (
        f"LRPHeatmap: layer {first.describe()} has no rule in composite {composite!r}{more}; "
        f"backend 'lrp' has no rule for layer type(s) {_type_names(uncovered)}; "
        "relevance would cross them as a plain gradient, so the maps would not be LRP; use a "
        "composite with rules for it, another backend (e.g. 'gradcam'), or "
        "LRPHeatmap(..., unsupported='warn') to accept the gradient there"
    )


def functional_message(findings: Sequence[FunctionalFinding], composite: str) -> str:
    """One line naming the first function LRP cannot treat, how many there are, and the ways out."""
    first = findings[0]
    more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
    names = ", ".join(dict.fromkeys(f.function for f in findings))
    return (
        f"LRPHeatmap: function {first.describe()} (composite {composite!r}){more}; backend "
        f"'lrp' cannot treat function(s) {names}; relevance would cross them as a plain "
        "gradient, so the maps would not be LRP; use another backend (e.g. 'gradcam'), or "
        "LRPHeatmap(..., unsupported='warn') to accept the gradient there"
    )


def functional_warning(findings: Sequence[FunctionalFinding], composite: str) -> str:
    """One line listing every function LRP cannot treat, for ``unsupported="warn"``."""
    return (
        f"LRPHeatmap: {len(findings)} function call(s) have no LRP rule (composite "
        f"{composite!r}): {'; '.join(f.describe() for f in findings)}; relevance crosses them "
        "as a plain gradient, so the maps are not LRP there"
    )


def uncovered_warning(uncovered: Sequence[UncoveredLayer], composite: str) -> str:
    """One line listing every uncovered layer, for ``unsupported="warn"``."""
    return (
        f"LRPHeatmap: {len(uncovered)} layer(s) have no rule in composite {composite!r}: "
        f"{', '.join(layer.describe() for layer in uncovered)}; relevance crosses them as a "
        "plain gradient, so the maps are not LRP there"
    )


def check_batchnorm_frozen(model: nn.Module) -> None:
    """Refuse a model with a BatchNorm layer in training mode, naming the first one.

    Raises:
        ValueError: a ``_BatchNorm`` (BatchNorm1d/2d/3d, SyncBatchNorm, lazy
            variants) of ``model`` is in training mode.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise ValueError(
                f"LRPHeatmap: BatchNorm layer {name or '<model>'!r} ({type(module).__name__}) is in "
                "training mode, but LRP merges BatchNorm with its running statistics, so maps "
                "and logits would be those of the eval-mode model; freeze BatchNorm first: "
                "model.eval() or rrr.segmenters.freeze_batchnorm(model)"
            )

"""``LRPHeatmap``: zennit composites and canonizers, exactly differentiable."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from zennit.canonizers import Canonizer
from zennit.core import Composite
from zennit.layer import Sum

from ..base import (
    Heatmap,
    batched_input_grad,
    check_channel_reduction,
    one_hot_grad_outputs,
    reduce_channels,
)
from ..recomputation import is_checkpointed
from .basic_rules import uses_output
from .canonizers import (
    ResidualSum,
    _identity,
    auto_canonizers,
    translate_canonizers,
)
from .composites import make_composite
from .conv_relevance import ConvGeometry
from .coverage import (
    UncoveredLayer,
    check_batchnorm_frozen,
    uncovered_message,
    uncovered_warning,
    unsupported_layers,
)
from .division import StabilisedInverse, plain_epsilon
from .gates import (
    EpsilonConvGate,
    GateState,
    InputGate,
    OutputGate,
    PassGate,
    RuleGate,
    keeps_no_output,
    rule_kind,
)
from .saved_weights import WeightRecipes


class LRPHeatmap(Heatmap):
    """Layer-wise relevance propagation maps, differentiable w.r.t. the parameters.

    The relevance of output class ``c`` starts as the one-hot vector ``e_c``
    at the logits (zennit's convention; or ``y_c e_c``, see ``relevance``) and
    is propagated to the input by the rules of ``composite``; the map is the
    input relevance summed over colour channels. With ``create_graph=True`` the map is an exactly differentiable
    function of every parameter, BatchNorm affine parameters included.

    Args:
        model: a classifier returning logits ``(B, C)``.
        composite: a name from :data:`heatmaps.lrp.COMPOSITES` (``"epsilon"``,
            ``"epsilon_plus_flat"``, ``"epsilon_gamma_box"``,
            ``"epsilon_alpha2_beta1"``, ...) or a zennit ``Composite`` instance.
        canonizers: ``"auto"`` (ResNet and BatchNorm canonizers chosen from the
            model's modules), a list of zennit canonizers (BatchNorm merges are
            replaced by functional ones), or ``[]`` for none. A composite
            instance that carries its own canonizers uses those.
        channel_reduction: how input relevance ``(B, 3, H, W)`` becomes a map:
            ``"sum"`` (relevance is conserved), ``"abs_sum"`` or ``"max_abs"``.
        batched: compute the ``K`` maps of one call in one vectorised backward
            (``True``), one backward per class on the shared forward
            (``False``), or choose (``None``, the default): one per class when
            every rule is a modified gradient (the ``"epsilon"`` composite),
            vectorised otherwise. PyTorch's vectorised backward (legacy
            ``vmap``) cannot run the custom autograd functions of the epsilon
            gates and falls back to slower ordinary operations, one
            convolution per class, so the ``"epsilon"`` composite is faster
            one class at a time; composites with rules that recompute their
            layer (z+, gamma, ...) gain more from one vectorised backward
            (the timings are in docs/benchmarks.md).
        relevance: output relevance of class ``c``: ``"one_hot"`` (``e_c``,
            zennit's convention) or ``"logit"`` (``y_c e_c``, the convention of
            Bach et al. 2015, where the relevance sums to the logit). The
            logit form is much better conditioned for training: with ``e_c``
            the last layer divides by ``y_c``, so maps and their parameter
            gradients blow up wherever a logit crosses zero. The logit is kept
            in the graph, so the maps stay exactly differentiable.
        unsupported: what to do about layers LRP does not cover (below):
            ``"error"`` (default) raises a ``ValueError`` naming the first one
            when the heatmap is built (and at a call, if the model changed
            since); ``"warn"`` issues one ``UserWarning`` listing them all and
            lets relevance cross them as a plain gradient.
        **composite_kwargs: passed to the named composite (e.g. ``epsilon=1e-8``).

    What LRP covers: every layer must be mapped to a rule by the composite
    (after the canonizers), or be a parameter-free layer whose gradient already
    is its relevance (identity, reshapes, max-pooling, dropout, ReLU: see
    :data:`heatmaps.lrp.coverage.PASS_THROUGH`). A layer with parameters of its
    own and no rule (LayerNorm, a learned scale, ConvNeXt's layer scale) or a
    parameter-free leaf that is not known to pass relevance (an unmapped
    non-linearity, InstanceNorm, upsampling) would give maps that are not LRP,
    so it is refused (``unsupported``). torchvision's ResNet, ResNeXt,
    Wide-ResNet, VGG and AlexNet families are covered. Not detected: operations
    a module's ``forward`` performs functionally (``x + y``, ``torch.cat``,
    ``F.relu``, products), which no hook sees and which pass relevance as their
    gradient; the canonizers make torchvision ResNet's residual addition a
    module, but DenseNet's concatenations, MobileNet's residual additions or a
    squeeze-excitation product cross as gradients.

    BatchNorm: the canonizers merge BatchNorm with its running statistics, so a
    call on a model with a BatchNorm layer in training mode raises a
    ``ValueError`` naming it (its maps and logits would be those of the
    eval-mode model); freeze BatchNorm first (``model.eval()`` or
    ``rrr.segmenters.freeze_batchnorm``).

    Defaults: ``composite="epsilon_plus_flat"`` and ``relevance="one_hot"`` are
    the explanation-quality choice of the LRP literature (flat rule on the
    first layer, z+ on the other convolutions, epsilon on dense layers;
    relevance starting from ``e_c`` at the output, zennit's convention), for
    maps meant to be looked at. ``python -m rrr.finetune`` trains on maps made
    with ``composite="epsilon"`` and ``relevance="logit"`` instead. The epsilon
    rule on every layer is what the segmentation paper it implements (Yu et
    al.) uses; the fine-tuning recipe was calibrated on input x gradient maps,
    which equal LRP-0 on ReLU networks (the epsilon rule as epsilon goes to
    0), and its recorded runs train with it; and an epsilon training step is
    cheaper than an ``epsilon_plus_flat`` one (docs/benchmarks.md). The logit
    start keeps maps and gradients bounded where a logit crosses zero (see
    ``relevance``). docs/concepts/backends.md says more.

    The hooks live only for the duration of a call; nothing is left on the model.
    """

    name = "lrp"

    def __init__(
        self,
        model: nn.Module,
        composite: str | Composite = "epsilon_plus_flat",
        canonizers: str | Sequence[Canonizer] = "auto",
        channel_reduction: str = "sum",
        batched: bool | None = None,
        relevance: str = "one_hot",
        unsupported: str = "error",
        **composite_kwargs: Any,
    ) -> None:
        super().__init__(model)
        if relevance not in ("one_hot", "logit"):
            raise ValueError(f"relevance: expected 'one_hot' or 'logit', got {relevance!r}")
        if unsupported not in ("error", "warn"):
            raise ValueError(f"unsupported: expected 'error' or 'warn', got {unsupported!r}")
        self.unsupported = unsupported
        self.relevance = relevance
        self.composite = make_composite(composite, **composite_kwargs)
        self.composite_name = composite if isinstance(composite, str) else type(composite).__name__
        if isinstance(canonizers, str):
            if canonizers != "auto":
                raise ValueError(f"canonizers: expected 'auto' or a list, got {canonizers!r}")
            if self.composite.canonizers:
                self._canonizers = translate_canonizers(self.composite.canonizers)
            else:
                self._canonizers = auto_canonizers(model)
        else:
            self._canonizers = translate_canonizers(list(canonizers))
        self.channel_reduction = check_channel_reduction(channel_reduction)
        self.batched = batched
        self._state: GateState | None = None
        # the uncovered layers last warned about (unsupported="warn"), to warn once per change
        self._warned: list[UncoveredLayer] | None = None
        with self._canonized():
            self._check_coverage(self._rules())

    def extra_repr(self) -> str:
        return f"composite={self.composite_name!r}, canonizers={[type(c).__name__ for c in self._canonizers]}"

    @contextlib.contextmanager
    def _canonized(self) -> Iterator[list[Canonizer]]:
        """Apply the canonizers to the model; remove them on exit, also after an exception."""
        applied: list[Canonizer] = []
        try:
            for canonizer in self._canonizers:
                applied += canonizer.apply(self.model)
            yield applied
        finally:
            for canonizer in reversed(applied):
                canonizer.remove()

    def _rules(self) -> list[tuple[str, nn.Module, object | None]]:
        """``(name, module, rule)`` of every module of the (canonized) model, in module order."""
        ctx: dict = {}
        return [
            (name, module, self.composite.module_map(ctx, name, module))
            for name, module in self.model.named_modules()
        ]

    def _check_coverage(self, rules: list[tuple[str, nn.Module, object | None]]) -> None:
        """Raise or warn (``unsupported``) about layers LRP does not cover."""
        uncovered = unsupported_layers(rules)
        if not uncovered:
            return
        if self.unsupported == "error":
            raise ValueError(uncovered_message(uncovered, self.composite_name))
        if uncovered != self._warned:
            self._warned = uncovered
            warnings.warn(uncovered_warning(uncovered, self.composite_name), stacklevel=3)

    @contextlib.contextmanager
    def _attached(self, x: Tensor) -> Iterator[None]:
        if is_checkpointed(self.model):
            raise RuntimeError(
                "LRPHeatmap: the model runs under heatmaps.activation_checkpointing; LRP attaches "
                "its rules only for the duration of a call, so the recomputation in the final "
                "backward pass would run without them (use checkpointing with Grad-CAM, or none)"
            )
        check_batchnorm_frozen(self.model)
        recipes = WeightRecipes()
        state = GateState(recipes=recipes)
        handles: list[Any] = []
        with self._canonized() as applied:
            try:
                rules = self._rules()
                self._check_coverage(rules)
                for _, module, rule in rules:
                    if rule is None:
                        continue
                    handles += _register_rule(module, rule, state)
                    state.vectorise |= rule_kind(rule) == "basic"
                self._state = state
                for canonizer in applied:
                    for merged, compute in getattr(canonizer, "merged_weights", ()):
                        recipes.remember(merged, compute)
                with recipes.saving():
                    yield
            finally:
                state.active = False
                self._state = None
                for handle in handles:
                    handle.remove()

    def _attribute(self, x: Tensor, logits: Tensor, index: Tensor, create_graph: bool) -> Tensor:
        state = self._state
        assert state is not None, "LRPHeatmap._attribute runs only inside _attached()"
        grad_outputs = one_hot_grad_outputs(logits, index)
        if self.relevance == "logit":
            grad_outputs = grad_outputs * (logits if create_graph else logits.detach())[None]
        state.active, state.create_graph = True, create_graph
        try:
            batched = state.vectorise if self.batched is None else self.batched
            relevance = batched_input_grad(logits, x, grad_outputs, create_graph, batched)
        finally:
            state.active = False
        k, batch = relevance.shape[:2]
        maps = reduce_channels(relevance.flatten(0, 1), self.channel_reduction)
        return maps.unflatten(0, (k, batch)).transpose(0, 1)


def _register_rule(module: nn.Module, rule: object, state: GateState) -> list[Any]:
    """Register the forward hooks that put ``rule``'s gates around ``module``.

    Two ``Pass`` cases need no gate, because the ordinary gradient already is
    the rule: a BatchNorm merged into its linear layer computes the identity,
    and a ReLU's gradient masks exactly the positions where its output is zero,
    where every rule of the layers above (all multiply the relevance they pass
    down by their non-negative input, or route it by max-pool gradients) has
    already put zero relevance. The equality with zennit's own attributor is
    checked in the tests on ResNet and VGG for every composite.
    """
    kind = rule_kind(rule)
    if kind == "pass" and (module.__dict__.get("forward") is _identity or type(module) is nn.ReLU):
        return []
    if kind == "gradient":
        return _register_gradient_rule(module, rule, state)
    if isinstance(module, ResidualSum):
        return _register_residual_sum(module, rule, kind, state)
    inplace = bool(getattr(module, "inplace", False))
    stash: list[Tensor] = []

    def pre(mod: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        stash.append(x)
        if inplace:
            return (x.clone(), *args[1:])
        return None

    if kind == "pass":

        def post(mod: nn.Module, args: tuple, out: Tensor) -> Tensor:
            return PassGate.apply(stash.pop(), out, state)

    else:
        reuse = not uses_output(rule) and keeps_no_output(module)

        def post(mod: nn.Module, args: tuple, out: Tensor) -> Tensor:
            x = stash.pop()
            return RuleGate.apply(x, out, state, rule, mod, reuse and out is not x)

    return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]


def _register_gradient_rule(module: nn.Module, rule: object, state: GateState) -> list[Any]:
    """Gates of a modified-gradient rule (epsilon, or ``Norm`` on sums and pools).

    An input gate on the gated inputs (both summands of a :class:`ResidualSum`,
    i.e. ``R_a = a R / stab(a + b)`` and likewise for ``b``; the first argument
    of any other layer) and an output gate on the output; on a plain
    convolution, one :class:`EpsilonConvGate` on the output instead.
    """
    epsilon = plain_epsilon(rule)
    geometry = ConvGeometry.of(module)
    if epsilon is not None and geometry is not None:
        return _register_epsilon_conv(module, rule, epsilon, geometry, state)
    inplace = bool(getattr(module, "inplace", False))
    gated = 2 if isinstance(module, ResidualSum) else 1

    def pre(mod: nn.Module, args: tuple) -> tuple:
        out = [InputGate.apply(a, state, rule) if i < gated else a for i, a in enumerate(args)]
        if inplace:
            out[0] = out[0].clone()
        return tuple(out)

    fresh_output = keeps_no_output(module)

    def post(mod: nn.Module, args: tuple, out: Tensor) -> Tensor:
        inverse = None if epsilon is None else StabilisedInverse.apply(out, epsilon)
        reuse = fresh_output and all(out is not a for a in args)
        return OutputGate.apply(out, inverse, state, rule, reuse)

    return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]


def _register_epsilon_conv(
    module: nn.Module, rule: object, epsilon: float, geometry: ConvGeometry, state: GateState
) -> list[Any]:
    def post(mod: nn.Module, args: tuple, out: Tensor) -> Tensor:
        inverse = StabilisedInverse.apply(out, epsilon)
        return EpsilonConvGate.apply(args[0], out, inverse, mod.weight, geometry, state, rule, True)

    return [module.register_forward_hook(post)]


def _register_residual_sum(
    module: ResidualSum, rule: object, kind: str, state: GateState
) -> list[Any]:
    """Gates of the residual addition ``a + b`` for a rule that is not a modified gradient.

    Modified-gradient rules (``Norm``, the rule every zennit composite gives
    sums) are gated by :func:`_register_gradient_rule`. ``Pass`` needs no gate
    (the ordinary gradient hands ``R`` to both summands); any other rule sees
    the stacked summands ``(..., 2)`` through zennit's ``Sum`` module, as with
    zennit's own canonizer.
    """
    if kind == "pass":
        return []
    stacked_sum = Sum()
    reuse = not uses_output(rule)

    def post_basic(mod: nn.Module, args: tuple, out: Tensor) -> Tensor:
        stacked = torch.stack(args, dim=-1)
        return RuleGate.apply(stacked, out, state, rule, stacked_sum, reuse)

    return [module.register_forward_hook(post_basic)]


__all__ = ["LRPHeatmap"]

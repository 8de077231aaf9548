"""Autograd functions that apply zennit rules in a differentiable backward pass.

zennit implements a rule as a backward hook that recomputes the layer's output
with modified parameters and takes an inner gradient. As shipped (0.5.1) it
builds the modified parameters from ``param.data`` and runs the inner gradient
with ``create_graph=grad_output.requires_grad``, which is ``False`` for the
constant one-hot output relevance - so the relevance is not differentiable
w.r.t. the parameters. The gates below compute the *same* rule (they call the
rule's own ``input_modifiers``, ``param_modifiers``, ``output_modifiers``,
``gradient_mapper`` and ``reducer``) but

* from the live parameter tensors, through the layer's functional form, and
* with ``create_graph`` taken from the caller,

so the relevance is an ordinary differentiable function of the parameters, the
input and the output relevance.

Every gate is an identity in the forward pass. Its backward only applies the
rule while its :class:`GateState` is active (inside the heatmap's own
``autograd.grad`` call); afterwards the same graph carries ordinary gradients,
so one forward pass serves both the classification loss and the maps.

Two kinds of rules are handled differently, for speed:

* **modified-gradient rules** (zennit ``Epsilon`` and ``Norm`` with no zeroed
  parameters): the rule is ``R_in = x * J^T (R_out / stab(z))`` with the
  layer's *ordinary* Jacobian ``J``, so the ordinary backward of the layer is
  reused; the output gate divides by ``stab(z)`` and the input gate multiplies
  by ``x``. No convolution is recomputed. On a plain convolution one gate
  does all three steps, with :func:`~heatmaps.lrp.conv_relevance.conv_input_gradient`
  for ``J^T`` (its derivative is cheaper than autograd's).
* **any other zennit ``BasicHook`` rule** (z+, gamma, alpha-beta, flat, box,
  ...): the output gate computes the rule's relevance directly from the saved
  input and hands it to the input; the ordinary backward of the layer gets no
  gradient and is skipped.

``Pass`` (activations, merged BatchNorms) hands the output relevance to the
input unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.autograd import Function
from zennit.core import BasicHook, ParamMod
from zennit.layer import Sum
from zennit.rules import Epsilon, Norm, Pass

from .basic_rules import CONV_TYPES, basic_rule_relevance
from .conv_relevance import ConvGeometry, conv_input_gradient
from .division import epsilon_scale
from .saved_weights import WeightRecipes

_OUTPUT_FREE_TYPES = (
    *CONV_TYPES,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    Sum,
)


@dataclass
class GateState:
    """Shared by all gates of one heatmap call."""

    active: bool = False
    create_graph: bool = False
    recipes: WeightRecipes | None = None
    #: whether the K maps of a call run faster in one vectorised backward: true when a rule
    #: recomputes its layer (z+, gamma, ...); the epsilon gates' custom functions do not
    #: run under PyTorch's legacy vmap and are faster one class at a time
    vectorise: bool = False


def rule_kind(rule: object) -> str:
    """Classify a zennit rule: ``"pass"``, ``"gradient"`` (modified gradient) or ``"basic"``."""
    if type(rule) is Pass:
        return "pass"
    if type(rule) in (Epsilon, Norm):
        mod = ParamMod.ensure(rule.param_modifiers[0])
        if not mod.zero_params:
            return "gradient"
        return "basic"
    if isinstance(rule, BasicHook):
        return "basic"
    raise TypeError(
        f"LRP: rule {type(rule).__name__} is not supported; rules must be zennit BasicHook "
        "subclasses (Epsilon, ZPlus, Gamma, AlphaBeta, Flat, WSquare, ZBox, Norm, ...) or Pass"
    )


def _first(value: Any) -> Tensor:
    return value[0] if isinstance(value, (list, tuple)) else value


class InputGate(Function):
    """Identity forward; backward multiplies the incoming relevance by the input (reducer)."""

    @staticmethod
    def forward(ctx, x: Tensor, state: GateState, rule: BasicHook) -> Tensor:  # type: ignore[override]
        ctx.state, ctx.rule = state, rule
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        if not ctx.state.active:
            return grad, None, None
        (x,) = ctx.saved_tensors
        return ctx.rule.reducer([x], [grad]), None, None


class OutputGate(Function):
    """Identity forward on ``z``; backward maps the output relevance by the rule's gradient mapper.

    With ``inverse`` (from :class:`StabilisedInverse`) the mapping is
    :class:`EpsilonScale`, differentiable in ``R`` and ``z``; without it the
    rule's own ``gradient_mapper`` is called on the saved ``z``. ``reuse``
    says that ``z`` is a fresh output of the layer (not one of its inputs), so
    it may be handed on without a copy.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        z: Tensor,
        inverse: Tensor | None,
        state: GateState,
        rule: BasicHook,
        reuse: bool = False,
    ) -> Tensor:
        ctx.state, ctx.rule = state, rule
        ctx.save_for_backward(z if inverse is None else None, inverse)
        if reuse and inverse is not None and _is_fresh(z):
            # nothing saved z itself (the inverse was computed from it, and a convolution or
            # linear layer keeps its input, not its output): hand the same tensor on as
            # "modified" instead of copying it, so a following in-place ReLU may write it
            ctx.mark_dirty(z)
            return z
        return z.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        if not ctx.state.active:
            return grad, None, None, None, None
        z, inverse = ctx.saved_tensors
        if inverse is None:
            return _first(ctx.rule.gradient_mapper(grad, [z])), None, None, None, None
        return epsilon_scale(grad, inverse), None, None, None, None


class EpsilonConvGate(Function):
    """Identity forward on a convolution's output ``z``; backward applies the epsilon rule::

        R_in = x * J^T (R / stab(z))

    with ``inverse = 1 / stab(z)`` from :class:`StabilisedInverse`, ``J^T``
    from :func:`conv_input_gradient` and the rule's reducer for the product.
    The input relevance goes straight to ``x``; the convolution's own
    backward gets no gradient in the relevance pass. ``reuse`` as for
    :class:`OutputGate`.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        z: Tensor,
        inverse: Tensor,
        weight: Tensor,
        geometry: ConvGeometry,
        state: GateState,
        rule: BasicHook,
        reuse: bool = False,
    ) -> Tensor:
        ctx.state, ctx.rule, ctx.geometry = state, rule, geometry
        # the convolution keeps x and its weight for its own backward: no extra memory
        ctx.save_for_backward(x, inverse, weight)
        if reuse and _is_fresh(z):
            ctx.mark_dirty(z)
            return z
        return z.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        if not ctx.state.active:
            return None, grad, None, None, None, None, None, None
        x, inverse, weight = ctx.saved_tensors
        scaled = epsilon_scale(grad, inverse)
        relevance = ctx.rule.reducer([x], [conv_input_gradient(scaled, x, weight, ctx.geometry)])
        return relevance, None, None, None, None, None, None, None


class PassGate(Function):
    """Forward returns the module output; backward hands the output relevance to the input."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, state: GateState) -> Tensor:  # type: ignore[override]
        ctx.state = state
        return y.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        if not ctx.state.active:
            return None, grad, None
        return grad, None, None


class RuleGate(Function):
    """Forward returns the module output; backward computes the rule's relevance for the input."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        z: Tensor,
        state: GateState,
        rule: BasicHook,
        module: nn.Module,
        reuse: bool = False,
    ) -> Tensor:
        ctx.state, ctx.rule, ctx.module = state, rule, module
        if reuse and _is_fresh(z):
            # the rule recomputes every term it needs (see uses_output): keep neither z nor a copy
            ctx.save_for_backward(x, None)
            ctx.mark_dirty(z)
            return z
        ctx.save_for_backward(x, z)
        return z.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        if not ctx.state.active:
            return None, grad, None, None, None, None
        x, z = ctx.saved_tensors
        state = ctx.state
        relevance = basic_rule_relevance(
            ctx.rule, ctx.module, x, grad, state.create_graph, output=z, recipes=state.recipes
        )
        return relevance, None, None, None, None, None


def _is_fresh(z: Tensor) -> bool:
    """Whether ``z`` is a computed tensor of its own (not a leaf, not a view)."""
    return z.grad_fn is not None and z._base is None


def keeps_no_output(module: nn.Module) -> bool:
    """Whether ``module``'s own backward needs no copy of its output.

    Convolutions and linear layers keep their input and weight, average pools
    and sums (zennit's ``Sum``, the residual additions) keep nothing; so a gate may hand on their output itself, marked as
    modified, instead of a copy (a following in-place ReLU then writes it).
    Other layers (a sigmoid keeps its output) get a copy.
    """
    return isinstance(module, _OUTPUT_FREE_TYPES)

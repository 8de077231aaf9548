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
  by ``x``. No convolution is recomputed.
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

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Function
from zennit.core import BasicHook, ParamMod, Stabilizer, zero_wrap
from zennit.rules import Epsilon, NoMod, Norm, Pass

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class GateState:
    """Shared by all gates of one heatmap call."""

    active: bool = False
    create_graph: bool = False


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


def plain_epsilon(rule: BasicHook) -> float | None:
    """The epsilon of an ``Epsilon``/``Norm`` rule whose stabiliser is zennit's default form.

    That form is ``stab(z) = z + eps * (sign(z) + [z == 0])``: a shift that is
    piecewise constant in ``z``, so its derivative is zero almost everywhere.
    """
    for cell in rule.gradient_mapper.__closure__ or ():
        value = cell.cell_contents
        if isinstance(value, Stabilizer) and not value.clip and not value.norm_scale:
            return float(value.epsilon)
    return None


def stabilised_inverse(z: Tensor, epsilon: float) -> Tensor:
    """``1 / (z + eps * (sign(z) + [z == 0]))``, recorded as a function of ``z`` only.

    The shift (``+eps`` where ``z >= 0``, ``-eps`` elsewhere) is computed
    without a graph; the result is then an ordinary autograd function of ``z``
    (an addition and a reciprocal). Computing it once in the forward pass means
    the differentiable relevance pass records one product per layer instead of
    an addition and a division, and the output gate keeps one tensor instead of
    ``z`` and the shift.
    """
    with torch.no_grad():
        eps = z.new_tensor(epsilon)
        shift = torch.where(z >= 0, eps, -eps)
    return (z + shift).reciprocal()


class OutputGate(Function):
    """Identity forward on ``z``; backward maps the output relevance by the rule's gradient mapper.

    With ``inverse`` (from :func:`stabilised_inverse`) the mapping is the
    product ``R * inverse``, differentiable through ``inverse``; without it the
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
        if reuse and inverse is not None and z.grad_fn is not None and z._base is None:
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
        return grad * inverse, None, None, None, None


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
        ctx, x: Tensor, z: Tensor, state: GateState, rule: BasicHook, module: nn.Module
    ) -> Tensor:
        ctx.state, ctx.rule, ctx.module = state, rule, module
        ctx.save_for_backward(x, z)
        return z.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        if not ctx.state.active:
            return None, grad, None, None, None
        x, z = ctx.saved_tensors
        relevance = basic_rule_relevance(
            ctx.rule, ctx.module, x, grad, create_graph=ctx.state.create_graph, output=z
        )
        return relevance, None, None, None, None


def modified_parameters(param_mod: Any, module: nn.Module) -> dict[str, Tensor]:
    """The rule's modified parameters, computed from the live (possibly canonized) tensors."""
    mod = ParamMod.ensure(param_mod)
    keys = mod.param_keys
    if keys is None:
        keys = [name for name, _ in module.named_parameters(recurse=False)]
    missing = [key for key in keys if not hasattr(module, key)]
    if mod.require_params and missing:
        raise RuntimeError(f"LRP: module {module} lacks parameters {missing} required by its rule")
    modifier = zero_wrap(mod.zero_params or [])(mod.modifier)
    params = {}
    for key in keys:
        value = getattr(module, key, None)
        if value is not None:
            params[key] = modifier(value, key)
    return params


def functional_forward(module: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """Run ``module`` on ``x`` with ``params`` in place of its own, bypassing its hooks."""
    if isinstance(module, _CONV_TYPES):
        weight = params.get("weight", module.weight)
        bias = params.get("bias", module.bias)
        return module._conv_forward(x, weight, bias)
    if isinstance(module, nn.Linear):
        return F.linear(x, params.get("weight", module.weight), params.get("bias", module.bias))
    store = module._parameters
    saved = {key: store[key] for key in params if key in store}
    try:
        for key, value in params.items():
            if key in store:
                store[key] = value
        return module.forward(x)
    finally:
        store.update(saved)


def _zeroes_bias(param_mod: Any, module: nn.Module) -> bool:
    """Whether the modified layer has no bias (so a zero input gives a zero output)."""
    mod = ParamMod.ensure(param_mod)
    if getattr(module, "bias", None) is None:
        return True
    zero = mod.zero_params or []
    zero = [zero] if isinstance(zero, str) else zero
    keys = mod.param_keys
    return "bias" in zero and (keys is None or "bias" in keys)


def _is_unmodified(param_mod: Any) -> bool:
    mod = ParamMod.ensure(param_mod)
    return isinstance(mod, NoMod) and not mod.zero_params


def basic_rule_relevance(
    rule: BasicHook,
    module: nn.Module,
    x: Tensor,
    relevance: Tensor,
    create_graph: bool,
    output: Tensor | None = None,
) -> Tensor:
    """Input relevance of a zennit ``BasicHook`` rule, differentiable when ``create_graph``.

    Same computation as ``zennit.core.BasicHook.backward``::

        z_i   = out_mod_i(layer(in_mod_i(x); param_mod_i(theta)))
        g_i   = gradient_mapper(R_out, [z_1..z_n])_i
        R_in  = reducer([in_mod_i(x)], [J_i^T g_i])

    but with live parameters and the caller's ``create_graph``. Two shortcuts
    give the same values with less work:

    * a term whose modified input is identically zero and whose modified layer
      has no bias has ``z_i = 0`` and contributes nothing to ``R_in``: its layer
      is not evaluated (the negative-input terms of z+, gamma and alpha-beta on
      the non-negative outputs of a ReLU);
    * a term with unmodified input and parameters is the forward output
      ``output`` itself and is not recomputed.
    """
    with torch.enable_grad():
        inputs, outputs, live = [], [], []
        for in_mod, param_mod, out_mod in zip(
            rule.input_modifiers, rule.param_modifiers, rule.output_modifiers
        ):
            inp = in_mod(x)
            if (
                output is not None
                and inp is x
                and _is_unmodified(param_mod)
                and x.requires_grad
                and all(i is not x for i in inputs)
            ):
                inputs.append(x)
                outputs.append(out_mod(output))
                live.append(True)
                continue
            if _zeroes_bias(param_mod, module) and not bool(inp.any()):
                inputs.append(torch.zeros_like(inp))
                outputs.append(None)
                live.append(False)
                continue
            # a distinct node per modified input, as zennit computes one gradient per input
            inp = inp.view_as(inp) if inp.requires_grad else inp.detach().requires_grad_(True)
            out = out_mod(functional_forward(module, modified_parameters(param_mod, module), inp))
            inputs.append(inp)
            outputs.append(out)
            live.append(True)
        reference = next(o for o in outputs if o is not None)
        outputs = [torch.zeros_like(reference) if o is None else o for o in outputs]
        grad_outputs = rule.gradient_mapper(relevance, outputs)
        if isinstance(grad_outputs, Tensor):
            grad_outputs = [grad_outputs]
        grad_outputs = list(grad_outputs)
        kept = [i for i, flag in enumerate(live) if flag]
        grads = torch.autograd.grad(
            [outputs[i] for i in kept],
            [inputs[i] for i in kept],
            grad_outputs=[grad_outputs[i] for i in kept],
            create_graph=create_graph,
            retain_graph=True,  # a reused forward output's graph is still needed afterwards
            allow_unused=True,
        )
        full: list[Tensor] = [torch.zeros_like(i) for i in inputs]
        for i, g in zip(kept, grads):
            if g is not None:
                full[i] = g
    # without create_graph the reduction is not recorded (detach() has no batching rule for
    # the vectorised multi-class backward, so the graph is simply not built)
    with torch.set_grad_enabled(create_graph):
        return rule.reducer(inputs, full)

"""The gates of zennit's three kinds of rules on any layer (the registry's defaults).

* ``pass`` (activations): the output relevance goes to the input unchanged
  (Montavon et al. 2019, sec. 10.2: activations are not given a rule of
  their own, relevance is handed on as through a ReLU). The ReLU and the
  identity need no gate, their gradient already does that (see
  :func:`attach_pass`).
* ``gradient`` (zennit ``Epsilon``, ``Norm``): ``R_in = x * J^T (R / stab(z))``
  with ``stab(z) = z + eps * sign(z)`` (Bach et al. 2015, eq. 58; Montavon et
  al. 2019, eq. 4): an input gate multiplies by ``x``, an output gate divides
  by ``stab(z)``, the layer's own backward gives ``J^T``.
* ``basic`` (z+, gamma, alpha-beta, flat, ...): the rule's relevance is
  recomputed from the live, modified parameters (:mod:`heatmaps.lrp.basic_rules`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..basic_rules import uses_output
from ..canonizers import _identity
from ..conv_relevance import ConvGeometry
from ..division import StabilisedInverse, plain_epsilon
from ..gates import (
    EpsilonConvGate,
    GateState,
    InputGate,
    OutputGate,
    PassGate,
    RuleGate,
    keeps_no_output,
)
from ..registry import register_gates


@register_gates("pass", nn.Module)
def attach_pass(module: nn.Module, rule: object, state: GateState) -> list[Any]:
    """Hand the output relevance to the (first) input unchanged.

    No gate where the ordinary gradient already is the rule: a BatchNorm
    merged into its linear layer computes the identity, and a ReLU's
    gradient masks exactly the positions where its output is zero, where
    every rule of the layers above (all multiply the relevance they pass down
    by their non-negative input, or route it by max-pool gradients) has
    already put zero relevance. Other activations (ReLU6, SiLU, GELU,
    Hardswish, Hardsigmoid, ...) get a :class:`PassGate`.
    """
    if module.__dict__.get("forward") is _identity or type(module) is nn.ReLU:
        return []
    stash, pre = _input_stash(module)

    def post(mod: nn.Module, args: tuple, out: Tensor) -> Tensor:
        return PassGate.apply(stash.pop(), out, state)

    return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]


def _input_stash(module: nn.Module) -> tuple[list[Tensor], Any]:
    """A forward pre-hook that keeps the layer's first input for its forward hook.

    An in-place layer gets a copy of that input, so the kept tensor is the one
    the layer saw, not the one it overwrote.
    """
    inplace = bool(getattr(module, "inplace", False))
    stash: list[Tensor] = []

    def pre(mod: nn.Module, args: tuple) -> tuple | None:
        stash.append(args[0])
        if inplace:
            return (args[0].clone(), *args[1:])
        return None

    return stash, pre


@register_gates("basic", nn.Module)
def attach_basic(module: nn.Module, rule: object, state: GateState) -> list[Any]:
    """A :class:`RuleGate` that recomputes the rule's relevance from the saved input."""
    stash, pre = _input_stash(module)
    reuse = not uses_output(rule) and keeps_no_output(module)

    def post(mod: nn.Module, args: tuple, out: Tensor) -> Tensor:
        x = stash.pop()
        return RuleGate.apply(x, out, state, rule, mod, reuse and out is not x)

    return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]


@register_gates("gradient", nn.Module)
def attach_gradient(module: nn.Module, rule: object, state: GateState) -> list[Any]:
    """Input gate on the first input, output gate on the output (one gate on a plain convolution)."""
    return gradient_gates(module, rule, state, gated=1)


def gradient_gates(module: nn.Module, rule: object, state: GateState, gated: int) -> list[Any]:
    """Gates of a modified-gradient rule with input gates on the first ``gated`` inputs.

    ``R_i = x_i * J_i^T (R / stab(z))`` for each gated input ``x_i``; on a
    plain convolution with zennit's default stabiliser, one
    :class:`EpsilonConvGate` on the output does all three steps.
    """
    epsilon = plain_epsilon(rule)
    geometry = ConvGeometry.of(module)
    if epsilon is not None and geometry is not None:

        def conv_post(mod: nn.Module, args: tuple, out: Tensor) -> Tensor:
            inverse = StabilisedInverse.apply(out, epsilon)
            return EpsilonConvGate.apply(
                args[0], out, inverse, mod.weight, geometry, state, rule, True
            )

        return [module.register_forward_hook(conv_post)]
    inplace = bool(getattr(module, "inplace", False))

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

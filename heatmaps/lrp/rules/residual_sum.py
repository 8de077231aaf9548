"""The residual addition ``a + b`` as a module (:class:`ResidualSum`, from the ResNet canonizer).

Modified-gradient rules (zennit ``Norm``, which every composite gives sums):
``R_a = a R / stab(a + b)`` and likewise for ``b`` (Montavon et al. 2019,
sec. 10.3; zennit's ``Norm``): an input gate on each summand. ``Pass``
needs no gate (the gradient hands ``R`` to both summands). Any other rule
sees the stacked summands ``(..., 2)`` through zennit's ``Sum`` module, as with
zennit's own canonizer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from zennit.layer import Sum

from ..basic_rules import uses_output
from ..canonizers import ResidualSum
from ..gates import GateState, RuleGate
from ..registry import register_gates
from .layers import gradient_gates


@register_gates("gradient", ResidualSum)
def attach_residual_gradient(module: nn.Module, rule: object, state: GateState) -> list[Any]:
    """Input gates on both summands and an output gate on the sum."""
    return gradient_gates(module, rule, state, gated=2)


@register_gates("pass", ResidualSum)
def attach_residual_pass(module: nn.Module, rule: object, state: GateState) -> list[Any]:
    """No gate: the gradient of a sum hands ``R`` to both summands."""
    return []


@register_gates("basic", ResidualSum)
def attach_residual_basic(module: nn.Module, rule: object, state: GateState) -> list[Any]:
    """The rule on the stacked summands through zennit's ``Sum``."""
    stacked_sum = Sum()
    reuse = not uses_output(rule)

    def post(mod: nn.Module, args: tuple, out: Tensor) -> Tensor:
        stacked = torch.stack(args, dim=-1)
        return RuleGate.apply(stacked, out, state, rule, stacked_sum, reuse)

    return [module.register_forward_hook(post)]
